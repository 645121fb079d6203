// The Chart component of the widget renderer: bar, line and area series
// (bars and areas may stack) drawn as one SVG with axes, grid and legend. The
// SVG is named for assistive technology and a visually hidden table carries
// the same numbers, since a picture of data is not readable on its own.
// widgets.js passes its helpers as `kit`, so this module imports nothing.

const SVG = "http://www.w3.org/2000/svg";
const PALETTE = ["blue", "purple", "orange", "green", "red", "yellow", "pink"];
const SERIES_TYPES = new Set(["bar", "line", "area"]);

function isObject(value) {
  return value !== null && typeof value === "object" && !Array.isArray(value);
}

function svg(tag, attrs = {}, style = {}) {
  const element = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs)) {
    element.setAttribute(key, String(value));
  }
  // Colours are CSS variables, which presentation attributes cannot hold.
  Object.assign(element.style, style);
  return element;
}

/** The chart's axis, series and rows, or an error when the props cannot make a chart. */
function parse(p) {
  const axis = typeof p.xAxis === "string" ? { dataKey: p.xAxis } : p.xAxis;
  if (!Array.isArray(p.data) || !Array.isArray(p.series) || !isObject(axis) || typeof axis.dataKey !== "string") {
    throw new TypeError("a Chart needs a data list, a series list and an xAxis");
  }
  const series = p.series.filter((s) => isObject(s) && SERIES_TYPES.has(s.type) && typeof s.dataKey === "string");
  if (!series.length) {
    throw new TypeError("a Chart needs at least one bar, line or area series");
  }
  return { axis, series, rows: p.data.filter(isObject) };
}

function seriesLabel(s) {
  return typeof s.label === "string" && s.label ? s.label : s.dataKey;
}

function number(row, key) {
  const value = Number(row[key]);
  return Number.isFinite(value) ? value : 0;
}

function tickLabel(axis, row) {
  const raw = String(row[axis.dataKey] ?? "");
  return isObject(axis.labels) && typeof axis.labels[raw] === "string" ? axis.labels[raw] : raw;
}

/** A round step that splits `range` into about `count` parts. */
function niceStep(range, count) {
  const raw = range / count;
  const magnitude = 10 ** Math.floor(Math.log10(raw));
  const scaled = raw / magnitude;
  return (scaled >= 5 ? 10 : scaled >= 2 ? 5 : scaled >= 1 ? 2 : 1) * magnitude;
}

/** Per series, the base and top value at each row; series that share a `stack` id pile up. */
function stackValues(series, rows) {
  const piles = new Map();
  return series.map((s) => {
    const stacked = s.type !== "line" && s.stack != null;
    const key = `${s.type === "bar" ? "bar" : "area"}:${s.stack}`;
    const pile = stacked ? piles.get(key) ?? rows.map(() => 0) : null;
    const bases = rows.map((_, i) => (pile ? pile[i] : 0));
    const tops = rows.map((row, i) => bases[i] + number(row, s.dataKey));
    if (pile) {
      piles.set(key, tops);
    }
    return { bases, tops };
  });
}

/** A path through points: straight, or stepped as the series' `curveType` asks (other curves draw straight). */
function linePath(points, curve) {
  return points
    .map(([x, y], i) => {
      if (i === 0) {
        return `M${x},${y}`;
      }
      const previousX = points[i - 1][0];
      if (curve === "step") {
        return `H${(previousX + x) / 2}V${y}H${x}`;
      }
      if (curve === "stepAfter") {
        return `H${x}V${y}`;
      }
      if (curve === "stepBefore") {
        return `V${y}H${x}`;
      }
      return `L${x},${y}`;
    })
    .join("");
}

