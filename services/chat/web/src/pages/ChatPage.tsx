import {
  useCallback,
  useEffect,
  useEffectEvent,
  useLayoutEffect,
  useRef,
  useState,
  type FormEvent,
  type KeyboardEvent,
} from "react";
import { useTranslation } from "react-i18next";
import { useNavigate, useParams } from "react-router";

import { LiveRow, StoredRow } from "../components/MessageRows";
import { ModelPicker } from "../components/ModelPicker";
import { Sidebar } from "../components/Sidebar";
import i18n from "../i18n";
import { isFinished, newAnswer } from "../lib/answer";
import { ApiError, session } from "../lib/api";
import { resumeAnswer, savedAnswers, startAnswer, stopAnswer, type StreamCallbacks } from "../lib/chatStream";
import { dialogue, type WireMessage } from "../lib/dialogue";
import { live, useLive, type Live } from "../lib/live";
import { chatModels } from "../lib/models";
import { callNames } from "../lib/tools";
import type { Conversation, Model } from "../lib/types";

const MODEL_KEY = "llmchat.model";
/** A turn found running in history is followed if it is younger than the longest deadline. */
const FOLLOW_WITHIN_MS = 3600_000;

type NewLive = Omit<Live, "run">;

/** Follows an answer to its end, from a fresh request or from where a reload left it. */
async function run(
  entry: NewLive,
  start: Record<string, unknown> | null,
  navigate: (to: string) => void,
): Promise<void> {
  const id = live.start(entry);
  const callbacks: StreamCallbacks = {
    update: (state) => live.patch(id, { state }),
    reconnecting: (down) => live.patch(id, { reconnecting: down }),
  };
  const signal = new AbortController().signal;
  if (start === null) {
    await resumeAnswer(entry.state, entry.model, entry.userText ?? "", callbacks, signal);
    return;
  }
  let started;
  try {
    started = await startAnswer(start, entry.userText ?? "", callbacks, signal);
  } catch (error) {
    live.remove(id); // refused: nothing to follow
    throw error;
  }
  const { state, done } = started;
  live.patch(id, { state });
  if (live.get(id)?.stopWanted) void stopAnswer(state.requestId);
  // A new chat gets its address once the edge named the conversation (if the reader is still
  // on that new chat).
  if (start.conversation_id === undefined && state.conversationId !== null && window.location.pathname === "/") {
    navigate(`/c/${state.conversationId}`);
  }
  await done;
}

let resumedAfterLoad = false;

