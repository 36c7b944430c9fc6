import { readFileSync } from "node:fs";
import { join } from "node:path";

import { describe, expect, it } from "vitest";

import { applyEvent, newAnswer, type AnswerState } from "./answer";
import { SseParser } from "./sse";

const fixtures = join(__dirname, "fixtures");
const chatBody = new Uint8Array(readFileSync(join(fixtures, "chat-stream.txt")));
const eventsBody = new Uint8Array(readFileSync(join(fixtures, "job-events.txt")));
const enc = new TextEncoder();

function feed(state: AnswerState, parser: SseParser, bytes: Uint8Array): AnswerState {
  return parser.feed(bytes).reduce(applyEvent, state);
}

/** What `GET /v1/jobs/{id}/events` answers with `Last-Event-ID: after`: the frames after it. */
function eventsAfter(body: Uint8Array, after: string): Uint8Array {
  const frames = new TextDecoder()
    .decode(body)
    .split("\n\n")
    .filter((f) => f.trim() !== "");
  const from = after === "" ? 0 : Number(after);
  const kept = frames.filter((f) => Number(/^id: (\d+)$/m.exec(f)?.[1] ?? "0") > from);
  return enc.encode(kept.map((f) => f + "\n\n").join(""));
}

function finalOf(body: Uint8Array): AnswerState {
  return feed(newAnswer("r"), new SseParser(), body);
}

describe("the recorded streams", () => {
  const reference = finalOf(eventsBody);

  it("end completed with the same text either way", () => {
    expect(reference.status).toBe("completed");
    expect(reference.text.length).toBeGreaterThan(20);
    expect(finalOf(chatBody).text).toBe(reference.text);
    expect(finalOf(chatBody).conversationId).toBe(reference.conversationId);
  });

  it("hold multi-byte characters (so cuts fall inside them)", () => {
    expect(new TextEncoder().encode(reference.text).length).toBeGreaterThan(reference.text.length);
  });

  it("resume after a cut of the chat stream at every byte boundary gives the same text", () => {
    for (let cut = 0; cut <= chatBody.length; cut++) {
      // The connection drops after `cut` bytes; a new one resumes with Last-Event-ID.
      const first = feed(newAnswer("r"), new SseParser(), chatBody.slice(0, cut));
      const resumed = feed(first, new SseParser(), eventsAfter(eventsBody, first.lastEventId));
      expect(resumed.text, `cut at byte ${cut}`).toBe(reference.text);
      expect(resumed.status).toBe("completed");
    }
  });

  it("resume after a cut of the event stream at every byte boundary gives the same text", () => {
    for (let cut = 0; cut <= eventsBody.length; cut++) {
      const first = feed(newAnswer("r"), new SseParser(), eventsBody.slice(0, cut));
      const resumed = feed(first, new SseParser(), eventsAfter(eventsBody, first.lastEventId));
      expect(resumed.text, `cut at byte ${cut}`).toBe(reference.text);
    }
  });

  it("the text shown while streaming only grows, and is a prefix of the answer", () => {
    let state = newAnswer("r");
    const parser = new SseParser();
    for (let i = 0; i < chatBody.length; i += 7) {
      const before = state.text;
      state = feed(state, parser, chatBody.slice(i, i + 7));
      expect(state.text.startsWith(before)).toBe(true);
      expect(reference.text.startsWith(state.text)).toBe(true);
    }
  });
});

function frame(id: number, type: string, body: Record<string, unknown>): string {
  return `id: ${id}\nevent: ${type}\ndata: ${JSON.stringify({ type, ...body })}\n\n`;
}

describe("answers across attempts", () => {
  // Attempt 1 dies after "Hello wor"; attempt 2 carries over "Hello " and goes on; a late
  // delta of the dead attempt 1 must not count.
  const continued = enc.encode(
    frame(1, "started", { attempt: 1, resumed_chars: 0 }) +
      frame(2, "delta", { attempt: 1, text: "Hello " }) +
      frame(3, "delta", { attempt: 1, text: "wor" }) +
      frame(4, "started", { attempt: 2, resumed_chars: 6 }) +
      frame(5, "delta", { attempt: 1, text: "ld (zombie)" }) +
      frame(6, "delta", { attempt: 2, text: "world" }) +
      frame(7, "completed", { attempt: 2, text: "Hello world", finish_reason: "stop" }),
  );
  // Attempt 2 cannot continue: it resets and starts over.
  const reset = enc.encode(
    frame(1, "started", { attempt: 1, resumed_chars: 0 }) +
      frame(2, "delta", { attempt: 1, text: "Bonjour" }) +
      frame(3, "released", { attempt: 1, reason: "drain" }) +
      frame(4, "reset", { attempt: 2, reason: "stop_sequences" }) +
      frame(5, "started", { attempt: 2, resumed_chars: 0 }) +
      frame(6, "delta", { attempt: 2, text: "Hi" }) +
      frame(7, "delta", { attempt: 2, text: " there" }),
  );

  it("a continued attempt keeps the carried-over text and drops the rest", () => {
    let state = newAnswer("r");
    const parser = new SseParser();
    state = feed(state, parser, continued.slice(0, continued.length - 80));
    expect(state.text).toBe("Hello world");
    expect(state.status).toBe("streaming");
    expect(finalOf(continued).text).toBe("Hello world");
  });

  it("a reset starts the text over", () => {
    expect(finalOf(reset).text).toBe("Hi there");
    expect(finalOf(reset).status).toBe("streaming");
  });

  it("every byte cut resumes to the same text", () => {
    for (const body of [continued, reset]) {
      const whole = finalOf(body).text;
      for (let cut = 0; cut <= body.length; cut++) {
        const first = feed(newAnswer("r"), new SseParser(), body.slice(0, cut));
        const resumed = feed(first, new SseParser(), eventsAfter(body, first.lastEventId));
        expect(resumed.text, `cut at byte ${cut}`).toBe(whole);
      }
    }
  });

  it("a cancelled or failed answer keeps its partial text and says why", () => {
    const cancelled = finalOf(
      enc.encode(
        frame(1, "started", { attempt: 1 }) +
          frame(2, "delta", { attempt: 1, text: "par" }) +
          frame(3, "cancelled", { attempt: 1, reason: "client", text: "part" }),
      ),
    );
    expect(cancelled).toMatchObject({ status: "cancelled", text: "part", error: { code: "cancelled" } });
    const chunkError = finalOf(
      enc.encode(
        'id: 1\ndata: {"choices":[{"delta":{"content":"ab"}}]}\n\n' +
          'id: 2\ndata: {"error":{"code":"worker_lost","message":"lost"}}\n\ndata: [DONE]\n\n',
      ),
    );
    expect(chunkError).toMatchObject({ status: "failed", text: "ab", error: { code: "worker_lost" } });
  });
});
