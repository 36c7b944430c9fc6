/**
 * The usage pages' charts: tokens and requests per day, and tokens per model or user. All three
 * are stacked bars drawn by one component; they differ in their series and axes.
 *
 * Colours come from the theme's CSS variables (see pages.css: --series-*), so both themes apply.
 */
import { useMemo, useSyncExternalStore, type ReactElement } from "react";
import { useTranslation } from "react-i18next";
import { Bar, BarChart, CartesianGrid, Legend, ResponsiveContainer, Tooltip, XAxis, YAxis } from "recharts";

import { fmtCompact, fmtDay, fmtInt, totalTokens, type BreakdownRow, type DayPoint } from "./usageData";

const TICK = { fill: "var(--fg-muted)", fontSize: 12 };
const DAY_CHART_HEIGHT = 260;
/** The breakdown chart shows this many rows at most, the largest. */
const BREAKDOWN_MAX = 12;

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

type SeriesName =
  | "usage.prompt"
  | "usage.completion"
  | "usage.total"
  | "usage.completed"
  | "usage.failed"
  | "usage.cancelled"
  | "usage.other"
  | "usage.requests";

type NumberKey<T> = { [K in keyof T]: T[K] extends number ? K : never }[keyof T] & string;

/** One part of a stacked bar. */
interface Series<T> {
  key: NumberKey<T>;
  /** In the legend and the tooltip (a catalog key). */
  name: SeriesName;
  /** The colour: `--series-<swatch>` on the bar, `.usage-swatch.<swatch>` in the tooltip. */
  swatch: string;
  /** Drawn only where it is not zero: in the chart when some bar has it, in a bar's tooltip when that bar has it. */
  optional?: boolean;
}

/** What a chart stacks, the sum its tooltip ends with, and the tooltip's title for a bar. */
interface Stack<T> {
  series: readonly Series<T>[];
  total: { key: NumberKey<T>; name: SeriesName };
  title: (point: T) => string;
}

interface TokenSplit {
  prompt_tokens: number;
  completion_tokens: number;
  total_tokens: number;
}

// `as const` rather than a Series<TokenSplit>[] type: its literal keys then serve DayPoint and
// BreakdownPoint too (TypeScript takes Series<T> as invariant in T).
const TOKEN_SERIES = [
  { key: "prompt_tokens", name: "usage.prompt", swatch: "prompt" },
  { key: "completion_tokens", name: "usage.completion", swatch: "completion" },
] as const satisfies readonly Series<TokenSplit>[];
const TOKEN_TOTAL = { key: "total_tokens", name: "usage.total" } as const;

const DAY_TOKENS: Stack<DayPoint> = { series: TOKEN_SERIES, total: TOKEN_TOTAL, title: (p) => fmtDay(p.day) };

const DAY_REQUESTS: Stack<DayPoint> = {
  series: [
    { key: "completed", name: "usage.completed", swatch: "completed" },
    { key: "failed", name: "usage.failed", swatch: "failed" },
    { key: "cancelled", name: "usage.cancelled", swatch: "cancelled" },
    { key: "other", name: "usage.other", swatch: "other", optional: true },
  ],
  total: { key: "requests", name: "usage.requests" },
  title: (p) => fmtDay(p.day),
};

interface BreakdownPoint extends TokenSplit {
  label: string;
}

const LABEL_TOKENS: Stack<BreakdownPoint> = { series: TOKEN_SERIES, total: TOKEN_TOTAL, title: (p) => p.label };

function valueOf<T>(point: T, key: NumberKey<T>): number {
  return point[key] as number;
}

