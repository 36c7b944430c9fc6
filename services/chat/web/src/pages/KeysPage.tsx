import { useEffect, useMemo, useRef, useState, type FormEvent } from "react";
import { Trans, useTranslation } from "react-i18next";

import { ConfirmButton, useConfirmRows, type ConfirmWords } from "../components/ConfirmButton";
import { ErrorNotice, LoadStatus } from "../components/Notices";
import { StackTable } from "../components/StackTable";
import { session } from "../lib/api";
import type { ApiKey, ApiKeyCreated } from "../lib/types";
import { fmtDateTime, useAction, useJson } from "./usageData";
import { When } from "./When";

/** Active keys first, newest first within each group. */
function ordered(keys: ApiKey[]): ApiKey[] {
  return [...keys].sort((a, b) => {
    const revoked = Number(a.revoked_at !== null) - Number(b.revoked_at !== null);
    return revoked !== 0 ? revoked : Date.parse(b.created_at) - Date.parse(a.created_at);
  });
}

/** A key's name, or its prefix when it has none. */
function labelOf(key: ApiKey): string {
  return key.name || `${key.prefix}…`;
}

export default function KeysPage() {
  const { t } = useTranslation();
  const revokeWords: ConfirmWords = {
    action: t("keys.revokeAction"),
    asking: t("keys.revokeAsking"),
    question: t("keys.revokeQuestion"),
    yes: t("keys.revokeYes"),
    busy: t("keys.revokeBusy"),
  };
  const list = useJson<{ keys: ApiKey[] }>("/v1/auth/api-keys");
  const [name, setName] = useState("");
  const creation = useAction<true>();
  const [created, setCreated] = useState<ApiKeyCreated | null>(null);
  const revocation = useAction<string>();
  const confirm = useConfirmRows(revocation.clearError);
  const [status, setStatus] = useState("");
  const creating = creation.running !== null;
  const keys = useMemo(() => ordered(list.data?.keys ?? []), [list.data]);
  const active = keys.filter((k) => k.revoked_at === null).length;

  const create = (event: FormEvent) => {
    event.preventDefault();
    setStatus("");
    return creation.run(true, async () => {
      const key = await session.json<ApiKeyCreated>("/v1/auth/api-keys", {
        method: "POST",
        body: JSON.stringify({ name: name.trim() }),
      });
      setCreated(key);
      setName("");
      list.reload();
    });
  };

  const revoke = (key: ApiKey) =>
    revocation.run(key.id, async () => {
      await session.fetch(`/v1/auth/api-keys/${encodeURIComponent(key.id)}`, { method: "DELETE" });
      confirm.close();
      if (created?.id === key.id) setCreated(null);
      setStatus(t("keys.revokedStatus", { name: labelOf(key) }));
      list.reload();
    });

  return (
    <main className="page keys-page">
      <div className="inner">
        <h1>{t("keys.title")}</h1>
        <p className="muted">
          <Trans
            i18nKey="keys.intro"
            values={{ url: `${window.location.origin}/v1` }}
            components={{ code: <code /> }}
            shouldUnescape
          />
        </p>

        <section aria-labelledby="keys-create">
          <h2 id="keys-create">{t("keys.createTitle")}</h2>
          <form className="keys-form" onSubmit={(e) => void create(e)}>
            <label>
              <span>
                {t("keys.name")} <span className="muted">{t("keys.optional")}</span>
              </span>
              <input
                type="text"
                name="name"
                value={name}
                maxLength={100}
                placeholder={t("keys.namePlaceholder")}
                autoComplete="off"
                onChange={(e) => setName(e.target.value)}
              />
            </label>
            <button type="submit" className="primary" disabled={creating}>
              {creating ? t("keys.creating") : t("keys.create")}
            </button>
          </form>
          <ErrorNotice error={creation.error} />
          {created !== null && <NewKey key={created.id} created={created} onDone={() => setCreated(null)} />}
        </section>

        <section aria-labelledby="keys-list" aria-busy={list.loading}>
          <h2 id="keys-list">
            {t("keys.yours")}
            {list.data !== null && (
              <span className="muted keys-count"> {t("keys.activeCount", { count: active })}</span>
            )}
          </h2>
          <p className="sr-only" role="status" aria-live="polite">
            {status}
          </p>
          <LoadStatus load={list} failed={t("keys.loadFailed")} loading={t("keys.loading")} />
          <ErrorNotice error={revocation.error} />
          {list.data !== null && keys.length === 0 && <p className="muted">{t("keys.none")}</p>}
          {keys.length > 0 && (
            <StackTable
              className="keys-table"
              caption={t("keys.caption")}
              columns={[
                t("keys.colName"),
                t("keys.colKey"),
                t("keys.colCreated"),
                t("keys.colLastUsed"),
                t("keys.colStatus"),
              ]}
            >
              {keys.map((key) => {
                const revoked = key.revoked_at !== null;
                return (
                  <tr key={key.id} role="row" data-testid="key-row" className={revoked ? "is-revoked" : undefined}>
                    <td role="cell" data-label={t("keys.colName")}>
                      {key.name !== "" ? key.name : <span className="muted">{t("keys.unnamed")}</span>}
                    </td>
                    <td role="cell" data-label={t("keys.colKey")}>
                      <code>{key.prefix}…</code>
                    </td>
                    <td role="cell" data-label={t("keys.colCreated")}>
                      <When value={key.created_at} empty="" />
                    </td>
                    <td role="cell" data-label={t("keys.colLastUsed")}>
                      <When value={key.last_used_at} empty={t("common.never")} />
                    </td>
                    <td role="cell" data-label={t("keys.colStatus")}>
                      {revoked ? (
                        <span className="badge off" title={t("keys.revokedOn", { date: fmtDateTime(key.revoked_at) })}>
                          {t("keys.revoked")}
                        </span>
                      ) : (
                        <span className="badge ok">{t("common.active")}</span>
                      )}
                    </td>
                    <td role="cell" data-label="" className="actions">
                      {!revoked && (
                        <ConfirmButton
                          {...confirm.row(key.id)}
                          words={revokeWords}
                          target={labelOf(key)}
                          busy={revocation.running === key.id}
                          onConfirm={() => void revoke(key)}
                        />
                      )}
                    </td>
                  </tr>
                );
              })}
            </StackTable>
          )}
        </section>
      </div>
    </main>
  );
}

