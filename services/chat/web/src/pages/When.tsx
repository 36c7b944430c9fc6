import { fmtDateTime, isoOf } from "./usageData";

/** A timestamp in a table cell: short, with the full date and time on hover; `empty` when there is none. */
export function When({ value, empty }: { value: string | null | undefined; empty: string }) {
  if (value === null || value === undefined) return <span className="muted">{empty}</span>;
  return (
    <time dateTime={isoOf(value)} title={fmtDateTime(value, "full")}>
      {fmtDateTime(value)}
    </time>
  );
}
