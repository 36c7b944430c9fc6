/**
 * The admin Models page: the catalog of model profiles with each one's verdict on every live
 * worker's hardware, the workers with the model each serves and a Switch action, and the live
 * progress of a switch. The worker list is polled every second while a switch runs (or was just
 * asked for and the worker has not said so yet), else every five seconds; the catalog's verdicts
 * are fetched again whenever the set of workers or their models changes.
 */
import { useEffect, useId, useRef, useState } from "react";
import { useTranslation } from "react-i18next";

import { ErrorNotice, LoadStatus } from "../components/Notices";
import { session } from "../lib/api";
import { fmtAgo, fmtCompact, fmtInt, fmtWait } from "../lib/format";
import type {
  Model,
  ModelProfile,
  ProfileList,
  ProfileVerdict,
  SwitchAccepted,
  WorkerList,
  WorkerView,
} from "../lib/types";
import { AdminFrame } from "./AdminPage";
import { LoadBar, useNow } from "./AdminWorkers";
import { isSwitching, SwitchProgress, VerdictView, WorkerStateBadge } from "./modelsView";
import { describeError, useJson } from "./usageData";

export const FAST_POLL_MS = 1000;
export const SLOW_POLL_MS = 5000;
/** After a switch is accepted, poll fast this long even if the worker has not started it yet. */
const PENDING_MS = 15_000;

export default function AdminModelsPage() {
  return <AdminFrame>{() => <AdminModels />}</AdminFrame>;
}

/** The page's data and actions (AdminModelsPage without the admin frame). */
export function AdminModels() {
  const { t } = useTranslation();
  const workers = useJson<WorkerList>("/v1/admin/workers");
  const profiles = useJson<ProfileList>("/v1/admin/profiles");
  const [pendingUntil, setPendingUntil] = useState(0);
  const [status, setStatus] = useState("");
  const now = useNow();
  const list = workers.data?.data ?? [];
  const fast = list.some(isSwitching) || now * 1000 < pendingUntil;
  const { reload: reloadWorkers } = workers;
  const { reload: reloadProfiles } = profiles;

  useEffect(() => {
    const refresh = () => {
      if (document.visibilityState === "visible") reloadWorkers();
    };
    const timer = setInterval(refresh, fast ? FAST_POLL_MS : SLOW_POLL_MS);
    document.addEventListener("visibilitychange", refresh);
    return () => {
      clearInterval(timer);
      document.removeEventListener("visibilitychange", refresh);
    };
  }, [fast, reloadWorkers]);

  // Verdicts are per live worker: a worker that came, went or changed model changes them.
  const signature = list
    .map((w) => `${w.worker_id}=${w.model}`)
    .sort()
    .join(",");
  const seen = useRef<string | null>(null);
  useEffect(() => {
    if (workers.data === null) return;
    if (seen.current !== null && seen.current !== signature) reloadProfiles();
    seen.current = signature;
  }, [signature, workers.data, reloadProfiles]);

  const switchWorker = async (worker: WorkerView, alias: string) => {
    const answer = await session.json<SwitchAccepted>(
      `/v1/admin/workers/${encodeURIComponent(worker.worker_id)}/model`,
      {
        method: "POST",
        body: JSON.stringify({ profile: alias }),
      },
    );
    setStatus(t("models.requested", { worker: answer.worker_id, to: answer.to }));
    setPendingUntil(Date.now() + PENDING_MS);
    reloadWorkers();
  };

  const switchModel = async (model: string, alias: string) => {
    const answer = await session.json<{ data: SwitchAccepted[] }>(
      `/v1/admin/models/${encodeURIComponent(model)}/switch`,
      { method: "POST", body: JSON.stringify({ profile: alias }) },
    );
    setStatus(t("models.requestedAll", { count: answer.data.length, model, to: alias }));
    setPendingUntil(Date.now() + PENDING_MS);
    reloadWorkers();
  };

  return (
    <ModelsView
      workers={workers.data}
      profiles={profiles.data}
      workersLoad={workers}
      profilesLoad={profiles}
      now={now}
      fast={fast}
      status={status}
      onSwitchWorker={switchWorker}
      onSwitchModel={switchModel}
    />
  );
}

