import { useId, type ChangeEvent } from "react";
import { useTranslation } from "react-i18next";

import { fmtDay, lastDays, type DateRange, type RangeState } from "./usageData";

const PRESETS = [7, 30, 90] as const;

/** The usage pages' From/To dates, with quick ranges; the dates are checked as they are typed. */
export function UsageRangePicker({ state, label }: { state: RangeState; label?: string }) {
  const { t } = useTranslation();
  const id = useId();
  const { draft, setDraft, applied, error, choose } = state;
  const errorId = `${id}-error`;
  const hintId = `${id}-hint`;
  // One end of the range: its field of the draft, described by the shared hint or error.
  const dateInput = (field: keyof DateRange) => ({
    type: "date",
    name: field,
    value: draft[field],
    required: true,
    "aria-invalid": error !== null,
    "aria-describedby": error !== null ? errorId : hintId,
    onChange: (e: ChangeEvent<HTMLInputElement>) => setDraft({ ...draft, [field]: e.target.value }),
  });
  return (
    <fieldset className="usage-range">
      <legend className="sr-only">{label ?? t("range.label")}</legend>
      <label>
        {t("range.from")}
        <input max={draft.until || undefined} {...dateInput("since")} />
      </label>
      <label>
        {t("range.to")}
        <input min={draft.since || undefined} {...dateInput("until")} />
      </label>
      <div className="usage-presets" role="group" aria-label={t("range.quick")}>
        {PRESETS.map((days) => {
          const range = lastDays(days);
          const active = error === null && applied.since === range.since && applied.until === range.until;
          return (
            <button key={days} type="button" aria-pressed={active} onClick={() => choose(range)}>
              {t("range.lastDays", { count: days })}
            </button>
          );
        })}
      </div>
      {error !== null ? (
        <p id={errorId} className="usage-field-error" role="alert">
          {error}
        </p>
      ) : (
        <p id={hintId} className="muted usage-hint">
          {t("range.hint")}
        </p>
      )}
    </fieldset>
  );
}

/** The range on show in words, with "updating…" while a newer answer loads; `live` reads changes out. */
export function RangeSummary({
  range,
  updating,
  live = false,
}: {
  range: DateRange;
  updating: boolean;
  live?: boolean;
}) {
  const { t } = useTranslation();
  return (
    <p className="usage-range-text" aria-live={live ? "polite" : undefined}>
      {t("range.text", { since: fmtDay(range.since), until: fmtDay(range.until) })}
      {updating && <span className="muted">{t("range.updating")}</span>}
    </p>
  );
}
