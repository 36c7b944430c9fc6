/** The usage pages' numbers as text: the totals, the sortable per-model or per-user breakdown, and the per-day table. */
import { useMemo, useState, type ReactNode } from "react";

import type { UsageBucket } from "../lib/types";
import { fmtDay, fmtInt, fmtPercent, totalTokens, type BreakdownRow, type DayPoint } from "./usageData";

/** Requests (and how many failed or were cancelled) and tokens over the whole range. */
export function UsageTotals({ total }: { total: UsageBucket }) {
  const problems = [
    total.failed > 0 ? `${fmtInt(total.failed)} failed` : null,
    total.cancelled > 0 ? `${fmtInt(total.cancelled)} cancelled` : null,
  ].filter((part): part is string => part !== null);
  return (
    <dl className="usage-totals" data-testid="usage-totals">
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
      <summary>
        Daily numbers as a table ({active.length} {active.length === 1 ? "day" : "days"} with usage)
      </summary>
      {active.length === 0 ? (
        <p className="muted">No usage on any day of this range.</p>
      ) : (
        <div className="usage-table-wrap" role="region" aria-label="Daily numbers" tabIndex={0}>
          <table className="usage-table">
            <thead>
              <tr>
                <th scope="col">Day (UTC)</th>
                <th scope="col" className="num">
                  Requests
                </th>
                <th scope="col" className="num">
                  Completed
                </th>
                <th scope="col" className="num">
                  Failed
                </th>
                <th scope="col" className="num">
                  Cancelled
                </th>
                <th scope="col" className="num">
                  Prompt tokens
                </th>
                <th scope="col" className="num">
                  Completion tokens
                </th>
                <th scope="col" className="num">
                  Total tokens
                </th>
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
