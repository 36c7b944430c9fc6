import { useEffect, useState } from "react";

import type { Model, WorkerList } from "../lib/types";
import { fmtAgo, fmtDateTime, fmtDuration, fmtInt, fmtPercent, isoOf, useJson } from "./usageData";

const REFRESH_MS = 5000;
/** A heartbeat older than this is shown as late (workers beat every few seconds). */
const LATE_HEARTBEAT_S = 20;

/** Seconds since the epoch, ticking every second (for "Ns ago"). */
function useNow(): number {
  const [now, setNow] = useState(() => Date.now() / 1000);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now() / 1000), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

/** Running requests against capacity, as a bar coloured by how full it is and as numbers. */
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

/** The live workers and the models they serve, with their load; refreshed every few seconds while visible. */
export function AdminWorkers() {
  const workers = useJson<WorkerList>("/v1/admin/workers");
  const { reload, data } = workers;
  const [auto, setAuto] = useState(true);
  const updatedAt = workers.loadedAt;
  const now = useNow();

  useEffect(() => {
    if (!auto) return;
    // A hidden tab does not poll; it catches up as soon as it is shown again.
    const refresh = () => {
      if (document.visibilityState === "visible") reload();
    };
    const timer = setInterval(refresh, REFRESH_MS);
    document.addEventListener("visibilitychange", refresh);
    return () => {
      clearInterval(timer);
      document.removeEventListener("visibilitychange", refresh);
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
          <span className="muted admin-updated">{updatedAt !== null ? `Updated ${fmtAgo(now - updatedAt)}` : ""}</span>
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
                    <th scope="col" className="num">
                      Live workers
                    </th>
                    <th scope="col" className="num">
                      Capacity
                    </th>
                    <th scope="col">Running (load)</th>
                    <th scope="col" className="num">
                      Max context
                    </th>
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
                    <th scope="col" className="num">
                      Capacity
                    </th>
                    <th scope="col" className="num">
                      Running
                    </th>
                    <th scope="col" className="num">
                      Max context
                    </th>
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
