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
  /** Which `live.start` this is: a stream started earlier and still running elsewhere (the
   * reader moved to another conversation) must not write over a newer one. */
  run: number;
}

let current: Live | null = null;
let runs = 0;
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
  /** Makes `entry` the live answer; returns its run number. */
  start(entry: Omit<Live, "run">): number {
    runs += 1;
    live.set({ ...entry, run: runs });
    return runs;
  },
  /** Patches the live answer only while it is still run `run`. */
  patchRun(run: number, change: Partial<Live>): void {
    if (current?.run === run) live.patch(change);
  },
  subscribe(listener: () => void): () => void {
    listeners.add(listener);
    return () => listeners.delete(listener);
  },
};

export function useLive(): Live | null {
  return useSyncExternalStore(live.subscribe, live.get);
}
