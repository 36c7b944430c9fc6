import { describe, expect, it } from "vitest";

import i18n from "../i18n";
import { fmtAgo, fmtBytes, fmtCompact, fmtDateTime, fmtDay, fmtDuration, fmtInt, fmtPercent, fmtWait } from "./format";

describe("numbers and dates in the app's language", () => {
  it("format numbers per locale", () => {
    expect(fmtInt(1234567, "en")).toBe("1,234,567");
    expect(fmtInt(1234567, "ko")).toBe("1,234,567");
    expect(fmtCompact(12_345, "en")).toBe("12.3K");
    expect(fmtCompact(12_345, "ko")).toBe("1.2만");
    expect(fmtCompact(7_615_616_512, "en")).toBe("7.6B");
    expect(fmtCompact(7_615_616_512, "ko")).toBe("76.2억");
    expect(fmtPercent(1, 4, "en")).toBe("25%");
    expect(fmtPercent(1, 4, "ko")).toBe("25%");
    expect(fmtBytes(24 * 1024 ** 3, "en")).toBe("24 GiB");
    expect(fmtBytes(1536, "ko")).toBe("1.5 KiB");
  });

  it("format days and times per locale", () => {
    expect(fmtDay("2026-12-06", "long", "en")).toBe("Sun, Dec 6, 2026");
    expect(fmtDay("2026-12-06", "long", "ko")).toBe("2026년 12월 6일 (일)");
    expect(fmtDay("2026-12-06", "short", "en")).toBe("Dec 6");
    expect(fmtDay("2026-12-06", "short", "ko")).toBe("12월 6일");
    const at = Date.UTC(2026, 11, 6, 13, 5) / 1000;
    const local = new Date(at * 1000);
    expect(fmtDateTime(at, "medium", "en")).toBe(
      new Intl.DateTimeFormat("en", { dateStyle: "medium", timeStyle: "short" }).format(local),
    );
    expect(fmtDateTime(at, "medium", "ko")).toContain(`${local.getFullYear()}. 12. `);
    expect(fmtDateTime(null)).toBe("");
  });

  it("say how long ago and for how long per locale", () => {
    expect(fmtAgo(4, "en")).toBe("4s ago");
    expect(fmtAgo(4, "ko")).toBe("4초 전");
    expect(fmtAgo(180, "ko")).toBe("3분 전");
    expect(fmtAgo(7200, "en")).toBe("2h ago");
    expect(fmtDuration(45, "en")).toBe("45s");
    expect(fmtDuration(3 * 3600 + 5 * 60, "ko")).toBe("3시간 5분");
    expect(fmtDuration(2 * 86_400 + 4 * 3600, "en")).toBe("2d 4h");
    expect(fmtWait(7, "en")).toBe("7 sec");
    expect(fmtWait(120, "en")).toBe("2 min");
    expect(fmtWait(120, "ko")).toBe("2분");
  });

  it("use the app's language by default, and follow a switch", async () => {
    expect(fmtAgo(4)).toBe("4s ago");
    await i18n.changeLanguage("ko");
    expect(fmtAgo(4)).toBe("4초 전");
    expect(fmtDay("2026-12-06", "short")).toBe("12월 6일");
    expect(i18n.t("messages.tokens", { count: 1234 })).toBe("1,234토큰");
    await i18n.changeLanguage("en");
    expect(i18n.t("messages.tokens", { count: 1 })).toBe("1 token");
    expect(i18n.t("messages.tokens", { count: 1234 })).toBe("1,234 tokens");
  });
});
