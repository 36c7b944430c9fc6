// Every unit test starts in English, with the app's i18n instance bound to react-i18next (as
// main.tsx does in the browser); a test that switches language switches back after itself.
import { afterEach } from "vitest";

import i18n from "./i18n";

await i18n.changeLanguage("en");

afterEach(async () => {
  if (i18n.language !== "en") await i18n.changeLanguage("en");
});
