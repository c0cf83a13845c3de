// The usage console: sign in with a key, choose tenant, metric, range, window and time zone, and
// see usage per window (from /v1/usage) beside the tenant's limits (from /v1/tenants/{id}/limits).
// The choices live in the address's fragment, so a view can be shared (without the key).

import { drawChart } from "./chart.js";
import { drawLimits, limitsMessage } from "./limits.js";
import { addDays, quantity, rangeDates, wholeMonths, windowLabel, withUnit, zones } from "./format.js";

const KEY_SLOT = "tally.console.key";
const $ = (id) => document.getElementById(id);
const state = { key: null, scope: null, ownTenant: null, metrics: [], asked: 0, lastQuery: null };

class ApiError extends Error {
  constructor(status, body) {
    super(body?.error || `the service answered ${status}`);
    this.status = status;
    this.body = body;
  }
}

async function api(path, params) {
  const query = params ? `?${params.toString()}` : "";
  const answer = await fetch(`${path}${query}`, { headers: { Authorization: `Bearer ${state.key}` } });
  if (answer.ok) return answer;
  let body = null;
  try { body = await answer.json(); } catch { /* not JSON */ }
  throw new ApiError(answer.status, body);
}

const apiJson = async (path, params) => (await api(path, params)).json();

// ---- choices -----------------------------------------------------------------------------

function metricDef() {
  return state.metrics.find((m) => m.name === $("metric").value) || state.metrics[0];
}

function choices() {
  return {
    tenant: $("tenant").value.trim(),
    metric: $("metric").value,
    range: $("range").value,
    window: $("window").value,
    zone: $("zone").value,
    from: $("from").value,
    to: $("to").value,
  };
}

function daysOf([from, to]) {
  return Math.round((Date.parse(to) - Date.parse(from)) / 86_400_000);
}

function usageParams(chosen, window = chosen.window) {
  let dates = rangeDates(chosen.range, chosen.zone, { from: chosen.from, to: chosen.to });
  if (window === "month") dates = wholeMonths(dates);
  const params = new URLSearchParams({ metric: chosen.metric, from: dates[0], to: dates[1], time_zone: chosen.zone });
  if (window) {
    params.set("window", window);
    params.set("fill", "zero");
  }
  if (chosen.tenant) params.set("tenant", chosen.tenant);
  return { params, dates };
}

/** Windows too fine for the range are not offered (a chart of 10,000 bars says nothing). */
function fitWindow() {
  const chosen = choices();
  if (chosen.range === "custom" && !(chosen.from && chosen.to)) return;
  const days = daysOf(rangeDates(chosen.range, chosen.zone, chosen));
  const allowed = { minute: days <= 2, hour: days <= 62, day: days <= 800, month: true };
  for (const option of $("window").options) option.disabled = !allowed[option.value];
  if (!allowed[$("window").value]) $("window").value = days <= 62 ? "hour" : "day";
}

function saveChoices() {
  const chosen = choices();
  const fragment = new URLSearchParams();
  for (const name of ["tenant", "metric", "range", "window", "zone"]) if (chosen[name]) fragment.set(name, chosen[name]);
  if (chosen.range === "custom") { fragment.set("from", chosen.from); fragment.set("to", chosen.to); }
  history.replaceState(null, "", `#${fragment.toString()}`);
}

function restoreChoices() {
  const fragment = new URLSearchParams(location.hash.slice(1));
  for (const name of ["metric", "range", "window", "zone", "from", "to"]) {
    const value = fragment.get(name);
    if (value && [...($(name).options || [{ value }])].some((o) => o.value === value)) $(name).value = value;
  }
  if (fragment.get("tenant") && state.scope !== "tenant") $("tenant").value = fragment.get("tenant");
  $("from").closest(".field").hidden = $("range").value !== "custom";
  $("to").closest(".field").hidden = $("range").value !== "custom";
}

// ---- drawing -----------------------------------------------------------------------------

function valueOf(row, kind) {
  if (kind === "gauge") return row.latest === null ? null : Number(row.latest);
  if (kind === "unique") return row.distinct;
  return Number(row.sum);
}

const VALUE_NAMES = { counter: "Sum", gauge: "Latest", unique: "Distinct" };

function drawTable(rows, def, window) {
  const head = $("table").tHead;
  const body = $("table").tBodies[0];
  const headRow = document.createElement("tr");
  for (const title of ["Window", VALUE_NAMES[def.kind], "Events"]) {
    const cell = document.createElement("th");
    cell.textContent = title;
    headRow.append(cell);
  }
  head.replaceChildren(headRow);
  body.replaceChildren(...rows.map((row) => {
    const line = document.createElement("tr");
    for (const text of [windowLabel(row.window_start, window), withUnit(valueOf(row, def.kind), def.unit), row.count]) {
      const cell = document.createElement("td");
      cell.textContent = String(text);
      line.append(cell);
    }
    return line;
  }));
}

