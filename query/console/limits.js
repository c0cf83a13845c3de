// The limits panel: the tenant's tier and status, each cap with its current use (from the
// enforcer, through the query service), and the 80 % storage alert line.

import { quantity } from "./format.js";

function node(tag, className, text) {
  const made = document.createElement(tag);
  if (className) made.className = className;
  if (text !== undefined) made.textContent = text;
  return made;
}

function level(percent) {
  if (percent >= 100) return "over";
  if (percent >= 80) return "warn";
  return "ok";
}

/** One cap: name, used of limit, a bar, and (storage) the alert line at its share of the cap. */
function cap(name, label, view, unit, alertAt) {
  const section = node("div", "cap");
  section.dataset.cap = name;
  const head = node("div", "cap-head");
  head.append(node("span", "cap-name", label));
  const figures = node("span", "cap-figures");
  if (view.limit === null) {
    figures.append(node("span", "cap-used", quantity(view.used, unit)), " of ", node("span", "cap-limit", "Unlimited"));
    head.append(figures);
    section.append(head, node("p", "cap-note", "No cap on this tier."));
    return section;
  }
  figures.append(
    node("span", "cap-used", quantity(view.used, unit)),
    " of ",
    node("span", "cap-limit", quantity(view.limit, unit)),
  );
  head.append(figures);
  const percent = view.percent ?? 0;
  const meter = node("div", `meter ${level(percent)}`);
  meter.setAttribute("role", "meter");
  meter.setAttribute("aria-label", `${label}: ${percent.toFixed(1)} % of the cap`);
  meter.setAttribute("aria-valuemin", "0");
  meter.setAttribute("aria-valuemax", "100");
  meter.setAttribute("aria-valuenow", percent.toFixed(1));
  const fill = node("div", "meter-fill");
  fill.style.width = `${Math.min(percent, 100)}%`;
  meter.append(fill);
  if (alertAt !== null && alertAt !== undefined && view.limit > 0) {
    const share = Math.min((alertAt / view.limit) * 100, 100);
    const line = node("div", "alert-line");
    line.style.left = `${share}%`;
    line.title = `Alert at ${quantity(alertAt, unit)} (${share.toFixed(0)} % of the cap)`;
    meter.append(line);
  }
  section.append(head, meter);
  const foot = node("div", "cap-foot");
  foot.append(node("span", "cap-percent", `${percent.toFixed(1)} %`));
  if (alertAt !== null && alertAt !== undefined) {
    foot.append(node("span", "cap-alert", `alert line ${quantity(alertAt, unit)}`));
  }
  foot.append(node("span", "cap-remaining", `${quantity(view.remaining, unit)} left`));
  section.append(foot);
  if (view.held > 0) section.append(node("p", "cap-note", `${quantity(view.held, unit)} held by open reservations.`));
  return section;
}

function badge(text, kind) {
  const made = node("span", `badge ${kind}`, text);
  return made;
}

/** Fills `panel` with `limits` (the enforcer's `/v1/tenants/{id}/limits` answer). */
export function drawLimits(panel, limits) {
  const body = panel.querySelector(".limits-body");
  body.replaceChildren();
  const badges = node("div", "badges");
  badges.append(badge(limits.tier, "tier"), badge(limits.status, limits.status === "active" ? "active" : "inactive"));
  body.append(badges);
  body.append(cap("users", "Users", limits.users, "users", null));
  body.append(cap("storage", "Storage", limits.storage_bytes, "bytes", limits.storage_alert_bytes));
  const rate = node("div", "cap");
  rate.dataset.cap = "rate";
  const head = node("div", "cap-head");
  head.append(node("span", "cap-name", "Rate limit"));
  const shown = limits.rate_limit
    ? `${quantity(limits.rate_limit.per_second)}/s, burst ${quantity(limits.rate_limit.burst)}`
    : "Unlimited";
  head.append(node("span", "cap-figures cap-limit", shown));
  rate.append(head);
  body.append(rate);
  const age = limits.usage_age_ms;
  const note = age === null || age === undefined
    ? "Current use not yet read by the enforcer."
    : `Current use as of ${Math.round(age / 1000)} s ago.`;
  body.append(node("p", "limits-note", limits.holds_unavailable ? `${note} Reservations unavailable.` : note));
}

/** Shows why there are no limits to show. */
export function limitsMessage(panel, message) {
  const body = panel.querySelector(".limits-body");
  body.replaceChildren(node("p", "limits-empty", message));
}
