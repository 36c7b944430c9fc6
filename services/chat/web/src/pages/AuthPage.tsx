import { useState, type FormEvent } from "react";
import { useTranslation } from "react-i18next";
import { Link, Navigate, useLocation, useNavigate } from "react-router";

import { useAuth } from "../auth";
import { LanguageSwitch } from "../components/LanguageSwitch";
import i18n from "../i18n";
import { ApiError, session } from "../lib/api";

export default function AuthPage({ mode }: { mode: "login" | "register" }) {
  const { user, ended } = useAuth();
  const { t } = useTranslation();
  const navigate = useNavigate();
  const location = useLocation();
  const [email, setEmail] = useState("");
  const [password, setPassword] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const from = (location.state as { from?: string } | null)?.from ?? "/";
  if (user !== null) return <Navigate to={from} replace />;

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setBusy(true);
    setError(null);
    try {
      if (mode === "login") await session.login(email, password);
      else await session.register(email, password);
      void navigate(from, { replace: true });
    } catch (caught) {
      setError(describe(caught, mode));
    } finally {
      setBusy(false);
    }
  };

  const register = mode === "register";
  return (
    <main className="auth">
      <div className="auth-language">
        <LanguageSwitch />
      </div>
      <form onSubmit={(e) => void submit(e)} aria-label={register ? t("auth.registerTitle") : t("auth.signInForm")}>
        <h1>{register ? t("auth.registerTitle") : t("auth.signInTitle")}</h1>
        {ended === "expired" && !register && error === null && (
          <p className="notice warn" role="status">
            {t("errors.sessionExpired")}
          </p>
        )}
        {error !== null && (
          <p className="notice error" role="alert">
            {error}
          </p>
        )}
        <label>
          {t("auth.email")}
          <input type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
        </label>
        <label>
          {t("auth.password")}
          <input
            type="password"
            autoComplete={register ? "new-password" : "current-password"}
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>
        <button type="submit" className="primary" disabled={busy}>
          {register ? t("auth.createAccount") : t("auth.signIn")}
        </button>
        <p className="muted">
          {register ? (
            <>
              {t("auth.haveAccount")} <Link to="/login">{t("auth.signIn")}</Link>
            </>
          ) : (
            <>
              {t("auth.newHere")} <Link to="/register">{t("auth.createLink")}</Link>
            </>
          )}
        </p>
      </form>
    </main>
  );
}

function describe(error: unknown, mode: "login" | "register"): string {
  if (!(error instanceof ApiError)) return i18n.t("errors.generic");
  if (mode === "login" && error.status === 401) return i18n.t("auth.wrongPassword");
  return error.describe();
}