interface Loadable {
  data: unknown;
  error: string | null;
  reload: () => void;
}

/** The page as it shows given data (tests render it with fixtures). */
export function ModelsView({
  workers,
  profiles,
  workersLoad,
  profilesLoad,
  now,
  fast,
  status,
  onSwitchWorker,
  onSwitchModel,
}: {
  workers: WorkerList | null;
  profiles: ProfileList | null;
  workersLoad: Loadable;
  profilesLoad: Loadable;
  now: number;
  fast: boolean;
  status: string;
  onSwitchWorker: (worker: WorkerView, alias: string) => Promise<void>;
  onSwitchModel: (model: string, alias: string) => Promise<void>;
}) {
  const { t } = useTranslation();
  const list = workers?.data ?? [];
  const catalog = profiles?.data ?? [];
  const served = workers?.models ?? [];
  // The one switch form open at a time, so two confirmations never stand side by side.
  const [open, setOpen] = useState<string | null>(null);
  return (
    <div className="admin-models-page">
      <p className="muted">{t("models.intro")}</p>
      <p className="sr-only" role="status" aria-live="polite">
        {status}
      </p>

      <section aria-labelledby="models-workers" className="admin-section">
        <div className="admin-section-head">
          <h2 id="models-workers">{t("models.workersTitle")}</h2>
          <span className="muted admin-updated" data-testid="models-poll" data-fast={fast ? "true" : "false"}>
            {t("models.polling", { every: fmtWait((fast ? FAST_POLL_MS : SLOW_POLL_MS) / 1000) })}
          </span>
        </div>
        <LoadStatus load={workersLoad} failed={t("models.workersFailed")} loading={t("workers.loading")} />
        {workers !== null && list.length === 0 && <p className="notice warn">{t("models.noWorkers")}</p>}
        <div className="worker-cards">
          {list.map((worker) => (
            <WorkerCard
              key={worker.worker_id}
              worker={worker}
              profiles={catalog}
              now={now}
              open={open === `w:${worker.worker_id}`}
              onOpen={(yes) => setOpen(yes ? `w:${worker.worker_id}` : null)}
              onSwitch={(alias) => onSwitchWorker(worker, alias)}
            />
          ))}
        </div>
      </section>

      {served.length > 0 && (
        <section aria-labelledby="models-served" className="admin-section">
          <h2 id="models-served">{t("models.servedTitle")}</h2>
          <ServedModels
            models={served}
            workers={list}
            profiles={catalog}
            open={open}
            onOpen={setOpen}
            onSwitch={onSwitchModel}
          />
        </section>
      )}

      <section aria-labelledby="models-catalog" className="admin-section">
        <h2 id="models-catalog">{t("models.catalogTitle")}</h2>
        <LoadStatus load={profilesLoad} failed={t("models.catalogFailed")} loading={t("models.catalogLoading")} />
        {(profiles?.unreachable ?? []).length > 0 && (
          <p className="notice warn" data-testid="catalog-unreachable">
            {t("models.unreachable", { workers: (profiles?.unreachable ?? []).join(", ") })}
          </p>
        )}
        {profiles !== null && catalog.length === 0 && <p className="muted">{t("models.catalogEmpty")}</p>}
        {catalog.length > 0 && <Catalog profiles={catalog} workers={list} />}
      </section>
    </div>
  );
}

/** The verdict of a profile on one worker, if the catalog has one. */
function verdictOn(profile: ModelProfile, workerId: string): ProfileVerdict | undefined {
  return profile.verdicts.find((v) => v.worker_id === workerId);
}

