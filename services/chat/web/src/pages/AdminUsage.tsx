import { useMemo, useState } from "react";

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
        <h2 id="admin-usage-title">Platform usage</h2>
        <UsageDownload base="/v1/admin/usage" range={range} groups={["day", "model", "user"]} />
      </div>
      <UsageRangePicker state={rangeState} label="Platform usage date range" />
      <div aria-busy={byDay.loading}>
        <LoadStatus load={byDay} failed="Platform usage could not be loaded" loading="Loading platform usage…" />
        {byDay.data !== null && (
          <>
            <RangeSummary range={range} updating={byDay.loading} />
            <UsageTotals total={byDay.data.total} />
            <TokensPerDayChart points={points} caption="Tokens per day, all users" />
          </>
        )}
      </div>

      <h3>By user</h3>
      <div aria-busy={byUser.loading}>
        <LoadStatus load={byUser} failed="The per-user breakdown could not be loaded" loading="Loading…" />
        {byUser.data !== null &&
          (rows.length === 0 ? (
            <p className="muted">Nobody used the platform in this range.</p>
          ) : (
            <BreakdownTable
              rows={rows}
              keyTitle="User"
              caption="Usage by user"
              total={byUser.data.total}
              rowTestId="admin-usage-user-row"
              renderLabel={(row) =>
                row.label !== row.key ? (
                  <span title={`User id ${row.key}`}>{row.label}</span>
                ) : (
                  <code title="No account with this id on record">{row.key}</code>
                )
              }
            />
          ))}
      </div>
    </section>
  );
}
