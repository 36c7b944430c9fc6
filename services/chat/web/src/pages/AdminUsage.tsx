import { useMemo, useState } from "react";
import { useTranslation } from "react-i18next";

import { LoadStatus } from "../components/Notices";
import type { User } from "../lib/api";
import type { UsageReport } from "../lib/types";
import { TokensPerDayChart } from "./usageCharts";
import { UsageDownload } from "./UsageDownload";
import { RangeSummary, UsageRangePicker } from "./UsageRangePicker";
import { BreakdownTable, UsageTotals } from "./usageTables";
import { lastDays, useDailyUsage, useDateRange, useJson, usagePath, type BreakdownRow } from "./usageData";

/** Everyone's usage over a date range: totals, tokens per day, and a table by user. */
export function AdminUsage() {
  const { t } = useTranslation();
  const [initial] = useState(() => lastDays());
  const rangeState = useDateRange(initial);
  const range = rangeState.applied;
  const { byDay, points } = useDailyUsage("/v1/admin/usage", range);
  const byUser = useJson<UsageReport>(usagePath("/v1/admin/usage", range, "user"));
  // Emails for the per-user table (the report names users by id).
  const directory = useJson<{ users: User[]; total: number }>("/v1/admin/users?limit=1000&offset=0");

  const rows = useMemo<BreakdownRow[]>(() => {
    const emails = new Map((directory.data?.users ?? []).map((u) => [u.id, u.email]));
    return (byUser.data?.data ?? []).map((bucket) => {
      const id = bucket.user_id ?? "";
      return { key: id, label: emails.get(id) ?? id, bucket };
    });
  }, [byUser.data, directory.data]);

  return (
    <section id="admin-usage" aria-labelledby="admin-usage-title" className="admin-section">
      <div className="admin-section-head">
        <h2 id="admin-usage-title">{t("adminUsage.title")}</h2>
        <UsageDownload base="/v1/admin/usage" range={range} groups={["day", "model", "user"]} />
      </div>
      <UsageRangePicker state={rangeState} label={t("adminUsage.rangeLabel")} />
      <div aria-busy={byDay.loading}>
        <LoadStatus load={byDay} failed={t("adminUsage.loadFailed")} loading={t("adminUsage.loading")} />
        {byDay.data !== null && (
          <>
            <RangeSummary range={range} updating={byDay.loading} />
            <UsageTotals total={byDay.data.total} />
            <TokensPerDayChart points={points} caption={t("adminUsage.tokensAll")} />
          </>
        )}
      </div>

      <h3>{t("adminUsage.byUser")}</h3>
      <div aria-busy={byUser.loading}>
        <LoadStatus load={byUser} failed={t("adminUsage.byUserFailed")} loading={t("common.loading")} />
        {byUser.data !== null &&
          (rows.length === 0 ? (
            <p className="muted">{t("adminUsage.nobody")}</p>
          ) : (
            <BreakdownTable
              rows={rows}
              keyTitle={t("adminUsage.user")}
              caption={t("adminUsage.byUserCaption")}
              total={byUser.data.total}
              rowTestId="admin-usage-user-row"
              renderLabel={(row) =>
                row.label !== row.key ? (
                  <span title={t("adminUsage.userId", { id: row.key })}>{row.label}</span>
                ) : (
                  <code title={t("adminUsage.noAccount")}>{row.key}</code>
                )
              }
            />
          ))}
      </div>
    </section>
  );
}
