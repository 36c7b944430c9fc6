import { useEffect, useState } from "react";
import { useTranslation } from "react-i18next";

import { fmtWait } from "../lib/format";
import type { Model, WorkerList } from "../lib/types";
import { WorkerStateBadge } from "./modelsView";
import { fmtAgo, fmtDateTime, fmtDuration, fmtInt, fmtPercent, isoOf, useJson } from "./usageData";

const REFRESH_MS = 5000;
/** A heartbeat older than this is shown as late (workers beat every few seconds). */
const LATE_HEARTBEAT_S = 20;

/** Seconds since the epoch, ticking every second (for "Ns ago"). */
export function useNow(): number {
  const [now, setNow] = useState(() => Date.now() / 1000);
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now() / 1000), 1000);
    return () => clearInterval(timer);
  }, []);
  return now;
}

/** Running requests against capacity, as a bar coloured by how full it is and as numbers. */
export function LoadBar({ running, capacity }: { running: number; capacity: number }) {
  const { t } = useTranslation();
  const share = capacity > 0 ? Math.min(1, running / capacity) : 0;
  const level = capacity === 0 ? "none" : share >= 1 ? "full" : share >= 0.75 ? "high" : "ok";
  return (
    <span className="admin-load">
      <span className={`admin-loadbar ${level}`} aria-hidden="true">
        <span style={{ width: `${Math.round(share * 100)}%` }} />
      </span>
      <span className="admin-load-text">
        {fmtInt(running)} / {fmtInt(capacity)}
        <span className="muted"> ({capacity > 0 ? fmtPercent(running, capacity) : t("workers.noCapacity")})</span>
      </span>
    </span>
  );
}

/** The live workers and the models they serve, with their load; refreshed every few seconds while visible. */
export function AdminWorkers() {
  const { t } = useTranslation();
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
        <h2 id="admin-workers-title">{t("admin.workersModels")}</h2>
        <div className="admin-refresh">
          <label className="admin-check">
            <input type="checkbox" checked={auto} onChange={(e) => setAuto(e.target.checked)} />
            {t("workers.autoRefresh", { every: fmtWait(REFRESH_MS / 1000) })}
          </label>
          <button type="button" onClick={reload} disabled={workers.loading}>
            {t("workers.refreshNow")}
          </button>
          <span className="muted admin-updated">
            {updatedAt !== null ? t("workers.updated", { ago: fmtAgo(now - updatedAt) }) : ""}
          </span>
        </div>
      </div>
      {workers.error !== null && (
        <p className="notice error" role="alert">
          {t("workers.loadFailed", { error: workers.error })}
          {data !== null && t("workers.showingLast")}
        </p>
      )}
      {data === null && workers.error === null && (
        <p className="muted" role="status">
          {t("workers.loading")}
        </p>
      )}
      {data !== null && (
        <>
          <h3>{t("workers.models")}</h3>
          {models.length === 0 ? (
            <p className="muted">{t("workers.noModels")}</p>
          ) : (
            <div className="usage-table-wrap" role="region" aria-label={t("workers.models")} tabIndex={0}>
              <table className="usage-table admin-models">
                <thead>
                  <tr>
                    <th scope="col">{t("workers.colModel")}</th>
                    <th scope="col" className="num">
                      {t("workers.colLiveWorkers")}
                    </th>
                    <th scope="col" className="num">
                      {t("workers.colCapacity")}
                    </th>
                    <th scope="col">{t("workers.colLoad")}</th>
                    <th scope="col" className="num">
                      {t("workers.colMaxContext")}
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
                        {model.workers === 0 ? (
                          <span className="badge off">{t("common.none")}</span>
                        ) : (
                          fmtInt(model.workers)
                        )}
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

          <h3>{t("workers.live", { count: list.length })}</h3>
          {list.length === 0 ? (
            <p className="notice warn">{t("workers.noWorker")}</p>
          ) : (
            <div className="usage-table-wrap" role="region" aria-label={t("workers.colLiveWorkers")} tabIndex={0}>
              <table className="usage-table admin-workers">
                <thead>
                  <tr>
                    <th scope="col">{t("workers.colWorker")}</th>
                    <th scope="col">{t("workers.colModel")}</th>
                    <th scope="col">{t("workers.colState")}</th>
                    <th scope="col" className="num">
                      {t("workers.colCapacity")}
                    </th>
                    <th scope="col" className="num">
                      {t("workers.colRunning")}
                    </th>
                    <th scope="col" className="num">
                      {t("workers.colMaxContext")}
                    </th>
                    <th scope="col">{t("workers.colVersion")}</th>
                    <th scope="col">{t("workers.colHeartbeat")}</th>
                    <th scope="col">{t("workers.colUpSince")}</th>
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
                          <span
                            title={
                              w.engine_model !== w.model
                                ? t("workers.engineModel", { model: w.engine_model })
                                : undefined
                            }
                          >
                            {w.model}
                          </span>
                        </td>
                        <td>
                          <WorkerStateBadge worker={w} />
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
                          <time
                            dateTime={isoOf(w.started_at)}
                            title={t("workers.up", { duration: fmtDuration(now - w.started_at) })}
                          >
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
