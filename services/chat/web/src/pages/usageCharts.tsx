/**
 * The usage page's building blocks, shared with the admin page's platform usage: the date range
 * picker, the totals, the per-day charts (tokens and requests), the breakdown chart and table
 * (per model or per user), the daily numbers as a table, and the CSV download.
 *
 * Colours come from the theme's CSS variables (see pages.css: --series-*), so both themes apply.
 */
import { useId, useMemo, useState, useSyncExternalStore, type ReactElement, type ReactNode } from "react";
import { Bar, BarChart, CartesianGrid, Legend, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";

import { download } from "../lib/api";
import type { UsageBucket } from "../lib/types";
import {
  describeError,
  fmtCompact,
  fmtDay,
  fmtInt,
  fmtPercent,
  lastDays,
  totalTokens,
  type DateRange,
  type DayPoint,
  type RangeState,
  type UsageGroup,
} from "./usageData";

// -- date range ---------------------------------------------------------------------------------

const PRESETS = [7, 30, 90] as const;

export function UsageRangePicker({ state, label = "Date range" }: { state: RangeState; label?: string }) {
  const id = useId();
  const { draft, setDraft, applied, error, choose } = state;
  const errorId = `${id}-error`;
  return (
    <fieldset className="usage-range">
      <legend className="sr-only">{label}</legend>
      <label>
        From
        <input
          type="date"
          name="since"
          value={draft.since}
          max={draft.until || undefined}
          required
          aria-invalid={error !== null}
          aria-describedby={error !== null ? errorId : `${id}-hint`}
          onChange={(e) => setDraft({ ...draft, since: e.target.value })}
        />
      </label>
      <label>
        To
        <input
          type="date"
          name="until"
          value={draft.until}
          min={draft.since || undefined}
          required
          aria-invalid={error !== null}
          aria-describedby={error !== null ? errorId : `${id}-hint`}
          onChange={(e) => setDraft({ ...draft, until: e.target.value })}
        />
      </label>
      <div className="usage-presets" role="group" aria-label="Quick ranges">
        {PRESETS.map((days) => {
          const range = lastDays(days);
          const active = error === null && applied.since === range.since && applied.until === range.until;
          return (
            <button key={days} type="button" aria-pressed={active} onClick={() => choose(range)}>
              Last {days} days
            </button>
          );
        })}
      </div>
      {error !== null ? (
        <p id={errorId} className="usage-field-error" role="alert">
          {error}
        </p>
      ) : (
        <p id={`${id}-hint`} className="muted usage-hint">
          Days are UTC days, both ends included.
        </p>
      )}
    </fieldset>
  );
}

// -- totals -------------------------------------------------------------------------------------

export function UsageTotals({ total, testId = "usage-totals" }: { total: UsageBucket; testId?: string }) {
  const problems = [
    total.failed > 0 ? `${fmtInt(total.failed)} failed` : null,
    total.cancelled > 0 ? `${fmtInt(total.cancelled)} cancelled` : null,
  ].filter((part): part is string => part !== null);
  return (
    <dl className="usage-totals" data-testid={testId}>
      <div>
        <dt>Requests</dt>
        <dd className="usage-total-value">{fmtInt(total.requests)}</dd>
        <dd className="muted usage-total-sub">
          {fmtInt(total.completed)} completed{problems.length > 0 ? `, ${problems.join(", ")}` : ""}
        </dd>
      </div>
      <div>
        <dt>Prompt tokens</dt>
        <dd className="usage-total-value">{fmtInt(total.prompt_tokens)}</dd>
      </div>
      <div>
        <dt>Completion tokens</dt>
        <dd className="usage-total-value">{fmtInt(total.completion_tokens)}</dd>
      </div>
      <div>
        <dt>Total tokens</dt>
        <dd className="usage-total-value">{fmtInt(totalTokens(total))}</dd>
      </div>
    </dl>
  );
}

// -- charts -------------------------------------------------------------------------------------

const TICK = { fill: "var(--fg-muted)", fontSize: 12 };
/** recharts' accessibility layer: the focused chart moves its tooltip with the arrow keys. */
const KEYS_HINT = "Use the left and right arrow keys to read the values bar by bar.";

function subscribeMotion(onChange: () => void): () => void {
  const query = window.matchMedia("(prefers-reduced-motion: reduce)");
  query.addEventListener("change", onChange);
  return () => query.removeEventListener("change", onChange);
}

/** No bar animations for people who asked their system for less motion. */
function useAnimate(): boolean {
  return useSyncExternalStore(
    subscribeMotion,
    () => !window.matchMedia("(prefers-reduced-motion: reduce)").matches,
    () => false,
  );
}

function ChartFigure({
  caption,
  height,
  testId,
  children,
}: {
  caption: ReactNode;
  height: number;
  testId?: string;
  children: ReactElement;
}) {
  return (
    <figure className="usage-chart" data-testid={testId}>
      <figcaption>{caption}</figcaption>
      <div className="usage-chart-box" style={{ height }}>
        <ResponsiveContainer width="100%" height={height}>
          {children}
        </ResponsiveContainer>
      </div>
    </figure>
  );
}

interface TipProps {
  active?: boolean;
  payload?: ReadonlyArray<{ payload?: unknown }>;
}

function pointOf<T>({ active, payload }: TipProps): T | null {
  if (active !== true) return null;
  return (payload?.[0]?.payload as T | undefined) ?? null;
}

function TipRow({ swatch, label, value }: { swatch?: string; label: string; value: number }) {
  return (
    <div className="usage-tip-row">
      <span>
        {swatch !== undefined && <span className={`usage-swatch ${swatch}`} aria-hidden="true" />}
        {label}
      </span>
      <span>{fmtInt(value)}</span>
    </div>
  );
}

function TokensTip(props: TipProps) {
  const point = pointOf<DayPoint>(props);
  if (point === null) return null;
  return (
    <div className="usage-tip">
      <div className="usage-tip-title">{fmtDay(point.day)}</div>
      <TipRow swatch="prompt" label="Prompt" value={point.prompt_tokens} />
      <TipRow swatch="completion" label="Completion" value={point.completion_tokens} />
      <TipRow label="Total" value={point.total_tokens} />
    </div>
  );
}

function RequestsTip(props: TipProps) {
  const point = pointOf<DayPoint>(props);
  if (point === null) return null;
  return (
    <div className="usage-tip">
      <div className="usage-tip-title">{fmtDay(point.day)}</div>
      <TipRow swatch="completed" label="Completed" value={point.completed} />
      <TipRow swatch="failed" label="Failed" value={point.failed} />
      <TipRow swatch="cancelled" label="Cancelled" value={point.cancelled} />
      {point.other > 0 && <TipRow swatch="other" label="Other" value={point.other} />}
      <TipRow label="Requests" value={point.requests} />
    </div>
  );
}

function dayTick(value: unknown): string {
  return fmtDay(String(value), "short");
}

function numberTick(value: unknown): string {
  return typeof value === "number" ? fmtCompact(value) : String(value);
}

/** Tokens per day, prompt and completion stacked. */
export function TokensPerDayChart({
  points,
  caption = "Tokens per day",
}: {
  points: DayPoint[];
  caption?: string;
}) {
  const animate = useAnimate();
  return (
    <ChartFigure caption={caption} height={260} testId="usage-tokens-chart">
      <BarChart data={points} margin={{ top: 8, right: 8, bottom: 0, left: 0 }} title={caption} desc={KEYS_HINT}>
        <CartesianGrid vertical={false} stroke="var(--border)" strokeDasharray="3 3" />
        <XAxis dataKey="day" tickFormatter={dayTick} tick={TICK} stroke="var(--border)" minTickGap={14} />
        <YAxis tickFormatter={numberTick} tick={TICK} stroke="var(--border)" width={48} allowDecimals={false} />
        <Tooltip content={(p) => <TokensTip active={p.active} payload={p.payload} />} cursor={{ fill: "var(--bg-soft)" }} />
        <Legend wrapperStyle={{ fontSize: 13 }} itemSorter={null} />
        <Bar dataKey="prompt_tokens" name="Prompt" stackId="tokens" fill="var(--series-prompt)" isAnimationActive={animate} />
        <Bar
          dataKey="completion_tokens"
          name="Completion"
          stackId="tokens"
          fill="var(--series-completion)"
          isAnimationActive={animate}
        />
      </BarChart>
    </ChartFigure>
  );
}

/** Requests per day, by how they ended. */
export function RequestsPerDayChart({
  points,
  caption = "Requests per day",
}: {
  points: DayPoint[];
  caption?: string;
}) {
  const animate = useAnimate();
  const other = points.some((p) => p.other > 0);
  return (
    <ChartFigure caption={caption} height={260} testId="usage-requests-chart">
      <BarChart data={points} margin={{ top: 8, right: 8, bottom: 0, left: 0 }} title={caption} desc={KEYS_HINT}>
        <CartesianGrid vertical={false} stroke="var(--border)" strokeDasharray="3 3" />
        <XAxis dataKey="day" tickFormatter={dayTick} tick={TICK} stroke="var(--border)" minTickGap={14} />
        <YAxis tickFormatter={numberTick} tick={TICK} stroke="var(--border)" width={48} allowDecimals={false} />
        <Tooltip content={(p) => <RequestsTip active={p.active} payload={p.payload} />} cursor={{ fill: "var(--bg-soft)" }} />
        <Legend wrapperStyle={{ fontSize: 13 }} itemSorter={null} />
        <Bar dataKey="completed" name="Completed" stackId="requests" fill="var(--series-completed)" isAnimationActive={animate} />
        <Bar dataKey="failed" name="Failed" stackId="requests" fill="var(--series-failed)" isAnimationActive={animate} />
        <Bar dataKey="cancelled" name="Cancelled" stackId="requests" fill="var(--series-cancelled)" isAnimationActive={animate} />
        {other && <Bar dataKey="other" name="Other" stackId="requests" fill="var(--series-other)" isAnimationActive={animate} />}
      </BarChart>
    </ChartFigure>
  );
}

/** One row of a per-model or per-user breakdown. */
export interface BreakdownRow {
  key: string;
  /** What a person reads (a model id, an email). */
  label: string;
  bucket: UsageBucket;
}

interface BreakdownPoint {
  label: string;
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

function BreakdownTip(props: TipProps) {
  const point = pointOf<BreakdownPoint>(props);
  if (point === null) return null;
  return (
    <div className="usage-tip">
      <div className="usage-tip-title">{point.label}</div>
      <TipRow swatch="prompt" label="Prompt" value={point.prompt_tokens} />
      <TipRow swatch="completion" label="Completion" value={point.completion_tokens} />
      <TipRow label="Total" value={point.total_tokens} />
    </div>
  );
}

function shortLabel(value: unknown): string {
  const text = String(value);
  return text.length > 18 ? `${text.slice(0, 17)}…` : text;
}

/** Tokens per model (or user), largest first, as horizontal stacked bars. */
export function BreakdownChart({ rows, caption, max = 12 }: { rows: BreakdownRow[]; caption: string; max?: number }) {
  const animate = useAnimate();
  const points = useMemo<BreakdownPoint[]>(
    () =>
      [...rows]
        .sort((a, b) => totalTokens(b.bucket) - totalTokens(a.bucket))
        .slice(0, max)
        .map((row) => ({
          label: row.label,
          prompt_tokens: row.bucket.prompt_tokens,
          completion_tokens: row.bucket.completion_tokens,
          total_tokens: totalTokens(row.bucket),
        })),
    [rows, max],
  );
  const height = Math.max(140, points.length * 36 + 70);
  return (
    <ChartFigure caption={caption} height={height} testId="usage-breakdown-chart">
      <BarChart
        data={points}
        layout="vertical"
        margin={{ top: 8, right: 16, bottom: 0, left: 0 }}
        title={caption}
        desc={KEYS_HINT}
      >
        <CartesianGrid horizontal={false} stroke="var(--border)" strokeDasharray="3 3" />
        <XAxis type="number" tickFormatter={numberTick} tick={TICK} stroke="var(--border)" allowDecimals={false} />
        <YAxis type="category" dataKey="label" tickFormatter={shortLabel} tick={TICK} stroke="var(--border)" width={128} />
        <Tooltip content={(p) => <BreakdownTip active={p.active} payload={p.payload} />} cursor={{ fill: "var(--bg-soft)" }} />
        <Legend wrapperStyle={{ fontSize: 13 }} itemSorter={null} />
        <Bar dataKey="prompt_tokens" name="Prompt" stackId="tokens" fill="var(--series-prompt)" isAnimationActive={animate} />
        <Bar
          dataKey="completion_tokens"
          name="Completion"
          stackId="tokens"
          fill="var(--series-completion)"
          isAnimationActive={animate}
        />
      </BarChart>
    </ChartFigure>
  );
}

// -- tables -------------------------------------------------------------------------------------

type SortKey = "label" | "requests" | "failed" | "prompt_tokens" | "completion_tokens" | "total_tokens";

const COLUMNS: { key: Exclude<SortKey, "label">; title: string }[] = [
  { key: "requests", title: "Requests" },
  { key: "failed", title: "Failed" },
  { key: "prompt_tokens", title: "Prompt tokens" },
  { key: "completion_tokens", title: "Completion tokens" },
  { key: "total_tokens", title: "Total tokens" },
];

function sortValue(row: BreakdownRow, key: SortKey): number | string {
  if (key === "label") return row.label.toLocaleLowerCase();
  if (key === "total_tokens") return totalTokens(row.bucket);
  return row.bucket[key];
}

function SortHeader({
  title,
  column,
  sort,
  onSort,
  numeric,
}: {
  title: string;
  column: SortKey;
  sort: { key: SortKey; desc: boolean };
  onSort: (key: SortKey) => void;
  numeric: boolean;
}) {
  const active = sort.key === column;
  return (
    <th scope="col" className={numeric ? "num" : undefined} aria-sort={active ? (sort.desc ? "descending" : "ascending") : "none"}>
      <button type="button" className="usage-sort" onClick={() => onSort(column)}>
        {title}
        <span aria-hidden="true" className="usage-sort-mark">
          {active ? (sort.desc ? "▼" : "▲") : ""}
        </span>
      </button>
    </th>
  );
}

/** Per model or per user: requests, failures and tokens, sortable, with the share of tokens. */
export function BreakdownTable({
  rows,
  keyTitle,
  caption,
  total,
  rowTestId,
  renderLabel,
}: {
  rows: BreakdownRow[];
  keyTitle: string;
  caption: string;
  total: UsageBucket;
  rowTestId: string;
  renderLabel?: (row: BreakdownRow) => ReactNode;
}) {
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: "total_tokens", desc: true });
  const sorted = useMemo(() => {
    const out = [...rows].sort((a, b) => {
      const x = sortValue(a, sort.key);
      const y = sortValue(b, sort.key);
      const order = typeof x === "string" && typeof y === "string" ? x.localeCompare(y) : Number(x) - Number(y);
      return sort.desc ? -order : order;
    });
    return out;
  }, [rows, sort]);
  const onSort = (key: SortKey) =>
    setSort((s) => (s.key === key ? { key, desc: !s.desc } : { key, desc: key !== "label" }));
  const grand = totalTokens(total);
  return (
    <div className="usage-table-wrap" role="region" aria-label={caption} tabIndex={0}>
      <table className="usage-table">
        <caption className="sr-only">{caption} (select a column heading to sort)</caption>
        <thead>
          <tr>
            <SortHeader title={keyTitle} column="label" sort={sort} onSort={onSort} numeric={false} />
            {COLUMNS.map((c) => (
              <SortHeader key={c.key} title={c.title} column={c.key} sort={sort} onSort={onSort} numeric />
            ))}
            <th scope="col" className="num">
              Share
            </th>
          </tr>
        </thead>
        <tbody>
          {sorted.map((row) => (
            <tr key={row.key} data-testid={rowTestId}>
              <th scope="row" className="usage-key">
                {renderLabel ? renderLabel(row) : row.label}
              </th>
              <td className="num">{fmtInt(row.bucket.requests)}</td>
              <td className="num">{fmtInt(row.bucket.failed)}</td>
              <td className="num">{fmtInt(row.bucket.prompt_tokens)}</td>
              <td className="num">{fmtInt(row.bucket.completion_tokens)}</td>
              <td className="num">{fmtInt(totalTokens(row.bucket))}</td>
              <td className="num">{fmtPercent(totalTokens(row.bucket), grand)}</td>
            </tr>
          ))}
        </tbody>
        <tfoot>
          <tr>
            <th scope="row">All</th>
            <td className="num">{fmtInt(total.requests)}</td>
            <td className="num">{fmtInt(total.failed)}</td>
            <td className="num">{fmtInt(total.prompt_tokens)}</td>
            <td className="num">{fmtInt(total.completion_tokens)}</td>
            <td className="num">{fmtInt(grand)}</td>
            <td className="num">{grand > 0 ? fmtPercent(1, 1) : "—"}</td>
          </tr>
        </tfoot>
      </table>
    </div>
  );
}

