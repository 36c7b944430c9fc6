import { describe, expect, it } from "vitest";

import en from "./en.json";
import ko from "./ko.json";

type Catalog = { [key: string]: string | Catalog };

/** Every string of a catalog by its dotted key. */
function flatten(catalog: Catalog, prefix = ""): Map<string, string> {
  const out = new Map<string, string>();
  for (const [key, value] of Object.entries(catalog)) {
    const path = prefix === "" ? key : `${prefix}.${key}`;
    if (typeof value === "string") out.set(path, value);
    else for (const [k, v] of flatten(value, path)) out.set(k, v);
  }
  return out;
}

const PLURAL = /_(zero|one|two|few|many|other)$/;

/** Keys with their plural forms folded into one (`a_one`, `a_other` → `a`): each language has its own forms. */
function grouped(catalog: Catalog): Map<string, string[]> {
  const out = new Map<string, string[]>();
  for (const [key, value] of flatten(catalog)) {
    const base = key.replace(PLURAL, "");
    out.set(base, [...(out.get(base) ?? []), value]);
  }
  return out;
}

/** The interpolations of a string (`{{name}}`, `{{count, number}}`) and its markup tags (`<code>`). */
function placeholders(text: string): string[] {
  const vars = [...text.matchAll(/\{\{\s*([^}]+?)\s*\}\}/g)].map((m) => `{{${m[1]!.replace(/\s+/g, "")}}}`);
  const tags = [...text.matchAll(/<\/?([a-z]+)>/g)].map((m) => m[0]);
  return [...new Set([...vars, ...tags])].sort();
}

const catalogs = { en: en as Catalog, ko: ko as Catalog };

describe("the message catalogs", () => {
  it("have the same keys in English and Korean, none missing and none extra", () => {
    const enKeys = [...grouped(catalogs.en).keys()].sort();
    const koKeys = [...grouped(catalogs.ko).keys()].sort();
    expect(koKeys.filter((k) => !enKeys.includes(k))).toEqual([]);
    expect(enKeys.filter((k) => !koKeys.includes(k))).toEqual([]);
    expect(enKeys.length).toBeGreaterThan(300);
  });

  it("use the same interpolation variables and markup in both languages", () => {
    const koGroups = grouped(catalogs.ko);
    const mismatches: string[] = [];
    for (const [key, enForms] of grouped(catalogs.en)) {
      const want = placeholders(enForms.join(" "));
      const got = placeholders((koGroups.get(key) ?? []).join(" "));
      if (JSON.stringify(want) !== JSON.stringify(got)) mismatches.push(`${key}: ${want.join(" ")} ≠ ${got.join(" ")}`);
    }
    expect(mismatches).toEqual([]);
  });

  it("give each plural exactly the forms its language's plural rules use", () => {
    for (const [language, catalog] of Object.entries(catalogs)) {
      const categories = new Intl.PluralRules(language).resolvedOptions().pluralCategories.slice().sort();
      const forms = new Map<string, string[]>();
      for (const key of flatten(catalog).keys()) {
        const match = PLURAL.exec(key);
        if (match === null) continue;
        const base = key.replace(PLURAL, "");
        forms.set(base, [...(forms.get(base) ?? []), match[1]!]);
      }
      expect(forms.size).toBeGreaterThan(3);
      for (const [base, found] of forms) expect([base, found.sort()]).toEqual([base, categories]);
    }
  });

  it("have no empty message, and Korean ones are in Korean", () => {
    for (const catalog of Object.values(catalogs))
      for (const [key, value] of flatten(catalog)) expect([key, value.trim() === ""]).toEqual([key, false]);
    // Strings that are only markup, names or symbols stay the same; everything else is written in Hangul.
    const same = new Set(["common.failedWith", "model.option", "model.featureJson", "range.text", "models.option"]);
    const same2 = new Set(["models.noValue", "models.col.tp"]);
    const english = [...flatten(catalogs.ko)].filter(
      ([key, value]) => !same.has(key) && !same2.has(key) && !/[\uac00-\ud7a3]/.test(value),
    );
    expect(english).toEqual([]);
  });

  it("keep product names as they are", () => {
    const koText = flatten(catalogs.ko);
    expect(koText.get("nav.keys")).toBe("API 키");
    expect(koText.get("auth.signInTitle")).toContain("llmchat");
  });
});