async function drawStats(rows, def, chosen) {
  const values = rows.map((row) => valueOf(row, def.kind)).filter((v) => v !== null);
  const events = rows.reduce((total, row) => total + row.count, 0);
  const peakIndex = values.length ? rows.findIndex((row) => valueOf(row, def.kind) === Math.max(...values)) : -1;
  $("stat-events").textContent = events.toLocaleString("en-US");
  $("stat-windows").textContent = rows.length.toLocaleString("en-US");
  const peak = $("stat-peak");
  if (peakIndex < 0 || events === 0) {
    peak.textContent = "—";
  } else {
    const when = document.createElement("small");
    when.textContent = windowLabel(rows[peakIndex].window_start, chosen.window);
    peak.replaceChildren(withUnit(Math.max(...values), def.unit), when);
  }
  if (def.kind === "counter") {
    $("stat-total-label").textContent = "Total";
    $("stat-total").textContent = withUnit(values.reduce((a, b) => a + b, 0), def.unit);
  } else if (def.kind === "gauge") {
    $("stat-total-label").textContent = "Latest";
    const latest = [...rows].reverse().find((row) => row.latest !== null);
    $("stat-total").textContent = latest ? withUnit(Number(latest.latest), def.unit) : "—";
  } else {
    // Distinct values over the range are not the sum of the windows' distinct counts: ask for it.
    $("stat-total-label").textContent = "Distinct in range";
    const whole = await apiJson("/v1/usage", usageParams(chosen, "").params);
    $("stat-total").textContent = quantity(whole.rows[0]?.distinct ?? 0);
  }
}

async function showUsage(chosen, asked) {
  const chart = $("chart");
  chart.dataset.state = "loading";
  $("chart-status").textContent = "Loading…";
  const def = metricDef();
  const { params, dates } = usageParams(chosen);
  const answer = await apiJson("/v1/usage", params);
  if (asked !== state.asked) return;
  const rows = answer.rows;
  const points = rows.map((row) => ({
    start: row.window_start, end: row.window_end, value: valueOf(row, def.kind), events: row.count,
  }));
  const who = chosen.tenant || "all tenants";
  $("chart-title").textContent = `${def.name} · ${who}`;
  $("chart-subtitle").textContent =
    `${VALUE_NAMES[def.kind]} per ${chosen.window}, ${dates[0]} to ${addDays(dates[1], -1)} (${answer.time_zone}) · ${def.description}`;
  drawChart(chart, points, { window: chosen.window, unit: def.unit, valueName: VALUE_NAMES[def.kind] });
  drawTable(rows, def, chosen.window);
  await drawStats(rows, def, chosen);
  state.lastQuery = { params, name: `usage-${chosen.tenant || "all"}-${chosen.metric}-${dates[0]}-${dates[1]}.csv` };
  chart.dataset.windows = String(points.length);
  Object.assign(chart.dataset, { tenant: chosen.tenant, metric: chosen.metric, window: chosen.window });
  chart.dataset.state = "ready";
  $("chart-status").textContent = rows.every((row) => row.count === 0) ? "No events in this range." : "";
}

async function showLimits(tenant, asked) {
  const panel = $("limits");
  panel.dataset.state = "loading";
  $("limits-tenant").textContent = tenant || "";
  if (!tenant) {
    limitsMessage(panel, "Choose a tenant to see its limits.");
    panel.dataset.state = "empty";
    return;
  }
  try {
    const limits = await apiJson(`/v1/tenants/${encodeURIComponent(tenant)}/limits`);
    if (asked !== state.asked) return;
    drawLimits(panel, limits);
    panel.dataset.state = "ready";
  } catch (error) {
    if (asked !== state.asked) return;
    const reason = error.body?.reason || error.body?.code;
    const message = error.status === 404
      ? `${tenant} is not in the platform's tenant registry.`
      : reason === "enforcer_not_configured"
        ? "Limits are not available: the query service has no enforcer address."
        : `Limits could not be read: ${error.message}`;
    limitsMessage(panel, message);
    panel.dataset.state = "error";
  }
}

async function refresh() {
  fitWindow();
  saveChoices();
  const chosen = choices();
  if (chosen.range === "custom" && !(chosen.from && chosen.to)) {
    $("chart-status").textContent = "Choose the first and last day of the range.";
    return;
  }
  state.asked += 1;
  const asked = state.asked;
  const usage = showUsage(chosen, asked).catch((error) => {
    if (asked !== state.asked) return;
    if (error.status === 401) return signOut("The key was refused: sign in again.");
    $("chart").dataset.state = "error";
    $("chart-status").textContent = error.body?.parameter
      ? `${error.message} (parameter ${error.body.parameter})`
      : error.message;
  });
  await Promise.all([usage, showLimits(chosen.tenant, asked)]);
}

