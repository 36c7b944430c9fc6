import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";

import { Markdown } from "./Markdown";

describe("Markdown", () => {
  it("renders tables, highlighted code with a copy button, and never raw HTML", () => {
    const html = renderToStaticMarkup(
      <Markdown
        text={
          "| a | b |\n|---|---|\n| 1 | 2 |\n\n```python\ndef f():\n    return 'x'\n```\n\n<img src=x onerror=alert(1)> <script>alert(2)</script>"
        }
      />,
    );
    expect(html).toContain("<table>");
    expect(html).toContain("<td>2</td>");
    expect(html).toMatch(/<code class="hljs language-python">/);
    expect(html).toContain('<span class="hljs-keyword">def</span>');
    expect(html).toContain('aria-label="Copy code"');
    expect(html).not.toContain("<img");
    expect(html).not.toContain("<script");
  });

  it("highlights json code blocks", () => {
    const html = renderToStaticMarkup(<Markdown text={'```json\n{"a": [1, "b"]}\n```'} />);
    expect(html).toContain('<code class="hljs language-json">');
    expect(html).toContain('<span class="hljs-attr">&quot;a&quot;</span>');
    expect(html).toContain('<span class="hljs-number">1</span>');
    expect(html).toContain('<span class="hljs-string">&quot;b&quot;</span>');
  });

  it("opens links in a new tab without handing over the page", () => {
    const html = renderToStaticMarkup(<Markdown text="[docs](https://example.com/x)" />);
    expect(html).toContain('target="_blank"');
    expect(html).toContain('rel="noopener noreferrer nofollow"');
  });
});
