import { describe, expect, it } from "vitest";

import { dialogue } from "./dialogue";
import type { StoredMessage, ToolCall } from "./types";

function msg(role: StoredMessage["role"], content: string | null, extra: Partial<StoredMessage> = {}): StoredMessage {
  return {
    request_id: "r",
    role,
    content,
    status: "completed",
    model: null,
    finish_reason: null,
    error: null,
    usage: null,
    created_at: "2026-12-06T00:00:00Z",
    ...extra,
  };
}

function call(id: string, name: string, args = "{}"): ToolCall {
  return { id, type: "function", function: { name, arguments: args } };
}

describe("dialogue", () => {
  it("sends the system prompt, then the turns, a regenerated answer replacing the earlier one", () => {
    const out = dialogue(
      [msg("user", "Hi"), msg("assistant", "Hello"), msg("assistant", "Hello again"), msg("user", "Bye")],
      "Be brief.",
    );
    expect(out).toEqual([
      { role: "system", content: "Be brief." },
      { role: "user", content: "Hi" },
      { role: "assistant", content: "Hello again" },
      { role: "user", content: "Bye" },
    ]);
  });

  it("skips answers that failed or stopped without text", () => {
    const out = dialogue([msg("user", "Hi"), msg("assistant", "", { status: "failed" })], " ");
    expect(out).toEqual([{ role: "user", content: "Hi" }]);
  });

  it("sends tool calls with content null and the tool results that answer them, in OpenAI's shape", () => {
    const calls = [call("c1", "get_weather", '{"city":"Paris"}'), call("c2", "get_time")];
    const out = dialogue(
      [
        msg("user", "Weather and time in Paris?"),
        msg("assistant", null, { tool_calls: calls }),
        msg("tool", '{"temp": 21}', { tool_call_id: "c1", request_id: "r2" }),
        msg("tool", "12:00", { tool_call_id: "c2", request_id: "r2" }),
        msg("assistant", "21 °C at noon.", { request_id: "r2" }),
      ],
      "",
    );
    expect(out).toEqual([
      { role: "user", content: "Weather and time in Paris?" },
      { role: "assistant", content: null, tool_calls: calls },
      { role: "tool", tool_call_id: "c1", content: '{"temp": 21}' },
      { role: "tool", tool_call_id: "c2", content: "12:00" },
      { role: "assistant", content: "21 °C at noon." },
    ]);
  });

  it("leaves out calls nobody answered and results whose call is gone", () => {
    const out = dialogue(
      [
        msg("user", "Weather?"),
        // answered in part: only c1 goes
        msg("assistant", "Checking.", { tool_calls: [call("c1", "get_weather"), call("c2", "get_time")] }),
        msg("tool", "sunny", { tool_call_id: "c1" }),
        msg("tool", "orphan", { tool_call_id: "c9" }),
        msg("assistant", "Sunny."),
        msg("user", "And tomorrow?"),
        // never answered: the text stays, the call goes; without text the message goes
        msg("assistant", "Let me look.", { tool_calls: [call("c3", "forecast")] }),
        msg("user", "Well?"),
        msg("assistant", null, { tool_calls: [call("c4", "forecast")] }),
      ],
      "",
    );
    expect(out).toEqual([
      { role: "user", content: "Weather?" },
      { role: "assistant", content: "Checking.", tool_calls: [call("c1", "get_weather")] },
      { role: "tool", tool_call_id: "c1", content: "sunny" },
      { role: "assistant", content: "Sunny." },
      { role: "user", content: "And tomorrow?" },
      { role: "assistant", content: "Let me look." },
      { role: "user", content: "Well?" },
    ]);
  });
});
