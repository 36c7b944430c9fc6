import { useTranslation } from "react-i18next";

import { modelFeatures, modelOptionLabel } from "../lib/models";
import type { Model } from "../lib/types";

/**
 * The chat's model picker: each model with whether a worker serves it and what it supports; the
 * chosen model's features also as badges beside it.
 */
export function ModelPicker({
  models,
  value,
  onChange,
}: {
  models: Model[];
  value: string;
  onChange: (id: string) => void;
}) {
  const { t } = useTranslation();
  const selected = models.find((m) => m.id === value);
  const features = selected === undefined ? [] : modelFeatures(selected);
  return (
    <div className="model-picker">
      <label className="sr-only" htmlFor="model">
        {t("model.label")}
      </label>
      <select
        id="model"
        value={value}
        onChange={(e) => onChange(e.target.value)}
        aria-describedby={features.length > 0 ? "model-features" : undefined}
      >
        {models.map((m) => (
          <option key={m.id} value={m.id}>
            {modelOptionLabel(m)}
          </option>
        ))}
      </select>
      {features.length > 0 && (
        <span id="model-features" className="badges">
          <span className="sr-only">{t("model.supports")}</span>
          {features.map((f) => (
            <span key={f.label} className="badge" title={f.description}>
              {f.label}
            </span>
          ))}
        </span>
      )}
    </div>
  );
}
