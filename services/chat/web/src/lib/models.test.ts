import { describe, expect, it } from "vitest";

import { chatModels, modelFeatures, modelOptionLabel } from "./models";
import type { Model, ModelCapabilities } from "./types";

const chat: ModelCapabilities = {
  kind: "chat",
  tools: true,
  json_output: true,
  modalities: ["text"],
  fim: false,
  dimensions: null,
  matryoshka: false,
};

function model(id: string, workers: number, capabilities?: ModelCapabilities | null): Model {
  return { id, workers, capacity: 4, running: 0, max_model_len: 2048, capabilities };
}

describe("the model picker's list", () => {
  const models = [
    model("qwen", 2, chat),
    model("embed", 1, { ...chat, kind: "embedding", tools: false, json_output: false, dimensions: 384 }),
    model("old-worker", 1),
    model("plain", 0, { ...chat, tools: false, json_output: false }),
    model("null-caps", 1, null),
  ];

  it("has no embedding models; a model without capabilities is a chat model", () => {
    expect(chatModels(models).map((m) => m.id)).toEqual(["qwen", "old-worker", "plain", "null-caps"]);
  });

  it("says what each model supports", () => {
    expect(modelFeatures(models[0]!).map((f) => f.label)).toEqual(["tools", "JSON"]);
    expect(modelFeatures(model("t", 1, { ...chat, json_output: false })).map((f) => f.label)).toEqual(["tools"]);
    expect(modelFeatures(models[2]!)).toEqual([]);
    expect(modelFeatures(models[3]!)).toEqual([]);
  });

  it("labels each option with its live workers and features", () => {
    expect(modelOptionLabel(models[0]!)).toBe("qwen — 2 live workers · tools · JSON");
    expect(modelOptionLabel(models[2]!)).toBe("old-worker — 1 live worker");
    expect(modelOptionLabel(models[3]!)).toBe("plain — no live worker");
  });
});
