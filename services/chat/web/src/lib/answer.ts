/**
 * The state of one streamed answer, fed from either of the edge's two SSE forms of a request:
 *
 * - `POST /v1/chat/completions` with `stream: true`: OpenAI `chat.completion.chunk` frames, each
 *   with `id: <stream seq>` of the event it came from, an error frame, then `[DONE]`;
 * - `GET /v1/jobs/{id}/events` (where a cut stream resumes, with `Last-Event-ID`): the request's
 *   own events `started`, `delta`, `reset`, `released` and one terminal event.
 *
 * Either way `text` after the event with id N is the answer as the log holds it after event N,
 * so a reader that lost its connection after N goes on from the events after N and ends with the
 * same text. A redelivered attempt continues the answer (its `started` says how many characters
 * it carried over) or starts over (`reset`); events of attempts it replaced are ignored; the
 * terminal event holds the whole text.
 */

import i18n from "../i18n";
import type { SseEvent } from "./sse";

export type AnswerStatus = "waiting" | "streaming" | "completed" | "failed" | "cancelled";

export interface AnswerError {
  code: string;
  message: string;
}

export interface Usage {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens?: number;
}

export interface AnswerState {
  requestId: string;
  conversationId: string | null;
  text: string;
  /** The attempt whose text is shown (0: not known yet, e.g. from OpenAI chunks). */
  attempt: number;
  /** Where to resume: the id of the last event applied ("" before any). */
  lastEventId: string;
  status: AnswerStatus;
  finishReason: string | null;
  error: AnswerError | null;
  usage: Usage | null;
}

export function newAnswer(requestId: string, conversationId: string | null = null): AnswerState {
  return {
    requestId,
    conversationId,
    text: "",
    attempt: 0,
    lastEventId: "",
    status: "waiting",
    finishReason: null,
    error: null,
    usage: null,
  };
}

export function isFinished(state: AnswerState): boolean {
  return state.status === "completed" || state.status === "failed" || state.status === "cancelled";
}

interface LogEvent {
  type: string;
  attempt?: number;
  text?: string;
  resumed_chars?: number;
  conversation_id?: string | null;
  finish_reason?: string;
  usage?: Usage;
  code?: string;
  message?: string;
  reason?: string;
}

interface Chunk {
  conversation_id?: string;
  choices?: { delta?: { content?: string }; finish_reason?: string | null }[];
  usage?: Usage | null;
  error?: { code?: string | null; message?: string };
}

const LOG_EVENTS = new Set(["started", "delta", "reset", "released", "completed", "failed", "cancelled"]);

/** The state after one SSE event of either form (a new object; the old one is unchanged). */
export function applyEvent(state: AnswerState, sse: SseEvent): AnswerState {
  if (isFinished(state)) return state;
  const next = { ...state, lastEventId: sse.id || state.lastEventId };
  if (sse.event === "message") {
    if (sse.data === "[DONE]") return next;
    return applyChunk(next, JSON.parse(sse.data) as Chunk);
  }
  if (sse.event === "error") {
    const body = JSON.parse(sse.data) as Chunk;
    return failWith(next, body.error);
  }
  if (LOG_EVENTS.has(sse.event)) return applyLogEvent(next, JSON.parse(sse.data) as LogEvent);
  return state;
}

function applyChunk(state: AnswerState, chunk: Chunk): AnswerState {
  if (chunk.error) return failWith(state, chunk.error);
  if (chunk.conversation_id) state.conversationId = chunk.conversation_id;
  if (chunk.usage) state.usage = chunk.usage;
  const choice = chunk.choices?.[0];
  if (choice === undefined) return state;
  state.status = "streaming";
  if (choice.delta?.content) state.text += choice.delta.content;
  if (choice.finish_reason) {
    state.status = "completed";
    state.finishReason = choice.finish_reason;
  }
  return state;
}

function applyLogEvent(state: AnswerState, event: LogEvent): AnswerState {
  const attempt = event.attempt ?? 0;
  if (attempt < state.attempt) return state; // an attempt that a newer one replaced
  if (attempt > state.attempt) {
    state.attempt = attempt;
    if (event.type === "reset") state.text = "";
    // A continuing attempt carries over this much of the answer; what follows is its own.
    else if (event.type === "started") state.text = state.text.slice(0, event.resumed_chars ?? 0);
  }
  if (event.conversation_id) state.conversationId = event.conversation_id;
  switch (event.type) {
    case "reset":
      state.text = "";
      return state;
    case "started":
      state.status = "streaming";
      return state;
    case "delta":
      state.status = "streaming";
      state.text += event.text ?? "";
      return state;
    case "completed":
      return {
        ...state,
        status: "completed",
        text: event.text ?? state.text,
        finishReason: event.finish_reason ?? null,
        usage: event.usage ?? null,
      };
    case "failed":
    case "cancelled": {
      const code =
        event.type === "cancelled"
          ? event.reason === "deadline"
            ? "deadline_exceeded"
            : "cancelled"
          : (event.code ?? "failed");
      return {
        ...state,
        status: code === "cancelled" ? "cancelled" : "failed",
        text: event.text ?? state.text,
        usage: event.usage ?? null,
        error: {
          code,
          message: event.message ?? (code === "cancelled" ? i18n.t("messages.stopped") : i18n.t("messages.cutOff")),
        },
      };
    }
    default:
      return state; // `released`: the next attempt carries on
  }
}

function failWith(state: AnswerState, error: Chunk["error"]): AnswerState {
  const code = error?.code ?? "error";
  return {
    ...state,
    status: code === "cancelled" ? "cancelled" : "failed",
    error: { code, message: error?.message ?? i18n.t("messages.answerFailed") },
  };
}
