import { useId, useState } from "react";
import { useTranslation } from "react-i18next";

import { ErrorNotice } from "../components/Notices";
import { download } from "../lib/api";
import { useAction, usagePath, type DateRange, type UsageBase, type UsageGroup } from "./usageData";

const GROUP_LABEL = {
  day: "usage.perDay",
  model: "usage.perModel",
  user: "usage.perUser",
} as const satisfies Record<UsageGroup, string>;

/** "Download CSV" of the report over `range`, grouped as chosen (the edge names the file). */
export function UsageDownload({ base, range, groups }: { base: UsageBase; range: DateRange; groups: UsageGroup[] }) {
  const { t } = useTranslation();
  const id = useId();
  const [group, setGroup] = useState<UsageGroup>(groups[0] ?? "day");
  const saving = useAction<true>();
  const busy = saving.running !== null;
  const prefix = base === "/v1/usage" ? "usage" : "platform-usage";
  const run = () =>
    saving.run(true, () =>
      download(
        usagePath(base, range, group, { format: "csv" }),
        `${prefix}-${range.since}-${range.until}-by-${group}.csv`,
      ),
    );
  return (
    <div className="usage-download">
      {groups.length > 1 && (
        <label className="usage-inline-label" htmlFor={`${id}-group`}>
          <span>{t("usage.csvRows")}</span>
          <select id={`${id}-group`} value={group} onChange={(e) => setGroup(e.target.value as UsageGroup)}>
            {groups.map((g) => (
              <option key={g} value={g}>
                {t(GROUP_LABEL[g])}
              </option>
            ))}
          </select>
        </label>
      )}
      <button type="button" onClick={() => void run()} disabled={busy} aria-busy={busy}>
        {busy ? t("usage.downloading") : t("usage.download")}
      </button>
      <ErrorNotice error={saving.error} />
    </div>
  );
}
