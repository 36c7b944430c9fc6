/**
 * Shared by the usage, API keys and admin pages: date ranges (UTC days, as the edge counts
 * them), filling a per-day report's gaps, number and date formatting in the app's language,
 * a small hook that loads one JSON resource with the session's token, and one that runs a
 * button's call.
 */
import { useCallback, useEffect, useMemo, useState } from "react";

import i18n from "../i18n";
import { ApiError, session } from "../lib/api";
import type { UsageBucket, UsageReport } from "../lib/types";

/** The edge refuses longer ranges (inclusive). */
export const MAX_RANGE_DAYS = 366;
export const DEFAULT_DAYS = 30;

export interface DateRange {
  since: string;
  until: string;
}

const DAY_MS = 86_400_000;
const ISO_DAY = /^\d{4}-\d{2}-\d{2}$/;

/** Today as the edge sees it: a UTC date, `YYYY-MM-DD`. */
export function utcToday(): string {
  return new Date().toISOString().slice(0, 10);
}

/** Milliseconds of a `YYYY-MM-DD` day at 00:00 UTC, or null when it is not a real date. */
export function parseDay(day: string): number | null {
  if (!ISO_DAY.test(day)) return null;
  const time = Date.parse(`${day}T00:00:00Z`);
  if (Number.isNaN(time) || new Date(time).toISOString().slice(0, 10) !== day) return null;
  return time;
}

export function addDays(day: string, days: number): string {
  const time = parseDay(day);
  if (time === null) return day;
  return new Date(time + days * DAY_MS).toISOString().slice(0, 10);
}

/** The last `days` UTC days, today included (the edge's default is 30). */
export function lastDays(days: number = DEFAULT_DAYS): DateRange {
  const until = utcToday();
  return { since: addDays(until, -(days - 1)), until };
}

/** How many days an (already valid) range covers, both ends included. */
export function daysIn(range: DateRange): number {
  const since = parseDay(range.since);
  const until = parseDay(range.until);
  if (since === null || until === null) return 0;
  return Math.round((until - since) / DAY_MS) + 1;
}

/** What is wrong with a range, for a person; null when the edge will accept it. */
export function rangeError(range: DateRange): string | null {
  if (range.since === "" || range.until === "") return i18n.t("range.errorBoth");
  const since = parseDay(range.since);
  const until = parseDay(range.until);
  if (since === null) return i18n.t("range.errorStart");
  if (until === null) return i18n.t("range.errorEnd");
  if (since > until) return i18n.t("range.errorOrder");
  if (daysIn(range) > MAX_RANGE_DAYS) return i18n.t("range.errorTooLong", { days: MAX_RANGE_DAYS });
  return null;
}

export type UsageGroup = "day" | "model" | "user";
/** A person's own usage, or the whole platform's (admins). */
export type UsageBase = "/v1/usage" | "/v1/admin/usage";

/** The query string of a usage report. */
export function usagePath(
  base: UsageBase,
  range: DateRange,
  groupBy: UsageGroup,
  extra: Record<string, string> = {},
): string {
  const params = new URLSearchParams({ since: range.since, until: range.until, group_by: groupBy, ...extra });
  return `${base}?${params.toString()}`;
}

export function totalTokens(bucket: UsageBucket): number {
  return bucket.total_tokens ?? bucket.prompt_tokens + bucket.completion_tokens;
}

/** One day of a per-day chart; every day of the range has one, zeros where nothing happened. */
export interface DayPoint {
  day: string;
  requests: number;
  completed: number;
  failed: number;
  cancelled: number;
  /** Requests in a status other than the three above (none today; kept so bars add up). */
  other: number;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

/** One row of a per-model or per-user breakdown. */
export interface BreakdownRow {
  key: string;
  /** What a person reads (a model id, an email). */
  label: string;
  bucket: UsageBucket;
}

/** A per-day report's buckets over every day of `range`, in order, missing days as zeros. */
export function fillDays(buckets: readonly UsageBucket[], range: DateRange): DayPoint[] {
  const byDay = new Map<string, UsageBucket>();
  for (const bucket of buckets) if (bucket.day !== null) byDay.set(bucket.day.slice(0, 10), bucket);
  const points: DayPoint[] = [];
  const count = Math.min(daysIn(range), MAX_RANGE_DAYS + 1);
  for (let i = 0; i < count; i++) {
    const day = addDays(range.since, i);
    const bucket = byDay.get(day);
    if (bucket === undefined) {
      points.push({
        day,
        requests: 0,
        completed: 0,
        failed: 0,
        cancelled: 0,
        other: 0,
        prompt_tokens: 0,
        completion_tokens: 0,
        total_tokens: 0,
      });
      continue;
    }
    points.push({
      day,
      requests: bucket.requests,
      completed: bucket.completed,
      failed: bucket.failed,
      cancelled: bucket.cancelled,
      other: Math.max(0, bucket.requests - bucket.completed - bucket.failed - bucket.cancelled),
      prompt_tokens: bucket.prompt_tokens,
      completion_tokens: bucket.completion_tokens,
      total_tokens: totalTokens(bucket),
    });
  }
  return points;
}

// -- formatting, in the app's language (lib/format.ts) -----------------------------------------

export { fmtAgo, fmtCompact, fmtDateTime, fmtDay, fmtDuration, fmtInt, fmtPercent, isoOf } from "../lib/format";

// -- loading ------------------------------------------------------------------------------------

/** What to tell a person about a failed call. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) return error.describe();
  return i18n.t("errors.generic");
}

export interface Loaded<T> {
  data: T | null;
  error: string | null;
  /** True while a request is in flight (a first load or a reload). */
  loading: boolean;
  /** When `data` arrived (seconds since the epoch; null: none yet). */
  loadedAt: number | null;
  /** Loads again (keeping the current data on screen meanwhile). */
  reload: () => void;
}

