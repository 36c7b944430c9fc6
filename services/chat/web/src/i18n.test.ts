import { afterEach, beforeEach, describe, expect, it } from "vitest";

import i18n, { currentLanguage, detectLanguage, initialLanguage, setLanguage } from "./i18n";

/** A localStorage and a document element for the node test environment. */
function fakeBrowser() {
  const store = new Map<string, string>();
  const storage = {
    getItem: (k: string) => store.get(k) ?? null,
    setItem: (k: string, v: string) => void store.set(k, String(v)),
    removeItem: (k: string) => void store.delete(k),
  };
  const root = { lang: "" };
  Object.assign(globalThis, { localStorage: storage, document: { documentElement: root } });
  return { store, root };
}

describe("the app's language", () => {
  it("follows the browser: Korean when the first language the app has is Korean, else English", () => {
    expect(detectLanguage(["ko-KR", "en-US"])).toBe("ko");
    expect(detectLanguage(["ko"])).toBe("ko");
    expect(detectLanguage(["fr-FR", "KO", "en"])).toBe("ko");
    expect(detectLanguage(["fr-FR", "en-GB", "ko-KR"])).toBe("en");
    expect(detectLanguage(["ja-JP", "de"])).toBe("en");
    expect(detectLanguage([])).toBe("en");
  });

  describe("chosen with the switch", () => {
    let browser: ReturnType<typeof fakeBrowser>;
    beforeEach(() => {
      browser = fakeBrowser();
    });
    afterEach(() => {
      Reflect.deleteProperty(globalThis, "localStorage");
      Reflect.deleteProperty(globalThis, "document");
    });

    it("is remembered in localStorage, used on the next visit and set on <html lang>", async () => {
      await setLanguage("ko");
      expect(browser.store.get("llmchat.lang")).toBe("ko");
      expect(browser.root.lang).toBe("ko");
      expect(currentLanguage()).toBe("ko");
      expect(i18n.t("nav.signOut")).toBe("로그아웃");
      // The next visit starts in the saved language, whatever the browser prefers.
      expect(initialLanguage()).toBe("ko");
      await setLanguage("en");
      expect(browser.store.get("llmchat.lang")).toBe("en");
      expect(browser.root.lang).toBe("en");
      expect(initialLanguage()).toBe("en");
      expect(i18n.t("nav.signOut")).toBe("Sign out");
    });

    it("ignores a saved value that is not one of the app's languages", () => {
      browser.store.set("llmchat.lang", "xx");
      // No navigator in node: English.
      expect(initialLanguage()).toBe("en");
    });
  });
});
