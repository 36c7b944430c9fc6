/**
 * The web app in Debian's Chromium (driven by playwright-core, no browser download) against a
 * real platform: tests/e2e/test_web_ui.py starts it and passes
 *   LLMCHAT_E2E_URL, LLMCHAT_E2E_ADMIN_EMAIL, LLMCHAT_E2E_ADMIN_PASSWORD, LLMCHAT_E2E_SCREENSHOTS.
 * The steps share one user and run in order.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { connect, createServer, type Server, type Socket } from "node:net";
import { join } from "node:path";

import { chromium, type Browser, type BrowserContext, type Page, type Request } from "playwright-core";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

const BASE = required("LLMCHAT_E2E_URL");
const ADMIN_EMAIL = required("LLMCHAT_E2E_ADMIN_EMAIL");
const ADMIN_PASSWORD = required("LLMCHAT_E2E_ADMIN_PASSWORD");
const SHOTS = process.env.LLMCHAT_E2E_SCREENSHOTS ?? "";
const CHROMIUM = process.env.LLMCHAT_E2E_CHROMIUM ?? "/usr/bin/chromium";
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const email = `e2e-${Date.now().toString(36)}@example.com`;
const password = "e2e correct horse battery staple";

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set (tests/e2e/test_web_ui.py sets it)`);
  return value;
}

/** Records every answer element's text as it changes (the page's own code is not touched). */
const RECORDER = `
  window.__answers = {};
  new MutationObserver(() => {
    for (const el of document.querySelectorAll('[data-testid="answer"][data-streaming]')) {
      const id = el.dataset.requestId;
      if (!id) continue;
      const rec = (window.__answers[id] ??= { lengths: [], final: null, chars: null });
      const text = el.querySelector(".body")?.innerText ?? "";
      if (rec.lengths[rec.lengths.length - 1] !== text.length) rec.lengths.push(text.length);
      if (el.dataset.streaming === "false" && rec.final === null) {
        rec.final = text;
        rec.chars = Number(el.dataset.chars);
      }
    }
  }).observe(document, { subtree: true, childList: true, characterData: true, attributes: true });
`;

interface Recorded {
  /** The rendered text's lengths as they changed. */
  lengths: number[];
  /** The rendered text when the answer ended, and the answer's own length then. */
  final: string | null;
  chars: number | null;
}

/** A TCP relay to the edge whose connections the test can cut: a real network loss, which
 * Chromium's offline emulation is not (it leaves open streams alone). */
class Relay {
  private server: Server | null = null;
  private readonly sockets = new Set<Socket>();
  private refusing = false;

  async start(): Promise<string> {
    const target = new URL(BASE);
    this.server = createServer((client) => {
      if (this.refusing) {
        client.destroy();
        return;
      }
      const upstream = connect(Number(target.port), target.hostname);
      for (const socket of [client, upstream]) {
        this.sockets.add(socket);
        socket.on("close", () => this.sockets.delete(socket));
        socket.on("error", () => {
          client.destroy();
          upstream.destroy();
        });
      }
      client.pipe(upstream).pipe(client);
    });
    await new Promise<void>((resolve) => this.server!.listen(0, "127.0.0.1", resolve));
    const address = this.server.address();
    if (address === null || typeof address === "string") throw new Error("no relay port");
    return `http://127.0.0.1:${address.port}`;
  }

  /** Drops every open connection and refuses new ones for `ms`. */
  cut(ms: number): void {
    this.refusing = true;
    for (const socket of this.sockets) socket.resetAndDestroy();
    setTimeout(() => {
      this.refusing = false;
    }, ms);
  }

  async stop(): Promise<void> {
    for (const socket of this.sockets) socket.destroy();
    await new Promise((resolve) => this.server?.close(resolve));
  }
}

let browser: Browser;
let context: BrowserContext;
let page: Page;
const requests: Request[] = [];
/** The edge's origin, and the relays' in front of it. */
const edgeOrigins = new Set([new URL(BASE).origin]);
const problems: string[] = [];
/** Extra body fields for the app's chat requests: long answers (the tiny model may stop early). */
let shape: Record<string, unknown> = {};
let conversationId = "";
let networkConversation = "";

