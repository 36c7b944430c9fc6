import i18n from "../i18n";
import type { Model } from "./types";

/** The models a chat can use: all but embedding models (a model without capabilities is a chat model). */
export function chatModels(models: Model[]): Model[] {
  return models.filter((m) => m.capabilities?.kind !== "embedding");
}

export interface Feature {
  label: string;
  /** What the label means, for a tooltip and screen readers. */
  description: string;
}

/** What a model says it supports, as short labels (none when its workers do not say). */
export function modelFeatures(model: Model): Feature[] {
  const caps = model.capabilities;
  if (caps === undefined || caps === null) return [];
  const features: Feature[] = [];
  if (caps.tools)
    features.push({ label: i18n.t("model.featureTools"), description: i18n.t("model.featureToolsDescription") });
  if (caps.json_output)
    features.push({ label: i18n.t("model.featureJson"), description: i18n.t("model.featureJsonDescription") });
  return features;
}

/** A model's line in the picker: its id, whether a worker serves it, what it supports. */
export function modelOptionLabel(model: Model): string {
  const live = model.workers > 0 ? i18n.t("model.liveWorkers", { count: model.workers }) : i18n.t("model.noLiveWorker");
  return [i18n.t("model.option", { id: model.id, live }), ...modelFeatures(model).map((f) => f.label)].join(" · ");
}