export default function ChatPage() {
  const { conversationId = null } = useParams();
  const navigate = useNavigate();
  const { t } = useTranslation();
  const here = useLive(conversationId);
  // The last conversation loaded and the last load's failure, each with the id it was for: the page
  // shows them only while that is still the conversation in the address.
  const [loaded, setLoaded] = useState<{ id: string; conversation: Conversation } | null>(null);
  const [loadFailure, setLoadFailure] = useState<{ id: string; message: string } | null>(null);
  const conversation = loaded !== null && loaded.id === conversationId ? loaded.conversation : null;
  const loadError = loadFailure !== null && loadFailure.id === conversationId ? loadFailure.message : null;
  const [models, setModels] = useState<Model[]>([]);
  const [picked, setPicked] = useState(() => localStorage.getItem(MODEL_KEY) ?? "");
  // The model picked (or the conversation's) while the list has it; else one with a live worker.
  const model =
    models.length === 0 || models.some((m) => m.id === picked)
      ? picked
      : ((models.find((m) => m.workers > 0) ?? models[0])?.id ?? "");
  const [system, setSystem] = useState("");
  // A new chat starts without the previous conversation's system prompt.
  const [systemOf, setSystemOf] = useState(conversationId);
  if (systemOf !== conversationId) {
    setSystemOf(conversationId);
    if (conversationId === null) setSystem("");
  }
  const [showSystem, setShowSystem] = useState(false);
  const [draft, setDraft] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [sidebarOpen, setSidebarOpen] = useState(false);
  const [version, setVersion] = useState(0);
  const scroller = useRef<HTMLDivElement>(null);
  const stick = useRef(true);
  // Where the last automatic scroll left the view: above it means the reader scrolled up.
  const autoTop = useRef(0);
  const composer = useRef<HTMLTextAreaElement>(null);

  const go = useCallback((to: string) => void navigate(to, { replace: true }), [navigate]);

  // The chat models (not embedding ones), with which have live workers (refreshed while the page is open).
  useEffect(() => {
    let stopped = false;
    const load = async () => {
      try {
        const list = await session.json<{ data: Model[] }>("/v1/models");
        if (!stopped) setModels(chatModels(list.data));
      } catch {
        // the picker keeps its last list
      }
    };
    void load();
    const timer = setInterval(() => void load(), 15_000);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);

  // The conversation the page shows now (set as each address takes effect): a load that answers
  // after the reader moved on (to another conversation, or a new chat) must not put the old one
  // back, nor follow its running turn.
  const shown = useRef(conversationId);

  // (State is set in the callbacks, once the answer is there.)
  const loadConversation = useCallback(
    (id: string): Promise<Conversation | null> =>
      session.json<Conversation>(`/v1/conversations/${id}`).then(
        (found) => {
          if (shown.current === id) {
            setLoaded({ id, conversation: found });
            setLoadFailure(null);
          }
          return found;
        },
        (caught: unknown) => {
          if (shown.current === id) setLoadFailure({ id, message: loadErrorMessage(caught) });
          return null;
        },
      ),
    [],
  );

  // A turn that started but has no answer yet (another tab, or a reload that lost its saved
  // state; a tool turn an API client sent): follow it from its first event.
  const followRunningTurn = useEffectEvent((found: Conversation) => {
    const last = found.messages[found.messages.length - 1];
    if (
      last === undefined ||
      last.role === "assistant" ||
      live.following(last.request_id) ||
      live.of(found.id) !== null
    )
      return;
    if (Date.now() - Date.parse(last.created_at) > FOLLOW_WITHIN_MS) return;
    void run(
      {
        userText: null,
        model: last.model ?? model,
        state: newAnswer(last.request_id, found.id),
        reconnecting: false,
        stopWanted: false,
      },
      null,
      go,
    );
  });

  useEffect(() => {
    shown.current = conversationId;
    stick.current = true;
    autoTop.current = 0;
    if (conversationId === null) return;
    void loadConversation(conversationId).then((found) => {
      if (found === null || shown.current !== conversationId) return;
      // A conversation the list may not have yet (a new chat's, whose first answer still runs).
      if (found.message_count <= 2) setVersion((v) => v + 1);
      setSystem(found.system_prompt ?? "");
      if (found.model) setPicked(found.model);
      followRunningTurn(found);
    });
  }, [conversationId, loadConversation]);

  // After a reload: the answer this tab was showing goes on from its last event.
  useEffect(() => {
    if (resumedAfterLoad) return;
    resumedAfterLoad = true;
    for (const saved of savedAnswers()) {
      if (isFinished(saved.state) || saved.state.requestId === "" || live.following(saved.state.requestId)) continue;
      void run(
        { userText: saved.userText, model: saved.model, state: saved.state, reconnecting: false, stopWanted: false },
        null,
        go,
      );
    }
  }, [go]);

  // A finished answer gives way to the stored one once history has it.
  useEffect(() => {
    if (here === null || !isFinished(here.state) || conversationId === null) return;
    let tries = 0;
    let stopped = false;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const poll = async () => {
      const found = await loadConversation(conversationId);
      if (stopped) return;
      if (found?.messages.some((m) => m.role === "assistant" && m.request_id === here.state.requestId)) {
        live.remove(here.run);
        setVersion((v) => v + 1);
      } else if (++tries < 20) {
        timer = setTimeout(() => void poll(), 300);
      }
    };
    void poll();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }, [here, conversationId, loadConversation]);

  const streaming = here !== null && !isFinished(here.state);
  // While an answer is followed, its row is the live one (history may already hold it when a
  // reload re-attaches late); the stored copy takes over once the live one has ended.
  const stored = conversation?.messages ?? [];
  const messages = stored.filter(
    (m) => here === null || m.role !== "assistant" || m.request_id !== here.state.requestId,
  );
  const showLive = here !== null;
  const showLiveUser =
    showLive &&
    here.userText !== null &&
    !messages.some((m) => m.role === "user" && m.request_id === here.state.requestId);

  // Auto-scroll while the reader is at the bottom; scrolling up stops it until they return.
  // A scroll event can come after the next render, so each render also checks whether the view
  // moved up since its own last scroll.
  useLayoutEffect(() => {
    const box = scroller.current;
    if (box === null) return;
    if (box.scrollTop < autoTop.current - 2) stick.current = false;
    if (stick.current) {
      box.scrollTop = box.scrollHeight;
      autoTop.current = box.scrollTop;
    }
  });
  const onScroll = () => {
    const box = scroller.current;
    if (box === null) return;
    if (box.scrollHeight - box.scrollTop - box.clientHeight < 40) {
      stick.current = true;
      autoTop.current = box.scrollTop;
    } else if (box.scrollTop < autoTop.current - 2) {
      stick.current = false;
    }
  };

  const send = async (messagesToSend: WireMessage[], userText: string | null, regenerate: boolean) => {
    setError(null);
    stick.current = true;
    autoTop.current = 0;
    const body: Record<string, unknown> = { model, messages: messagesToSend };
    if (conversationId !== null) body.conversation_id = conversationId;
    if (regenerate) body.regenerate = true;
    const entry: NewLive = {
      userText,
      model,
      state: newAnswer("", conversationId),
      reconnecting: false,
      stopWanted: false,
    };
    try {
      await run(entry, body, go);
    } catch (caught) {
      setError(caught instanceof ApiError ? caught.describe() : t("chat.notSent"));
      if (userText !== null) setDraft(userText);
    }
    setVersion((v) => v + 1);
  };

  const submit = (event?: FormEvent) => {
    event?.preventDefault();
    const text = draft.trim();
    if (text === "" || streaming || model === "") return;
    setDraft("");
    void send([...dialogue(stored, system), { role: "user", content: text }], text, false);
  };

  const regenerate = () => {
    const lastUser = stored.map((m) => m.role).lastIndexOf("user");
    if (lastUser < 0 || streaming) return;
    void send(dialogue(stored.slice(0, lastUser + 1), system), null, true);
  };

  const stop = () => {
    if (here === null) return;
    if (here.state.requestId === "") live.patch(here.run, { stopWanted: true });
    else
      void stopAnswer(here.state.requestId).catch((caught: unknown) =>
        setError(caught instanceof ApiError ? caught.describe() : t("chat.couldNotStop")),
      );
  };

  const onKeyDown = (event: KeyboardEvent<HTMLTextAreaElement>) => {
    if (event.key === "Enter" && !event.shiftKey && !event.nativeEvent.isComposing) {
      event.preventDefault();
      submit();
    }
  };

  const selected = models.find((m) => m.id === model);
  const lastAssistant = messages.map((m) => m.role).lastIndexOf("assistant");
  // Regenerate answers the last user message again; an answer to tool results has none to answer.
  const canRegenerate = messages.findLast((m) => m.role !== "assistant")?.role === "user";
  const names = callNames(messages);
  return (
    <div className="chat">
      <Sidebar
        current={conversationId}
        open={sidebarOpen}
        version={version}
        onNavigate={() => setSidebarOpen(false)}
        onClose={() => setSidebarOpen(false)}
      />
      <section className="conversation" aria-label={t("chat.label")}>
        <div className="conv-head">
          <button
            type="button"
            className="drawer-toggle"
            aria-label={t("chat.openConversations")}
            aria-expanded={sidebarOpen}
            onClick={() => setSidebarOpen((o) => !o)}
          >
            ☰
          </button>
          <h2>{conversation?.title ?? t("chat.newChat")}</h2>
          <ModelPicker
            models={models}
            value={model}
            onChange={(id) => {
              setPicked(id);
              localStorage.setItem(MODEL_KEY, id);
            }}
          />
          <button type="button" onClick={() => setShowSystem((s) => !s)} aria-expanded={showSystem}>
            {t("chat.systemPrompt")}
          </button>
        </div>
        <div className="messages" ref={scroller} onScroll={onScroll} aria-live="polite">
          <div className="inner">
            {loadError !== null && (
              <p className="notice error" role="alert">
                {loadError}
              </p>
            )}
            {messages.length === 0 && !showLive && loadError === null && (
              <p className="empty">{conversationId === null ? t("chat.empty") : t("common.loading")}</p>
            )}
            {messages.map((m, i) => (
              <StoredRow
                key={`${m.request_id}-${m.role}-${m.tool_call_id ?? ""}`}
                message={m}
                earlier={m.role === "assistant" && messages[i + 1]?.role === "assistant"}
                callNames={names}
                onRegenerate={
                  i === lastAssistant && canRegenerate && !streaming && i === messages.length - 1 ? regenerate : null
                }
              />
            ))}
            {showLiveUser && (
              <div className="msg user">
                <span className="who">{t("messages.you")}</span>
                <div className="body">{here.userText}</div>
              </div>
            )}
            {showLive && <LiveRow entry={here} />}
          </div>
        </div>
        <form className="composer" onSubmit={submit}>
          <div className="inner">
            {showSystem && (
              <label className="system-prompt">
                {t("chat.systemPromptLabel")}
                <textarea
                  value={system}
                  onChange={(e) => setSystem(e.target.value)}
                  placeholder={t("chat.systemPlaceholder")}
                />
              </label>
            )}
            {selected !== undefined && selected.workers === 0 && (
              <p className="notice warn" role="status">
                {t("chat.noWorker", { model: selected.id })}
              </p>
            )}
            {error !== null && (
              <p className="notice error" role="alert">
                {error}
              </p>
            )}
            <div className="row">
              <textarea
                ref={composer}
                aria-label={t("chat.message")}
                placeholder={t("chat.messagePlaceholder")}
                value={draft}
                rows={Math.min(8, draft.split("\n").length)}
                onChange={(e) => setDraft(e.target.value)}
                onKeyDown={onKeyDown}
              />
              {streaming ? (
                <button type="button" className="danger" onClick={stop} disabled={here.stopWanted}>
                  {t("chat.stop")}
                </button>
              ) : (
                <button type="submit" className="primary" disabled={draft.trim() === "" || model === ""}>
                  {t("chat.send")}
                </button>
              )}
            </div>
          </div>
        </form>
      </section>
    </div>
  );
}

function loadErrorMessage(caught: unknown): string {
  if (caught instanceof ApiError && caught.status === 404) return i18n.t("chat.notFound");
  return caught instanceof ApiError ? caught.describe() : i18n.t("chat.loadFailed");
}
