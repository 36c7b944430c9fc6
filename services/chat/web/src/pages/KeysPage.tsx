import { useEffect, useMemo, useRef, useState, type FormEvent } from "react";

import { ConfirmButton, useConfirmRows, type ConfirmWords } from "../components/ConfirmButton";
import { ErrorNotice, LoadStatus } from "../components/Notices";
import { StackTable } from "../components/StackTable";
import { session } from "../lib/api";
import type { ApiKey, ApiKeyCreated } from "../lib/types";
import { fmtDateTime, useAction, useJson } from "./usageData";
import { When } from "./When";

const REVOKE: ConfirmWords = {
  action: "Revoke",
  asking: "Confirm revoking",
  question: "Revoke? Programs using it stop working.",
  yes: "Yes, revoke",
  busy: "Revoking…",
};

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
      setStatus(`Key ${labelOf(key)} revoked.`);
      list.reload();
    });

  return (
    <main className="page keys-page">
      <div className="inner">
        <h1>API keys</h1>
        <p className="muted">
          API keys let programs call the OpenAI-compatible API as you: send one as <code>Authorization: Bearer …</code>{" "}
          to <code>{`${window.location.origin}/v1`}</code>. Revoke a key as soon as you no longer need it or it may have
          leaked.
        </p>

        <section aria-labelledby="keys-create">
          <h2 id="keys-create">Create a key</h2>
          <form className="keys-form" onSubmit={(e) => void create(e)}>
            <label>
              <span>
                Name <span className="muted">(optional)</span>
              </span>
              <input
                type="text"
                name="name"
                value={name}
                maxLength={100}
                placeholder="e.g. laptop scripts"
                autoComplete="off"
                onChange={(e) => setName(e.target.value)}
              />
            </label>
            <button type="submit" className="primary" disabled={creating}>
              {creating ? "Creating…" : "Create key"}
            </button>
          </form>
          <ErrorNotice error={creation.error} />
          {created !== null && <NewKey key={created.id} created={created} onDone={() => setCreated(null)} />}
        </section>

        <section aria-labelledby="keys-list" aria-busy={list.loading}>
          <h2 id="keys-list">
            Your keys
            {list.data !== null && <span className="muted keys-count"> ({active} active)</span>}
          </h2>
          <p className="sr-only" role="status" aria-live="polite">
            {status}
          </p>
          <LoadStatus load={list} failed="Your keys could not be loaded" loading="Loading keys…" />
          <ErrorNotice error={revocation.error} />
          {list.data !== null && keys.length === 0 && <p className="muted">You have no API keys yet.</p>}
          {keys.length > 0 && (
            <StackTable
              className="keys-table"
              caption="Your API keys"
              columns={["Name", "Key", "Created", "Last used", "Status"]}
            >
              {keys.map((key) => {
                const revoked = key.revoked_at !== null;
                return (
                  <tr key={key.id} role="row" data-testid="key-row" className={revoked ? "is-revoked" : undefined}>
                    <td role="cell" data-label="Name">
                      {key.name !== "" ? key.name : <span className="muted">Unnamed</span>}
                    </td>
                    <td role="cell" data-label="Key">
                      <code>{key.prefix}…</code>
                    </td>
                    <td role="cell" data-label="Created">
                      <When value={key.created_at} empty="" />
                    </td>
                    <td role="cell" data-label="Last used">
                      <When value={key.last_used_at} empty="Never" />
                    </td>
                    <td role="cell" data-label="Status">
                      {revoked ? (
                        <span className="badge off" title={`Revoked ${fmtDateTime(key.revoked_at)}`}>
                          Revoked
                        </span>
                      ) : (
                        <span className="badge ok">Active</span>
                      )}
                    </td>
                    <td role="cell" data-label="" className="actions">
                      {!revoked && (
                        <ConfirmButton
                          {...confirm.row(key.id)}
                          words={REVOKE}
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
      <h3 id="new-key-title">New key{created.name !== "" ? `: ${created.name}` : ""}</h3>
      <p className="new-key-warning">
        <strong>Copy this key now.</strong> It won't be shown again; if you lose it, revoke it and create a new one.
      </p>
      <div className="new-key-value">
        <code ref={code}>{created.key}</code>
        <button type="button" className="primary" onClick={() => void doCopy()}>
          {copy === "copied" ? "Copied" : "Copy"}
        </button>
      </div>
      <p className="muted new-key-status" role="status" aria-live="polite">
        {copy === "copied" && "Copied to the clipboard."}
        {copy === "failed" && "Copying is not available here: the key is selected, copy it with Ctrl+C (⌘C)."}
      </p>
      <button type="button" onClick={onDone}>
        I've saved it
      </button>
    </div>
  );
}