/** The worst of a profile's verdicts on some workers (what a switch of them all must respect). */
function worstVerdict(profile: ModelProfile, workerIds: string[]): ProfileVerdict | undefined {
  const rank = { fits: 0, fits_with_changes: 1, does_not_fit: 2 } as const;
  let worst: ProfileVerdict | undefined;
  for (const id of workerIds) {
    const verdict = verdictOn(profile, id);
    if (verdict !== undefined && (worst === undefined || rank[verdict.verdict] > rank[worst.verdict])) worst = verdict;
  }
  return worst;
}

function WorkerCard({
  worker,
  profiles,
  now,
  open,
  onOpen,
  onSwitch,
}: {
  worker: WorkerView;
  profiles: ModelProfile[];
  now: number;
  open: boolean;
  onOpen: (open: boolean) => void;
  onSwitch: (alias: string) => Promise<void>;
}) {
  const { t } = useTranslation();
  const change = worker.switch ?? null;
  const busy = isSwitching(worker);
  return (
    <article
      className={`worker-card${busy ? " is-switching" : ""}`}
      data-testid="worker-card"
      data-worker-id={worker.worker_id}
      data-model={worker.model}
      aria-labelledby={`worker-${worker.worker_id}`}
    >
      <header className="worker-card-head">
        <h3 id={`worker-${worker.worker_id}`}>
          <code>{worker.worker_id}</code>
        </h3>
        <WorkerStateBadge worker={worker} />
      </header>
      <dl className="worker-facts">
        <dt>{t("models.currentModel")}</dt>
        <dd data-testid="worker-model">
          <strong>{worker.model}</strong>
          {worker.engine_model !== worker.model && <span className="muted"> ({worker.engine_model})</span>}
        </dd>
        {worker.hardware != null && (
          <>
            <dt>{t("models.hardware")}</dt>
            <dd>
              <span className="badge">{worker.hardware.kind.toUpperCase()}</span> {worker.hardware.summary}
            </dd>
          </>
        )}
        <dt>{t("models.load")}</dt>
        <dd>
          <LoadBar running={worker.running} capacity={worker.capacity} />
        </dd>
      </dl>
      {change !== null && (
        <div className="worker-switch">
          <p className="muted switch-meta">
            {t("models.switchMeta", {
              from: change.from,
              target: change.target,
              who: change.requested_by,
              ago: fmtAgo(now - change.started_at),
            })}
          </p>
          <SwitchProgress change={change} />
        </div>
      )}
      <SwitchControl
        idPrefix=""
        target={worker.worker_id}
        from={worker.model}
        count={1}
        profiles={profiles}
        verdictOf={(p) => verdictOn(p, worker.worker_id)}
        blocked={busy}
        open={open}
        onOpen={onOpen}
        onSwitch={onSwitch}
      />
    </article>
  );
}

/**
 * Picks a profile and asks before switching: the question names the worker (or model), the
 * model it leaves and the one it loads. Profiles that cannot fit are disabled; those that fit
 * only with changes say so.
 */
