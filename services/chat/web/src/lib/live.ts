/**
 * The answers being streamed, outside React's tree: they outlive the chat page's remounts (a new
 * conversation's first answer moves the page from `/` to `/c/<id>` mid-stream), and one per
 * conversation can run while the reader is elsewhere.
 */

import { useCallback, useSyncExternalStore } from "react";

import type { AnswerState } from "./answer";

export interface Live {
  /** The user's message as sent (null for Regenerate: the conversation already holds it). */
  userText: string | null;
  model: string;
  state: AnswerState;
  reconnecting: boolean;
  /** Stop was pressed before the edge said the request's id. */
  stopWanted: boolean;
  /** This stream's key (from `live.start`). */
  run: number;
}

let entries: ReadonlyMap<number, Live> = new Map();
let runs = 0;
const listeners = new Set<() => void>();

function publish(next: Map<number, Live>): void {
  entries = next;
  for (const listener of listeners) listener();
}

export const live = {
  all: (): Live[] => [...entries.values()],
  get: (run: number): Live | undefined => entries.get(run),
  /** The newest answer followed in a conversation (null: a new chat's, before it has an id). */
  of(conversationId: string | null): Live | null {
    let found: Live | null = null;
    for (const entry of entries.values()) if (entry.state.conversationId === conversationId) found = entry;
    return found;
  },
  following: (requestId: string): boolean => [...entries.values()].some((e) => e.state.requestId === requestId),
  /** Starts following an answer; returns its key. */
  start(entry: Omit<Live, "run">): number {
    runs += 1;
    publish(new Map(entries).set(runs, { ...entry, run: runs }));
    return runs;
  },
  patch(run: number, change: Partial<Live>): void {
    const entry = entries.get(run);
    if (entry !== undefined) publish(new Map(entries).set(run, { ...entry, ...change }));
  },
  remove(run: number): void {
    if (!entries.has(run)) return;
    const next = new Map(entries);
    next.delete(run);
    publish(next);
  },
  subscribe(this: void, listener: () => void): () => void {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
};

/** The answer followed in this conversation, re-rendering as it changes. */
export function useLive(conversationId: string | null): Live | null {
  const read = useCallback(() => live.of(conversationId), [conversationId]);
  return useSyncExternalStore(live.subscribe, read);
}
