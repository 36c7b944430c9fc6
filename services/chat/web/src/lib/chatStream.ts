/**
 * One answer's stream: starts it with `POST /v1/chat/completions` (`stream: true`, `disconnect:
 * "detach"`, so a reload or a lost network does not cancel it), and when the connection ends
 * before the answer does, re-attaches to `GET /v1/jobs/{id}/events` with `Last-Event-ID`, with
 * back-off, until the answer ends. The state (text and the id of the last event in it) is saved
 * together in sessionStorage, so a reloaded page resumes from exactly there.
 */

import { ApiError, errorFrom, session } from "./api";
import { applyEvent, isFinished, newAnswer, type AnswerState } from "./answer";
import { SseParser } from "./sse";

/** Each followed answer's saved state: `llmchat.inflight.<request id>`. */
const SAVED = "llmchat.inflight.";
const BACKOFF_MS = [250, 500, 1000, 2000, 4000];
const SAVE_EVERY_MS = 200;

export interface StreamCallbacks {
  /** The state after each batch of events. */
  update: (state: AnswerState) => void;
  /** The connection dropped (true) or is back (false). */
  reconnecting: (down: boolean) => void;
}

export interface Saved {
  state: AnswerState;
  model: string;
  userText: string;
}

/** The answers this tab was following when it was reloaded, not yet ended. */
export function savedAnswers(): Saved[] {
  const found: Saved[] = [];
  for (let i = 0; i < sessionStorage.length; i++) {
    const key = sessionStorage.key(i);
    if (key === null || !key.startsWith(SAVED)) continue;
    try {
      found.push(JSON.parse(sessionStorage.getItem(key) ?? "") as Saved);
    } catch {
      sessionStorage.removeItem(key);
    }
  }
  return found;
}

export function forgetSaved(requestId: string): void {
  sessionStorage.removeItem(SAVED + requestId);
}

/** Starts an answer; resolves once the stream has started (or throws the edge's refusal). */
export async function startAnswer(
  body: Record<string, unknown>,
  userText: string,
  callbacks: StreamCallbacks,
  signal: AbortSignal,
): Promise<{ state: AnswerState; done: Promise<AnswerState> }> {
  const response = await session.fetch("/v1/chat/completions", {
    method: "POST",
    // Stored explicitly: the web app's chats are conversations (history).
    body: JSON.stringify({ ...body, stream: true, disconnect: "detach", store: true }),
    signal,
  });
  const requestId = response.headers.get("X-Request-Id") ?? "";
  const state = newAnswer(requestId, response.headers.get("X-Conversation-Id"));
  const saver = new Saver(String(body.model), userText);
  saver.save(state, true);
  const done = follow(state, response, saver, callbacks, signal);
  return { state, done };
}

/** Re-attaches to an answer a reloaded page was showing (or one found running in history). */
export function resumeAnswer(
  state: AnswerState,
  model: string,
  userText: string,
  callbacks: StreamCallbacks,
  signal: AbortSignal,
): Promise<AnswerState> {
  return follow(state, null, new Saver(model, userText), callbacks, signal);
}

/** Asks the edge to stop an answer (the stream then ends `cancelled` with its partial text). */
export async function stopAnswer(requestId: string): Promise<void> {
  try {
    await session.fetch(`/v1/jobs/${encodeURIComponent(requestId)}`, { method: "DELETE" });
  } catch (error) {
    // 409: it ended meanwhile; nothing to stop.
    if (!(error instanceof ApiError && error.status === 409)) throw error;
  }
}

