import { useCallback, useEffect, useRef, useState, type FormEvent } from "react";
import { useTranslation } from "react-i18next";
import { Link, useNavigate } from "react-router";

import i18n from "../i18n";
import { ApiError, session } from "../lib/api";
import { fmtDateTime } from "../lib/format";
import type { ConversationPage, ConversationSummary } from "../lib/types";

interface Props {
  current: string | null;
  open: boolean;
  /** Bumped by the chat when a conversation changed (a new one, a new title). */
  version: number;
  onNavigate: () => void;
  /** Closes the drawer (phones). */
  onClose: () => void;
}

/** The caller's conversations, newest first, with search, rename, delete and "New chat". */
export function Sidebar({ current, open, version, onNavigate, onClose }: Props) {
  const navigate = useNavigate();
  const { t } = useTranslation();
  const [query, setQuery] = useState("");
  const [items, setItems] = useState<ConversationSummary[]>([]);
  const [cursor, setCursor] = useState<string | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [editing, setEditing] = useState<string | null>(null);
  const [title, setTitle] = useState("");
  // Enter submits and the input's blur follows: one rename, not two.
  const renaming = useRef<string | null>(null);

  const load = useCallback(async (q: string, after: string | null) => {
    const params = new URLSearchParams({ limit: "50" });
    if (q.trim() !== "") params.set("q", q.trim());
    if (after !== null) params.set("cursor", after);
    try {
      const page = await session.json<ConversationPage>(`/v1/conversations?${params}`);
      setItems((old) => (after === null ? page.data : [...old, ...page.data]));
      setCursor(page.next_cursor);
      setError(null);
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.describe() : i18n.t("sidebar.loadFailed"));
    }
  }, []);

  useEffect(() => {
    const timer = setTimeout(() => void load(query, null), query === "" ? 0 : 250);
    return () => clearTimeout(timer);
  }, [query, version, load]);

  const rename = async (event: FormEvent, id: string) => {
    event.preventDefault();
    if (renaming.current !== id) return;
    renaming.current = null;
    const value = title.trim();
    setEditing(null);
    if (value === "") return;
    try {
      const updated = await session.json<ConversationSummary>(`/v1/conversations/${id}`, {
        method: "PATCH",
        body: JSON.stringify({ title: value }),
      });
      setItems((old) => old.map((c) => (c.id === id ? { ...c, title: updated.title } : c)));
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.describe() : t("sidebar.renameFailed"));
    }
  };

  const remove = async (item: ConversationSummary) => {
    if (!window.confirm(t("sidebar.confirmDelete", { title: item.title }))) return;
    try {
      await session.fetch(`/v1/conversations/${item.id}`, { method: "DELETE" });
      setItems((old) => old.filter((c) => c.id !== item.id));
      if (item.id === current) void navigate("/");
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.describe() : t("sidebar.deleteFailed"));
    }
  };

  return (
    <aside
      className={`sidebar${open ? " open" : ""}`}
      aria-label={t("sidebar.label")}
      onKeyDown={(e) => {
        if (e.key === "Escape" && open) onClose();
      }}
    >
      <div className="tools">
        <button type="button" className="drawer-close" onClick={onClose}>
          {t("sidebar.close")}
        </button>
        <button
          type="button"
          className="primary"
          onClick={() => {
            void navigate("/");
            onNavigate();
          }}
        >
          {t("sidebar.newChat")}
        </button>
        <input
          type="search"
          placeholder={t("sidebar.search")}
          aria-label={t("sidebar.search")}
          value={query}
          onChange={(e) => setQuery(e.target.value)}
        />
        {error !== null && (
          <p className="notice error" role="alert">
            {error}
          </p>
        )}
      </div>
      <ul>
        {items.map((item) =>
          editing === item.id ? (
            <li key={item.id} className="current">
              <form onSubmit={(e) => void rename(e, item.id)} style={{ display: "flex", flex: 1 }}>
                <input
                  autoFocus
                  aria-label={t("sidebar.newTitle")}
                  value={title}
                  maxLength={200}
                  onChange={(e) => setTitle(e.target.value)}
                  onKeyDown={(e) => {
                    if (e.key === "Escape") {
                      renaming.current = null;
                      setEditing(null);
                    }
                  }}
                  onBlur={(e) => void rename(e, item.id)}
                />
              </form>
            </li>
          ) : (
            <li key={item.id} className={item.id === current ? "current" : ""} data-testid="conversation-item">
              <Link
                to={`/c/${item.id}`}
                onClick={onNavigate}
                title={`${item.title}\n${t("sidebar.updated", { date: fmtDateTime(item.updated_at) })}`}
                aria-current={item.id === current ? "page" : undefined}
              >
                {item.title || t("sidebar.untitled")}
              </Link>
              <span className="actions">
                <button
                  type="button"
                  className="icon"
                  aria-label={t("sidebar.renameItem", { title: item.title })}
                  title={t("sidebar.rename")}
                  onClick={() => {
                    renaming.current = item.id;
                    setEditing(item.id);
                    setTitle(item.title);
                  }}
                >
                  <Icon path="M4 20h4L19 9l-4-4L4 16v4zM14 6l4 4" />
                </button>
                <button
                  type="button"
                  className="icon"
                  aria-label={t("sidebar.deleteItem", { title: item.title })}
                  title={t("sidebar.delete")}
                  onClick={() => void remove(item)}
                >
                  <Icon path="M5 7h14M10 7V4h4v3M7 7l1 13h8l1-13" />
                </button>
              </span>
            </li>
          ),
        )}
        {items.length === 0 && error === null && (
          <li className="muted" style={{ padding: 10 }}>
            {query ? t("sidebar.nothingFound") : t("sidebar.none")}
          </li>
        )}
        {cursor !== null && (
          <li>
            <button type="button" className="icon" onClick={() => void load(query, cursor)}>
              {t("sidebar.more")}
            </button>
          </li>
        )}
      </ul>
    </aside>
  );
}

function Icon({ path }: { path: string }) {
  return (
    <svg
      width="16"
      height="16"
      viewBox="0 0 24 24"
      fill="none"
      stroke="currentColor"
      strokeWidth="1.8"
      strokeLinecap="round"
      strokeLinejoin="round"
      aria-hidden="true"
    >
      <path d={path} />
    </svg>
  );
}
