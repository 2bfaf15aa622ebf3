// Charts over uPlot (vendored, see static/vendor/VERSIONS.md): line charts that follow a growing
// history, overlays of several jobs, and a bar histogram.
import uPlot from "../vendor/uplot-1.6.32/uPlot.esm.js";
import { fmt, h } from "./dom.js";

export const PALETTE = [
  "#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd",
  "#8c564b", "#e377c2", "#17becf", "#bcbd22", "#7f7f7f",
];

const HEIGHT = 240;

function widthOf(el) {
  return Math.max(240, Math.floor(el.clientWidth || el.getBoundingClientRect().width || 600));
}

function axisValues(_u, splits) {
  return splits.map((v) => fmt(v, 3));
}

/** Keep a chart as wide as its box (laptop or phone). Returns a disconnect function. */
function fitWidth(card, box, chart, height) {
  if (typeof ResizeObserver !== "function") return () => {};
  let last = widthOf(box);
  const ro = new ResizeObserver(() => {
    const w = widthOf(box);
    if (w !== last) {
      last = w;
      chart.setSize({ width: w, height });
    }
  });
  // The card, not the chart box: the box's content is the chart itself.
  ro.observe(card);
  return () => ro.disconnect();
}

/**
 * A line chart of per-epoch records.
 * series: [{key, label, color, dash, scale}]; records: [{epoch, [key]: number|null}].
 * The chart box gets id (for tests) and data-points (number of epochs drawn).
 */
export function epochChart(container, { id, title, series, yLabel, sync, height = HEIGHT }) {
  const box = h("div", { class: "chart", id, "data-points": "0" });
  const card = h("figure", { class: "chart-card" }, h("figcaption", {}, title), box);
  container.append(card);
  const opts = {
    width: widthOf(box),
    height,
    cursor: sync ? { sync: { key: sync } } : {},
    legend: { live: true },
    scales: { x: { time: false } },
    axes: [
      { label: "epoch", values: axisValues },
      { label: yLabel, values: axisValues, size: 60 },
    ],
    series: [
      { label: "epoch", value: (_u, v) => (v === null || v === undefined ? "–" : String(v)) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || PALETTE[i % PALETTE.length],
        width: 2,
        dash: s.dash,
        spanGaps: true,
        points: { size: 4 },
        value: (_u, v) => fmt(v),
      })),
    ],
  };
  const empty = [[], ...series.map(() => [])];
  const chart = new uPlot(opts, empty, box);
  const disconnect = fitWidth(card, box, chart, height);
  return {
    /** Draw these records (sorted by epoch). */
    set(records) {
      const xs = records.map((r) => r.epoch);
      const ys = series.map((s) => records.map((r) => (typeof r[s.key] === "number" ? r[s.key] : null)));
      chart.setData([xs, ...ys]);
      box.dataset.points = String(xs.length);
    },
    destroy() {
      disconnect();
      chart.destroy();
    },
    card,
  };
}

/**
 * Several jobs' histories of one quantity on one chart.
 * runs: [{label, records}]; key: the record field drawn.
 */
export function overlayChart(container, { id, title, runs, key, yLabel, height = 300 }) {
  const box = h("div", { class: "chart", id, "data-series": String(runs.length) });
  const card = h("figure", { class: "chart-card" }, h("figcaption", {}, title), box);
  container.append(card);
  // uPlot needs one x array: the union of every run's epochs, with gaps where a run has none.
  const epochs = [...new Set(runs.flatMap((r) => r.records.map((rec) => rec.epoch)))].sort(
    (a, b) => a - b,
  );
  const data = [
    epochs,
    ...runs.map((run) => {
      const byEpoch = new Map(run.records.map((rec) => [rec.epoch, rec[key]]));
      return epochs.map((e) => (typeof byEpoch.get(e) === "number" ? byEpoch.get(e) : null));
    }),
  ];
  const opts = {
    width: widthOf(box),
    height,
    scales: { x: { time: false } },
    axes: [
      { label: "epoch", values: axisValues },
      { label: yLabel, values: axisValues, size: 60 },
    ],
    series: [
      { label: "epoch" },
      ...runs.map((run, i) => ({
        label: run.label,
        stroke: PALETTE[i % PALETTE.length],
        width: 2,
        spanGaps: true,
        value: (_u, v) => fmt(v),
      })),
    ],
  };
  const chart = new uPlot(opts, data, box);
  const disconnect = fitWidth(card, box, chart, height);
  return {
    destroy() {
      disconnect();
      chart.destroy();
    },
  };
}

/**
 * A histogram from {edges: [n + 1], counts: [n]} drawn as bars at the bin centres.
 * log: counts on a log scale (the bin holding the exact zeros often dwarfs the rest).
 */
export function histogramChart(container, { id, title, histogram, log = false, height = 220 }) {
  const box = h("div", { class: "chart", id, "data-bins": String(histogram.counts.length) });
  const card = h("figure", { class: "chart-card" }, h("figcaption", {}, title), box);
  container.append(card);
  const { edges, counts } = histogram;
  const centres = counts.map((_c, i) => (edges[i] + edges[i + 1]) / 2);
  const ys = counts.map((c) => (log && c <= 0 ? null : c));
  const opts = {
    width: widthOf(box),
    height,
    scales: { x: { time: false }, y: log ? { distr: 3 } : { range: (_u, _min, max) => [0, max || 1] } },
    axes: [
      { label: "weight", values: axisValues },
      { label: log ? "count (log)" : "count", values: axisValues, size: 60 },
    ],
    series: [
      { label: "weight", value: (_u, v) => fmt(v) },
      {
        label: "count",
        fill: "rgba(31, 119, 180, 0.55)",
        stroke: "#1f77b4",
        paths: uPlot.paths.bars({ size: [0.9, 80], align: 0 }),
        points: { show: false },
        value: (_u, v) => fmt(v),
      },
    ],
  };
  const chart = new uPlot(opts, [centres, ys], box);
  const disconnect = fitWidth(card, box, chart, height);
  return {
    destroy() {
      disconnect();
      chart.destroy();
    },
  };
}
