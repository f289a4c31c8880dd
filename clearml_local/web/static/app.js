// FleetFL web UI: charts (plotly.js from the plotly wheel), console tail, table refresh and selection.
"use strict";

const COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22", "#17becf"];

async function getJSON(url) {
  const response = await fetch(url, { credentials: "same-origin" });
  const body = await response.json();
  if (!response.ok) throw new Error(body.error || response.statusText);
  return body;
}

function smooth(values, weight) {
  if (!weight) return values;
  let last = null;
  return values.map((v) => (last = last === null ? v : last * weight + (1 - weight) * v));
}

// Byte counters (FleetFL's "bytes" chart: sent/received per round) are drawn in MB.
const isBytes = (metric, variant) => /bytes/i.test(metric) || /^bytes_/i.test(variant);
const BYTES_PER_MB = 1e6;

function yAxis(traces, unit) {
  // automargin: long tick labels widen the margin instead of being clipped (clipped labels of a
  // flat series read as "86297M, 62965M, ..."). A flat series gets +-5 % around its value, not
  // plotly's +-1, which on large values gives ticks that differ only in their 7th digit.
  const axis = { automargin: true, title: { text: unit }, hoverformat: unit ? ".2f" : undefined };
  const ys = traces.flatMap((t) => t.y).filter((y) => Number.isFinite(y));
  if (ys.length) {
    const low = Math.min(...ys);
    const high = Math.max(...ys);
    if (high - low <= Math.abs(high) * 1e-6 && high !== 0) {
      const pad = Math.abs(high) * 0.05;
      axis.range = [low - pad, high + pad];
    }
  }
  return axis;
}

// Variants of very different size on one chart (FleetFL's "global": train_loss ~10 beside mAP ~0.5)
// would flatten the small ones to a line at 0: those more than 10x smaller than the largest go on a
// second y axis on the right.
function smallScaleTraces(traces) {
  const size = (t) => Math.max(0, ...t.y.filter((y) => Number.isFinite(y)).map(Math.abs));
  const largest = Math.max(0, ...traces.map(size));
  if (traces.length < 2 || largest === 0) return [];
  const small = traces.filter((t) => size(t) * 10 < largest);
  return small.length < traces.length ? small : [];
}

function chartTraces(metric, variants, compare, names, ids, weight, xTime) {
  const DASHES = ["solid", "dot", "dash", "longdash", "dashdot"];
  const traces = [];
  let unit = "";
  for (const [variantIndex, variant] of Object.keys(variants).sort().entries()) {
    const series = compare ? variants[variant] : { "": variants[variant] };
    const scale = isBytes(metric, variant) ? BYTES_PER_MB : 1;
    if (scale !== 1) unit = "MB";
    for (const [taskId, s] of Object.entries(series)) {
      const index = compare ? ids.indexOf(taskId) : traces.length;
      traces.push({
        x: xTime ? s.x.map((t) => new Date(t)) : s.x,
        y: smooth(s.y, weight).map((y) => y / scale),
        mode: "lines+markers", type: "scatter",
        name: compare ? `${names[index] || taskId} · ${variant}` : variant,
        line: { color: COLORS[index % COLORS.length], dash: compare ? DASHES[variantIndex % DASHES.length] : "solid" },
        marker: { size: 5 },
      });
    }
  }
  return { traces, unit };
}

function drawCharts(root, data, compare) {
  const weight = parseFloat(document.getElementById("smoothing").value);
  const xTime = document.getElementById("x-axis").value === "time";
  const names = compare ? JSON.parse(root.dataset.names) : [];
  const ids = compare ? JSON.parse(root.dataset.ids) : [];
  const metrics = compare ? data.metrics || {} : data;
  // The titles of the chosen metric columns (default FleetFL's "global": mAP50-95) first, then by name.
  const first = (root.dataset.first || "").split(",").filter(Boolean);
  const rank = (title) => (first.includes(title) ? first.indexOf(title) : first.length);
  const titles = Object.keys(metrics).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  if (!titles.length) {
    root.innerHTML = '<p class="empty">No scalars reported.</p>';
    return;
  }
  // Charts already drawn are updated in place (Plotly.react), so a redraw every 10 s keeps the
  // user's zoom (uirevision) and never stacks a second plot on the same element.
  const drawn = new Map([...root.querySelectorAll(".chart")].map((div) => [div.dataset.metric, div]));
  for (const node of [...root.childNodes]) if (!node.classList || !node.classList.contains("chart")) node.remove();
  for (const [metric, div] of drawn) if (!titles.includes(metric)) div.remove();
  for (const metric of titles) {
    const { traces, unit } = chartTraces(metric, metrics[metric], compare, names, ids, weight, xTime);
    let div = drawn.get(metric);
    if (!div) {
      div = document.createElement("div");
      div.className = "chart";
      div.dataset.metric = metric;
    }
    root.appendChild(div); // (re)appended in the sorted order
    const small = smallScaleTraces(traces);
    for (const t of small) t.yaxis = "y2";
    const large = traces.filter((t) => !small.includes(t));
    const xs = traces.flatMap((t) => t.x);
    const fewIterations = !xTime && xs.length && Math.max(...xs) - Math.min(...xs) <= 20;
    const layout = {
      title: { text: metric }, margin: { t: 40, r: 20, b: 40, l: 50 }, legend: { orientation: "h" },
      xaxis: { title: { text: xTime ? "time" : "iteration" }, dtick: fewIterations ? 1 : undefined, automargin: true },
      yaxis: yAxis(large, unit), uirevision: `${metric}:${xTime}`,
    };
    if (small.length) {
      layout.yaxis2 = { ...yAxis(small, unit), overlaying: "y", side: "right", showgrid: false };
      layout.margin.r = 50;
    }
    Plotly.react(div, traces, layout, { displaylogo: false, responsive: true });
  }
}

