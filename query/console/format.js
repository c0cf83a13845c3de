// Number, byte, date and time-zone helpers shared by the console's parts.

const numberFormat = new Intl.NumberFormat("en-US", { maximumFractionDigits: 3 });
const BYTE_UNITS = ["B", "KB", "MB", "GB", "TB", "PB"];

/** A quantity for people: bytes in powers of 1,000 (as the tiers' caps are), the rest grouped. */
export function quantity(value, unit) {
  if (value === null || value === undefined || Number.isNaN(value)) return "—";
  if (unit === "bytes") {
    let scaled = value;
    let index = 0;
    while (Math.abs(scaled) >= 1000 && index < BYTE_UNITS.length - 1) {
      scaled /= 1000;
      index += 1;
    }
    const digits = index === 0 || Math.abs(scaled) >= 100 ? 0 : 1;
    return `${scaled.toFixed(digits)} ${BYTE_UNITS[index]}`;
  }
  return numberFormat.format(value);
}

/** A quantity with its unit (bytes carry theirs already). */
export function withUnit(value, unit) {
  const shown = quantity(value, unit);
  return unit && unit !== "bytes" && shown !== "—" ? `${shown} ${unit}` : shown;
}

/** Short axis labels: 1.2k, 3.4M. */
export function compact(value, unit) {
  if (unit === "bytes") return quantity(value, unit);
  return new Intl.NumberFormat("en-US", { notation: "compact", maximumFractionDigits: 1 }).format(value);
}

/** Today's date (YYYY-MM-DD) in `zone`. */
export function todayIn(zone) {
  return new Intl.DateTimeFormat("en-CA", { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit" })
    .format(new Date());
}

function parts(date) {
  const [y, m, d] = date.split("-").map(Number);
  return { y, m, d };
}

function show(utc) {
  return utc.toISOString().slice(0, 10);
}

/** `date` plus `days` (plain calendar dates, no zone). */
export function addDays(date, days) {
  const { y, m, d } = parts(date);
  return show(new Date(Date.UTC(y, m - 1, d + days)));
}

/** The first day of `date`'s month, `months` months on. */
export function monthStart(date, months = 0) {
  const { y, m } = parts(date);
  return show(new Date(Date.UTC(y, m - 1 + months, 1)));
}

/** The whole days [from, to) of a named range, as of today in `zone`. */
export function rangeDates(range, zone, custom) {
  const today = todayIn(zone);
  switch (range) {
    case "today": return [today, addDays(today, 1)];
    case "yesterday": return [addDays(today, -1), today];
    case "7d": return [addDays(today, -6), addDays(today, 1)];
    case "30d": return [addDays(today, -29), addDays(today, 1)];
    case "this-month": return [monthStart(today), monthStart(today, 1)];
    case "last-month": return [monthStart(today, -1), monthStart(today)];
    default: return [custom.from, addDays(custom.to, 1)];
  }
}

/** Days widened to whole months (month windows need them). */
export function wholeMonths([from, to]) {
  const last = addDays(to, -1);
  return [monthStart(from), monthStart(last, 1)];
}

/** A window's start as its label: the API writes times in the query's zone already. */
export function windowLabel(start, window) {
  const [date, time] = start.split("T");
  const hhmm = time ? time.slice(0, 5) : "00:00";
  switch (window) {
    case "minute": return `${date} ${hhmm}`;
    case "hour": return `${date} ${hhmm}`;
    case "month": return date.slice(0, 7);
    default: return date;
  }
}

/** A short tick label for the x axis. */
export function tickLabel(start, window) {
  const [date, time] = start.split("T");
  switch (window) {
    case "minute": return time ? time.slice(0, 5) : "";
    case "hour": return time && time.slice(0, 5) !== "00:00" ? time.slice(0, 5) : date.slice(5);
    case "month": return date.slice(0, 7);
    default: return date.slice(5);
  }
}

/** The zones the browser knows, the browser's own first. */
export function zones() {
  const own = Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  const known = typeof Intl.supportedValuesOf === "function" ? Intl.supportedValuesOf("timeZone") : [];
  return [...new Set([own, "UTC", ...known])];
}
