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
  const selected = models.find((m) => m.id === value);
  const features = selected === undefined ? [] : modelFeatures(selected);
  return (
    <div className="model-picker">
      <label className="sr-only" htmlFor="model">
        Model
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
          <span className="sr-only">Supports: </span>
          {features.map((f) => (
            <span key={f.label} className="badge" title={`This model ${f.description}`}>
              {f.label}
            </span>
          ))}
        </span>
      )}
    </div>
  );
}