function setupCharts() {
  const root = document.getElementById("scalar-charts");
  if (!root) return;
  const compare = root.dataset.compare === "1";
  let data = null;
  const load = async () => {
    const xKey = document.getElementById("x-axis").value;
    const sep = root.dataset.source.includes("?") ? "&" : "?";
    try {
      data = await getJSON(`${root.dataset.source}${sep}x=${xKey}`);
      drawCharts(root, data, compare);
    } catch (err) {
      root.innerHTML = `<p class="error"></p>`;
      root.firstChild.textContent = `Could not load the scalars: ${err.message}`;
    }
  };
  const smoothing = document.getElementById("smoothing");
  smoothing.addEventListener("input", () => {
    document.getElementById("smoothing-value").textContent = smoothing.value;
    if (data) drawCharts(root, data, compare);
  });
  document.getElementById("x-axis").addEventListener("change", load);
  load();
  if (root.dataset.live === "1") {
    // A running task: redraw with new points every 10 s (the server downsamples each time).
    setInterval(() => { if (!document.hidden) load(); }, 10000);
  }
}

function setupPlots() {
  for (const div of document.querySelectorAll(".plotly-plot")) {
    try {
      const plot = JSON.parse(div.dataset.plot);
      Plotly.newPlot(div, plot.data || [], plot.layout || {}, { displaylogo: false });
    } catch (err) {
      div.textContent = `Cannot draw this plot: ${err.message}`;
    }
  }
}

function setupConsole() {
  const pre = document.getElementById("console");
  if (!pre) return;
  // The server's cursor (last timestamp read + lines read at it), so a line written in the same
  // millisecond as the last one shown is still fetched, and none is shown twice.
  let cursor = null;
  const poll = async () => {
    const url = cursor === null || cursor.after === null
      ? pre.dataset.source
      : `${pre.dataset.source}?after=${encodeURIComponent(cursor.after)}&skip=${cursor.skip}`;
    try {
      const body = await getJSON(url);
      if (cursor === null) pre.textContent = "";
      for (const line of body.lines) {
        pre.appendChild(document.createTextNode(line.msg.endsWith("\n") ? line.msg : `${line.msg}\n`));
      }
      cursor = body.cursor;
      if (body.more) setTimeout(poll, 0); // a full batch: read the next page now
      else if (["in_progress", "queued"].includes(body.status)) setTimeout(poll, 2000);
    } catch (err) {
      pre.appendChild(document.createTextNode(`\n[console unavailable: ${err.message}]\n`));
    }
  };
  poll();
}

function selectedIds() {
  return [...document.querySelectorAll('#experiments input[name="ids"]:checked')].map((box) => box.value);
}

function setupTable() {
  const table = document.getElementById("experiments");
  if (!table) return;
  document.getElementById("select-all").addEventListener("change", (event) => {
    for (const box of table.querySelectorAll('input[name="ids"]')) box.checked = event.target.checked;
  });
  document.getElementById("compare-selected").addEventListener("click", () => {
    const ids = selectedIds();
    if (ids.length < 2) return alert("Select two or more experiments to compare.");
    window.location.href = `/compare?${ids.map((id) => `ids=${encodeURIComponent(id)}`).join("&")}`;
  });
  const refresh = document.getElementById("auto-refresh");
  setInterval(async () => {
    if (!refresh.checked || document.hidden) return;
    const chosen = new Set(selectedIds());
    const response = await fetch(window.location.href, { credentials: "same-origin" });
    if (!response.ok) return;
    const doc = new DOMParser().parseFromString(await response.text(), "text/html");
    const body = doc.querySelector("#experiments tbody");
    if (!body) return;
    for (const box of body.querySelectorAll('input[name="ids"]')) box.checked = chosen.has(box.value);
    table.querySelector("tbody").replaceWith(body);
  }, 10000);
}

function setupSwatches() {
  for (const swatch of document.querySelectorAll(".swatch")) {
    swatch.style.background = COLORS[parseInt(swatch.dataset.index, 10) % COLORS.length];
  }
}

document.addEventListener("DOMContentLoaded", () => {
  setupTable();
  setupCharts();
  setupPlots();
  setupConsole();
  setupSwatches();
});
