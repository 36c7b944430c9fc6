import { useCallback, useMemo, useState } from "react";
import { useSearchParams } from "react-router";

import type { UsageReport } from "../lib/types";
import {
  BreakdownChart,
  BreakdownTable,
  DailyTable,
  RequestsPerDayChart,
  TokensPerDayChart,
  UsageDownload,
  UsageRangePicker,
  UsageTotals,
  type BreakdownRow,
} from "./usageCharts";
import { fillDays, fmtDay, lastDays, rangeError, useDateRange, useJson, usagePath, type DateRange } from "./usageData";

/** The range in the address (`?since=&until=`) when valid, so a reload or a shared link keeps it. */
function rangeFromParams(params: URLSearchParams): DateRange {
  const range = { since: params.get("since") ?? "", until: params.get("until") ?? "" };
  return rangeError(range) === null ? range : lastDays();
}

export default function UsagePage() {
  const [params, setParams] = useSearchParams();
  const [initial] = useState(() => rangeFromParams(params));
  const onApply = useCallback(
    (range: DateRange) => setParams({ since: range.since, until: range.until }, { replace: true }),
    [setParams],
  );
  const rangeState = useDateRange(initial, onApply);
  const range = rangeState.applied;

  const byDay = useJson<UsageReport>(usagePath("/v1/usage", range, "day"));
  const byModel = useJson<UsageReport>(usagePath("/v1/usage", range, "model"));

  const points = useMemo(() => (byDay.data === null ? [] : fillDays(byDay.data.data, range)), [byDay.data, range]);
  const models = useMemo<BreakdownRow[]>(
    () =>
      (byModel.data?.data ?? []).map((bucket) => ({
        key: bucket.model ?? "",
        label: bucket.model ?? "(unknown model)",
        bucket,
      })),
    [byModel.data],
  );
  const rangeText = `${fmtDay(range.since)} – ${fmtDay(range.until)}`;
  const empty = byDay.data !== null && byDay.data.total.requests === 0;

  return (
    <main className="page usage-page">
      <div className="inner">
        <div className="usage-head">
          <h1>Usage</h1>
          <UsageDownload base="/v1/usage" range={range} groups={["day", "model"]} />
        </div>
        <p className="muted">Your requests and tokens, counted on the UTC day each request ended.</p>

        <UsageRangePicker state={rangeState} />

        <section aria-labelledby="usage-overview" aria-busy={byDay.loading}>
          <h2 id="usage-overview" className="sr-only">
            Overview
          </h2>
          {byDay.error !== null && (
            <div className="notice error usage-error" role="alert">
              <span>Usage could not be loaded: {byDay.error}</span>
              <button type="button" onClick={byDay.reload}>
                Try again
              </button>
            </div>
          )}
          {byDay.data === null && byDay.error === null && (
            <p className="muted" role="status">
              Loading usage…
            </p>
          )}
          {byDay.data !== null && (
            <>
              <p className="usage-range-text" aria-live="polite">
                {rangeText}
                {byDay.loading && <span className="muted"> · updating…</span>}
              </p>
              <UsageTotals total={byDay.data.total} />
              {empty && (
                <p className="notice info" role="status">
                  No requests in this range.
                </p>
              )}
              <div className="usage-charts">
                <TokensPerDayChart points={points} />
                <RequestsPerDayChart points={points} />
              </div>
              <DailyTable points={points} />
            </>
          )}
        </section>

        <section aria-labelledby="usage-models" aria-busy={byModel.loading}>
          <h2 id="usage-models">By model</h2>
          {byModel.error !== null && (
            <div className="notice error usage-error" role="alert">
              <span>The per-model breakdown could not be loaded: {byModel.error}</span>
              <button type="button" onClick={byModel.reload}>
                Try again
              </button>
            </div>
          )}
          {byModel.data === null && byModel.error === null && (
            <p className="muted" role="status">
              Loading…
            </p>
          )}
          {byModel.data !== null &&
            (models.length === 0 ? (
              <p className="muted">No model was used in this range.</p>
            ) : (
              <div className="usage-breakdown">
                <BreakdownTable
                  rows={models}
                  keyTitle="Model"
                  caption="Usage by model"
                  total={byModel.data.total}
                  rowTestId="usage-model-row"
                />
                {models.length > 1 && <BreakdownChart rows={models} caption="Tokens by model" />}
              </div>
            ))}
        </section>
      </div>
    </main>
  );
}