async function follow(
  initial: AnswerState,
  first: Response | null,
  saver: Saver,
  callbacks: StreamCallbacks,
  signal: AbortSignal,
): Promise<AnswerState> {
  let state = initial;
  let response = first;
  let failures = 0;
  try {
    while (!isFinished(state)) {
      if (signal.aborted) return state;
      try {
        response ??= await reattach(state, signal);
        if (failures > 0) callbacks.reconnecting(false);
        failures = 0;
        const before = state;
        state = await read(response, state, saver, callbacks);
        // An event stream that ended with nothing new: the request may have ended long ago
        // (its events no longer kept); its job says how.
        if (state === before && !isFinished(state)) state = await fromJob(state);
      } catch (error) {
        if (signal.aborted) return state;
        if (error instanceof ApiError && error.status !== 0 && error.status < 500 && error.status !== 429) {
          // 404: the request is gone (its events expired); anything else 4xx will not heal.
          state = { ...state, status: "failed", error: { code: error.code ?? "error", message: error.describe() } };
          break;
        }
      }
      response = null;
      if (isFinished(state)) break;
      callbacks.reconnecting(true);
      await sleep(BACKOFF_MS[Math.min(failures, BACKOFF_MS.length - 1)] ?? 4000, signal);
      failures += 1;
    }
  } finally {
    if (isFinished(state)) saver.clear(state.requestId);
    else saver.save(state, true);
  }
  callbacks.reconnecting(false);
  callbacks.update(state);
  return state;
}

interface Job {
  status: "queued" | "running" | "completed" | "failed" | "cancelled";
  result: { choices: { message: { content: string }; finish_reason: string }[] } | null;
  partial_text?: string | null;
  error: { code: string; message: string } | null;
}

async function fromJob(state: AnswerState): Promise<AnswerState> {
  const job = await session.json<Job>(`/v1/jobs/${encodeURIComponent(state.requestId)}`);
  if (job.status === "completed") {
    const choice = job.result?.choices[0];
    return {
      ...state,
      status: "completed",
      text: choice?.message.content ?? state.text,
      finishReason: choice?.finish_reason ?? null,
    };
  }
  if (job.status === "failed" || job.status === "cancelled") {
    return {
      ...state,
      status: job.status,
      text: job.partial_text ?? state.text,
      error: job.error ?? { code: job.status, message: job.status },
    };
  }
  return state;
}

async function reattach(state: AnswerState, signal: AbortSignal): Promise<Response> {
  const headers: Record<string, string> = { Accept: "text/event-stream" };
  if (state.lastEventId !== "") headers["Last-Event-ID"] = state.lastEventId;
  const response = await session.fetch(`/v1/jobs/${encodeURIComponent(state.requestId)}/events`, { headers, signal });
  if (!response.ok) throw await errorFrom(response);
  return response;
}

async function read(
  response: Response,
  initial: AnswerState,
  saver: Saver,
  callbacks: StreamCallbacks,
): Promise<AnswerState> {
  if (response.body === null) throw new ApiError(0, "empty response");
  const reader = response.body.getReader();
  const parser = new SseParser();
  let state = initial;
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return state;
      const events = parser.feed(value);
      if (events.length === 0) continue;
      state = events.reduce(applyEvent, state);
      saver.save(state, false);
      callbacks.update(state);
      if (isFinished(state)) return state;
    }
  } catch (error) {
    if (error instanceof ApiError) throw error;
    throw new ApiError(0, "connection lost");
  } finally {
    reader.releaseLock();
  }
}

class Saver {
  private last = 0;
  private pending: AnswerState | null = null;
  private timer: ReturnType<typeof setTimeout> | null = null;

  // A reload or a closed tab saves the newest state first (not up to 200 ms behind).
  private readonly onHide = () => this.flush();

  constructor(
    private readonly model: string,
    private readonly userText: string,
  ) {
    window.addEventListener("pagehide", this.onHide);
  }

  /** Saves the text with the id of the last event in it (always together), at most every 200 ms. */
  save(state: AnswerState, now: boolean): void {
    this.pending = state;
    if (now || Date.now() - this.last >= SAVE_EVERY_MS) {
      this.flush();
    } else {
      this.timer ??= setTimeout(() => this.flush(), SAVE_EVERY_MS);
    }
  }

  private flush(): void {
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    if (this.pending === null) return;
    const saved: Saved = { state: this.pending, model: this.model, userText: this.userText };
    sessionStorage.setItem(SAVED + this.pending.requestId, JSON.stringify(saved));
    this.last = Date.now();
    this.pending = null;
  }

  clear(requestId: string): void {
    window.removeEventListener("pagehide", this.onHide);
    if (this.timer !== null) clearTimeout(this.timer);
    this.timer = null;
    this.pending = null;
    forgetSaved(requestId);
  }
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });
}
