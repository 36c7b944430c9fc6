// @vitest-environment happy-dom
/**
 * The Models page in a DOM: choosing a profile, the confirmation naming worker, from and to, the
 * POST it sends, a refused switch's message, and the polling that speeds up while a switch runs.
 */
import { act } from "react";
import { createRoot, type Root } from "react-dom/client";
import { afterEach, beforeEach, describe, expect, it, vi, type MockInstance } from "vitest";

import { ApiError, session } from "../lib/api";
import type { WorkerList } from "../lib/types";
import { AdminModels } from "./AdminModelsPage";
import { profiles, switchingWorker, tinyWorker, workers } from "./fixtures/models";

Object.assign(globalThis, { IS_REACT_ACT_ENVIRONMENT: true });

let root: Root;
let box: HTMLDivElement;
let current: WorkerList;
let posts: { path: string; body: unknown }[];
let refuse: ApiError | null;
let json: MockInstance<typeof session.json>;

beforeEach(() => {
  vi.useFakeTimers({ toFake: ["setInterval", "clearInterval", "setTimeout", "clearTimeout", "Date"] });
  current = workers;
  posts = [];
  refuse = null;
  json = vi.spyOn(session, "json").mockImplementation((path: string, init: RequestInit = {}) => {
    if (init.method === "POST") {
      posts.push({ path, body: JSON.parse(init.body as string) });
      if (refuse !== null) return Promise.reject(refuse);
      return Promise.resolve({
        object: "model_switch",
        worker_id: "w-tiny",
        from: "tiny-random",
        to: "smollm2-135m-instruct",
        status: "accepted",
      });
    }
    if (path === "/v1/admin/workers") return Promise.resolve(structuredClone(current));
    if (path === "/v1/admin/profiles") return Promise.resolve(structuredClone(profiles));
    return Promise.reject(new Error(`unexpected ${path}`));
  });
  box = document.createElement("div");
  document.body.append(box);
  root = createRoot(box);
});

afterEach(() => {
  act(() => root.unmount());
  box.remove();
  vi.restoreAllMocks();
  vi.useRealTimers();
});

async function settle(ms = 0) {
  await act(async () => {
    await vi.advanceTimersByTimeAsync(ms);
  });
}

const q = (selector: string) => box.querySelector<HTMLElement>(selector);

function choose(alias: string) {
  const select = q(
    '[data-testid="worker-card"][data-worker-id="w-tiny"] [data-testid="switch-profile"]',
  ) as HTMLSelectElement;
  act(() => {
    select.value = alias;
    select.dispatchEvent(new Event("change", { bubbles: true }));
  });
}

function click(selector: string) {
  const button = q(selector);
  expect(button, selector).not.toBeNull();
  act(() => button!.click());
}

function workerCalls(): number {
  return json.mock.calls.filter(([path]) => path === "/v1/admin/workers").length;
}

describe("switching a worker's model", { timeout: 20_000 }, () => {
  it("asks first, naming the worker, the model it leaves and the one it loads, then POSTs the profile", async () => {
    act(() => root.render(<AdminModels />));
    await settle();
    expect(q('[data-testid="profile-row"][data-alias="smollm2-135m-instruct"]')).not.toBeNull();
    const button = () => q('[data-worker-id="w-tiny"] [data-testid="switch-button"]') as HTMLButtonElement;
    expect(button().disabled).toBe(true);
    choose("smollm2-135m-instruct");
    expect(button().disabled).toBe(false);
    click('[data-worker-id="w-tiny"] [data-testid="switch-button"]');
    const question = q(".switch-confirm-box")!.textContent ?? "";
    expect(question).toContain("Switch worker w-tiny from tiny-random to smollm2-135m-instruct?");
    expect(posts).toEqual([]);
    click('[data-testid="switch-confirm"]');
    await settle();
    expect(posts).toEqual([{ path: "/v1/admin/workers/w-tiny/model", body: { profile: "smollm2-135m-instruct" } }]);
    expect(q('[role="status"]')!.textContent).toBe("Switch of w-tiny to smollm2-135m-instruct requested.");
    expect(q('[data-testid="switch-confirm"]')).toBeNull();
  });

  it("can be cancelled without a request", async () => {
    act(() => root.render(<AdminModels />));
    await settle();
    choose("smollm2-135m-instruct");
    click('[data-worker-id="w-tiny"] [data-testid="switch-button"]');
    const cancel = [...box.querySelectorAll(".switch-confirm-box button")].find((b) => b.textContent === "Cancel");
    act(() => (cancel as HTMLButtonElement).click());
    expect(q('[data-testid="switch-confirm"]')).toBeNull();
    expect(posts).toEqual([]);
  });

  it("keeps a profile that does not fit out of reach, and warns about one that fits only with changes", async () => {
    act(() => root.render(<AdminModels />));
    await settle();
    const option = q('[data-worker-id="w-tiny"] option[value="qwen2.5-7b-instruct"]') as HTMLOptionElement;
    expect(option.disabled).toBe(true);
    choose("qwen2.5-0.5b-instruct");
    expect(q('[data-worker-id="w-tiny"] .switch-hint')!.textContent).toContain("Suggestion: max_model_len 8192");
  });

  it("shows the server's message when it refuses", async () => {
    refuse = new ApiError(409, "worker w-tiny is already switching", "switch_in_progress");
    act(() => root.render(<AdminModels />));
    await settle();
    choose("smollm2-135m-instruct");
    click('[data-worker-id="w-tiny"] [data-testid="switch-button"]');
    click('[data-testid="switch-confirm"]');
    await settle();
    expect(q('[data-worker-id="w-tiny"] [role="alert"]')!.textContent).toBe("worker w-tiny is already switching");
  });

  it("polls every second while a switch runs and every five seconds otherwise", async () => {
    act(() => root.render(<AdminModels />));
    await settle();
    const before = workerCalls();
    await settle(5000);
    expect(workerCalls() - before).toBe(1);
    // A switch starts (another admin, say): the next poll sees it and the page speeds up.
    current = { ...workers, data: [{ ...switchingWorker, worker_id: "w-tiny" }] };
    await settle(5000);
    expect(q('[data-testid="switch-state"]')!.dataset.state).toBe("loading");
    const fast = workerCalls();
    // (A second at a time: React batches the reloads of one long jump into one request.)
    for (let i = 0; i < 3; i++) await settle(1000);
    expect(workerCalls() - fast).toBe(3);
    // It ends: back to every five seconds (after the pending window of a switch asked here: none).
    current = { ...workers, data: [{ ...tinyWorker, model: "qwen2.5-0.5b-instruct" }] };
    await settle(1000);
    expect(q('[data-testid="switch-state"]')!.dataset.state).toBe("ready");
    const slow = workerCalls();
    for (let i = 0; i < 4; i++) await settle(1000);
    expect(workerCalls() - slow).toBe(0);
    await settle(1000);
    expect(workerCalls() - slow).toBe(1);
  });
});