/** The series worth showing for `points` (an optional one only where it is not zero). */
function present<T>(series: readonly Series<T>[], points: T[]): Series<T>[] {
  return series.filter((s) => s.optional !== true || points.some((p) => valueOf(p, s.key) > 0));
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

interface TipProps {
  active?: boolean;
  payload?: ReadonlyArray<{ payload?: unknown }>;
}

/** The hovered (or keyboard-focused) bar's parts and their sum. */
function StackTip<T>({ active, payload, stack }: TipProps & { stack: Stack<T> }) {
  const { t } = useTranslation();
  const point = active === true ? (payload?.[0]?.payload as T | undefined) : undefined;
  if (point === undefined) return null;
  return (
    <div className="usage-tip">
      <div className="usage-tip-title">{stack.title(point)}</div>
      {present(stack.series, [point]).map((s) => (
        <TipRow key={s.key} swatch={s.swatch} label={t(s.name)} value={valueOf(point, s.key)} />
      ))}
      <TipRow label={t(stack.total.name)} value={valueOf(point, stack.total.key)} />
    </div>
  );
}

function dayTick(value: unknown): string {
  return fmtDay(String(value), "short");
}

function numberTick(value: unknown): string {
  return typeof value === "number" ? fmtCompact(value) : String(value);
}

function shortLabel(value: unknown): string {
  const text = String(value);
  return text.length > 18 ? `${text.slice(0, 17)}…` : text;
}

function ChartFigure({
  caption,
  height,
  testId,
  children,
}: {
  caption: string;
  height: number;
  testId: string;
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

/**
 * Stacked bars, one per day along the bottom, or with `byLabel` one per row label down the side
 * (the labels are `label`, too long ones shortened).
 */
function StackedBarChart<T>({
  caption,
  testId,
  height,
  points,
  stack,
  byLabel = false,
}: {
  caption: string;
  testId: string;
  height: number;
  points: T[];
  stack: Stack<T>;
  byLabel?: boolean;
}) {
  const animate = useAnimate();
  const { t } = useTranslation();
  return (
    <ChartFigure caption={caption} height={height} testId={testId}>
      <BarChart
        data={points}
        layout={byLabel ? "vertical" : "horizontal"}
        margin={{ top: 8, right: byLabel ? 16 : 8, bottom: 0, left: 0 }}
        title={caption}
        // recharts' accessibility layer: the focused chart moves its tooltip with the arrow keys.
        desc={t("usage.chartKeysHint")}
      >
        {byLabel ? (
          <>
            <CartesianGrid horizontal={false} stroke="var(--border)" strokeDasharray="3 3" />
            <XAxis type="number" tickFormatter={numberTick} tick={TICK} stroke="var(--border)" allowDecimals={false} />
            <YAxis
              type="category"
              dataKey="label"
              tickFormatter={shortLabel}
              tick={TICK}
              stroke="var(--border)"
              width={128}
            />
          </>
        ) : (
          <>
            <CartesianGrid vertical={false} stroke="var(--border)" strokeDasharray="3 3" />
            <XAxis dataKey="day" tickFormatter={dayTick} tick={TICK} stroke="var(--border)" minTickGap={14} />
            <YAxis tickFormatter={numberTick} tick={TICK} stroke="var(--border)" width={48} allowDecimals={false} />
          </>
        )}
        <Tooltip
          content={(p) => <StackTip active={p.active} payload={p.payload} stack={stack} />}
          cursor={{ fill: "var(--bg-soft)" }}
        />
        <Legend wrapperStyle={{ fontSize: 13 }} itemSorter={null} />
        {present(stack.series, points).map((s) => (
          <Bar
            key={s.key}
            dataKey={s.key}
            name={t(s.name)}
            stackId="stack"
            fill={`var(--series-${s.swatch})`}
            isAnimationActive={animate}
          />
        ))}
      </BarChart>
    </ChartFigure>
  );
}

/** Tokens per day, prompt and completion stacked. */
export function TokensPerDayChart({ points, caption }: { points: DayPoint[]; caption?: string }) {
  const { t } = useTranslation();
  return (
    <StackedBarChart
      caption={caption ?? t("usage.tokensPerDay")}
      testId="usage-tokens-chart"
      height={DAY_CHART_HEIGHT}
      points={points}
      stack={DAY_TOKENS}
    />
  );
}

/** Requests per day, by how they ended. */
export function RequestsPerDayChart({ points }: { points: DayPoint[] }) {
  const { t } = useTranslation();
  return (
    <StackedBarChart
      caption={t("usage.requestsPerDay")}
      testId="usage-requests-chart"
      height={DAY_CHART_HEIGHT}
      points={points}
      stack={DAY_REQUESTS}
    />
  );
}

/** Tokens per model (or user), largest first, as horizontal stacked bars. */
export function BreakdownChart({ rows, caption }: { rows: BreakdownRow[]; caption: string }) {
  const points = useMemo<BreakdownPoint[]>(
    () =>
      [...rows]
        .sort((a, b) => totalTokens(b.bucket) - totalTokens(a.bucket))
        .slice(0, BREAKDOWN_MAX)
        .map((row) => ({
          label: row.label,
          prompt_tokens: row.bucket.prompt_tokens,
          completion_tokens: row.bucket.completion_tokens,
          total_tokens: totalTokens(row.bucket),
        })),
    [rows],
  );
  return (
    <StackedBarChart
      caption={caption}
      testId="usage-breakdown-chart"
      height={Math.max(140, points.length * 36 + 70)}
      points={points}
      stack={LABEL_TOKENS}
      byLabel
    />
  );
}