/** Renders a Chart component; props that cannot make a chart throw, and the caller falls back to text. */
export function renderChart(p, kit) {
  const { axis, series, rows } = parse(p);
  const colors = series.map((s, i) => kit.resolveColor(s.color, "chart") ?? `var(--w-chart-${PALETTE[i % PALETTE.length]})`);
  const labels = series.map(seriesLabel);
  const stacks = stackValues(series, rows);

  const width = 600;
  const ratio = typeof p.aspectRatio === "number" && p.aspectRatio > 0 ? p.aspectRatio : null;
  const height = ratio ? width / ratio : typeof p.height === "number" ? Math.min(600, Math.max(120, p.height)) : 240;
  const showY = p.showYAxis === true;
  const showX = !axis.hide;
  const margin = { top: 12, right: 12, bottom: showX ? 28 : 8, left: showY ? 48 : 12 };
  const plotW = width - margin.left - margin.right;
  const plotH = height - margin.top - margin.bottom;

  const values = stacks.flatMap(({ bases, tops }) => [...bases, ...tops]);
  let max = Math.max(0, ...values);
  let min = Math.min(0, ...values);
  const step = niceStep(max - min || 1, 4);
  max = Math.ceil(max / step) * step || step;
  min = Math.floor(min / step) * step;
  const y = (value) => margin.top + plotH * (1 - (value - min) / (max - min));
  const band = plotW / Math.max(1, rows.length);
  const center = (i) => margin.left + band * i + band / 2;

  const title = `Chart of ${labels.join(", ")} by ${axis.dataKey}`;
  const titleId = `w-chart-${Math.random().toString(36).slice(2, 10)}`;
  const root = svg("svg", { viewBox: `0 0 ${width} ${height}`, class: "w-chart-svg", role: "img", "aria-labelledby": titleId });
  const titleElement = svg("title", { id: titleId });
  titleElement.textContent = title;
  root.append(titleElement);

  // Grid lines and the y axis's ticks.
  for (let value = min; value <= max + step / 2; value += step) {
    root.append(svg("line", { x1: margin.left, x2: width - margin.right, y1: y(value), y2: y(value), class: value === 0 ? "w-chart-zero" : "w-chart-grid" }));
    if (showY) {
      const tick = svg("text", { x: margin.left - 6, y: y(value) + 4, "text-anchor": "end", class: "w-chart-tick" });
      tick.textContent = String(Math.round(value * 1000) / 1000);
      root.append(tick);
    }
  }

  const tooltip = (element, i, s, value) => {
    if (p.showTooltip !== false) {
      const tip = svg("title");
      tip.textContent = `${tickLabel(axis, rows[i])}: ${seriesLabel(s)} ${value}`;
      element.append(tip);
    }
    return element;
  };

  // Bars: one slot per unstacked series or per stack, side by side in each band.
  const slots = [];
  series.forEach((s, i) => {
    if (s.type === "bar") {
      const key = s.stack != null ? `stack:${s.stack}` : `series:${i}`;
      if (!slots.includes(key)) {
        slots.push(key);
      }
    }
  });
  const categoryGap = typeof p.barCategoryGap === "number" ? Math.min(p.barCategoryGap, band * 0.8) : band * 0.2;
  const barGap = typeof p.barGap === "number" ? p.barGap : 4;
  const slotWidth = Math.max(1, (band - categoryGap - barGap * (slots.length - 1)) / Math.max(1, slots.length));

  const layers = { area: [], bar: [], line: [] };
  series.forEach((s, index) => {
    const { bases, tops } = stacks[index];
    const color = colors[index];
    if (s.type === "bar") {
      const slot = slots.indexOf(s.stack != null ? `stack:${s.stack}` : `series:${index}`);
      rows.forEach((row, i) => {
        const x = margin.left + band * i + categoryGap / 2 + slot * (slotWidth + barGap);
        const y0 = y(Math.max(bases[i], tops[i]));
        const bar = svg("rect", { x, y: y0, width: slotWidth, height: Math.max(0, Math.abs(y(bases[i]) - y(tops[i]))), rx: 2, class: "w-chart-bar" }, { fill: color });
        layers.bar.push(tooltip(bar, i, s, number(row, s.dataKey)));
      });
      return;
    }
    const points = tops.map((top, i) => [center(i), y(top)]);
    if (s.type === "area") {
      const back = bases.map((base, i) => [center(i), y(base)]).reverse();
      const d = `${linePath(points, s.curveType)}${back.map(([x, yy]) => `L${x},${yy}`).join("")}Z`;
      layers.area.push(svg("path", { d, class: "w-chart-area" }, { fill: color, stroke: color }));
    } else {
      layers.line.push(svg("path", { d: linePath(points, s.curveType), class: "w-chart-line" }, { stroke: color }));
    }
    points.forEach(([x, yy], i) => {
      layers.line.push(tooltip(svg("circle", { cx: x, cy: yy, r: 3, class: "w-chart-point" }, { fill: color }), i, s, number(rows[i], s.dataKey)));
    });
  });
  root.append(...layers.area, ...layers.bar, ...layers.line);

  if (showX) {
    // Labels thin out so that they do not overlap on long series.
    const every = Math.max(1, Math.ceil(rows.length / Math.max(1, Math.floor(plotW / 56))));
    rows.forEach((row, i) => {
      if (i % every === 0) {
        const label = svg("text", { x: center(i), y: height - 8, "text-anchor": "middle", class: "w-chart-tick" });
        label.textContent = tickLabel(axis, row);
        root.append(label);
      }
    });
  }

  const chart = kit.h("figure", { class: "w-chart" }, root);
  kit.applySize(chart, { ...p, aspectRatio: undefined });
  if (p.showLegend !== false) {
    const legend = kit.h("div", { class: "w-legend", "aria-hidden": "true" });
    labels.forEach((label, i) => {
      const swatch = kit.h("span", { class: `w-swatch w-swatch-${series[i].type}` });
      swatch.style.background = colors[i];
      legend.append(kit.h("span", { class: "w-legend-item" }, swatch, label));
    });
    chart.append(legend);
  }
  chart.append(dataTable(title, axis, series, rows));
  return chart;
}

/** The chart's numbers as a table that only assistive technology sees. */
function dataTable(title, axis, series, rows) {
  const table = document.createElement("table");
  table.className = "w-sr-only";
  table.createCaption().textContent = title;
  const head = table.createTHead().insertRow();
  for (const text of [axis.dataKey, ...series.map(seriesLabel)]) {
    const th = document.createElement("th");
    th.scope = "col";
    th.textContent = text;
    head.append(th);
  }
  const body = table.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    const th = document.createElement("th");
    th.scope = "row";
    th.textContent = tickLabel(axis, row);
    tr.append(th);
    for (const s of series) {
      tr.insertCell().textContent = String(row[s.dataKey] ?? "");
    }
  }
  return table;
}

/** The chart as text: a title line, then one line per row. */
export function chartText(p) {
  try {
    const { axis, series, rows } = parse(p);
    const lines = rows.map((row) => `${tickLabel(axis, row)}: ${series.map((s) => `${seriesLabel(s)} ${row[s.dataKey] ?? ""}`).join(", ")}`);
    return [`${series.map(seriesLabel).join(", ")} by ${axis.dataKey}`, ...lines].join("\n");
  } catch {
    // Props that make no chart still keep any text the server put on them.
    const own = [p?.value, p?.label, p?.title].find((v) => typeof v === "string");
    return own ?? "Chart";
  }
}