/** The new key, shown this once, with a Copy button. */
function NewKey({ created, onDone }: { created: ApiKeyCreated; onDone: () => void }) {
  const { t } = useTranslation();
  const box = useRef<HTMLDivElement>(null);
  const code = useRef<HTMLElement>(null);
  const [copy, setCopy] = useState<"idle" | "copied" | "failed">("idle");

  // Bring the key into view and focus for keyboard and screen-reader users (a new key is a new
  // NewKey: its parent keys it by id).
  useEffect(() => {
    box.current?.focus();
  }, []);

  useEffect(() => {
    if (copy !== "copied") return;
    const timer = setTimeout(() => setCopy("idle"), 4000);
    return () => clearTimeout(timer);
  }, [copy]);

  const selectKey = () => {
    const node = code.current;
    const selection = window.getSelection();
    if (node === null || selection === null) return;
    const range = document.createRange();
    range.selectNodeContents(node);
    selection.removeAllRanges();
    selection.addRange(range);
  };

  const doCopy = async () => {
    try {
      if (navigator.clipboard === undefined) throw new Error("no clipboard");
      await navigator.clipboard.writeText(created.key);
      setCopy("copied");
    } catch {
      // Without the clipboard API (plain http) the key is selected for Ctrl+C / long-press.
      selectKey();
      setCopy("failed");
    }
  };

  return (
    <div className="new-key" data-testid="new-key" ref={box} tabIndex={-1} aria-labelledby="new-key-title">
      <h3 id="new-key-title">
        {created.name !== "" ? t("keys.newKeyNamed", { name: created.name }) : t("keys.newKey")}
      </h3>
      <p className="new-key-warning">
        <Trans i18nKey="keys.copyNow" components={{ strong: <strong /> }} />
      </p>
      <div className="new-key-value">
        <code ref={code}>{created.key}</code>
        <button type="button" className="primary" onClick={() => void doCopy()}>
          {copy === "copied" ? t("common.copied") : t("common.copy")}
        </button>
      </div>
      <p className="muted new-key-status" role="status" aria-live="polite">
        {copy === "copied" && t("keys.copiedStatus")}
        {copy === "failed" && t("keys.copyUnavailable")}
      </p>
      <button type="button" onClick={onDone}>
        {t("keys.saved")}
      </button>
    </div>
  );
}
