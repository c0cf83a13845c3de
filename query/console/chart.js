// The usage chart: an SVG bar per window (one mark per window, empty windows included), a y axis
// with round ticks, thinned x labels and a tooltip. No library: the console works offline.

import { compact, tickLabel, windowLabel, withUnit } from "./format.js";

const SVG = "http://www.w3.org/2000/svg";
const HEIGHT = 320;
const MARGIN = { top: 16, right: 16, bottom: 36, left: 64 };

function element(name, attributes = {}, parent = null) {
  const node = document.createElementNS(SVG, name);
  for (const [key, value] of Object.entries(attributes)) node.setAttribute(key, String(value));
  if (parent) parent.appendChild(node);
  return node;
}

/** Round tick values from 0 to at least `max`. */
function ticks(max) {
  if (!(max > 0)) return [0, 1];
  const rough = max / 4;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * power).find((s) => s >= rough);
  const values = [];
  for (let v = 0; v < max + step * 0.999; v += step) values.push(Number(v.toPrecision(12)));
  return values;
}

/**
 * Draws `points` ({start, end, value, events}) into `container`.
 * `value` null: nothing measured in that window (a gauge without samples).
 */
export function drawChart(container, points, { window, unit, valueName }) {
  container.replaceChildren();
  const width = Math.max(container.clientWidth, 360);
  const plotWidth = width - MARGIN.left - MARGIN.right;
  const plotHeight = HEIGHT - MARGIN.top - MARGIN.bottom;
  const svg = element("svg", {
    class: "chart-svg",
    viewBox: `0 0 ${width} ${HEIGHT}`,
    width,
    height: HEIGHT,
    role: "img",
    "aria-label": `${valueName} per ${window || "range"}, ${points.length} windows`,
  }, container);

  const max = Math.max(0, ...points.map((p) => p.value ?? 0));
  const yTicks = ticks(max);
  const top = yTicks[yTicks.length - 1] || 1;
  const y = (v) => MARGIN.top + plotHeight - (v / top) * plotHeight;

  const grid = element("g", { class: "grid" }, svg);
  for (const tick of yTicks) {
    element("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(tick), y2: y(tick) }, grid);
    const label = element("text", { x: MARGIN.left - 8, y: y(tick) + 4, "text-anchor": "end" }, grid);
    label.textContent = compact(tick, unit);
  }

  const slot = plotWidth / Math.max(points.length, 1);
  const barWidth = Math.max(1, slot * (points.length > 200 ? 0.9 : 0.72));
  const marks = element("g", { class: "marks" }, svg);
  points.forEach((point, index) => {
    const x = MARGIN.left + index * slot + (slot - barWidth) / 2;
    const value = point.value ?? 0;
    // An empty window still gets its mark: a hairline on the axis.
    const height = Math.max(y(0) - y(value), 1);
    const mark = element("rect", {
      class: point.value === null || point.events === 0 ? "mark empty" : "mark",
      x: x.toFixed(2),
      y: (y(0) - height).toFixed(2),
      width: barWidth.toFixed(2),
      height: height.toFixed(2),
      rx: Math.min(3, barWidth / 4).toFixed(2),
      "data-start": point.start,
      "data-value": point.value ?? "",
    }, marks);
    mark.dataset.index = String(index);
  });

  const axis = element("g", { class: "axis" }, svg);
  element("line", { x1: MARGIN.left, x2: width - MARGIN.right, y1: y(0), y2: y(0) }, axis);
  // Hour labels fall on midnights when the chart spans days, so every label names a date.
  const room = Math.max(1, Math.floor(plotWidth / 72));
  let every = Math.max(1, Math.ceil(points.length / room));
  if (window === "hour" && points.length > 24 && every > 1) every = 24 * Math.ceil(points.length / 24 / room);
  points.forEach((point, index) => {
    if (index % every !== 0) return;
    const label = element("text", {
      x: MARGIN.left + index * slot + slot / 2,
      y: HEIGHT - MARGIN.bottom + 18,
      "text-anchor": "middle",
    }, axis);
    label.textContent = tickLabel(point.start, window);
  });

  const tooltip = document.createElement("div");
  tooltip.className = "tooltip";
  tooltip.hidden = true;
  container.appendChild(tooltip);
  svg.addEventListener("mousemove", (event) => {
    const target = event.target.closest("rect.mark");
    if (!target) {
      tooltip.hidden = true;
      return;
    }
    const point = points[Number(target.dataset.index)];
    const shown = point.value === null ? "no samples" : withUnit(point.value, unit);
    tooltip.replaceChildren();
    const heading = document.createElement("strong");
    heading.textContent = windowLabel(point.start, window);
    const line = document.createElement("span");
    line.textContent = `${valueName}: ${shown} · ${point.events.toLocaleString("en-US")} events`;
    tooltip.append(heading, line);
    tooltip.hidden = false;
    const box = container.getBoundingClientRect();
    const left = Math.min(event.clientX - box.left + 12, box.width - 220);
    tooltip.style.left = `${Math.max(left, 0)}px`;
    tooltip.style.top = `${event.clientY - box.top - 48}px`;
  });
  svg.addEventListener("mouseleave", () => { tooltip.hidden = true; });
  return svg;
}