/** The per-day numbers behind the charts, for reading rather than looking (collapsed). */
export function DailyTable({ points }: { points: DayPoint[] }) {
  const active = points.filter((p) => p.requests > 0 || p.total_tokens > 0);
  return (
    <details className="usage-daily">
      <summary>Daily numbers as a table ({active.length} {active.length === 1 ? "day" : "days"} with usage)</summary>
      {active.length === 0 ? (
        <p className="muted">No usage on any day of this range.</p>
      ) : (
        <div className="usage-table-wrap" role="region" aria-label="Daily numbers" tabIndex={0}>
          <table className="usage-table">
            <thead>
              <tr>
                <th scope="col">Day (UTC)</th>
                <th scope="col" className="num">Requests</th>
                <th scope="col" className="num">Completed</th>
                <th scope="col" className="num">Failed</th>
                <th scope="col" className="num">Cancelled</th>
                <th scope="col" className="num">Prompt tokens</th>
                <th scope="col" className="num">Completion tokens</th>
                <th scope="col" className="num">Total tokens</th>
              </tr>
            </thead>
            <tbody>
              {active.map((p) => (
                <tr key={p.day}>
                  <th scope="row">
                    <time dateTime={p.day}>{fmtDay(p.day)}</time>
                  </th>
                  <td className="num">{fmtInt(p.requests)}</td>
                  <td className="num">{fmtInt(p.completed)}</td>
                  <td className="num">{fmtInt(p.failed)}</td>
                  <td className="num">{fmtInt(p.cancelled)}</td>
                  <td className="num">{fmtInt(p.prompt_tokens)}</td>
                  <td className="num">{fmtInt(p.completion_tokens)}</td>
                  <td className="num">{fmtInt(p.total_tokens)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      )}
    </details>
  );
}

// -- CSV ----------------------------------------------------------------------------------------

const GROUP_LABEL: Record<UsageGroup, string> = { day: "One row per day", model: "One row per model", user: "One row per user" };

/** "Download CSV" of the report over `range`, grouped as chosen (the edge names the file). */
export function UsageDownload({
  base,
  range,
  groups,
  disabled = false,
}: {
  base: "/v1/usage" | "/v1/admin/usage";
  range: DateRange;
  groups: UsageGroup[];
  disabled?: boolean;
}) {
  const id = useId();
  const [group, setGroup] = useState<UsageGroup>(groups[0] ?? "day");
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const prefix = base === "/v1/usage" ? "usage" : "platform-usage";
  const run = async () => {
    setBusy(true);
    setError(null);
    try {
      const params = new URLSearchParams({ since: range.since, until: range.until, group_by: group, format: "csv" });
      await download(`${base}?${params.toString()}`, `${prefix}-${range.since}-${range.until}-by-${group}.csv`);
    } catch (caught) {
      setError(describeError(caught));
    } finally {
      setBusy(false);
    }
  };
  return (
    <div className="usage-download">
      {groups.length > 1 && (
        <label className="usage-inline-label" htmlFor={`${id}-group`}>
          <span>CSV rows</span>
          <select id={`${id}-group`} value={group} onChange={(e) => setGroup(e.target.value as UsageGroup)}>
            {groups.map((g) => (
              <option key={g} value={g}>
                {GROUP_LABEL[g]}
              </option>
            ))}
          </select>
        </label>
      )}
      <button type="button" onClick={() => void run()} disabled={disabled || busy} aria-busy={busy}>
        {busy ? "Downloading…" : "Download CSV"}
      </button>
      {error !== null && (
        <p className="notice error" role="alert">
          {error}
        </p>
      )}
    </div>
  );
}