function SwitchControl({
  idPrefix,
  target,
  from,
  count,
  profiles,
  verdictOf,
  blocked,
  open,
  onOpen,
  onSwitch,
}: {
  /** "" for a worker's control, "model-" for a whole model's (their test ids differ). */
  idPrefix: "" | "model-";
  target: string;
  from: string;
  count: number;
  profiles: ModelProfile[];
  verdictOf: (profile: ModelProfile) => ProfileVerdict | undefined;
  blocked: boolean;
  open: boolean;
  onOpen: (open: boolean) => void;
  onSwitch: (alias: string) => Promise<void>;
}) {
  const { t } = useTranslation();
  const id = useId();
  const [choice, setChoice] = useState("");
  const [running, setRunning] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const choices = profiles.filter((p) => p.alias !== from);
  const chosen = choices.find((p) => p.alias === choice);
  const verdict = chosen === undefined ? undefined : verdictOf(chosen);
  const fits = verdict === undefined || verdict.verdict !== "does_not_fit";
  const whole = idPrefix === "model-";

  const confirm = async () => {
    if (chosen === undefined) return;
    setRunning(true);
    setError(null);
    try {
      await onSwitch(chosen.alias);
      onOpen(false);
      setChoice("");
    } catch (caught) {
      setError(describeError(caught));
    } finally {
      setRunning(false);
    }
  };

  return (
    <div className="switch-control">
      <div className="switch-pick">
        <label className="usage-inline-label" htmlFor={`${id}-profile`}>
          <span>{t("models.newModel")}</span>
          <select
            id={`${id}-profile`}
            data-testid={`${idPrefix}switch-profile`}
            value={choice}
            disabled={blocked || running}
            onChange={(e) => {
              setChoice(e.target.value);
              setError(null);
              onOpen(false);
            }}
          >
            <option value="">{t("models.choose")}</option>
            {choices.map((p) => {
              const v = verdictOf(p);
              return (
                <option key={p.alias} value={p.alias} disabled={v?.verdict === "does_not_fit"}>
                  {v === undefined
                    ? p.alias
                    : t("models.option", { alias: p.alias, verdict: t(`models.verdicts.${v.verdict}`) })}
                </option>
              );
            })}
          </select>
        </label>
        {!open && (
          <button
            type="button"
            data-testid={`${idPrefix}switch-button`}
            disabled={blocked || chosen === undefined || !fits}
            aria-label={
              whole ? t("models.switchAllAria", { model: target }) : t("models.switchAria", { worker: target })
            }
            onClick={() => {
              setError(null);
              onOpen(true);
            }}
          >
            {whole ? t("models.switchAll") : t("models.switch")}
          </button>
        )}
      </div>
      {blocked && <p className="muted switch-hint">{t("models.busyHint")}</p>}
      {verdict !== undefined && verdict.verdict !== "fits" && (
        <p className={`notice ${fits ? "warn" : "error"} switch-hint`}>
          {verdict.reason}
          {verdict.suggestion !== null && ` ${t("models.suggestion", { suggestion: verdict.suggestion })}`}
        </p>
      )}
      {open && chosen !== undefined && (
        <div className="inline-confirm switch-confirm-box" role="group" aria-label={t("models.confirmAsk", { target })}>
          <span>
            {whole
              ? t("models.confirmAllQuestion", { count, from, to: chosen.alias })
              : t("models.confirmQuestion", { worker: target, from, to: chosen.alias })}
          </span>
          <button
            type="button"
            className="danger"
            data-testid={`${idPrefix}switch-confirm`}
            disabled={running}
            autoFocus
            onClick={() => void confirm()}
          >
            {running ? t("models.switching") : t("models.confirmYes")}
          </button>
          <button type="button" onClick={() => onOpen(false)} disabled={running}>
            {t("common.cancel")}
          </button>
        </div>
      )}
      <ErrorNotice error={error} />
    </div>
  );
}

/** The models the workers serve or were configured for; one with no live worker is marked. */
function ServedModels({
  models,
  workers,
  profiles,
  open,
  onOpen,
  onSwitch,
}: {
  models: Model[];
  workers: WorkerView[];
  profiles: ModelProfile[];
  open: string | null;
  onOpen: (key: string | null) => void;
  onSwitch: (model: string, alias: string) => Promise<void>;
}) {
  const { t } = useTranslation();
  return (
    <ul className="served-models">
      {models.map((model) => {
        const serving = workers.filter((w) => w.model === model.id);
        const ids = serving.map((w) => w.worker_id);
        const none = model.status === "no_worker" || model.workers === 0;
        return (
          <li
            key={model.id}
            data-testid="served-model"
            data-model={model.id}
            data-status={none ? "no_worker" : "serving"}
            className={none ? "is-down" : undefined}
          >
            <div className="served-head">
              <strong>{model.id}</strong>{" "}
              {none ? (
                <span className="badge off">{t("models.noWorker")}</span>
              ) : (
                <span className="muted">
                  {t("models.servingOn", { workers: ids.join(", ") || fmtInt(model.workers) })}
                </span>
              )}
            </div>
            {!none && ids.length > 0 && (
              <SwitchControl
                idPrefix="model-"
                target={model.id}
                from={model.id}
                count={ids.length}
                profiles={profiles}
                verdictOf={(p) => worstVerdict(p, ids)}
                blocked={serving.some(isSwitching)}
                open={open === `m:${model.id}`}
                onOpen={(yes) => onOpen(yes ? `m:${model.id}` : null)}
                onSwitch={(alias) => onSwitch(model.id, alias)}
              />
            )}
          </li>
        );
      })}
    </ul>
  );
}

