import { useTranslation } from "react-i18next";

import { isFinished } from "../lib/answer";
import { jsonAnswer } from "../lib/json";
import type { Live } from "../lib/live";
import type { StoredMessage } from "../lib/types";
import { Markdown } from "./Markdown";
import { ToolCallView, ToolResultView } from "./ToolCalls";

/** An answer's text: Markdown, or a highlighted JSON block when the whole answer is JSON. */
function AnswerText({ text }: { text: string }) {
  return <Markdown text={jsonAnswer(text) ?? text} />;
}

/**
 * A message from history: the user's, a tool's result (labelled with the function whose call it
 * answers, from `callNames`), or an answer with its tool calls.
 */
export function StoredRow({
  message,
  earlier,
  callNames,
  onRegenerate,
}: {
  message: StoredMessage;
  earlier: boolean;
  callNames: ReadonlyMap<string, string>;
  onRegenerate: (() => void) | null;
}) {
  const { t } = useTranslation();
  const content = message.content ?? "";
  if (message.role === "user") {
    return (
      <div className="msg user">
        <span className="who">{t("messages.you")}</span>
        <div className="body">{content}</div>
      </div>
    );
  }
  if (message.role === "tool") {
    const callId = message.tool_call_id ?? "";
    return (
      <div className="msg tool-msg">
        <ToolResultView content={content} callId={callId} name={callNames.get(callId) ?? null} />
      </div>
    );
  }
  const calls = message.tool_calls ?? [];
  return (
    <div
      className={`msg assistant${earlier ? " earlier" : ""}`}
      data-testid="answer"
      data-request-id={message.request_id}
      data-status={message.status}
    >
      <span className="who">{earlier ? t("messages.earlier") : t("messages.assistant")}</span>
      {(content !== "" || calls.length === 0) && (
        <div className="body">
          <AnswerText text={content} />
        </div>
      )}
      {calls.length > 0 && (
        <div className="tool-calls">
          {calls.map((call) => (
            <ToolCallView key={call.id} call={call} />
          ))}
        </div>
      )}
      <div className="meta">
        {message.status !== "completed" && (
          <span className="notice warn">
            {message.status === "cancelled"
              ? t("messages.stopped")
              : t("messages.failed", { error: message.error ?? t("messages.unknownError") })}
          </span>
        )}
        {message.model && <span>{message.model}</span>}
        {message.usage && <span>{t("messages.tokens", { count: message.usage.completion_tokens })}</span>}
        {onRegenerate !== null && (
          <button type="button" onClick={onRegenerate}>
            {t("messages.regenerate")}
          </button>
        )}
      </div>
    </div>
  );
}

/** The answer being streamed (JSON is shown as JSON once it has ended: a partial one is not JSON yet). */
export function LiveRow({ entry }: { entry: Live }) {
  const { t } = useTranslation();
  const { state } = entry;
  const running = !isFinished(state);
  return (
    <div
      className="msg assistant"
      data-testid="answer"
      data-streaming={running ? "true" : "false"}
      data-request-id={state.requestId}
      data-chars={state.text.length}
    >
      <span className="who">{t("messages.assistant")}</span>
      {entry.reconnecting && (
        <p className="notice warn" role="status">
          {t("messages.reconnecting")}
        </p>
      )}
      {state.status === "waiting" && (
        <p className="muted">{entry.stopWanted ? t("messages.stopping") : t("messages.waiting")}</p>
      )}
      <div className={`body${running ? " cursor" : ""}`}>
        {running ? <Markdown text={state.text} /> : <AnswerText text={state.text} />}
      </div>
      <div className="meta">
        {state.status === "cancelled" && <span className="notice warn">{t("messages.stopped")}</span>}
        {state.status === "failed" && (
          <span className="notice error" role="alert">
            {state.error?.message ?? t("messages.answerFailed")}
          </span>
        )}
      </div>
    </div>
  );
}