async function newContext(
  viewport: { width: number; height: number },
  colorScheme: "light" | "dark" = "light",
  baseURL = BASE,
) {
  const ctx = await browser.newContext({ baseURL, viewport, colorScheme, deviceScaleFactor: 1 });
  await ctx.addInitScript(RECORDER);
  await ctx.route("**/v1/chat/completions", async (route) => {
    const body = JSON.parse(route.request().postData() ?? "{}") as Record<string, unknown>;
    await route.continue({ postData: JSON.stringify({ ...body, ...shape }) });
  });
  ctx.on("request", (r) => requests.push(r));
  ctx.on("console", (m) => {
    if (m.type() === "error" && /Content Security Policy|Refused to/i.test(m.text())) problems.push(m.text());
  });
  ctx.on("weberror", (e) => problems.push(String(e.error())));
  return ctx;
}

async function recorded(p: Page, requestId: string): Promise<Recorded> {
  return p.evaluate(
    (id) =>
      (window as unknown as { __answers: Record<string, Recorded> }).__answers[id] ?? {
        lengths: [],
        final: null,
        chars: null,
      },
    requestId,
  );
}

/** The answers each page had shown before its latest send (the recorder's ids). */
const seen = new WeakMap<Page, string[]>();

async function answerIds(p: Page): Promise<string[]> {
  return p.evaluate(() => Object.keys((window as unknown as { __answers: Record<string, unknown> }).__answers));
}

/** Call before an action that starts an answer; `liveRequestId` then finds that answer. */
async function expectAnswer(p: Page) {
  seen.set(p, await answerIds(p));
}

/** The id of the answer started since `expectAnswer` (found even if it has already ended). */
async function liveRequestId(p: Page): Promise<string> {
  const before = seen.get(p) ?? [];
  let found = "";
  await expect
    .poll(
      async () => {
        found = (await answerIds(p)).find((id) => !before.includes(id)) ?? "";
        return found;
      },
      { timeout: 60_000 },
    )
    .not.toBe("");
  return found;
}

async function waitForGrowth(p: Page, requestId: string, steps: number) {
  await expect
    .poll(async () => (await recorded(p, requestId)).lengths.filter((n) => n > 0).length, { timeout: 60_000 })
    .toBeGreaterThanOrEqual(steps);
}

async function finalText(p: Page, requestId: string): Promise<string> {
  await expect.poll(async () => (await recorded(p, requestId)).final, { timeout: 120_000 }).not.toBeNull();
  return (await recorded(p, requestId)).final ?? "";
}

/** The stored answer as the page shows it once history has it (same Markdown rendering). */
async function storedText(p: Page, requestId: string): Promise<string> {
  const stored = p.locator(`[data-testid="answer"][data-request-id="${requestId}"]:not([data-streaming])`);
  await stored.waitFor({ timeout: 30_000 });
  return stored.locator(".body").innerText();
}

async function api<T>(path: string, token: string, init: RequestInit = {}): Promise<{ status: number; body: T }> {
  const response = await fetch(BASE + path, {
    ...init,
    headers: { Authorization: `Bearer ${token}`, "Content-Type": "application/json" },
  });
  const text = await response.text();
  return { status: response.status, body: (text ? JSON.parse(text) : null) as T };
}

let cachedToken: { token: string; at: number } | null = null;

/** The user's access token for API checks, reused (logins are throttled per account). */
async function userToken(fresh = false): Promise<string> {
  if (!fresh && cachedToken !== null && Date.now() - cachedToken.at < 600_000) return cachedToken.token;
  cachedToken = { token: await login(email, password), at: Date.now() };
  return cachedToken.token;
}

async function login(who: string, secret: string): Promise<string> {
  const response = await fetch(`${BASE}/v1/auth/login`, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ email: who, password: secret }),
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { access_token: string }).access_token;
}

