/**
 * The README's screenshots (docs/screenshots) with real answers: `make screenshots` runs
 * infra/screenshots.py, which starts the platform with `make run`'s real model and passes
 *   LLMCHAT_SHOTS_URL, LLMCHAT_SHOTS_ADMIN_EMAIL, LLMCHAT_SHOTS_ADMIN_PASSWORD, LLMCHAT_SHOTS_DIR.
 * Without them (e.g. under the browser test's `npm run e2e`) it is skipped.
 */
import { mkdirSync } from "node:fs";
import { join } from "node:path";

import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const BASE = process.env.LLMCHAT_SHOTS_URL ?? "";
const ADMIN_EMAIL = process.env.LLMCHAT_SHOTS_ADMIN_EMAIL ?? "";
const ADMIN_PASSWORD = process.env.LLMCHAT_SHOTS_ADMIN_PASSWORD ?? "";
const SHOTS = process.env.LLMCHAT_SHOTS_DIR ?? "";
const CHROMIUM = process.env.LLMCHAT_E2E_CHROMIUM ?? "/usr/bin/chromium";
const DESKTOP = { width: 1280, height: 800 };
const PHONE = { width: 390, height: 844 };

const email = "ada@example.com";
const password = "screenshots correct horse battery staple";

/** One conversation: a fact, then code (the answer's Markdown: a highlighted block). */
const QUESTIONS = ["What is the capital of France?", "Write a Python function that reverses a string."];

let browser: Browser;
const contexts: BrowserContext[] = [];
let conversation = "";

async function newPage(viewport: { width: number; height: number }): Promise<Page> {
  // The README shows the English app, whatever the machine's language.
  const ctx = await browser.newContext({
    baseURL: BASE,
    viewport,
    colorScheme: "light",
    locale: "en-US",
    deviceScaleFactor: 1,
  });
  // Greedy decoding and a bounded answer: the same screenshots each time.
  await ctx.route("**/v1/chat/completions", async (route) => {
    const body = JSON.parse(route.request().postData() ?? "{}") as Record<string, unknown>;
    await route.continue({ postData: JSON.stringify({ ...body, temperature: 0, max_tokens: 200 }) });
  });
  contexts.push(ctx);
  return ctx.newPage();
}

async function shot(p: Page, name: string) {
  mkdirSync(SHOTS, { recursive: true });
  // The page settled: no spinner or caret mid-animation, fonts loaded.
  await p.evaluate(() => document.fonts.ready);
  await p.waitForTimeout(300);
  await p.screenshot({ path: join(SHOTS, `${name}.png`) });
}

async function signIn(p: Page, who: string, secret: string) {
  await p.goto("/login");
  await p.getByLabel("Email").fill(who);
  await p.getByLabel("Password").fill(secret);
  await p.getByRole("button", { name: "Sign in" }).click();
  await p.getByRole("button", { name: "Sign out" }).waitFor();
}

/** Sends a question and waits until its answer has ended and history has stored it. */
async function ask(p: Page, text: string) {
  const before = await p.locator('[data-testid="answer"]').count();
  await p.getByLabel("Message").fill(text);
  await p.getByLabel("Message").press("Enter");
  const answer = p.locator('[data-testid="answer"]').nth(before);
  await answer.waitFor({ timeout: 60_000 });
  await expect
    .poll(async () => (await p.locator('[data-testid="answer"][data-streaming="true"]').count()) === 0, {
      timeout: 170_000,
      interval: 500,
    })
    .toBe(true);
  const stored = p.locator('[data-testid="answer"]:not([data-streaming])').nth(before);
  await stored.waitFor({ timeout: 30_000 });
  const shown = (await stored.locator(".body").innerText()).trim();
  console.log(`Q: ${text}\nA: ${shown}\n`);
  expect(shown.length).toBeGreaterThan(0);
}

describe.skipIf(!BASE)("the README's screenshots", () => {
  let page: Page;

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
    page = await newPage(DESKTOP);
  });

  afterAll(async () => {
    for (const ctx of contexts) await ctx.close().catch(() => undefined);
    await browser?.close();
  });

  it("registers a user, who asks the model real questions", async () => {
    await page.goto("/register");
    await page.getByLabel("Email").fill(email);
    await page.getByLabel("Password").fill(password);
    await page.getByRole("button", { name: "Create account" }).click();
    await page.getByLabel("Message").waitFor();
    await expect.poll(() => page.locator("#model option").count()).toBeGreaterThan(0);
    for (const question of QUESTIONS) await ask(page, question);
    await page.waitForURL(/\/c\/[0-9a-f-]+$/);
    conversation = new URL(page.url()).pathname.split("/").pop() ?? "";
    await page.reload();
    await page
      .locator('[data-testid="answer"]')
      .nth(QUESTIONS.length - 1)
      .waitFor();
    await shot(page, "chat-desktop");
  });

  it("shows the usage", async () => {
    await page.getByRole("link", { name: "Usage" }).click();
    // The metrics projection counts the answers a moment after they end.
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
      .toBeGreaterThan(0);
    await page.locator("figure svg").first().waitFor();
    await shot(page, "usage-desktop");
  });

  it("on a phone", async () => {
    const p = await newPage(PHONE);
    await signIn(p, email, password);
    await p.goto(`/c/${conversation}`);
    await p
      .locator('[data-testid="answer"]')
      .nth(QUESTIONS.length - 1)
      .waitFor();
    await shot(p, "chat-phone");
    await p.getByRole("link", { name: "Usage" }).click();
    await p.getByTestId("usage-totals").waitFor();
    await p.locator("figure svg").first().waitFor();
    await shot(p, "usage-phone");
  });

  it("the admin page", async () => {
    await page.getByRole("button", { name: "Sign out" }).click();
    await page.getByRole("button", { name: "Sign in" }).waitFor();
    await signIn(page, ADMIN_EMAIL, ADMIN_PASSWORD);
    await page.getByRole("link", { name: "Admin" }).click();
    await page.getByTestId("worker-row").first().waitFor({ timeout: 30_000 });
    await page.getByText(email).first().waitFor();
    await shot(page, "admin-desktop");
    const p = await newPage(PHONE);
    await signIn(p, ADMIN_EMAIL, ADMIN_PASSWORD);
    await p.goto("/admin");
    await p.getByTestId("worker-row").first().waitFor({ timeout: 30_000 });
    await shot(p, "admin-phone");
  });

  it("the Models page", async () => {
    await page.goto("/admin/models");
    await page.getByTestId("profile-row").first().waitFor({ timeout: 30_000 });
    await page.getByTestId("verdict").first().waitFor({ timeout: 30_000 });
    await shot(page, "models-desktop");
  });

  it("in Korean", async () => {
    const p = await newPage(DESKTOP);
    await signIn(p, email, password);
    // The top bar's language switch, as a person would: kept for the next visit.
    await p.evaluate(() => localStorage.setItem("llmchat.lang", "ko"));
    await p.goto(`/c/${conversation}`);
    await p
      .locator('[data-testid="answer"]')
      .nth(QUESTIONS.length - 1)
      .waitFor();
    expect(await p.evaluate(() => document.documentElement.lang)).toBe("ko");
    await shot(p, "chat-desktop.ko");
  });
});
