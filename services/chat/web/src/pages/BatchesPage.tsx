import { useEffect, useState, type FormEvent, type ReactNode } from "react";
import { useTranslation } from "react-i18next";

import { ErrorNotice, LoadStatus } from "../components/Notices";
import { StackTable } from "../components/StackTable";
import { download, session } from "../lib/api";
import { useAction, useJson } from "./usageData";
import { When } from "./When";

/** A batch as `/v1/batches` returns it (the fields this page shows). */
export interface Batch {
  id: string;
  endpoint: string;
  status: string;
  created_at: number;
  completed_at: number | null;
  output_file_id: string | null;
  error_file_id: string | null;
  request_counts: { total: number; completed: number; failed: number };
}

interface BatchList {
  data: Batch[];
}

const ENDPOINTS = ["/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/responses"];
const RUNNING = new Set(["validating", "in_progress", "finalizing", "cancelling"]);
// How often a page with running batches refreshes them.
const POLL_MS = 2000;

/** Lines done (completed or failed) of all lines, as a percentage. */
export function progressOf(batch: Batch): number {
  const { total, completed, failed } = batch.request_counts;
  return total === 0 ? 0 : Math.round((100 * (completed + failed)) / total);
}

function iso(seconds: number | null): string | null {
  return seconds === null ? null : new Date(seconds * 1000).toISOString();
}

export default function BatchesPage() {
  const { t } = useTranslation();
  const list = useJson<BatchList>("/v1/batches?limit=50");
  const [file, setFile] = useState<File | null>(null);
  const [endpoint, setEndpoint] = useState(ENDPOINTS[0]);
  const submission = useAction<true>();
  const row = useAction<string>();
  const [status, setStatus] = useState("");
  const batches = list.data?.data ?? [];
  const running = batches.some((b) => RUNNING.has(b.status));
  const { reload } = list;

  useEffect(() => {
    if (!running) return;
    const timer = setInterval(reload, POLL_MS);
    return () => clearInterval(timer);
  }, [running, reload]);

  const submit = (event: FormEvent) => {
    event.preventDefault();
    if (file === null) return;
    setStatus("");
    return submission.run(true, async () => {
      const form = new FormData();
      form.append("purpose", "batch");
      form.append("file", file, file.name);
      const uploaded = await session.json<{ id: string }>("/v1/files", { method: "POST", body: form });
      const batch = await session.json<Batch>("/v1/batches", {
        method: "POST",
        body: JSON.stringify({ input_file_id: uploaded.id, endpoint, completion_window: "24h" }),
      });
      setStatus(t("batches.submitted", { id: batch.id }));
      setFile(null);
      reload();
    });
  };

  const cancel = (batch: Batch) =>
    row.run(batch.id, async () => {
      await session.fetch(`/v1/batches/${encodeURIComponent(batch.id)}/cancel`, { method: "POST" });
      reload();
    });

  return (
    <main className="page batches-page">
      <div className="inner">
        <h1>{t("batches.title")}</h1>
        <p className="muted">{t("batches.intro")}</p>

        <section aria-labelledby="batches-new">
          <h2 id="batches-new">{t("batches.newTitle")}</h2>
          <form className="batches-form" onSubmit={(e) => void submit(e)}>
            <label>
              <span>{t("batches.file")}</span>
              <input
                type="file"
                name="file"
                accept=".jsonl,application/jsonl,application/x-ndjson,text/plain"
                onChange={(e) => setFile(e.target.files?.[0] ?? null)}
              />
            </label>
            <label>
              <span>{t("batches.endpoint")}</span>
              <select name="endpoint" value={endpoint} onChange={(e) => setEndpoint(e.target.value)}>
                {ENDPOINTS.map((e) => (
                  <option key={e} value={e}>
                    {e}
                  </option>
                ))}
              </select>
            </label>
            <button type="submit" className="primary" disabled={file === null || submission.running !== null}>
              {submission.running !== null ? t("batches.submitting") : t("batches.submit")}
            </button>
          </form>
          <ErrorNotice error={submission.error} />
          <p className="muted" role="status" aria-live="polite">
            {status}
          </p>
        </section>

        <section aria-labelledby="batches-list" aria-busy={list.loading}>
          <h2 id="batches-list">{t("batches.yours")}</h2>
          <LoadStatus load={list} failed={t("batches.loadFailed")} loading={t("batches.loading")} />
          <ErrorNotice error={row.error} />
          {list.data !== null && batches.length === 0 && <p className="muted">{t("batches.none")}</p>}
          {batches.length > 0 && (
            <StackTable
              className="batches-table"
              caption={t("batches.caption")}
              columns={[
                t("batches.colId"),
                t("batches.colEndpoint"),
                t("batches.colStatus"),
                t("batches.colProgress"),
                t("batches.colCreated"),
              ]}
            >
              {batches.map((batch) => (
                <tr key={batch.id} role="row" data-testid="batch-row">
                  <td role="cell" data-label={t("batches.colId")}>
                    <code>{batch.id}</code>
                  </td>
                  <td role="cell" data-label={t("batches.colEndpoint")}>
                    <code>{batch.endpoint}</code>
                  </td>
                  <td role="cell" data-label={t("batches.colStatus")}>
                    <span
                      data-testid="batch-status"
                      className={`badge ${RUNNING.has(batch.status) ? "" : batch.status === "completed" ? "ok" : "off"}`}
                    >
                      {t(`batches.status.${batch.status}`, { defaultValue: batch.status })}
                    </span>
                  </td>
                  <td role="cell" data-label={t("batches.colProgress")}>
                    <progress max={100} value={progressOf(batch)} aria-label={t("batches.colProgress")} />{" "}
                    <span data-testid="batch-counts">
                      {t("batches.counts", {
                        done: batch.request_counts.completed,
                        failed: batch.request_counts.failed,
                        total: batch.request_counts.total,
                      })}
                    </span>
                  </td>
                  <td role="cell" data-label={t("batches.colCreated")}>
                    <When value={iso(batch.created_at)} empty="" />
                  </td>
                  <td role="cell" data-label="" className="actions">
                    <FileButton fileId={batch.output_file_id} name={`${batch.id}_output.jsonl`}>
                      {t("batches.output")}
                    </FileButton>
                    <FileButton fileId={batch.error_file_id} name={`${batch.id}_errors.jsonl`}>
                      {t("batches.errors")}
                    </FileButton>
                    {(batch.status === "validating" || batch.status === "in_progress") && (
                      <button type="button" disabled={row.running === batch.id} onClick={() => void cancel(batch)}>
                        {t("batches.cancel")}
                      </button>
                    )}
                  </td>
                </tr>
              ))}
            </StackTable>
          )}
        </section>
      </div>
    </main>
  );
}

/** Downloads a batch's output or error file (nothing when it has none). */
function FileButton({ fileId, name, children }: { fileId: string | null; name: string; children: ReactNode }) {
  if (fileId === null) return null;
  return (
    <button type="button" onClick={() => void download(`/v1/files/${encodeURIComponent(fileId)}/content`, name)}>
      {children}
    </button>
  );
}
