import { useTranslation } from "react-i18next";

/** Why the last action failed, read out at once; nothing when it did not. */
export function ErrorNotice({ error }: { error: string | null }) {
  if (error === null) return null;
  return (
    <p className="notice error" role="alert">
      {error}
    </p>
  );
}

/** What a loaded resource offers these notices (the pages' `useJson` answer). */
interface Loadable {
  data: unknown;
  error: string | null;
  reload: () => void;
}

/** A failed load with "Try again", or the first load still running; nothing once data is shown. */
export function LoadStatus({ load, failed, loading }: { load: Loadable; failed: string; loading: string }) {
  const { t } = useTranslation();
  return (
    <>
      {load.error !== null && (
        <div className="notice error usage-error" role="alert">
          <span>{t("common.failedWith", { what: failed, error: load.error })}</span>
          <button type="button" onClick={load.reload}>
            {t("common.tryAgain")}
          </button>
        </div>
      )}
      {load.data === null && load.error === null && (
        <p className="muted" role="status">
          {loading}
        </p>
      )}
    </>
  );
}