async function shot(p: Page, name: string) {
  if (!SHOTS) return;
  mkdirSync(SHOTS, { recursive: true });
  await p.screenshot({ path: join(SHOTS, `${name}.png`) });
}

async function signIn(p: Page, who: string, secret: string) {
  await p.goto("/login");
  await p.getByLabel("Email").fill(who);
  await p.getByLabel("Password").fill(secret);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.getByRole("button", { name: "Sign out" }).waitFor();
}

async function send(p: Page, text: string) {
  await expectAnswer(p);
  await p.getByLabel("Message").fill(text);
  await p.getByLabel("Message").press("Enter");
}

beforeAll(async () => {
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  context = await newContext(DESKTOP);
  page = await context.newPage();
});

afterEach(async (ctx) => {
  // What the page showed when a step failed, next to the screenshots (or in the temp folder).
  if (ctx.task.result?.state !== "fail" || page === undefined) return;
  const folder = SHOTS || "/tmp";
  mkdirSync(folder, { recursive: true });
  await page
    .screenshot({ path: join(folder, `failed-${ctx.task.name.replace(/\W+/g, "-")}.png`) })
    .catch(() => undefined);
});

afterAll(async () => {
  await browser?.close();
});

describe("the web app", () => {
  it("says plainly when a sign-in is refused: wrong password, too many attempts", async () => {
    await page.goto("/");
    await page.waitForURL(/\/login$/);
    await page.getByLabel("Email").fill(`nobody-${Date.now()}@example.com`);
    await page.getByLabel("Password").fill("not the password at all");
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Wrong email or password." }).waitFor();
    await page.route("**/v1/auth/login", (route) =>
      route.fulfill({
        status: 429,
        headers: { "Retry-After": "120", "Content-Type": "application/json" },
        body: JSON.stringify({
          error: { message: "too many login attempts", type: "rate_limit_error", code: "rate_limit_exceeded" },
        }),
      }),
    );
    await page.getByRole("button", { name: "Sign in" }).click();
    await page.getByRole("alert").filter({ hasText: "Try again in 2 min" }).waitFor();
    await page.unroute("**/v1/auth/login");
  });

  it("registers a new account and lands in an empty chat", async () => {
    await page.goto("/register");
    await page.getByLabel("Email").fill(email);
    await page.getByLabel("Password").fill(password);
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByLabel("Message").waitFor();
    expect(new URL(page.url()).pathname).toBe("/");
    await expect.poll(() => page.locator("#model option").count()).toBeGreaterThan(0);
    expect(await page.locator("#model").inputValue()).not.toBe("");
  });

  it("streams an answer progressively and stops it", async () => {
    shape = { ignore_eos: true, max_tokens: 1900 };
    await send(page, "Write a long story about a lighthouse keeper.");
    await page.getByText("Write a long story about a lighthouse keeper.").waitFor();
    const id = await liveRequestId(page);
    await waitForGrowth(page, id, 5);
    await page.waitForURL(/\/c\/[0-9a-f-]+$/);
    conversationId = new URL(page.url()).pathname.split("/").pop() ?? "";
    await page.getByRole("button", { name: "Stop" }).click();
    const shown = await finalText(page, id);
    await page.getByText("Stopped").first().waitFor();
    expect(shown.length).toBeGreaterThan(0);
    expect(await storedText(page, id)).toBe(shown);
    const { body } = await api<{ messages: { role: string; status: string; request_id: string }[] }>(
      `/v1/conversations/${conversationId}`,
      await userToken(),
    );
    expect(body.messages.map((m) => [m.role, m.status])).toEqual([
      ["user", "completed"],
      ["assistant", "cancelled"],
    ]);
    // Ended well before its 1,900 tokens.
    expect((await recorded(page, id)).lengths.length).toBeLessThan(1500);
  });

  it("stops following the answer down when the reader scrolls up", async () => {
    // A small window, so the answer overflows it early, while most of it is still to come.
    await page.setViewportSize({ width: 820, height: 420 });
    try {
      await page.getByRole("button", { name: "+ New chat" }).click();
      shape = { ignore_eos: true, max_tokens: 1900 };
      await send(page, "Tell me everything about tides.");
      const id = await liveRequestId(page);
      const box = page.locator(".messages");
      await expect
        .poll(() => box.evaluate((el) => el.scrollHeight > el.clientHeight + 100), { timeout: 60_000 })
        .toBe(true);
      // Following while at the bottom.
      expect(await box.evaluate((el) => el.scrollHeight - el.scrollTop - el.clientHeight)).toBeLessThan(40);
      await box.evaluate((el) => {
        el.scrollTop = 0;
      });
      const grown = (await recorded(page, id)).lengths.filter((n) => n > 0).length;
      await waitForGrowth(page, id, grown + 1);
      expect(await box.evaluate((el) => el.scrollTop)).toBe(0);
      await finalText(page, id);
    } finally {
      await page.setViewportSize(DESKTOP);
    }
  });

  it("resumes an answer after a reload in the middle, without duplicated or missing text", async () => {
    // A new chat: the tiny model's context (2,048 tokens) holds one long answer.
    await page.getByRole("button", { name: "+ New chat" }).click();
    shape = { ignore_eos: true, max_tokens: 1500 };
    await send(page, "Second question: tell me more.");
    const id = await liveRequestId(page);
    await waitForGrowth(page, id, 1);
    const before = Number(await page.locator(`[data-request-id="${id}"]`).getAttribute("data-chars"));
    const resumes = requests.length;
    await page.reload();
    const shown = await finalText(page, id);
    const chars = (await recorded(page, id)).chars ?? 0;
    expect(chars).toBeGreaterThan(before);
    // It re-attached with Last-Event-ID (not from the start).
    const reattached = requests.slice(resumes).filter((r) => r.url().includes(`/v1/jobs/${id}/events`));
    expect(reattached.length).toBeGreaterThan(0);
    expect(Number(await reattached[0]!.headerValue("last-event-id"))).toBeGreaterThan(1);
    expect(await storedText(page, id)).toBe(shown);
    const token = await userToken();
    const second = new URL(page.url()).pathname.split("/").pop() ?? "";
    const { body } = await api<{ messages: { role: string; status: string; content: string; request_id: string }[] }>(
      `/v1/conversations/${second}`,
      token,
    );
    expect(body.messages.map((m) => m.role)).toEqual(["user", "assistant"]);
    expect(body.messages[1]).toMatchObject({ request_id: id, status: "completed" });
    // The page's answer is the stored one, character for character: nothing twice, nothing lost.
    expect(chars).toBe(body.messages[1]!.content.length);
    const job = await api<{ usage: { completion_tokens: number } }>(`/v1/jobs/${id}`, token);
    expect(job.body.usage.completion_tokens).toBe(1500);
    await shot(page, "chat-desktop");
  });

  it("follows answers in two conversations at once", async () => {
    await page.getByRole("button", { name: "+ New chat" }).click();
    shape = { ignore_eos: true, max_tokens: 1200 };
    await send(page, "The first of two questions.");
    const first = await liveRequestId(page);
    await waitForGrowth(page, first, 2);
    await page.waitForURL(/\/c\/[0-9a-f-]+$/);
    const firstConversation = new URL(page.url()).pathname.split("/").pop() ?? "";
    // While the first answer streams, a second question in a new chat.
    await page.getByRole("button", { name: "+ New chat" }).click();
    await page.getByText("Ask anything.").waitFor();
    shape = { max_tokens: 30 };
    await send(page, "The second of two questions.");
    const second = await liveRequestId(page);
    expect(await storedText(page, second)).toBe(await finalText(page, second));
    // Back to the first (in the app, no reload): its answer went on meanwhile and ends whole.
    await page.locator(`a[href="/c/${firstConversation}"]`).click();
    const shown = await finalText(page, first);
    expect(await storedText(page, first)).toBe(shown);
    const { body } = await api<{ messages: { role: string; content: string; request_id: string }[] }>(
      `/v1/conversations/${firstConversation}`,
      await userToken(),
    );
    expect(body.messages.map((m) => m.role)).toEqual(["user", "assistant"]);
    expect((await recorded(page, first)).chars).toBe(body.messages[1]!.content.length);
  });

  it("keeps going through a lost network, saying it is reconnecting", async () => {
    const relay = new Relay();
    const origin = await relay.start();
    edgeOrigins.add(origin);
    const ctx = await newContext(DESKTOP, "light", origin);
    try {
      const p = await ctx.newPage();
      await signIn(p, email, password);
      await p.getByText("Ask anything.").waitFor();
      shape = { ignore_eos: true, max_tokens: 1500 };
      await send(p, "Third: and then?");
      const id = await liveRequestId(p);
      await waitForGrowth(p, id, 1);
      relay.cut(2_000);
      await p.getByText("Connection lost — reconnecting…").waitFor({ timeout: 30_000 });
      const shown = await finalText(p, id);
      expect(await storedText(p, id)).toBe(shown);
      await expect.poll(() => p.getByText("Connection lost — reconnecting…").count()).toBe(0);
      const third = new URL(p.url()).pathname.split("/").pop() ?? "";
      networkConversation = third;
      const { body } = await api<{ messages: { content: string }[] }>(`/v1/conversations/${third}`, await userToken());
      // Nothing twice, nothing lost: the page's answer is the stored one.
      expect((await recorded(p, id)).chars).toBe(body.messages[1]!.content.length);
      await page.goto(`/c/${third}`);
      await page.locator(`[data-testid="answer"][data-request-id="${id}"]`).waitFor();
    } finally {
      await ctx.close();
      await relay.stop();
    }
  });

  it("regenerates the last answer without storing the question twice", async () => {
    shape = { max_tokens: 40 };
    const first = await page.locator('[data-testid="answer"]').last().getAttribute("data-request-id");
    await expectAnswer(page);
    await page.getByRole("button", { name: "Regenerate" }).click();
    const id = await liveRequestId(page);
    expect(id).not.toBe(first);
    await finalText(page, id);
    await storedText(page, id);
    await expect.poll(() => page.getByText("Earlier answer").count()).toBe(1);
    const here = new URL(page.url()).pathname.split("/").pop() ?? "";
    const { body } = await api<{ messages: { role: string }[] }>(`/v1/conversations/${here}`, await userToken());
    expect(body.messages.map((m) => m.role)).toEqual(["user", "assistant", "assistant"]);
  });

  it("starts a new line with Shift+Enter instead of sending", async () => {
    const box = page.getByLabel("Message");
    await box.fill("first line");
    await box.press("Shift+Enter");
    await box.pressSequentially("second line");
    expect(await box.inputValue()).toBe("first line\nsecond line");
    expect(await page.locator('[data-testid="answer"][data-streaming]').count()).toBe(0);
    await box.fill("");
  });

  it("shows a 429 with when to retry and a 503 as a busy model", async () => {
    await page.route("**/v1/chat/completions", (route) =>
      route.fulfill({
        status: 429,
        headers: { "Retry-After": "7", "Content-Type": "application/json" },
        body: JSON.stringify({
          error: { message: "requests per minute exceeded", type: "rate_limit_error", code: "rate_limit_exceeded" },
        }),
      }),
    );
    await send(page, "Too fast?");
    await page.getByRole("alert").filter({ hasText: "Try again in 7 s" }).waitFor();
    await page.unroute("**/v1/chat/completions");
    await page.route("**/v1/chat/completions", (route) =>
      route.fulfill({
        status: 503,
        headers: { "Retry-After": "5", "Content-Type": "application/json" },
        body: JSON.stringify({
          error: { message: "64 requests waiting", type: "server_error", code: "model_overloaded" },
        }),
      }),
    );
    await page.getByRole("button", { name: "Send" }).click();
    await page.getByRole("alert").filter({ hasText: "The model is busy" }).waitFor();
    await page.unroute("**/v1/chat/completions");
    // The message is kept for another try.
    expect(await page.getByLabel("Message").inputValue()).toBe("Too fast?");
    await page.getByLabel("Message").fill("");
  });

  it("finds the conversation in the sidebar after a reload, renames it and searches for it", async () => {
    await page.reload();
    const item = page.locator('[data-testid="conversation-item"]', {
      has: page.locator(`a[href="/c/${conversationId}"]`),
    });
    await item.waitFor();
    const title = `Lighthouse notes ${Date.now().toString(36)}`;
    await item.getByRole("button", { name: /^Rename/ }).click();
    await page.getByLabel("New title").fill(title);
    await page.getByLabel("New title").press("Enter");
    await page.locator('[data-testid="conversation-item"]', { hasText: title }).waitFor();
    await page.reload();
    await page.locator('[data-testid="conversation-item"]', { hasText: title }).waitFor();
    await page.getByLabel("Search conversations").fill("lighthouse notes");
    await page.locator('[data-testid="conversation-item"]', { hasText: title }).waitFor();
    await page.getByLabel("Search conversations").fill("zebra quasar nothing");
    await page.getByText("Nothing found.").waitFor();
    await page.getByLabel("Search conversations").fill("");
    // Deleting asks first; a dismissed question deletes nothing.
    const victim = page.locator('[data-testid="conversation-item"]', {
      has: page.locator(`a[href="/c/${networkConversation}"]`),
    });
    page.once("dialog", (d) => void d.dismiss());
    await victim.getByRole("button", { name: /^Delete/ }).click();
    await expect.poll(() => victim.count()).toBe(1);
    page.once("dialog", (d) => void d.accept());
    await victim.getByRole("button", { name: /^Delete/ }).click();
    await expect.poll(() => victim.count()).toBe(0);
    expect((await api(`/v1/conversations/${networkConversation}`, await userToken())).status).toBe(404);
  });

  it("shows non-zero token usage", async () => {
    await page.getByRole("link", { name: "Usage" }).click();
    await expect
      .poll(
        async () => {
          await page.reload();
          const totals = page.getByTestId("usage-totals");
          await totals.waitFor();
          const text = await totals.innerText();
          return Math.max(0, ...(text.replace(/[,\u202f\u00a0.]/g, "").match(/\d+/g) ?? ["0"]).map(Number));
        },
        { timeout: 60_000, interval: 2_000 },
      )
      .toBeGreaterThan(1000);
    await page.locator("figure svg").first().waitFor();
    const [download] = await Promise.all([
      page.waitForEvent("download"),
      page.getByRole("button", { name: "Download CSV" }).click(),
    ]);
    expect(download.suggestedFilename()).toMatch(/^usage-.*\.csv$/);
    const csv = readFileSync(await download.path(), "utf8")
      .trim()
      .split("\n");
    expect(csv[0]).toContain("prompt_tokens");
    expect(csv.length).toBeGreaterThan(1);
    await shot(page, "usage-desktop");
  });

  it("creates an API key shown once, lists it by prefix and revokes it", async () => {
    await page.getByRole("link", { name: "API keys" }).click();
    await page.getByRole("button", { name: /create/i }).click();
    const key = (await page.getByTestId("new-key").locator("code").innerText()).trim();
    expect(key).toMatch(/^sk-llmchat-/);
    const row = page.getByTestId("key-row").first();
    await row.waitFor();
    const rowText = await row.innerText();
    expect(rowText).not.toContain(key);
    expect(rowText).toContain(key.slice(0, 14));
    expect((await api("/v1/models", key)).status).toBe(200);
    await row.getByRole("button", { name: /^Revoke/ }).click();
    await row.getByRole("button", { name: "Yes, revoke" }).click();
    await expect
      .poll(async () => (await page.getByTestId("key-row").first().innerText()).toLowerCase())
      .toContain("revoked");
    await expect.poll(async () => (await api("/v1/models", key)).status, { timeout: 15_000 }).toBe(401);
  });

  it("works on a phone-sized screen and in the dark theme", async () => {
    const phone = await newContext(PHONE, "dark");
    const p = await phone.newPage();
    await signIn(p, email, password);
    await p.goto(`/c/${conversationId}`);
    await p.locator('[data-testid="answer"]').first().waitFor();
    expect(await p.evaluate(() => document.documentElement.dataset.theme)).toBe("dark");
    // The conversation list is a drawer on a phone.
    expect(await p.getByLabel("Search conversations").isVisible()).toBe(false);
    await p.getByRole("button", { name: "Open conversations" }).click();
    expect(await p.getByLabel("Search conversations").isVisible()).toBe(true);
    await p.getByRole("button", { name: "Close conversations" }).click();
    expect(await p.getByLabel("Search conversations").isVisible()).toBe(false);
    await shot(p, "chat-phone");
    await p.getByRole("link", { name: "Usage" }).click();
    await p.getByTestId("usage-totals").waitFor();
    await p.locator("figure svg").first().waitFor();
    await shot(p, "usage-phone");
    // No horizontal scrolling on a phone.
    expect(await p.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(PHONE.width);
    await phone.close();
  });

  it("lets an admin see the live worker, and only an admin", async () => {
    await page.goto("/admin");
    await page.getByText("Administrators only").waitFor();
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
    await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.getByRole("link", { name: "Admin" }).click();
    // The suite's main worker among whatever else is live (an embedding worker, say).
    const worker = page.getByTestId("worker-row").filter({ hasText: "tiny-random" }).first();
    await worker.waitFor({ timeout: 30_000 });
    expect(await worker.innerText()).toMatch(/\ds ago/);
    await page.getByText(email).first().waitFor();
    // Disabling the user stops their sign-in at once; enabling restores it.
    const user = page.getByTestId("user-row").filter({ hasText: email });
    await user.getByRole("button", { name: /^Disable/ }).click();
    await user.getByRole("button", { name: "Yes, disable" }).click();
    await expect.poll(async () => (await user.innerText()).includes("Disabled")).toBe(true);
    const refused = await fetch(`${BASE}/v1/auth/login`, {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ email, password }),
    });
    expect([401, 403]).toContain(refused.status);
    await user.getByRole("button", { name: /^Enable/ }).click();
    await expect.poll(async () => (await user.innerText()).includes("Active")).toBe(true);
    await userToken(true);
    await shot(page, "admin-desktop");
    const phone = await newContext(PHONE);
    const p = await phone.newPage();
    await signIn(p, ADMIN_EMAIL, ADMIN_PASSWORD);
    await p.goto("/admin");
    await p.getByTestId("worker-row").first().waitFor();
    await shot(p, "admin-phone");
    await phone.close();
  });

  it("sends an expired session back to the sign-in page, saying so", async () => {
    const ctx = await newContext(DESKTOP);
    try {
      const p = await ctx.newPage();
      await signIn(p, email, password);
      // The refresh token no longer works (as after it expired, or was revoked elsewhere).
      await p.evaluate(() => localStorage.setItem("llmchat.refresh", "expired-or-revoked"));
      await p.reload();
      await p.getByText("Your session has expired. Please sign in again.").waitFor();
      expect(new URL(p.url()).pathname).toBe("/login");
    } finally {
      await ctx.close();
    }
  });

  it("asked no host but the edge, and broke no content security rule", () => {
    const elsewhere = requests
      .map((r) => r.url())
      .filter((u) => !u.startsWith("data:") && !u.startsWith("blob:") && !edgeOrigins.has(new URL(u).origin));
    expect(elsewhere).toEqual([]);
    // No token ever went into a URL.
    expect(requests.map((r) => r.url()).filter((u) => /token|sk-llmchat|eyJ/i.test(u))).toEqual([]);
    expect(problems).toEqual([]);
  });
});
