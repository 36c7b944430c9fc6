import { renderToStaticMarkup } from "react-dom/server";
import { describe, expect, it } from "vitest";

import type { Model, ModelCapabilities } from "../lib/types";
import { ModelPicker } from "./ModelPicker";

const caps: ModelCapabilities = {
  kind: "chat",
  tools: true,
  json_output: true,
  modalities: ["text"],
  fim: false,
  dimensions: null,
  matryoshka: false,
};

const models: Model[] = [
  { id: "qwen", workers: 1, capacity: 4, running: 0, max_model_len: 4096, capabilities: caps },
  {
    id: "json-only",
    workers: 0,
    capacity: 0,
    running: 0,
    max_model_len: null,
    capabilities: { ...caps, tools: false },
  },
  { id: "old", workers: 2, capacity: 8, running: 1, max_model_len: 2048 },
];

function picker(value: string): string {
  return renderToStaticMarkup(<ModelPicker models={models} value={value} onChange={() => undefined} />);
}

describe("the model picker", () => {
  it("lists each model with its live workers and what it supports", () => {
    const html = picker("qwen");
    expect(html).toContain('<label class="sr-only" for="model">Model</label>');
    expect(html).toContain('<option value="qwen" selected="">qwen — 1 live worker · tools · JSON</option>');
    expect(html).toContain('<option value="json-only">json-only — no live worker · JSON</option>');
    expect(html).toContain('<option value="old">old — 2 live workers</option>');
  });

  it("shows the chosen model's features as badges that the select points to", () => {
    const html = picker("qwen");
    expect(html).toContain('aria-describedby="model-features"');
    expect(html).toContain('<span id="model-features" class="badges"><span class="sr-only">Supports: </span>');
    expect(html).toContain('<span class="badge" title="This model calls tools (functions)">tools</span>');
    expect(html).toContain(">JSON</span>");
    const jsonOnly = picker("json-only");
    expect(jsonOnly).not.toContain(">tools</span>");
    expect(jsonOnly).toContain(">JSON</span>");
  });

  it("shows no badges for a model whose workers do not say what it supports", () => {
    const html = picker("old");
    expect(html).not.toContain('class="badge"');
    expect(html).not.toContain("aria-describedby");
  });
});
