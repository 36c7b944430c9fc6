import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";

import i18n from "../i18n";
import { ModelsView } from "./AdminModelsPage";
import { profiles, switchingWorker, workers } from "./fixtures/models";

const idle = { data: null, error: null, reload: () => undefined };

function view(list = workers, fast = false): string {
  return renderToStaticMarkup(
    <ModelsView
      workers={list}
      profiles={profiles}
      workersLoad={{ ...idle, data: list }}
      profilesLoad={{ ...idle, data: profiles }}
      now={1_760_000_104}
      fast={fast}
      status=""
      onSwitchWorker={() => Promise.resolve()}
      onSwitchModel={() => Promise.resolve()}
    />,
  );
}

/** The opening tag of the first element with this test id (and attribute), or "". */
function tag(html: string, testId: string, attr = ""): string {
  return new RegExp(`<[a-z]+[^>]*data-testid="${testId}"[^>]*${attr}[^>]*>`).exec(html)?.[0] ?? "";
}

describe("the admin Models page", () => {
  it("lists the catalog with each profile's settings and its verdict per live worker", () => {
    const html = view();
    expect(html.match(/data-testid="profile-row"/g)).toHaveLength(4);
    expect(tag(html, "profile-row", 'data-alias="qwen2.5-7b-instruct"')).not.toBe("");
    const verdicts = [...html.matchAll(/data-testid="verdict" data-verdict="([a-z_]+)" data-worker-id="w-tiny"/g)].map(
      (m) => m[1],
    );
    expect(verdicts).toEqual(["fits", "fits", "fits_with_changes", "does_not_fit"]);
    // The reason and the suggestion are in the tooltip and in the opened verdict.
    expect(html).toContain("Suggestion: max_model_len 8192");
    expect(html).toContain("needs 15.2 GiB (weights 14.2 GiB + KV cache 1.0 GiB) but 2.3 GiB is available");
    expect(html).toContain("14.2 GiB");
    // Settings: precision and quantization, TP, context, a fallback chat template marked.
    expect(html).toContain('bfloat16<span class="muted"> · awq</span>');
    expect(html).toContain(">32,768<");
    expect(html).toContain('data-testid="template-fallback"');
    expect(html).toContain("7.6B parameters");
    expect(html).toContain(">operator<");
  });

  it("shows each worker with its model, state, load and a Switch whose unfitting choices are disabled", () => {
    const html = view();
    expect(tag(html, "worker-card", 'data-worker-id="w-tiny"')).toContain('data-model="tiny-random"');
    expect(tag(html, "switch-state")).toContain('data-state="ready"');
    expect(html).toContain(">Ready<");
    expect(html).toContain("3 / 16");
    expect(html).toContain("2 CPU cores, 7.6 GiB RAM");
    // The current model is not offered; one that does not fit is disabled; the others say how they fit.
    expect(html).not.toContain('<option value="tiny-random"');
    expect(html).toContain(
      '<option value="qwen2.5-7b-instruct" disabled="">qwen2.5-7b-instruct — Does not fit</option>',
    );
    expect(html).toContain('<option value="qwen2.5-0.5b-instruct">qwen2.5-0.5b-instruct — Fits with changes</option>');
    expect(tag(html, "switch-button")).toContain("disabled");
    expect(html).toContain('aria-label="Switch the model of worker w-tiny"');
  });

  it("says which workers did not answer for the catalog", () => {
    const html = renderToStaticMarkup(
      <ModelsView
        workers={workers}
        profiles={{ ...profiles, unreachable: ["w-gone"] }}
        workersLoad={{ ...idle, data: workers }}
        profilesLoad={{ ...idle, data: profiles }}
        now={1_760_000_104}
        fast={false}
        status=""
        onSwitchWorker={() => Promise.resolve()}
        onSwitchModel={() => Promise.resolve()}
      />,
    );
    expect(html).toContain("No answer from w-gone: its verdicts are missing.");
  });

  it("marks a model that no worker serves", () => {
    const html = view();
    expect(tag(html, "served-model", 'data-model="embed-small"')).toContain('data-status="no_worker"');
    expect(html).toContain(">no worker<");
  });

  it("shows a running switch's step, progress and message, and polls fast meanwhile", () => {
    const html = view({ ...workers, data: [switchingWorker] }, true);
    expect(tag(html, "switch-state")).toContain('data-state="loading"');
    expect(tag(html, "switch-progress")).toContain('data-step="loading"');
    expect(html).toContain("Loading qwen2.5-0.5b-instruct");
    expect(html).toContain("40%");
    expect(html).toContain('<progress max="1" value="0.4"');
    expect(html).toContain("loading weights 2/5");
    expect(html).toContain("smollm2-135m-instruct → qwen2.5-0.5b-instruct, asked by admin@example.com 54s ago");
    expect(tag(html, "models-poll")).toContain('data-fast="true"');
    expect(html).toContain("Updated every 1 sec");
    // No second switch while one runs.
    expect(tag(html, "switch-profile")).toContain("disabled");
  });

  it("shows a rollback and its error", () => {
    const rolledBack = {
      ...switchingWorker,
      state: "ready" as const,
      model: "smollm2-135m-instruct",
      switch: { ...switchingWorker.switch!, step: "rolled_back" as const, progress: null, error: "out of memory" },
    };
    const html = view({ ...workers, data: [rolledBack] });
    expect(tag(html, "switch-progress")).toContain('data-step="rolled_back"');
    expect(html).toContain("Rolled back to smollm2-135m-instruct");
    expect(html).toContain('role="alert">out of memory</p>');
    expect(html).not.toContain("<progress");
  });

  it("is all in Korean when the language is Korean", async () => {
    await i18n.changeLanguage("ko");
    const html = view({ ...workers, data: [switchingWorker, workers.data[0]!] }, true);
    expect(html).toContain(">카탈로그<");
    expect(html).toContain(">준비됨<");
    expect(html).toContain(">불러오는 중<");
    expect(html).toContain("qwen2.5-0.5b-instruct 모델을 불러오는 중");
    expect(html).toContain("맞지 않음");
    expect(html).toContain("변경하면 맞음");
    expect(html).toContain("제안: max_model_len 8192");
    expect(html).toContain(">워커 없음<");
    expect(html).toContain("1초마다 업데이트");
    expect(html).toContain("w-tiny 워커의 모델 전환");
    expect(html).toContain("54초 전");
    expect(html).toContain("매개변수 76.2억");
  });
});
