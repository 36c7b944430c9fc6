/**
 * The app's languages (English and Korean) with i18next: every string a person sees comes from
 * src/locales/<language>.json. The language is the one chosen with the switch (kept in
 * localStorage), else the browser's: Korean when the first language it prefers that the app
 * has is Korean, else English. `<html lang>` follows it, so screen readers, fonts and the
 * browser's own controls (date inputs) use it too.
 */
import i18next from "i18next";
import { initReactI18next } from "react-i18next";

import en from "./locales/en.json";
import ko from "./locales/ko.json";

export const LANGUAGES = ["en", "ko"] as const;
export type Language = (typeof LANGUAGES)[number];

/** Each language's name in itself, for the switch. */
export const LANGUAGE_NAMES: Record<Language, string> = { en: "English", ko: "한국어" };

export const resources = { en: { translation: en }, ko: { translation: ko } } as const;

const KEY = "llmchat.lang";

function isLanguage(value: unknown): value is Language {
  return typeof value === "string" && (LANGUAGES as readonly string[]).includes(value);
}

/** The app's language for a browser's preferred languages (BCP 47 tags, most preferred first). */
export function detectLanguage(preferred: readonly string[]): Language {
  for (const tag of preferred) {
    const base = tag.toLowerCase().split(/[-_]/)[0];
    if (isLanguage(base)) return base;
  }
  return "en";
}

function stored(): string | null {
  try {
    return typeof localStorage === "undefined" ? null : localStorage.getItem(KEY);
  } catch {
    return null; // storage blocked (a privacy setting): the browser's language then
  }
}

/** The chosen language if one was saved, else the browser's. */
export function initialLanguage(): Language {
  const saved = stored();
  if (isLanguage(saved)) return saved;
  if (typeof navigator === "undefined") return "en";
  return detectLanguage(navigator.languages?.length ? navigator.languages : [navigator.language ?? ""]);
}

/** Switches the app's language and remembers the choice for the next visit. */
export async function setLanguage(language: Language): Promise<void> {
  try {
    localStorage.setItem(KEY, language);
  } catch {
    // not remembered, but switched
  }
  await i18n.changeLanguage(language);
}

/** The language in use (always one of LANGUAGES). */
export function currentLanguage(): Language {
  return isLanguage(i18n.language) ? i18n.language : "en";
}

function markDocument(language: string): void {
  if (typeof document !== "undefined") document.documentElement.lang = language;
}

const i18n = i18next.createInstance();
i18n.on("languageChanged", markDocument);
void i18n.use(initReactI18next).init({
  resources,
  lng: initialLanguage(),
  fallbackLng: "en",
  supportedLngs: LANGUAGES,
  // The catalogs are bundled: ready before the first render, no Suspense.
  initAsync: false,
  interpolation: { escapeValue: false },
  react: { useSuspense: false },
});
markDocument(currentLanguage());

export default i18n;

declare module "i18next" {
  interface CustomTypeOptions {
    defaultNS: "translation";
    resources: { translation: typeof en };
  }
}
