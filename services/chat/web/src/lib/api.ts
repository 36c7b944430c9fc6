/**
 * The edge's public API, as the browser calls it: every request carries the access token in an
 * `Authorization` header (never in a URL). The refresh token survives a reload in localStorage;
 * refreshes are serialised across tabs with a Web Lock, each reading the newest stored token
 * under the lock, so two tabs never present one refresh token twice (the auth service treats a
 * reused refresh token as stolen and revokes the whole family).
 *
 * Messages from the server are shown as they come (the edge speaks English); what the app says
 * itself around them is translated.
 */

import i18n from "../i18n";
import { fmtWait } from "./format";

const REFRESH_KEY = "llmchat.refresh";
const LOCK = "llmchat-refresh";
/** Refresh this long before the access token expires. */
const EARLY_MS = 30_000;

export interface ErrorBody {
  error?: { message?: string; type?: string; param?: string | null; code?: string | null };
}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
    readonly retryAfter: number | null = null,
    readonly requestId: string | null = null,
  ) {
    super(message);
  }

  /** What to tell a person, in the app's language: the server's message, with when to retry where it said. */
  describe(): string {
    if (this.status === 0) return i18n.t("errors.network");
    if (this.code === "session_expired") return i18n.t("errors.sessionExpired");
    const wait = this.retryAfter !== null ? ` ${i18n.t("errors.tryAgainIn", { wait: fmtWait(this.retryAfter) })}` : "";
    if (this.status === 429) return `${i18n.t("errors.tooMany", { message: this.message })}${wait}`;
    if (this.status === 503 && this.code === "model_overloaded") return `${i18n.t("errors.modelBusy")}${wait}`;
    if (this.status === 503) return i18n.t("errors.unavailable", { message: this.message });
    return this.message;
  }
}

export async function errorFrom(response: Response): Promise<ApiError> {
  let body: ErrorBody = {};
  try {
    body = (await response.json()) as ErrorBody;
  } catch {
    // not JSON (a proxy's page): the status says enough
  }
  const retry = response.headers.get("Retry-After");
  return new ApiError(
    response.status,
    body.error?.message ?? `${response.status} ${response.statusText}`,
    body.error?.code ?? null,
    retry !== null && retry !== "" && !Number.isNaN(Number(retry)) ? Number(retry) : null,
    response.headers.get("X-Request-Id"),
  );
}

export interface TokenPair {
  access_token: string;
  expires_in: number;
  refresh_token: string;
}

export interface User {
  id: string;
  email: string;
  role: "user" | "admin";
  disabled: boolean;
  created_at: string;
  last_login_at?: string | null;
}

type Listener = (reason: "login" | "logout" | "expired") => void;

async function withLock<T>(fn: () => Promise<T>): Promise<T> {
  if (typeof navigator !== "undefined" && navigator.locks) {
    return navigator.locks.request(LOCK, fn);
  }
  return fn();
}

export class Session {
  private access: string | null = null;
  private expiresAt = 0;
  private listeners = new Set<Listener>();

  get signedIn(): boolean {
    return localStorage.getItem(REFRESH_KEY) !== null;
  }

  onChange(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(reason: "login" | "logout" | "expired"): void {
    for (const listener of this.listeners) listener(reason);
  }

  private store(pair: TokenPair): void {
    this.access = pair.access_token;
    this.expiresAt = Date.now() + pair.expires_in * 1000;
    localStorage.setItem(REFRESH_KEY, pair.refresh_token);
  }

  async login(email: string, password: string): Promise<void> {
    const response = await send("/v1/auth/login", { method: "POST", body: JSON.stringify({ email, password }) });
    this.store((await response.json()) as TokenPair);
    this.emit("login");
  }

  async register(email: string, password: string): Promise<void> {
    await send("/v1/auth/register", { method: "POST", body: JSON.stringify({ email, password }) });
    await this.login(email, password);
  }

  async logout(): Promise<void> {
    const refresh = localStorage.getItem(REFRESH_KEY);
    try {
      await this.fetch("/v1/auth/logout", { method: "POST", body: JSON.stringify({ refresh_token: refresh }) });
    } catch {
      // the local session ends either way
    }
    this.clear();
    this.emit("logout");
  }

  /** A password change revokes the other sessions and hands this one new tokens. */
  adopt(pair: TokenPair): void {
    this.store(pair);
  }

  private clear(): void {
    this.access = null;
    this.expiresAt = 0;
    localStorage.removeItem(REFRESH_KEY);
  }

  /** A valid access token, refreshed first when it is about to expire. */
  async token(): Promise<string> {
    if (this.access !== null && Date.now() < this.expiresAt - EARLY_MS) return this.access;
    await this.refresh();
    if (this.access === null) throw new ApiError(401, "session expired", "session_expired");
    return this.access;
  }

  async refresh(): Promise<void> {
    const used = this.access;
    await withLock(async () => {
      // Another call (or tab) may have refreshed while this one waited for the lock.
      if (this.access !== used && this.access !== null) return;
      const stored = localStorage.getItem(REFRESH_KEY);
      if (stored === null) {
        this.access = null;
        return;
      }
      let response: Response;
      try {
        response = await send("/v1/auth/refresh", { method: "POST", body: JSON.stringify({ refresh_token: stored }) });
      } catch (error) {
        if (error instanceof ApiError && (error.status === 401 || error.status === 403)) {
          this.clear();
          this.emit("expired");
        }
        throw error;
      }
      this.store((await response.json()) as TokenPair);
    });
  }

  /** `fetch` with the access token; a 401 refreshes once and retries. Non-2xx throw ApiError. */
  async fetch(path: string, init: RequestInit = {}): Promise<Response> {
    let response = await this.raw(path, init, await this.token());
    if (response.status === 401) {
      this.access = null;
      await this.refresh();
      response = await this.raw(path, init, await this.token());
      if (response.status === 401) {
        this.clear();
        this.emit("expired");
      }
    }
    if (!response.ok) throw await errorFrom(response);
    return response;
  }

  async json<T>(path: string, init: RequestInit = {}): Promise<T> {
    const response = await this.fetch(path, init);
    return (await response.json()) as T;
  }

  private async raw(path: string, init: RequestInit, token: string): Promise<Response> {
    const headers = new Headers(init.headers);
    headers.set("Authorization", `Bearer ${token}`);
    // A FormData body (a file upload) sets its own multipart type and boundary.
    if (init.body !== undefined && !(init.body instanceof FormData) && !headers.has("Content-Type"))
      headers.set("Content-Type", "application/json");
    try {
      return await fetch(path, { ...init, headers });
    } catch (error) {
      if (error instanceof DOMException && error.name === "AbortError") throw error;
      throw new ApiError(0, "network error");
    }
  }
}

/** An unauthenticated call (login, register, refresh). */
async function send(path: string, init: RequestInit): Promise<Response> {
  let response: Response;
  try {
    response = await fetch(path, { ...init, headers: { "Content-Type": "application/json" } });
  } catch {
    throw new ApiError(0, "network error");
  }
  if (!response.ok) throw await errorFrom(response);
  return response;
}

export const session = new Session();

/** Saves a response body (a CSV export) as a file without putting a token in a URL. */
export async function download(path: string, fallbackName: string): Promise<void> {
  const response = await session.fetch(path);
  const disposition = response.headers.get("Content-Disposition") ?? "";
  const name = /filename="([^"]+)"/.exec(disposition)?.[1] ?? fallbackName;
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = name;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}
