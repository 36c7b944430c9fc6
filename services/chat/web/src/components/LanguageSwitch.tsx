import { useTranslation } from "react-i18next";

import { currentLanguage, LANGUAGE_NAMES, LANGUAGES, setLanguage, type Language } from "../i18n";

/** The language picker (top bar, sign-in page): each language named in itself; the choice is remembered. */
export function LanguageSwitch() {
  const { t } = useTranslation();
  const language = currentLanguage();
  return (
    <select
      className="language-switch"
      aria-label={t("language.label")}
      title={t("language.label")}
      value={language}
      data-testid="language-switch"
      onChange={(e) => void setLanguage(e.target.value as Language)}
    >
      {LANGUAGES.map((code) => (
        <option key={code} value={code} lang={code}>
          {LANGUAGE_NAMES[code]}
        </option>
      ))}
    </select>
  );
}
