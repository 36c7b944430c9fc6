/**
 * The pieces of the admin Models page that only show data (no fetching), shared with the
 * workers table: a worker's state, a switch's progress, a profile's verdict per worker.
 */
import { useTranslation } from "react-i18next";

import { fmtBytes, fmtPercent } from "../lib/format";
import type { ModelSwitch, ProfileVerdict, SwitchStep, WorkerState, WorkerView } from "../lib/types";

const ENDED: readonly SwitchStep[] = ["ready", "failed", "rolled_back"];

/** A worker's state (a worker that does not say is an older one: ready). */
export function stateOf(worker: WorkerView): WorkerState {
  return worker.state ?? "ready";
}

/** The switch still running on a worker, if any (an ended one stays listed for its outcome). */
export function runningSwitch(worker: WorkerView): ModelSwitch | null {
  const change = worker.switch ?? null;
  return change !== null && !ENDED.includes(change.step) ? change : null;
}

/** Whether a worker is between two models (its state or its switch says so). */
export function isSwitching(worker: WorkerView): boolean {
  const state = stateOf(worker);
  return runningSwitch(worker) !== null || state === "draining" || state === "unloading" || state === "loading";
}

export function WorkerStateBadge({ worker }: { worker: WorkerView }) {
  const { t } = useTranslation();
  const state = stateOf(worker);
  return (
    <span className={`badge state state-${state}`} data-testid="switch-state" data-state={state}>
      {t(`models.states.${state}`)}
    </span>
  );
}

/** A switch's step in words, its progress bar, and its message or error (a rollback says so). */
export function SwitchProgress({ change }: { change: ModelSwitch }) {
  const { t } = useTranslation();
  const ended = ENDED.includes(change.step);
  const bad = change.step === "failed" || change.step === "rolled_back";
  return (
    <div
      className={`switch-progress${bad ? " is-bad" : ""}`}
      data-testid="switch-progress"
      data-step={change.step}
      role="status"
    >
      <div className="switch-step">
        <strong>{t(`models.steps.${change.step}`, { from: change.from, target: change.target })}</strong>
        {!ended && change.progress !== null && <span className="muted"> {fmtPercent(change.progress, 1)}</span>}
      </div>
      {!ended && (
        <progress
          max={1}
          value={change.progress ?? undefined}
          aria-label={t("models.switchOf", { from: change.from, target: change.target })}
        />
      )}
      {change.message !== "" && <p className="muted switch-message">{change.message}</p>}
      {change.error !== null && change.error !== "" && (
        <p className="notice error switch-error" role="alert">
          {change.error}
        </p>
      )}
    </div>
  );
}

/** One worker's verdict on a profile: a coloured badge, with the reason and the numbers on opening. */
export function VerdictView({ verdict }: { verdict: ProfileVerdict }) {
  const { t } = useTranslation();
  const tip = [
    verdict.reason,
    verdict.suggestion !== null ? t("models.suggestion", { suggestion: verdict.suggestion }) : "",
  ]
    .filter((part) => part !== "")
    .join("\n");
  return (
    <details
      className={`verdict verdict-${verdict.verdict}`}
      data-testid="verdict"
      data-verdict={verdict.verdict}
      data-worker-id={verdict.worker_id}
    >
      <summary title={tip}>
        <span className={`badge verdict-badge ${verdict.verdict}`}>
          <span aria-hidden="true">{VERDICT_MARK[verdict.verdict]} </span>
          {t(`models.verdicts.${verdict.verdict}`)}
        </span>{" "}
        <code className="verdict-worker">{verdict.worker_id}</code>
      </summary>
      <div className="verdict-body">
        <p>{verdict.reason}</p>
        {verdict.suggestion !== null && (
          <p className="verdict-suggestion">{t("models.suggestion", { suggestion: verdict.suggestion })}</p>
        )}
        <dl className="verdict-memory">
          <dt>{t("models.memory.hardware")}</dt>
          <dd>{verdict.hardware}</dd>
          <dt>{t("models.memory.weights")}</dt>
          <dd>{fmtBytes(verdict.weights_bytes)}</dd>
          <dt>{t("models.memory.kvCache")}</dt>
          <dd>{fmtBytes(verdict.kv_cache_bytes)}</dd>
          <dt>{t("models.memory.activations")}</dt>
          <dd>{fmtBytes(verdict.activation_bytes)}</dd>
          <dt>{t("models.memory.available")}</dt>
          <dd>{fmtBytes(verdict.available_bytes)}</dd>
        </dl>
      </div>
    </details>
  );
}

const VERDICT_MARK: Record<ProfileVerdict["verdict"], string> = {
  fits: "✓",
  fits_with_changes: "!",
  does_not_fit: "✕",
};
