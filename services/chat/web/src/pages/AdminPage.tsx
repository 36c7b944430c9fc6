import { useEffect, useMemo, useState } from "react";

import { useAuth } from "../auth";
import { session, type User } from "../lib/api";
import type { Model, UsageReport, WorkerList } from "../lib/types";
import { BreakdownTable, TokensPerDayChart, UsageDownload, UsageRangePicker, UsageTotals, type BreakdownRow } from "./usageCharts";
import {
  describeError,
  fillDays,
  fmtAgo,
  fmtDateTime,
  fmtDay,
  fmtDuration,
  fmtInt,
  fmtPercent,
  isoOf,
  lastDays,
  useDateRange,
  useJson,
  usagePath,
} from "./usageData";

const REFRESH_MS = 5000;
const USERS_PAGE = 100;
/** A heartbeat older than this is shown as late (workers beat every few seconds). */
const LATE_HEARTBEAT_S = 20;

export default function AdminPage() {
  const { user } = useAuth();
  if (user === null || user.role !== "admin") {
    return (
      <main className="page admin-page">
        <div className="inner">
          <h1>Admin</h1>
          <p className="notice warn" role="alert">
            Administrators only. Your account does not have access to this page.
          </p>
        </div>
      </main>
    );
  }
  return (
    <main className="page admin-page">
      <div className="inner">
        <h1>Admin</h1>
        <nav className="admin-jump" aria-label="Admin sections">
          <a href="#admin-workers">Workers &amp; models</a>
          <a href="#admin-users">Users</a>
          <a href="#admin-usage">Platform usage</a>
        </nav>
        <WorkersSection />
        <UsersSection me={user} />
        <PlatformUsageSection />
      </div>
    </main>
  );
}

// -- workers & models ---------------------------------------------------------------------------

/** Seconds since the epoch, ticking every second (for "Ns ago"). */
function useNow(): number {
  const [now, setNow] = useState(() => Date.now() / 1000);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now() / 1000), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

function LoadBar({ running, capacity }: { running: number; capacity: number }) {
  const share = capacity > 0 ? Math.min(1, running / capacity) : 0;
  const level = capacity === 0 ? "none" : share >= 1 ? "full" : share >= 0.75 ? "high" : "ok";
  return (
    <span className="admin-load">
      <span className={`admin-loadbar ${level}`} aria-hidden="true">
        <span style={{ width: `${Math.round(share * 100)}%` }} />
      </span>
      <span className="admin-load-text">
        {fmtInt(running)} / {fmtInt(capacity)}
        <span className="muted"> ({capacity > 0 ? fmtPercent(running, capacity) : "no capacity"})</span>
      </span>
    </span>
  );
}

