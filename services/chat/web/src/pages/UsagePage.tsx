import { useCallback, useMemo, useState } from "react";
import { useTranslation } from "react-i18next";
import { useSearchParams } from "react-router";

import { LoadStatus } from "../components/Notices";
import type { UsageReport } from "../lib/types";
import { BreakdownChart, RequestsPerDayChart, TokensPerDayChart } from "./usageCharts";
import { UsageDownload } from "./UsageDownload";
import { RangeSummary, UsageRangePicker } from "./UsageRangePicker";
import { BreakdownTable, DailyTable, UsageTotals } from "./usageTables";
import {
  lastDays,
  rangeError,
  useDailyUsage,
  useDateRange,
  useJson,
  usagePath,
  type BreakdownRow,
  type DateRange,
} from "./usageData";

/** The range in the address (`?since=&until=`) when valid, so a reload or a shared link keeps it. */
function rangeFromParams(params: URLSearchParams): DateRange {
  const range = { since: params.get("since") ?? "", until: params.get("until") ?? "" };
  return rangeError(range) === null ? range : lastDays();
}

export default function UsagePage() {
  const { t } = useTranslation();
  const [params, setParams] = useSearchParams();
  const [initial] = useState(() => rangeFromParams(params));
  const onApply = useCallback(
    (range: DateRange) => setParams({ since: range.since, until: range.until }, { replace: true }),
    [setParams],
  );
  const rangeState = useDateRange(initial, onApply);
  const range = rangeState.applied;

  const { byDay, points } = useDailyUsage("/v1/usage", range);
  const byModel = useJson<UsageReport>(usagePath("/v1/usage", range, "model"));
  const models = useMemo<BreakdownRow[]>(
    () =>
      (byModel.data?.data ?? []).map((bucket) => ({
        key: bucket.model ?? "",
        label: bucket.model ?? t("usage.unknownModel"),
        bucket,
      })),
    [byModel.data, t],
  );
  const empty = byDay.data !== null && byDay.data.total.requests === 0;

  return (
    <main className="page usage-page">
      <div className="inner">
        <div className="usage-head">
          <h1>{t("usage.title")}</h1>
          <UsageDownload base="/v1/usage" range={range} groups={["day", "model"]} />
        </div>
        <p className="muted">{t("usage.intro")}</p>

        <UsageRangePicker state={rangeState} />

        <section aria-labelledby="usage-overview" aria-busy={byDay.loading}>
          <h2 id="usage-overview" className="sr-only">
            {t("usage.overview")}
          </h2>
          <LoadStatus load={byDay} failed={t("usage.loadFailed")} loading={t("usage.loading")} />
          {byDay.data !== null && (
            <>
              <RangeSummary range={range} updating={byDay.loading} live />
              <UsageTotals total={byDay.data.total} />
              {empty && (
                <p className="notice info" role="status">
                  {t("usage.noRequests")}
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
          <h2 id="usage-models">{t("usage.byModel")}</h2>
          <LoadStatus load={byModel} failed={t("usage.byModelFailed")} loading={t("common.loading")} />
          {byModel.data !== null &&
            (models.length === 0 ? (
              <p className="muted">{t("usage.noModel")}</p>
            ) : (
              <div className="usage-breakdown">
                <BreakdownTable
                  rows={models}
                  keyTitle={t("usage.model")}
                  caption={t("usage.byModelCaption")}
                  total={byModel.data.total}
                  rowTestId="usage-model-row"
                />
                {models.length > 1 && <BreakdownChart rows={models} caption={t("usage.tokensByModel")} />}
              </div>
            ))}
        </section>
      </div>
    </main>
  );
}
