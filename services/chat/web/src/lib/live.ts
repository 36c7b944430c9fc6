/**
 * The answer being streamed, outside React's tree: it outlives the chat page's remounts (a new
 * conversation's first answer moves the page from `/` to `/c/<id>` mid-stream).
 */

import { useSyncExternalStore } from "react";

import type { AnswerState } from "./answer";

export interface Live {
  /** The user's message as sent (null for Regenerate: the conversation already holds it). */
  userText: string | null;
  model: string;
  state: AnswerState;
  reconnecting: boolean;
  /** Stop was pressed before the edge said the request's id. */
  stopWanted: boolean;
}

let current: Live | null = null;
const listeners = new Set<() => void>();

export const live = {
  get: (): Live | null => current,
  set(next: Live | null): void {
    current = next;
    for (const listener of listeners) listener();
  },
  patch(change: Partial<Live>): void {
    if (current !== null) live.set({ ...current, ...change });
  },
  subscribe(listener: () => void): () => void {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
};

export function useLive(): Live | null {
  return useSyncExternalStore(live.subscribe, live.get);
}