function WorkersSection() {
  const workers = useJson<WorkerList>("/v1/admin/workers");
  const { reload, data } = workers;
  const [auto, setAuto] = useState(true);
  const [updatedAt, setUpdatedAt] = useState<number | null>(null);
  const now = useNow();

  useEffect(() => {
    if (data !== null) setUpdatedAt(Date.now() / 1000);
  }, [data]);

  useEffect(() => {
    if (!auto) return;
    const timer = setInterval(() => {
      if (document.visibilityState === "visible") reload();
    }, REFRESH_MS);
    const onVisible = () => {
      if (document.visibilityState === "visible") reload();
    };
    document.addEventListener("visibilitychange", onVisible);
    return () => {
      clearInterval(timer);
      document.removeEventListener("visibilitychange", onVisible);
    };
  }, [auto, reload]);

  const models: Model[] = data?.models ?? [];
  const list = data?.data ?? [];
  return (
    <section id="admin-workers" aria-labelledby="admin-workers-title" className="admin-section">
      <div className="admin-section-head">
        <h2 id="admin-workers-title">Workers &amp; models</h2>
        <div className="admin-refresh">
          <label className="admin-check">
            <input type="checkbox" checked={auto} onChange={(e) => setAuto(e.target.checked)} />
            Auto-refresh every 5 s
          </label>
          <button type="button" onClick={reload} disabled={workers.loading}>
            Refresh now
          </button>
          <span className="muted admin-updated">
            {updatedAt !== null ? `Updated ${fmtAgo(now - updatedAt)}` : ""}
          </span>
        </div>
      </div>
      {workers.error !== null && (
        <p className="notice error" role="alert">
          Workers could not be loaded: {workers.error}
          {data !== null && " (showing the last answer)"}
        </p>
      )}
      {data === null && workers.error === null && (
        <p className="muted" role="status">
          Loading workers…
        </p>
      )}
      {data !== null && (
        <>
          <h3>Models</h3>
          {models.length === 0 ? (
            <p className="muted">No models are configured or served.</p>
          ) : (
            <div className="usage-table-wrap" role="region" aria-label="Models" tabIndex={0}>
              <table className="usage-table admin-models">
                <thead>
                  <tr>
                    <th scope="col">Model</th>
                    <th scope="col" className="num">Live workers</th>
                    <th scope="col" className="num">Capacity</th>
                    <th scope="col">Running (load)</th>
                    <th scope="col" className="num">Max context</th>
                  </tr>
                </thead>
                <tbody>
                  {models.map((model) => (
                    <tr key={model.id} data-testid="model-row" className={model.workers === 0 ? "is-down" : undefined}>
                      <th scope="row" className="usage-key">
                        {model.id}
                      </th>
                      <td className="num">
                        {model.workers === 0 ? <span className="badge off">none</span> : fmtInt(model.workers)}
                      </td>
                      <td className="num">{fmtInt(model.capacity)}</td>
                      <td>
                        <LoadBar running={model.running} capacity={model.capacity} />
                      </td>
                      <td className="num">{model.max_model_len !== null ? fmtInt(model.max_model_len) : "—"}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            </div>
          )}

          <h3>Live workers ({fmtInt(list.length)})</h3>
          {list.length === 0 ? (
            <p className="notice warn">No worker has sent a heartbeat recently: no model can answer.</p>
          ) : (
            <div className="usage-table-wrap" role="region" aria-label="Live workers" tabIndex={0}>
              <table className="usage-table admin-workers">
                <thead>
                  <tr>
                    <th scope="col">Worker</th>
                    <th scope="col">Model</th>
                    <th scope="col" className="num">Capacity</th>
                    <th scope="col" className="num">Running</th>
                    <th scope="col" className="num">Max context</th>
                    <th scope="col">Version</th>
                    <th scope="col">Last heartbeat</th>
                    <th scope="col">Up since</th>
                  </tr>
                </thead>
                <tbody>
                  {list.map((w) => {
                    const age = now - w.heartbeat_at;
                    return (
                      <tr key={w.worker_id} data-testid="worker-row">
                        <th scope="row" className="usage-key">
                          <code>{w.worker_id}</code>
                        </th>
                        <td>
                          <span title={w.engine_model !== w.model ? `Engine model: ${w.engine_model}` : undefined}>
                            {w.model}
                          </span>
                        </td>
                        <td className="num">{fmtInt(w.capacity)}</td>
                        <td className="num">{fmtInt(w.running)}</td>
                        <td className="num">{fmtInt(w.max_model_len)}</td>
                        <td>{w.version}</td>
                        <td>
                          <time
                            dateTime={isoOf(w.heartbeat_at)}
                            title={fmtDateTime(w.heartbeat_at, "full")}
                            className={age > LATE_HEARTBEAT_S ? "admin-late" : undefined}
                          >
                            {fmtAgo(age)}
                          </time>
                        </td>
                        <td>
                          <time dateTime={isoOf(w.started_at)} title={`Up ${fmtDuration(now - w.started_at)}`}>
                            {fmtDateTime(w.started_at)}
                          </time>
                          <span className="muted admin-uptime"> ({fmtDuration(now - w.started_at)})</span>
                        </td>
                      </tr>
                    );
                  })}
                </tbody>
              </table>
            </div>
          )}
        </>
      )}
    </section>
  );
}

// -- users --------------------------------------------------------------------------------------

function When({ value, empty }: { value: string | null | undefined; empty: string }) {
  if (value === null || value === undefined) return <span className="muted">{empty}</span>;
  return (
    <time dateTime={isoOf(value)} title={fmtDateTime(value, "full")}>
      {fmtDateTime(value)}
    </time>
  );
}

function UsersSection({ me }: { me: User }) {
  const [offset, setOffset] = useState(0);
  const page = useJson<{ users: User[]; total: number }>(`/v1/admin/users?limit=${USERS_PAGE}&offset=${offset}`);
  /** Users changed here since the page loaded (the PATCH answers), over the list's copies. */
  const [changed, setChanged] = useState<Record<string, User>>({});
  const [confirming, setConfirming] = useState<string | null>(null);
  const [refocus, setRefocus] = useState<string | null>(null);
  const [busy, setBusy] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [status, setStatus] = useState("");

  const users = (page.data?.users ?? []).map((u) => changed[u.id] ?? u);
  const total = page.data?.total ?? 0;

  const setDisabled = async (target: User, disabled: boolean) => {
    setBusy(target.id);
    setError(null);
    try {
      const updated = await session.json<User>(`/v1/admin/users/${encodeURIComponent(target.id)}`, {
        method: "PATCH",
        body: JSON.stringify({ disabled }),
      });
      setChanged((c) => ({ ...c, [updated.id]: updated }));
      setConfirming(null);
      setRefocus(target.id);
      setStatus(`${updated.email} ${updated.disabled ? "disabled" : "enabled"}.`);
    } catch (caught) {
      setError(describeError(caught));
    } finally {
      setBusy(null);
    }
  };

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
      {page.error !== null && (
        <div className="notice error usage-error" role="alert">
          <span>Users could not be loaded: {page.error}</span>
          <button type="button" onClick={page.reload}>
            Try again
          </button>
        </div>
      )}
      {error !== null && (
        <p className="notice error" role="alert">
          {error}
        </p>
      )}
      {page.data === null && page.error === null && (
        <p className="muted" role="status">
          Loading users…
        </p>
      )}
      {page.data !== null && users.length === 0 && <p className="muted">No users on this page.</p>}
      {users.length > 0 && (
        <table className="data-table stack admin-users" role="table">
          <caption className="sr-only">Users {total > USERS_PAGE ? `${first} to ${last} of ${total}` : ""}</caption>
          <thead role="rowgroup">
            <tr role="row">
              <th scope="col" role="columnheader">Email</th>
              <th scope="col" role="columnheader">Role</th>
              <th scope="col" role="columnheader">Status</th>
              <th scope="col" role="columnheader">Created</th>
              <th scope="col" role="columnheader">Last sign-in</th>
              <th scope="col" role="columnheader">
                <span className="sr-only">Actions</span>
              </th>
            </tr>
          </thead>
          <tbody role="rowgroup">
            {users.map((u) => {
              const self = u.id === me.id;
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
                        disabled={busy === u.id}
                        aria-label={`Enable ${u.email}`}
                        autoFocus={refocus === u.id}
                      >
                        {busy === u.id ? "Enabling…" : "Enable"}
                      </button>
                    ) : confirming === u.id ? (
                      <span className="inline-confirm" role="group" aria-label={`Confirm disabling ${u.email}`}>
                        <span>Disable? Their sessions and API keys stop at once.</span>
                        <button
                          type="button"
                          className="danger"
                          onClick={() => void setDisabled(u, true)}
                          disabled={busy === u.id}
                          autoFocus
                        >
                          {busy === u.id ? "Disabling…" : "Yes, disable"}
                        </button>
                        <button
                          type="button"
                          onClick={() => {
                            setConfirming(null);
                            setRefocus(u.id);
                          }}
                          disabled={busy === u.id}
                        >
                          Cancel
                        </button>
                      </span>
                    ) : (
                      <button
                        type="button"
                        className="danger"
                        aria-label={`Disable ${u.email}`}
                        autoFocus={refocus === u.id}
                        onClick={() => {
                          setError(null);
                          setConfirming(u.id);
                        }}
                      >
                        Disable
                      </button>
                    )}
                  </td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      {total > USERS_PAGE && (
        <nav className="admin-pager" aria-label="Users pages">
          <button
            type="button"
            disabled={offset === 0 || page.loading}
            onClick={() => {
              setConfirming(null);
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
              setConfirming(null);
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

// -- platform usage -----------------------------------------------------------------------------

function PlatformUsageSection() {
  const [initial] = useState(() => lastDays());
  const rangeState = useDateRange(initial);
  const range = rangeState.applied;
  const byDay = useJson<UsageReport>(usagePath("/v1/admin/usage", range, "day"));
  const byUser = useJson<UsageReport>(usagePath("/v1/admin/usage", range, "user"));
  // Emails for the per-user table (the report names users by id).
  const directory = useJson<{ users: User[]; total: number }>("/v1/admin/users?limit=1000&offset=0");

  const points = useMemo(() => (byDay.data === null ? [] : fillDays(byDay.data.data, range)), [byDay.data, range]);
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
        {byDay.error !== null && (
          <div className="notice error usage-error" role="alert">
            <span>Platform usage could not be loaded: {byDay.error}</span>
            <button type="button" onClick={byDay.reload}>
              Try again
            </button>
          </div>
        )}
        {byDay.data === null && byDay.error === null && (
          <p className="muted" role="status">
            Loading platform usage…
          </p>
        )}
        {byDay.data !== null && (
          <>
            <p className="usage-range-text">
              {fmtDay(range.since)} – {fmtDay(range.until)}
              {byDay.loading && <span className="muted"> · updating…</span>}
            </p>
            <UsageTotals total={byDay.data.total} />
            <TokensPerDayChart points={points} caption="Tokens per day, all users" />
          </>
        )}
      </div>

      <h3>By user</h3>
      <div aria-busy={byUser.loading}>
        {byUser.error !== null && (
          <div className="notice error usage-error" role="alert">
            <span>The per-user breakdown could not be loaded: {byUser.error}</span>
            <button type="button" onClick={byUser.reload}>
              Try again
            </button>
          </div>
        )}
        {byUser.data === null && byUser.error === null && (
          <p className="muted" role="status">
            Loading…
          </p>
        )}
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
