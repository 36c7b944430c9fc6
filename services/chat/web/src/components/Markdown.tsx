import { memo, useState, type ReactNode } from "react";
import { useTranslation } from "react-i18next";
import ReactMarkdown, { type Components } from "react-markdown";
import rehypeHighlight from "rehype-highlight";
import remarkGfm from "remark-gfm";

/** Model output as Markdown (tables, code highlighted locally); raw HTML is never rendered. */
export const Markdown = memo(function Markdown({ text }: { text: string }) {
  return (
    <ReactMarkdown
      remarkPlugins={[remarkGfm]}
      rehypePlugins={[[rehypeHighlight, { detect: false }]]}
      components={COMPONENTS}
    >
      {text}
    </ReactMarkdown>
  );
});

const COMPONENTS: Components = {
  pre: ({ children }) => <CodeBlock>{children}</CodeBlock>,
  a: ({ href, children }) => (
    <a href={href} target="_blank" rel="noopener noreferrer nofollow">
      {children}
    </a>
  ),
};

function CodeBlock({ children }: { children: ReactNode }) {
  const { t } = useTranslation();
  const [copied, setCopied] = useState(false);
  const [node, setNode] = useState<HTMLPreElement | null>(null);
  const copy = async () => {
    await navigator.clipboard.writeText(node?.innerText ?? "");
    setCopied(true);
    setTimeout(() => setCopied(false), 1500);
  };
  return (
    <div className="codeblock">
      <pre ref={setNode}>{children}</pre>
      <button type="button" className="copy" onClick={() => void copy()} aria-label={t("markdown.copyCode")}>
        {copied ? t("common.copied") : t("common.copy")}
      </button>
    </div>
  );
}