async function downloadCsv() {
  if (!state.lastQuery) return;
  const params = new URLSearchParams(state.lastQuery.params);
  params.set("format", "csv");
  try {
    const blob = await (await api("/v1/usage", params)).blob();
    const link = document.createElement("a");
    link.href = URL.createObjectURL(blob);
    link.download = state.lastQuery.name;
    document.body.append(link);
    link.click();
    link.remove();
    setTimeout(() => URL.revokeObjectURL(link.href), 10_000);
  } catch (error) {
    $("chart-status").textContent = `The CSV could not be made: ${error.message}`;
  }
}

// ---- session -----------------------------------------------------------------------------

let searching = null;
async function searchTenants(text) {
  if (state.scope === "tenant") return;
  const params = new URLSearchParams({ limit: "100" });
  if (text) params.set("search", text);
  const answer = await apiJson("/v1/tenants", params);
  $("tenant-options").replaceChildren(...answer.tenants.map((tenant) => {
    const option = document.createElement("option");
    option.value = tenant.id;
    option.label = `${tenant.name} · ${tenant.tier}${tenant.status === "active" ? "" : ` · ${tenant.status}`}`;
    return option;
  }));
}

async function signIn(key) {
  state.key = key;
  const [catalogue, tenants] = await Promise.all([apiJson("/v1/metrics"), apiJson("/v1/tenants", new URLSearchParams({ limit: "100" }))]);
  state.metrics = catalogue.metrics;
  state.scope = tenants.scope;
  sessionStorage.setItem(KEY_SLOT, key);
  $("metric").replaceChildren(...state.metrics.map((metric) => {
    const option = document.createElement("option");
    option.value = metric.name;
    option.textContent = metric.name;
    option.title = `${metric.description} (${metric.unit})`;
    return option;
  }));
  // A counter is the likeliest first question ("how many calls?").
  const firstCounter = state.metrics.find((metric) => metric.kind === "counter");
  if (firstCounter) $("metric").value = firstCounter.name;
  const tenantInput = $("tenant");
  if (state.scope === "tenant") {
    state.ownTenant = tenants.tenants[0]?.id || "";
    tenantInput.value = state.ownTenant;
    tenantInput.disabled = true;
    $("who").textContent = `Tenant ${state.ownTenant}`;
  } else {
    tenantInput.disabled = false;
    $("who").textContent = state.scope === "admin" ? "Admin key" : "Analyst key";
    await searchTenants("");
  }
  $("signin").hidden = true;
  $("app").hidden = false;
  $("session").hidden = false;
  restoreChoices();
  await refresh();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_SLOT);
  state.key = null;
  $("app").hidden = true;
  $("session").hidden = true;
  $("signin").hidden = false;
  $("api-key").value = "";
  $("signin-error").hidden = !message;
  $("signin-error").textContent = message || "";
}

function wire() {
  const zone = $("zone");
  zone.replaceChildren(...zones().map((name) => {
    const option = document.createElement("option");
    option.value = name;
    option.textContent = name.replaceAll("_", " ");
    return option;
  }));
  $("signin-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    $("signin-button").disabled = true;
    try {
      await signIn($("api-key").value.trim());
    } catch (error) {
      signOut(error.status === 401 ? "That key was not accepted." : `Signing in failed: ${error.message}`);
    } finally {
      $("signin-button").disabled = false;
    }
  });
  $("sign-out").addEventListener("click", () => signOut(""));
  for (const id of ["metric", "window", "zone", "from", "to", "tenant"]) $(id).addEventListener("change", refresh);
  $("range").addEventListener("change", () => {
    const custom = $("range").value === "custom";
    for (const field of document.querySelectorAll(".field.custom")) field.hidden = !custom;
    if (custom && !$("from").value) {
      const [from, to] = rangeDates("7d", $("zone").value, {});
      $("from").value = from;
      $("to").value = to.slice(0, 10) > from ? new Date(Date.parse(to) - 86_400_000).toISOString().slice(0, 10) : from;
    }
    refresh();
  });
  $("tenant").addEventListener("input", () => {
    clearTimeout(searching);
    searching = setTimeout(() => searchTenants($("tenant").value.trim()).catch(() => {}), 200);
  });
  $("refresh").addEventListener("click", refresh);
  $("download").addEventListener("click", downloadCsv);
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); refresh(); });
  let resizing = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizing);
    resizing = setTimeout(() => { if (state.key) refresh(); }, 250);
  });
  const stored = sessionStorage.getItem(KEY_SLOT);
  if (stored) signIn(stored).catch(() => signOut("Your session ended: sign in again."));
}

wire();
