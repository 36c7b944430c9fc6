import type { StoredMessage } from "./types";

/** The function each tool call of a conversation called, by call id (to label tool results). */
export function callNames(messages: StoredMessage[]): Map<string, string> {
  const names = new Map<string, string>();
  for (const m of messages) for (const call of m.tool_calls ?? []) names.set(call.id, call.function.name);
  return names;
}
