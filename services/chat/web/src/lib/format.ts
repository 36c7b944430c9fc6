/**
 * Numbers, dates and times in the app's language (not the browser's: a reader who switched to
 * Korean reads Korean dates). Every function takes the language to use, by default the one in
 * use; formatters are cached per language and options (building one costs more than using it).
 */
import { currentLanguage } from "../i18n";

const cache = new Map<string, Intl.NumberFormat | Intl.DateTimeFormat | Intl.RelativeTimeFormat>();

function cached<T extends Intl.NumberFormat | Intl.DateTimeFormat | Intl.RelativeTimeFormat>(
  kind: string,
  locale: string,
  options: object,
  make: () => T,
): T {
  const key = `${kind} ${locale} ${JSON.stringify(options)}`;
  let found = cache.get(key) as T | undefined;
  if (found === undefined) {
    found = make();
    cache.set(key, found);
  }
  return found;
}

function numberFormat(locale: string, options: Intl.NumberFormatOptions = {}): Intl.NumberFormat {
  return cached("n", locale, options, () => new Intl.NumberFormat(locale, options));
}

function dateFormat(locale: string, options: Intl.DateTimeFormatOptions): Intl.DateTimeFormat {
  return cached("d", locale, options, () => new Intl.DateTimeFormat(locale, options));
}

export function fmtInt(value: number, locale: string = currentLanguage()): string {
  return numberFormat(locale, { maximumFractionDigits: 0 }).format(value);
}

/** A number with up to `digits` decimals (a parameter count in billions, a fraction). */
export function fmtNumber(value: number, digits = 1, locale: string = currentLanguage()): string {
  return numberFormat(locale, { maximumFractionDigits: digits }).format(value);
}

/** Short numbers for chart axes: 1.2K, 3.4M (1.2천, 340만 in Korean). */
export function fmtCompact(value: number, locale: string = currentLanguage()): string {
  return numberFormat(locale, { notation: "compact", maximumFractionDigits: 1 }).format(value);
}

export function fmtPercent(part: number, whole: number, locale: string = currentLanguage()): string {
  return numberFormat(locale, { style: "percent", maximumFractionDigits: 0 }).format(whole > 0 ? part / whole : 0);
}

/** Bytes in binary units: "14.2 GiB" (units stay as they are: GiB is GiB in Korean too). */
export function fmtBytes(bytes: number, locale: string = currentLanguage()): string {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${numberFormat(locale, { maximumFractionDigits: unit === 0 ? 0 : 1 }).format(value)} ${units[unit]}`;
}

const DAY = /^\d{4}-\d{2}-\d{2}$/;

/** A UTC day (`YYYY-MM-DD`) in words; short for axes, long for tables and tooltips. */
export function fmtDay(day: string, style: "short" | "long" = "long", locale: string = currentLanguage()): string {
  const text = day.slice(0, 10);
  const time = DAY.test(text) ? Date.parse(`${text}T00:00:00Z`) : Number.NaN;
  if (Number.isNaN(time)) return day;
  const options: Intl.DateTimeFormatOptions =
    style === "short"
      ? { month: "short", day: "numeric", timeZone: "UTC" }
      : { weekday: "short", year: "numeric", month: "short", day: "numeric", timeZone: "UTC" };
  return dateFormat(locale, options).format(time);
}

/** An ISO timestamp (or unix seconds) in the reader's time zone. */
export function fmtDateTime(
  value: string | number | null | undefined,
  style: "medium" | "full" = "medium",
  locale: string = currentLanguage(),
): string {
  if (value === null || value === undefined || value === "") return "";
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  const options: Intl.DateTimeFormatOptions =
    style === "full" ? { dateStyle: "full", timeStyle: "long" } : { dateStyle: "medium", timeStyle: "short" };
  return dateFormat(locale, options).format(date);
}

/** How long ago, in the largest whole unit: "4s ago", "3m ago" (4초 전, 3분 전). */
export function fmtAgo(seconds: number, locale: string = currentLanguage()): string {
  const s = Math.max(0, Math.round(seconds));
  const [value, unit]: [number, Intl.RelativeTimeFormatUnit] =
    s < 60
      ? [s, "second"]
      : s < 3600
        ? [Math.floor(s / 60), "minute"]
        : s < 86_400
          ? [Math.floor(s / 3600), "hour"]
          : [Math.floor(s / 86_400), "day"];
  const format = cached(
    "r",
    locale,
    {},
    () => new Intl.RelativeTimeFormat(locale, { style: "narrow", numeric: "always" }),
  );
  return format.format(-value, unit);
}

function unit(value: number, name: string, display: "narrow" | "short", locale: string): string {
  return numberFormat(locale, { style: "unit", unit: name, unitDisplay: display }).format(value);
}

/** An uptime in its two largest units: "45s", "12m", "3h 5m", "2d 4h" (45초, 3시간 5분). */
export function fmtDuration(seconds: number, locale: string = currentLanguage()): string {
  const s = Math.max(0, Math.floor(seconds));
  if (s < 60) return unit(s, "second", "narrow", locale);
  const minutes = Math.floor(s / 60);
  if (minutes < 60) return unit(minutes, "minute", "narrow", locale);
  const hours = Math.floor(minutes / 60);
  if (hours < 24) return `${unit(hours, "hour", "narrow", locale)} ${unit(minutes % 60, "minute", "narrow", locale)}`;
  return `${unit(Math.floor(hours / 24), "day", "narrow", locale)} ${unit(hours % 24, "hour", "narrow", locale)}`;
}

/** A wait before retrying, rounded up: "7 sec", "2 min" (7초, 2분). */
export function fmtWait(seconds: number, locale: string = currentLanguage()): string {
  if (seconds < 60) return unit(Math.max(1, Math.ceil(seconds)), "second", "short", locale);
  return unit(Math.ceil(seconds / 60), "minute", "short", locale);
}

/** An ISO timestamp (or unix seconds) as `YYYY-MM-DDTHH:MM:SS.sssZ`, for `<time dateTime>`. */
export function isoOf(value: string | number): string {
  const date = typeof value === "number" ? new Date(value * 1000) : new Date(value);
  return Number.isNaN(date.getTime()) ? "" : date.toISOString();
}