/** Every profile with its settings and its verdict on each live worker. */
function Catalog({ profiles, workers }: { profiles: ModelProfile[]; workers: WorkerView[] }) {
  const { t } = useTranslation();
  const none = t("models.noValue");
  return (
    <div className="usage-table-wrap" role="region" aria-label={t("models.catalogTitle")} tabIndex={0}>
      <table className="usage-table model-catalog">
        <thead>
          <tr>
            <th scope="col">{t("models.col.alias")}</th>
            <th scope="col">{t("models.col.model")}</th>
            <th scope="col">{t("models.col.kind")}</th>
            <th scope="col">{t("models.col.precision")}</th>
            <th scope="col" className="num">
              <abbr title={t("models.col.tpTitle")}>{t("models.col.tp")}</abbr>
            </th>
            <th scope="col" className="num">
              {t("models.col.context")}
            </th>
            <th scope="col" className="num">
              {t("models.col.maxSeqs")}
            </th>
            <th scope="col">{t("models.col.toolParser")}</th>
            <th scope="col">{t("models.col.template")}</th>
            <th scope="col">{t("models.col.fit")}</th>
          </tr>
        </thead>
        <tbody>
          {profiles.map((p) => {
            const serving = workers.filter((w) => w.model === p.alias).map((w) => w.worker_id);
            return (
              <tr key={p.alias} data-testid="profile-row" data-alias={p.alias}>
                <th scope="row" className="usage-key">
                  <span className="profile-alias" title={p.description || undefined}>
                    {p.alias}
                  </span>
                  <span className="profile-tags">
                    <span className="badge">{t(`models.source.${p.source}`)}</span>
                    {serving.length > 0 && (
                      <span className="badge ok" title={t("models.servingOn", { workers: serving.join(", ") })}>
                        {t("models.serving")}
                      </span>
                    )}
                  </span>
                </th>
                <td>
                  <code className="profile-model">{p.model}</code>
                  {p.parameters !== null && (
                    <div className="muted profile-params">
                      {t("models.parameters", { amount: fmtCompact(p.parameters) })}
                    </div>
                  )}
                </td>
                <td>{p.kind}</td>
                <td>
                  {p.dtype}
                  {p.quantization !== null && <span className="muted"> · {p.quantization}</span>}
                </td>
                <td className="num">{fmtInt(p.tensor_parallel_size)}</td>
                <td className="num">{fmtInt(p.max_model_len)}</td>
                <td className="num">{fmtInt(p.max_num_seqs)}</td>
                <td>{p.tool_call_parser ?? <span className="muted">{none}</span>}</td>
                <td>
                  {p.chat_template}
                  {p.chat_template_fallback && (
                    <>
                      {" "}
                      <span className="badge warn" data-testid="template-fallback" title={t("models.fallbackTitle")}>
                        {t("models.fallback")}
                      </span>
                    </>
                  )}
                </td>
                <td className="verdicts">
                  {p.verdicts.length === 0 ? (
                    <span className="muted">{t("models.noVerdicts")}</span>
                  ) : (
                    p.verdicts.map((v) => <VerdictView key={v.worker_id} verdict={v} />)
                  )}
                </td>
              </tr>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}
