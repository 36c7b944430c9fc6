import { useState } from "react";
import { useTranslation } from "react-i18next";

/** The words of one kind of confirmed action (revoking a key, disabling a user). */
export interface ConfirmWords {
  /** The button's text; its accessible name adds the row's name ("Revoke laptop scripts"). */
  action: string;
  /** The question group's accessible name, before the row's name ("Confirm revoking"). */
  asking: string;
  question: string;
  yes: string;
  /** The "yes" button's text while the action runs. */
  busy: string;
}

/** One row's part of `useConfirmRows`, spread onto its ConfirmButton. */
export interface ConfirmRow {
  asking: boolean;
  /** The button is rendered anew after Cancel or a change, so autoFocus gives it the focus back. */
  autoFocus: boolean;
  onAsk: () => void;
  onCancel: () => void;
}

/**
 * Which row of a list is asking for confirmation (one at a time, so the list owns it) and which
 * row's button takes the focus back. `onAsk` runs as a row starts asking (to clear an old error).
 */
export function useConfirmRows(onAsk: () => void) {
  const [asking, setAsking] = useState<string | null>(null);
  const [refocus, setRefocus] = useState<string | null>(null);
  /** Stops asking (done, or the list changed); `focus` names the row whose button gets the focus. */
  const close = (focus?: string) => {
    setAsking(null);
    if (focus !== undefined) setRefocus(focus);
  };
  const row = (id: string): ConfirmRow => ({
    asking: asking === id,
    autoFocus: refocus === id,
    onAsk: () => {
      onAsk();
      setAsking(id);
    },
    onCancel: () => close(id),
  });
  return { row, close };
}

/** A dangerous action that asks first, in place: the button becomes the question, "Yes, …" and "Cancel". */
export function ConfirmButton({
  words,
  target,
  busy,
  onConfirm,
  asking,
  autoFocus,
  onAsk,
  onCancel,
}: ConfirmRow & { words: ConfirmWords; target: string; busy: boolean; onConfirm: () => void }) {
  const { t } = useTranslation();
  if (!asking) {
    return (
      <button
        type="button"
        className="danger"
        aria-label={`${words.action} ${target}`}
        autoFocus={autoFocus}
        onClick={onAsk}
      >
        {words.action}
      </button>
    );
  }
  return (
    <span className="inline-confirm" role="group" aria-label={`${words.asking} ${target}`}>
      <span>{words.question}</span>
      <button type="button" className="danger" disabled={busy} onClick={onConfirm} autoFocus>
        {busy ? words.busy : words.yes}
      </button>
      <button type="button" onClick={onCancel} disabled={busy}>
        {t("common.cancel")}
      </button>
    </span>
  );
}
