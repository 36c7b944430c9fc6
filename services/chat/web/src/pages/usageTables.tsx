/** The usage pages' numbers as text: the totals, the sortable per-model or per-user breakdown, and the per-day table. */
import { useMemo, useState, type ReactNode } from "react";
import { useTranslation } from "react-i18next";

import type { UsageBucket } from "../lib/types";
import { fmtDay, fmtInt, fmtPercent, totalTokens, type BreakdownRow, type DayPoint } from "./usageData";

/** Requests (and how many failed or were cancelled) and tokens over the whole range. */
export function UsageTotals({ total }: { total: UsageBucket }) {
  const { t } = useTranslation();
  const parts = [
    t("usage.completedCount", { count: total.completed }),
    total.failed > 0 ? t("usage.failedCount", { count: total.failed }) : null,
    total.cancelled > 0 ? t("usage.cancelledCount", { count: total.cancelled }) : null,
  ].filter((part): part is string => part !== null);
  return (
    <dl className="usage-totals" data-testid="usage-totals">
      <div>
        <dt>{t("usage.requests")}</dt>
        <dd className="usage-total-value">{fmtInt(total.requests)}</dd>
        <dd className="muted usage-total-sub">{parts.join(", ")}</dd>
      </div>
      <div>
        <dt>{t("usage.promptTokens")}</dt>
        <dd className="usage-total-value">{fmtInt(total.prompt_tokens)}</dd>
      </div>
      <div>
        <dt>{t("usage.completionTokens")}</dt>
        <dd className="usage-total-value">{fmtInt(total.completion_tokens)}</dd>
      </div>
      <div>
        <dt>{t("usage.totalTokens")}</dt>
        <dd className="usage-total-value">{fmtInt(totalTokens(total))}</dd>
      </div>
    </dl>
  );
}

type SortKey = "label" | "requests" | "failed" | "prompt_tokens" | "completion_tokens" | "total_tokens";

const COLUMNS = [
  { key: "requests", title: "usage.requests" },
  { key: "failed", title: "usage.failed" },
  { key: "prompt_tokens", title: "usage.promptTokens" },
  { key: "completion_tokens", title: "usage.completionTokens" },
  { key: "total_tokens", title: "usage.totalTokens" },
] as const satisfies { key: Exclude<SortKey, "label">; title: string }[];

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
    <th
      scope="col"
      className={numeric ? "num" : undefined}
      aria-sort={active ? (sort.desc ? "descending" : "ascending") : "none"}
    >
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
  const { t } = useTranslation();
  const [sort, setSort] = useState<{ key: SortKey; desc: boolean }>({ key: "total_tokens", desc: true });
  const sorted = useMemo(
    () =>
      [...rows].sort((a, b) => {
        const x = sortValue(a, sort.key);
        const y = sortValue(b, sort.key);
        const order = typeof x === "string" && typeof y === "string" ? x.localeCompare(y) : Number(x) - Number(y);
        return sort.desc ? -order : order;
      }),
    [rows, sort],
  );
  const onSort = (key: SortKey) =>
    setSort((s) => (s.key === key ? { key, desc: !s.desc } : { key, desc: key !== "label" }));
  const grand = totalTokens(total);
  return (
    <div className="usage-table-wrap" role="region" aria-label={caption} tabIndex={0}>
      <table className="usage-table">
        <caption className="sr-only">{t("usage.sortHint", { caption })}</caption>
        <thead>
          <tr>
            <SortHeader title={keyTitle} column="label" sort={sort} onSort={onSort} numeric={false} />
            {COLUMNS.map((c) => (
              <SortHeader key={c.key} title={t(c.title)} column={c.key} sort={sort} onSort={onSort} numeric />
            ))}
            <th scope="col" className="num">
              {t("usage.share")}
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
            <th scope="row">{t("usage.all")}</th>
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
  const { t } = useTranslation();
  const active = points.filter((p) => p.requests > 0 || p.total_tokens > 0);
  const columns = [
    "usage.requests",
    "usage.completed",
    "usage.failed",
    "usage.cancelled",
    "usage.promptTokens",
    "usage.completionTokens",
    "usage.totalTokens",
  ] as const;
  return (
    <details className="usage-daily">
      <summary>{t("usage.dailySummary", { count: active.length })}</summary>
      {active.length === 0 ? (
        <p className="muted">{t("usage.noDaily")}</p>
      ) : (
        <div className="usage-table-wrap" role="region" aria-label={t("usage.dailyNumbers")} tabIndex={0}>
          <table className="usage-table">
            <thead>
              <tr>
                <th scope="col">{t("usage.dayUtc")}</th>
                {columns.map((key) => (
                  <th key={key} scope="col" className="num">
                    {t(key)}
                  </th>
                ))}
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
