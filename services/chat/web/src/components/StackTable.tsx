import type { ReactNode } from "react";
import { useTranslation } from "react-i18next";

/**
 * A list with a column of buttons, shown as one card per row on phones (pages.css:
 * `.data-table.stack`). The explicit roles keep it a table for screen readers once CSS changes
 * its display; each cell's `data-label` names its column on a card.
 */
export function StackTable({
  className,
  caption,
  columns,
  children,
}: {
  className: string;
  caption: string;
  columns: string[];
  /** The rows: `<tr role="row">` with `<td role="cell" data-label=…>`, the buttons last. */
  children: ReactNode;
}) {
  const { t } = useTranslation();
  return (
    <table className={`data-table stack ${className}`} role="table">
      <caption className="sr-only">{caption}</caption>
      <thead role="rowgroup">
        <tr role="row">
          {columns.map((column) => (
            <th key={column} scope="col" role="columnheader">
              {column}
            </th>
          ))}
          <th scope="col" role="columnheader">
            <span className="sr-only">{t("common.actions")}</span>
          </th>
        </tr>
      </thead>
      <tbody role="rowgroup">{children}</tbody>
    </table>
  );
}