interface LoadState<T> {
  data: T | null;
  /** The path `data` came from: a failure of the same path keeps it, of another drops it. */
  from: string | null;
  error: string | null;
  /** The request (reload count and path) that last finished: any other one is in flight. */
  settled: string | null;
  at: number | null;
}

/** GETs `path` with the session's token whenever it changes (null: nothing to load). */
export function useJson<T>(path: string | null): Loaded<T> {
  const [state, setState] = useState<LoadState<T>>({ data: null, from: null, error: null, settled: null, at: null });
  const [nonce, setNonce] = useState(0);
  const request = path === null ? null : `${nonce} ${path}`;

  useEffect(() => {
    if (path === null) return;
    const controller = new AbortController();
    const settled = `${nonce} ${path}`;
    session.json<T>(path, { signal: controller.signal }).then(
      (data) => {
        if (!controller.signal.aborted) setState({ data, from: path, error: null, settled, at: Date.now() / 1000 });
      },
      (error: unknown) => {
        if (controller.signal.aborted) return;
        setState((s) => ({
          data: s.from === path ? s.data : null,
          from: s.from === path ? s.from : null,
          error: describeError(error),
          settled,
          at: s.from === path ? s.at : null,
        }));
      },
    );
    return () => controller.abort();
  }, [path, nonce]);

  const reload = useCallback(() => setNonce((n) => n + 1), []);
  return {
    data: state.data,
    error: state.error,
    loading: request !== null && state.settled !== request,
    loadedAt: state.at,
    reload,
  };
}

/** The per-day report over `range`, and its points with every day of the range filled in. */
export function useDailyUsage(base: UsageBase, range: DateRange) {
  const byDay = useJson<UsageReport>(usagePath(base, range, "day"));
  const points = useMemo(() => (byDay.data === null ? [] : fillDays(byDay.data.data, range)), [byDay.data, range]);
  return { byDay, points };
}

/** A call that buttons start: which one runs (a row's id, or `true` for a lone button) and why the last failed. */
export interface Action<K> {
  running: K | null;
  error: string | null;
  clearError: () => void;
  run: (key: K, call: () => Promise<void>) => Promise<void>;
}

export function useAction<K>(): Action<K> {
  const [running, setRunning] = useState<K | null>(null);
  const [error, setError] = useState<string | null>(null);
  const run = async (key: K, call: () => Promise<void>) => {
    setRunning(key);
    setError(null);
    try {
      await call();
    } catch (caught) {
      setError(describeError(caught));
    } finally {
      setRunning(null);
    }
  };
  return { running, error, clearError: () => setError(null), run };
}

/** A date range being edited, and the last valid one (applied after a short pause in typing). */
export interface RangeState {
  draft: DateRange;
  setDraft: (range: DateRange) => void;
  /** The range the page shows: the draft once valid and unchanged for a moment. */
  applied: DateRange;
  error: string | null;
  /** Shows `range` at once (a preset, not typing). */
  choose: (range: DateRange) => void;
}

export function useDateRange(initial: DateRange, onApply?: (range: DateRange) => void): RangeState {
  const [draft, setDraft] = useState(initial);
  const [applied, setApplied] = useState(initial);
  const error = rangeError(draft);

  useEffect(() => {
    if (error !== null) return;
    if (draft.since === applied.since && draft.until === applied.until) return;
    const timer = setTimeout(() => {
      setApplied(draft);
      onApply?.(draft);
    }, 350);
    return () => clearTimeout(timer);
  }, [draft, applied, error, onApply]);

  const choose = useCallback(
    (range: DateRange) => {
      setDraft(range);
      setApplied(range);
      onApply?.(range);
    },
    [onApply],
  );

  return { draft, setDraft, applied, error, choose };
}
