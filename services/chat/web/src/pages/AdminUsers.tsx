import { useState } from "react";
import { useTranslation } from "react-i18next";

import { ConfirmButton, useConfirmRows, type ConfirmWords } from "../components/ConfirmButton";
import { ErrorNotice, LoadStatus } from "../components/Notices";
import { StackTable } from "../components/StackTable";
import { session, type User } from "../lib/api";
import { fmtInt, useAction, useJson } from "./usageData";
import { When } from "./When";

const USERS_PAGE = 100;

/** Every account, a page at a time, with disabling (asked first) and enabling; `me` cannot disable itself. */
export function AdminUsers({ me }: { me: User }) {
  const { t } = useTranslation();
  const disableWords: ConfirmWords = {
    action: t("users.disableAction"),
    asking: t("users.disableAsking"),
    question: t("users.disableQuestion"),
    yes: t("users.disableYes"),
    busy: t("users.disableBusy"),
  };
  const [offset, setOffset] = useState(0);
  const page = useJson<{ users: User[]; total: number }>(`/v1/admin/users?limit=${USERS_PAGE}&offset=${offset}`);
  /** Users changed here since the page loaded (the PATCH answers), over the list's copies. */
  const [changed, setChanged] = useState<Record<string, User>>({});
  const toggle = useAction<string>();
  const confirm = useConfirmRows(toggle.clearError);
  const [status, setStatus] = useState("");

  const users = (page.data?.users ?? []).map((u) => changed[u.id] ?? u);
  const total = page.data?.total ?? 0;

  const setDisabled = (target: User, disabled: boolean) =>
    toggle.run(target.id, async () => {
      const updated = await session.json<User>(`/v1/admin/users/${encodeURIComponent(target.id)}`, {
        method: "PATCH",
        body: JSON.stringify({ disabled }),
      });
      setChanged((c) => ({ ...c, [updated.id]: updated }));
      // The row's other button replaces the one just used: the focus goes there.
      confirm.close(target.id);
      setStatus(t(updated.disabled ? "users.disabledStatus" : "users.enabledStatus", { email: updated.email }));
    });

  const first = total === 0 ? 0 : offset + 1;
  const last = Math.min(offset + USERS_PAGE, total);
  return (
    <section id="admin-users" aria-labelledby="admin-users-title" className="admin-section" aria-busy={page.loading}>
      <div className="admin-section-head">
        <h2 id="admin-users-title">
          {t("users.title")}
          {page.data !== null && <span className="muted admin-count"> ({fmtInt(total)})</span>}
        </h2>
      </div>
      <p className="sr-only" role="status" aria-live="polite">
        {status}
      </p>
      <LoadStatus load={page} failed={t("users.loadFailed")} loading={t("users.loading")} />
      <ErrorNotice error={toggle.error} />
      {page.data !== null && users.length === 0 && <p className="muted">{t("users.noneOnPage")}</p>}
      {users.length > 0 && (
        <StackTable
          className="admin-users"
          caption={total > USERS_PAGE ? t("users.captionRange", { first, last, total }) : t("users.caption")}
          columns={[
            t("users.colEmail"),
            t("users.colRole"),
            t("users.colStatus"),
            t("users.colCreated"),
            t("users.colLastSignIn"),
          ]}
        >
          {users.map((u) => {
            const self = u.id === me.id;
            const row = confirm.row(u.id);
            const busy = toggle.running === u.id;
            return (
              <tr key={u.id} role="row" data-testid="user-row" className={u.disabled ? "is-revoked" : undefined}>
                <td role="cell" data-label={t("users.colEmail")} className="admin-email">
                  <span>
                    {u.email}
                    {self && <span className="muted">{t("users.you")}</span>}
                  </span>
                </td>
                <td role="cell" data-label={t("users.colRole")}>
                  {u.role === "admin" ? <span className="badge">{t("users.roleAdmin")}</span> : t("users.roleUser")}
                </td>
                <td role="cell" data-label={t("users.colStatus")}>
                  {u.disabled ? (
                    <span className="badge off">{t("users.disabled")}</span>
                  ) : (
                    <span className="badge ok">{t("common.active")}</span>
                  )}
                </td>
                <td role="cell" data-label={t("users.colCreated")}>
                  <When value={u.created_at} empty="" />
                </td>
                <td role="cell" data-label={t("users.colLastSignIn")}>
                  <When value={u.last_login_at} empty={t("common.never")} />
                </td>
                <td role="cell" data-label="" className="actions">
                  {self ? (
                    <span className="muted">{t("users.cantDisableSelf")}</span>
                  ) : u.disabled ? (
                    <button
                      type="button"
                      onClick={() => void setDisabled(u, false)}
                      disabled={busy}
                      aria-label={t("users.enableItem", { email: u.email })}
                      autoFocus={row.autoFocus}
                    >
                      {busy ? t("users.enabling") : t("users.enable")}
                    </button>
                  ) : (
                    <ConfirmButton
                      {...row}
                      words={disableWords}
                      target={u.email}
                      busy={busy}
                      onConfirm={() => void setDisabled(u, true)}
                    />
                  )}
                </td>
              </tr>
            );
          })}
        </StackTable>
      )}
      {total > USERS_PAGE && (
        <nav className="admin-pager" aria-label={t("users.pages")}>
          <button
            type="button"
            disabled={offset === 0 || page.loading}
            onClick={() => {
              confirm.close();
              setOffset(Math.max(0, offset - USERS_PAGE));
            }}
          >
            {t("common.previous")}
          </button>
          <span aria-live="polite">{t("users.range", { first, last, total })}</span>
          <button
            type="button"
            disabled={offset + USERS_PAGE >= total || page.loading}
            onClick={() => {
              confirm.close();
              setOffset(offset + USERS_PAGE);
            }}
          >
            {t("common.next")}
          </button>
        </nav>
      )}
    </section>
  );
}
