import { useState } from "react";

import { ConfirmButton, useConfirmRows, type ConfirmWords } from "../components/ConfirmButton";
import { ErrorNotice, LoadStatus } from "../components/Notices";
import { StackTable } from "../components/StackTable";
import { session, type User } from "../lib/api";
import { fmtInt, useAction, useJson } from "./usageData";
import { When } from "./When";

const USERS_PAGE = 100;

const DISABLE: ConfirmWords = {
  action: "Disable",
  asking: "Confirm disabling",
  question: "Disable? Their sessions and API keys stop at once.",
  yes: "Yes, disable",
  busy: "Disabling…",
};

/** Every account, a page at a time, with disabling (asked first) and enabling; `me` cannot disable itself. */
export function AdminUsers({ me }: { me: User }) {
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
      setStatus(`${updated.email} ${updated.disabled ? "disabled" : "enabled"}.`);
    });

  const first = total === 0 ? 0 : offset + 1;
  const last = Math.min(offset + USERS_PAGE, total);
  return (
    <section id="admin-users" aria-labelledby="admin-users-title" className="admin-section" aria-busy={page.loading}>
      <div className="admin-section-head">
        <h2 id="admin-users-title">
          Users{page.data !== null && <span className="muted admin-count"> ({fmtInt(total)})</span>}
        </h2>
      </div>
      <p className="sr-only" role="status" aria-live="polite">
        {status}
      </p>
      <LoadStatus load={page} failed="Users could not be loaded" loading="Loading users…" />
      <ErrorNotice error={toggle.error} />
      {page.data !== null && users.length === 0 && <p className="muted">No users on this page.</p>}
      {users.length > 0 && (
        <StackTable
          className="admin-users"
          caption={`Users ${total > USERS_PAGE ? `${first} to ${last} of ${total}` : ""}`}
          columns={["Email", "Role", "Status", "Created", "Last sign-in"]}
        >
          {users.map((u) => {
            const self = u.id === me.id;
            const row = confirm.row(u.id);
            const busy = toggle.running === u.id;
            return (
              <tr key={u.id} role="row" data-testid="user-row" className={u.disabled ? "is-revoked" : undefined}>
                <td role="cell" data-label="Email" className="admin-email">
                  <span>
                    {u.email}
                    {self && <span className="muted"> (you)</span>}
                  </span>
                </td>
                <td role="cell" data-label="Role">
                  {u.role === "admin" ? <span className="badge">admin</span> : "user"}
                </td>
                <td role="cell" data-label="Status">
                  {u.disabled ? <span className="badge off">Disabled</span> : <span className="badge ok">Active</span>}
                </td>
                <td role="cell" data-label="Created">
                  <When value={u.created_at} empty="" />
                </td>
                <td role="cell" data-label="Last sign-in">
                  <When value={u.last_login_at} empty="Never" />
                </td>
                <td role="cell" data-label="" className="actions">
                  {self ? (
                    <span className="muted">You can't disable yourself</span>
                  ) : u.disabled ? (
                    <button
                      type="button"
                      onClick={() => void setDisabled(u, false)}
                      disabled={busy}
                      aria-label={`Enable ${u.email}`}
                      autoFocus={row.autoFocus}
                    >
                      {busy ? "Enabling…" : "Enable"}
                    </button>
                  ) : (
                    <ConfirmButton
                      {...row}
                      words={DISABLE}
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
        <nav className="admin-pager" aria-label="Users pages">
          <button
            type="button"
            disabled={offset === 0 || page.loading}
            onClick={() => {
              confirm.close();
              setOffset(Math.max(0, offset - USERS_PAGE));
            }}
          >
            Previous
          </button>
          <span aria-live="polite">
            {fmtInt(first)}–{fmtInt(last)} of {fmtInt(total)}
          </span>
          <button
            type="button"
            disabled={offset + USERS_PAGE >= total || page.loading}
            onClick={() => {
              confirm.close();
              setOffset(offset + USERS_PAGE);
            }}
          >
            Next
          </button>
        </nav>
      )}
    </section>
  );
}
