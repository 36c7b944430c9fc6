import { useState, type FormEvent } from "react";
import { Link, Navigate, useLocation, useNavigate } from "react-router";

import { useAuth } from "../auth";
import { ApiError, session } from "../lib/api";

export default function AuthPage({ mode }: { mode: "login" | "register" }) {
  const { user, ended } = useAuth();
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
      <form onSubmit={(e) => void submit(e)} aria-label={register ? "Create an account" : "Sign in"}>
        <h1>{register ? "Create an account" : "Sign in to llmchat"}</h1>
        {ended === "expired" && !register && error === null && (
          <p className="notice warn" role="status">
            Your session has expired. Please sign in again.
          </p>
        )}
        {error !== null && (
          <p className="notice error" role="alert">
            {error}
          </p>
        )}
        <label>
          Email
          <input type="email" autoComplete="email" required value={email} onChange={(e) => setEmail(e.target.value)} />
        </label>
        <label>
          Password
          <input
            type="password"
            autoComplete={register ? "new-password" : "current-password"}
            required
            value={password}
            onChange={(e) => setPassword(e.target.value)}
          />
        </label>
        <button type="submit" className="primary" disabled={busy}>
          {register ? "Create account" : "Sign in"}
        </button>
        <p className="muted">
          {register ? (
            <>
              Already have an account? <Link to="/login">Sign in</Link>
            </>
          ) : (
            <>
              New here? <Link to="/register">Create an account</Link>
            </>
          )}
        </p>
      </form>
    </main>
  );
}

function describe(error: unknown, mode: "login" | "register"): string {
  if (!(error instanceof ApiError)) return "Something went wrong. Please try again.";
  if (mode === "login" && error.status === 401) return "Wrong email or password.";
  return error.describe();
}
