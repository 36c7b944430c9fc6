import { Trans, useTranslation } from "react-i18next";

import { fenced, formatJson } from "../lib/json";
import type { ToolCall } from "../lib/types";
import { Markdown } from "./Markdown";

/** A function call an answer made: collapsed to its name; open, its arguments as formatted JSON. */
export function ToolCallView({ call }: { call: ToolCall }) {
  const { t } = useTranslation();
  const raw = call.function.arguments;
  const json = formatJson(raw);
  return (
    <details className="tool" data-testid="tool-call" data-call-id={call.id}>
      <summary>
        <Trans i18nKey="tools.called" values={{ name: call.function.name }} components={{ code: <code /> }} />
      </summary>
      <div className="tool-body">
        {json !== null ? (
          <Markdown text={fenced(json, "json")} />
        ) : raw.trim() === "" ? (
          <p className="muted">{t("tools.noArguments")}</p>
        ) : (
          <>
            <p className="muted">{t("tools.notJson")}</p>
            <pre className="tool-text">{raw}</pre>
          </>
        )}
      </div>
    </details>
  );
}

/**
 * A tool's result, collapsed to the call it answers (`name`: the called function, when the
 * conversation still has the call); open, the result as formatted JSON when it is JSON, else as text.
 */
export function ToolResultView({ content, callId, name }: { content: string; callId: string; name: string | null }) {
  const { t } = useTranslation();
  const json = formatJson(content);
  return (
    <details className="tool" data-testid="tool-result" data-call-id={callId}>
      <summary title={t("tools.callTitle", { id: callId })}>
        {name !== null ? (
          <Trans i18nKey="tools.resultOf" values={{ name }} components={{ code: <code /> }} />
        ) : (
          t("tools.result")
        )}
      </summary>
      <div className="tool-body">
        {json !== null ? (
          <Markdown text={fenced(json, "json")} />
        ) : content === "" ? (
          <p className="muted">{t("tools.emptyResult")}</p>
        ) : (
          <pre className="tool-text">{content}</pre>
        )}
      </div>
    </details>
  );
}
