// Relative times for the chat page ("just now", "5 min ago", "yesterday"),
// written by the browser's Intl.RelativeTimeFormat in the reader's language,
// with the full date in a tooltip; `refreshTimes` keeps shown ones current.

const format = new Intl.RelativeTimeFormat(undefined, { numeric: "auto" });
const full = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

/** The steps a relative time moves through, in seconds. */
const UNITS = [
  ["year", 365 * 24 * 3600],
  ["month", 30 * 24 * 3600],
  ["week", 7 * 24 * 3600],
  ["day", 24 * 3600],
  ["hour", 3600],
  ["minute", 60],
];

/**
 * A protocol timestamp as a Date. The reference writes ISO times without a
 * zone (`2026-12-07T00:10:59.900605`), which are UTC.
 */
function parse(value) {
  if (typeof value !== "string" || value === "") {
    return null;
  }
  const zoned = /[zZ]|[+-]\d\d:?\d\d$/.test(value) ? value : `${value}Z`;
  const date = new Date(zoned);
  return Number.isNaN(date.getTime()) ? null : date;
}

/** "just now", "5 minutes ago", "yesterday"… for a moment in the past. */
export function relativeTime(date, now = Date.now()) {
  const seconds = Math.round((date.getTime() - now) / 1000);
  if (Math.abs(seconds) < 45) {
    return "just now";
  }
  for (const [unit, size] of UNITS) {
    if (Math.abs(seconds) >= size) {
      return format.format(Math.round(seconds / size), unit);
    }
  }
  return format.format(Math.round(seconds / 60) || -1, "minute");
}

/** A `<time>` element for a protocol timestamp, or null when it has none. */
export function timeElement(value) {
  const date = parse(value);
  if (!date) {
    return null;
  }
  const element = document.createElement("time");
  element.className = "relative-time";
  element.dateTime = date.toISOString();
  element.title = full.format(date);
  element.textContent = relativeTime(date);
  return element;
}

/** Rewrites every relative time on the page; app.js runs it once a minute. */
export function refreshTimes() {
  for (const element of document.querySelectorAll("time.relative-time")) {
    element.textContent = relativeTime(new Date(element.dateTime));
  }
}
