import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";

import { newAnswer } from "../lib/answer";
import type { Live } from "../lib/live";
import { callNames } from "../lib/tools";
import type { StoredMessage } from "../lib/types";
import { LiveRow, StoredRow } from "./MessageRows";

function msg(role: StoredMessage["role"], content: string | null, extra: Partial<StoredMessage> = {}): StoredMessage {
  return {
    request_id: "r1",
    role,
    content,
    status: "completed",
    model: "qwen",
    finish_reason: null,
    error: null,
    usage: null,
    created_at: "2026-12-06T00:00:00Z",
    ...extra,
  };
}

const calling = msg("assistant", null, {
  tool_calls: [
    { id: "c1", type: "function", function: { name: "get_weather", arguments: '{"city":"Paris"}' } },
    { id: "c2", type: "function", function: { name: "get_time", arguments: "not json" } },
  ],
});
const names = callNames([msg("user", "Weather?"), calling]);

function row(message: StoredMessage): string {
  return renderToStaticMarkup(<StoredRow message={message} earlier={false} callNames={names} onRegenerate={null} />);
}

describe("a stored conversation's rows", () => {
  it("show an answer that only calls tools as its calls, without an empty body", () => {
    const html = row(calling);
    expect(html).toContain('data-testid="answer"');
    expect(html).not.toContain('class="body"');
    expect(html.match(/data-testid="tool-call"/g)).toHaveLength(2);
    expect(html).toContain("Called <code>get_weather</code>");
    expect(html).toContain("Called <code>get_time</code>");
    expect(html).toContain("Arguments (not valid JSON):");
  });

  it("show an answer's text and its calls together", () => {
    const html = row({ ...calling, content: "Let me check." });
    expect(html).toContain("<p>Let me check.</p>");
    expect(html).toContain('data-testid="tool-call"');
  });

  it("label a tool result with the function whose call it answers", () => {
    const html = row(msg("tool", '{"temp": 21}', { tool_call_id: "c1", request_id: "r2" }));
    expect(html).toMatch(/^<div class="msg tool-msg">/);
    expect(html).not.toContain('data-testid="answer"');
    expect(html).toContain("Result of <code>get_weather</code>");
    expect(html).toContain('<code class="hljs language-json">');
  });

  it("show an answer that is a JSON object as a highlighted json block", () => {
    const html = row(msg("assistant", '{"name":"Ada","born":1815,"langs":["en"]}'));
    expect(html).toContain('<div class="codeblock">');
    expect(html).toContain('<code class="hljs language-json">');
    expect(html).toContain('<span class="hljs-attr">&quot;born&quot;</span>');
    expect(html).toContain('<span class="hljs-number">1815</span>');
  });

  it("keep other answers as Markdown", () => {
    const html = row(msg("assistant", "The answer is **42**."));
    expect(html).toContain("<strong>42</strong>");
    expect(html).not.toContain("language-json");
  });

  it("show a user's message as text, also when its content is null", () => {
    expect(row(msg("user", "{not: markdown}"))).toContain('<div class="body">{not: markdown}</div>');
    expect(row(msg("user", null))).toContain('<div class="body"></div>');
  });
});

describe("the streamed answer", () => {
  const entry = (status: "streaming" | "completed"): Live => ({
    userText: "JSON please",
    model: "qwen",
    state: { ...newAnswer("r3", "c"), text: '{"ok": true}', status },
    reconnecting: false,
    stopWanted: false,
    run: 1,
  });

  it("is Markdown while it runs and a json block once it has ended", () => {
    expect(renderToStaticMarkup(<LiveRow entry={entry("streaming")} />)).not.toContain("language-json");
    const done = renderToStaticMarkup(<LiveRow entry={entry("completed")} />);
    expect(done).toContain('<code class="hljs language-json">');
    expect(done).toMatch(/<span class="hljs-literal">(<span class="hljs-keyword">)?true</);
  });
});
