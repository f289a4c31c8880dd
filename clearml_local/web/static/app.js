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

function drawCharts(root, data, compare) {
  const weight = parseFloat(document.getElementById("smoothing").value);
  const xTime = document.getElementById("x-axis").value === "time";
  const names = compare ? JSON.parse(root.dataset.names) : [];
  const ids = compare ? JSON.parse(root.dataset.ids) : [];
  const metrics = compare ? data.metrics || {} : data;
  root.replaceChildren();
  // FleetFL's per-round metrics ("global": mAP50-95, mAP50, loss) first, then the others by name.
  const first = (root.dataset.first || "").split(",");
  const rank = (title) => (first.includes(title) ? first.indexOf(title) : first.length);
  const titles = Object.keys(metrics).sort((a, b) => rank(a) - rank(b) || a.localeCompare(b));
  if (!titles.length) {
    root.innerHTML = '<p class="empty">No scalars reported.</p>';
    return;
  }
  for (const metric of titles) {
    const traces = [];
    const DASHES = ["solid", "dot", "dash", "longdash", "dashdot"];
    for (const [variantIndex, variant] of Object.keys(metrics[metric]).sort().entries()) {
      const series = compare ? metrics[metric][variant] : { "": metrics[metric][variant] };
      for (const [taskId, s] of Object.entries(series)) {
        const index = compare ? ids.indexOf(taskId) : traces.length;
        const x = xTime ? s.x.map((t) => new Date(t)) : s.x;
        traces.push({
          x, y: smooth(s.y, weight), mode: "lines+markers", type: "scatter",
          name: compare ? `${names[index] || taskId} · ${variant}` : variant,
          line: { color: COLORS[index % COLORS.length], dash: compare ? DASHES[variantIndex % DASHES.length] : "solid" },
          marker: { size: 5 },
        });
      }
    }
    const div = document.createElement("div");
    div.className = "chart";
    div.dataset.metric = metric;
    root.appendChild(div);
    const xs = traces.flatMap((t) => t.x);
    const fewIterations = !xTime && xs.length && Math.max(...xs) - Math.min(...xs) <= 20;
    Plotly.newPlot(div, traces, {
      title: { text: metric }, margin: { t: 40, r: 20, b: 40, l: 50 }, legend: { orientation: "h" },
      xaxis: { title: { text: xTime ? "time" : "iteration" }, dtick: fewIterations ? 1 : undefined },
    }, { displaylogo: false, responsive: true });
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
  let last = null;
  const append = (lines) => {
    for (const line of lines) {
      pre.appendChild(document.createTextNode(line.msg.endsWith("\n") ? line.msg : `${line.msg}\n`));
      last = line.timestamp;
    }
  };
  const poll = async () => {
    const url = last === null ? pre.dataset.source : `${pre.dataset.source}?after=${last}`;
    try {
      const body = await getJSON(url);
      append(body.lines);
      if (last === null && !body.lines.length) pre.textContent = "";
      if (["in_progress", "queued"].includes(body.status)) setTimeout(poll, 2000);
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
