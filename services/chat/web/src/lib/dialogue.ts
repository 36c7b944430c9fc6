import type { StoredMessage, ToolCall } from "./types";

/** A message as `/v1/chat/completions` takes it (OpenAI's shape). */
export interface WireMessage {
  role: "system" | "user" | "assistant" | "tool";
  content: string | null;
  tool_calls?: ToolCall[];
  tool_call_id?: string;
}

/**
 * The dialogue sent to the model: the system prompt, then each turn with its newest answer. Tool
 * calls go with the results that answer them; a call never answered (or a result whose call is
 * gone) is left out, as the API refuses either.
 */
export function dialogue(messages: StoredMessage[], system: string): WireMessage[] {
  const out: WireMessage[] = system.trim() !== "" ? [{ role: "system", content: system }] : [];
  for (const m of messages) {
    if (m.role === "user") {
      out.push({ role: "user", content: m.content ?? "" });
    } else if (m.role === "tool") {
      if (m.tool_call_id) out.push({ role: "tool", tool_call_id: m.tool_call_id, content: m.content ?? "" });
    } else {
      const calls = m.tool_calls ?? [];
      const text = m.content ?? "";
      if (text === "" && calls.length === 0) continue; // a failed or stopped answer without text
      if (out[out.length - 1]?.role === "assistant") out.pop(); // a regenerated answer replaces the earlier one
      out.push(
        calls.length > 0
          ? { role: "assistant", content: text || null, tool_calls: calls }
          : { role: "assistant", content: text },
      );
    }
  }
  return answeredCalls(out);
}

function answeredCalls(messages: WireMessage[]): WireMessage[] {
  const out: WireMessage[] = [];
  let open = new Set<string>(); // the calls of the assistant message the tool results follow
  for (let i = 0; i < messages.length; i++) {
    const m = messages[i]!;
    if (m.role === "tool") {
      if (m.tool_call_id !== undefined && open.has(m.tool_call_id)) out.push(m);
      continue;
    }
    open = new Set();
    if (m.role !== "assistant" || m.tool_calls === undefined) {
      out.push(m);
      continue;
    }
    const answered = new Set<string>();
    for (let j = i + 1; j < messages.length && messages[j]!.role === "tool"; j++) {
      const id = messages[j]!.tool_call_id;
      if (id !== undefined) answered.add(id);
    }
    const calls = m.tool_calls.filter((call) => answered.has(call.id));
    if (calls.length > 0) {
      out.push({ ...m, tool_calls: calls });
      open = new Set(calls.map((call) => call.id));
    } else if (m.content) {
      out.push({ role: "assistant", content: m.content });
    }
  }
  return out;
}
