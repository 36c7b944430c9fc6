import { describe, expect, it } from "vitest";

import { SseParser, type SseEvent } from "./sse";

const enc = new TextEncoder();

function parseAll(chunks: (string | Uint8Array)[]): SseEvent[] {
  const parser = new SseParser();
  return chunks.flatMap((c) => parser.feed(c));
}

describe("SseParser", () => {
  it("parses fields, ids, event types and multi-line data", () => {
    const events = parseAll(["id: 7\nevent: delta\ndata: a\ndata: b\n\n: keep-alive\n\ndata: c\n\n"]);
    expect(events).toEqual([
      { id: "7", event: "delta", data: "a\nb" },
      { id: "7", event: "message", data: "c" },
    ]);
  });

  it("accepts CR, LF and CRLF line ends, also split across chunks", () => {
    const events = parseAll(["data: x\r", "\n\r", "\ndata: y\r\rdata:z\n\n"]);
    expect(events.map((e) => e.data)).toEqual(["x", "y", "z"]);
  });

  it("dispatches only at a blank line: a cut event is not emitted", () => {
    const parser = new SseParser();
    expect(parser.feed("id: 1\ndata: whole\n\nid: 2\ndata: half")).toEqual([
      { id: "1", event: "message", data: "whole" },
    ]);
    expect(parser.lastEventId).toBe("2");
  });

  it("keeps only one leading space of a value, and fields without a colon", () => {
    expect(parseAll(["data:  two\ndata\n\n"])).toEqual([{ id: "", event: "message", data: " two\n" }]);
  });

  it("ignores ids holding NUL and strips a leading byte order mark", () => {
    const events = parseAll(["\ufeffid: 3\ndata: a\n\nid: 4\u0000\ndata: b\n\n"]);
    expect(events.map((e) => e.id)).toEqual(["3", "3"]);
  });

  it("decodes a multi-byte character cut between chunks", () => {
    const bytes = enc.encode("data: caf\u00e9 \ud83d\ude00\n\n");
    for (let cut = 0; cut <= bytes.length; cut++) {
      expect(parseAll([bytes.slice(0, cut), bytes.slice(cut)])).toEqual([
        { id: "", event: "message", data: "caf\u00e9 \ud83d\ude00" },
      ]);
    }
  });

  it("gives the same events for a body fed byte by byte", () => {
    const body = enc.encode("id: 1\r\nevent: delta\r\ndata: \u00fcber\r\n\r\nid: 2\ndata: [DONE]\n\n");
    const whole = parseAll([body]);
    const bytes = Array.from(body, (b) => Uint8Array.of(b));
    expect(parseAll(bytes)).toEqual(whole);
    expect(whole).toHaveLength(2);
  });
});
