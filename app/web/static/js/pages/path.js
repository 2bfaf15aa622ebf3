// The regularization path of a search job (GET jobs/ID/path), on the job page: cross-validation
// loss against lambda with error bars and both choices marked, each feature's weight norm against
// lambda (the glmnet picture), and the number of non-zero weights. Read again whenever the job page
// says the path moved (a point event of the job's stream, or a status poll); the API's own JSON is
// the only data source.
import uPlot from "../../vendor/uplot-1.6.32/uPlot.esm.js";
import { get } from "../api.js";
import { PALETTE } from "../charts.js";
import { fmt, h, replace, stat } from "../dom.js";

const MIN_REFRESH_MS = 500; // at most two reads a second, however fast the points come
const HEIGHT = 260;
const MAX_FEATURE_LINES = 40; // the largest norms; a 1000-feature picture is unreadable anyway
const MIN_COLOR = "#d62728";
const ONE_SE_COLOR = "#2ca02c";

function widthOf(el) {
  return Math.max(240, Math.floor(el.clientWidth || el.getBoundingClientRect().width || 600));
}

const num = (v) => (typeof v === "number" && Number.isFinite(v) ? v : null);

/** Vertical lines at the chosen values (min, 1se), drawn over a chart. */
function markChoices(u, chosen) {
  const { ctx } = u;
  const top = u.bbox.top;
  const bottom = u.bbox.top + u.bbox.height;
  for (const [key, color] of [["min", MIN_COLOR], ["1se", ONE_SE_COLOR]]) {
    const v = num(chosen && chosen[key]);
    if (v === null || v <= 0) continue;
    const x = u.valToPos(v, "x", true);
    ctx.save();
    ctx.strokeStyle = color;
    ctx.lineWidth = 1.5 * devicePixelRatio;
    ctx.setLineDash([5 * devicePixelRatio, 4 * devicePixelRatio]);
    ctx.beginPath();
    ctx.moveTo(x, top);
    ctx.lineTo(x, bottom);
    ctx.stroke();
    ctx.fillStyle = color;
    ctx.font = `${11 * devicePixelRatio}px sans-serif`;
    ctx.fillText(key, x + 3 * devicePixelRatio, top + 12 * devicePixelRatio);
    ctx.restore();
  }
}

/** Whiskers cv_loss ± se at every point of series 1. */
function errorBars(u, lo, hi) {
  const { ctx } = u;
  const xs = u.data[0];
  ctx.save();
  ctx.strokeStyle = PALETTE[0];
  ctx.lineWidth = devicePixelRatio;
  const cap = 3 * devicePixelRatio;
  for (let i = 0; i < xs.length; i++) {
    if (lo[i] === null || hi[i] === null) continue;
    const x = u.valToPos(xs[i], "x", true);
    const y1 = u.valToPos(lo[i], "y", true);
    const y2 = u.valToPos(hi[i], "y", true);
    ctx.beginPath();
    ctx.moveTo(x, y1);
    ctx.lineTo(x, y2);
    ctx.moveTo(x - cap, y1);
    ctx.lineTo(x + cap, y1);
    ctx.moveTo(x - cap, y2);
    ctx.lineTo(x + cap, y2);
    ctx.stroke();
  }
  ctx.restore();
}

/** One chart against lambda (log x axis); series [{label, values, color, width}]. */
function lambdaChart(box, { xs, series, yLabel, chosen, draw, legend = true }) {
  const opts = {
    width: widthOf(box),
    height: HEIGHT,
    legend: { show: legend, live: true },
    scales: { x: { time: false, distr: 3 } },
    axes: [
      // A log axis labels only some of its ticks: uPlot hands the others over as null.
      { label: "lambda (log)", values: (_u, splits) => splits.map((v) => (v === null ? "" : fmt(v, 2))) },
      { label: yLabel, values: (_u, splits) => splits.map((v) => fmt(v, 3)), size: 60 },
    ],
    series: [
      { label: "lambda", value: (_u, v) => fmt(v) },
      ...series.map((s, i) => ({
        label: s.label,
        stroke: s.color || PALETTE[i % PALETTE.length],
        width: s.width || 2,
        spanGaps: false,
        points: { size: 4 },
        value: (_u, v) => fmt(v),
      })),
    ],
    hooks: {
      draw: [
        (u) => {
          if (draw) draw(u);
          markChoices(u, chosen);
        },
      ],
    },
  };
  box.dataset.points = String(xs.length);
  return new uPlot(opts, [xs, ...series.map((s) => s.values)], box);
}

function card(id, title) {
  const box = h("div", { class: "chart", id, "data-points": "0" });
  return { box, el: h("figure", { class: "chart-card" }, h("figcaption", {}, title), box) };
}

/**
 * The path section of a search job inside ``container``: ``{refresh, stop}``. ``refresh()`` reads
 * the path again (coalesced: one read at a time, at most one every MIN_REFRESH_MS).
 * onUpdate(path) is called after every successful read.
 */
export function renderPath(container, jobId, { onUpdate } = {}) {
  const apiPath = `jobs/${encodeURIComponent(jobId)}/path`;
  const summary = h("div", { id: "path-chosen", class: "summary" }, h("span", { class: "muted" }, "Loading the path…"));
  const loss = card("path-loss-chart", "Cross-validation loss (± one standard error)");
  const coef = card("path-coef-chart", "Weight norm of each feature");
  const count = card("path-count-chart", "Non-zero weights");
  const state = h("p", { id: "path-state", class: "muted small" });
  container.append(
    h("section", { class: "card path-section", id: "path-section" }, h("h2", {}, "Regularization path"), summary, state),
    h("div", { class: "charts path-charts" }, loss.el, coef.el, count.el),
  );
  let charts = [];
  let timer = null;
  let stopped = false;

  function draw(path) {
    for (const c of charts) c.destroy();
    charts = [];
    // uPlot wants x ascending: the grid comes descending (largest lambda first).
    const points = path.points.filter((p) => num(p.value) !== null && p.value > 0).slice().reverse();
    const xs = points.map((p) => p.value);
    const mean = points.map((p) => num(p.cv_loss));
    const lo = points.map((p, i) => (mean[i] === null || num(p.cv_loss_se) === null ? null : mean[i] - p.cv_loss_se));
    const hi = points.map((p, i) => (mean[i] === null || num(p.cv_loss_se) === null ? null : mean[i] + p.cv_loss_se));
    charts.push(
      lambdaChart(loss.box, {
        xs,
        series: [{ label: "cv loss", values: mean }],
        yLabel: "held-out loss",
        chosen: path.chosen,
        draw: (u) => errorBars(u, lo, hi),
      }),
    );
    const names = new Set();
    for (const p of points) for (const k of Object.keys(p.feature_norms || {})) names.add(k);
    const peak = (name) => Math.max(0, ...points.map((p) => num((p.feature_norms || {})[name]) || 0));
    const shown = [...names].sort((a, b) => peak(b) - peak(a)).slice(0, MAX_FEATURE_LINES);
    coef.box.dataset.features = String(shown.length);
    charts.push(
      lambdaChart(coef.box, {
        xs,
        series: shown.map((name, i) => ({
          label: name,
          values: points.map((p) => num((p.feature_norms || {})[name])),
          color: PALETTE[i % PALETTE.length],
          width: 1.5,
        })),
        yLabel: "||W1[feature]||",
        chosen: path.chosen,
        legend: shown.length <= 12,
      }),
    );
    charts.push(
      lambdaChart(count.box, {
        xs,
        series: [{ label: "non-zero", values: points.map((p) => num(p.nonzero)), color: "#555" }],
        yLabel: "count",
        chosen: path.chosen,
      }),
    );
    const chosen = path.chosen || {};
    const at = path.points.find((p) => p.value === chosen.value);
    replace(
      summary,
      stat("min", fmt(chosen.min), "path-min"),
      stat("1se", fmt(chosen["1se"]), "path-1se"),
      stat("Used", chosen.used || "–", "path-used"),
      stat("CV loss there", fmt(at ? at.cv_loss : null)),
      stat("Features kept", at && at.selected_features ? String(at.selected_features.length) : "–"),
      stat("Points", `${path.points.length} of ${path.grid.length}`, "path-points"),
    );
    summary.dataset.complete = String(Boolean(path.complete));
    const scoring = path.folds ? `${path.folds}-fold cross-validation` : "the validation split";
    state.textContent = path.complete
      ? `Complete: ${scoring} over ${path.grid.length} values of ${path.param}.`
      : `Partial: points are shown as the splits reach them (${path.status}).`;
  }

  let reading = false;
  let again = false;
  let lastRead = 0;

  async function read() {
    reading = true;
    lastRead = Date.now();
    try {
      const path = await get(apiPath);
      if (stopped) return;
      draw(path);
      if (onUpdate) onUpdate(path);
    } catch (err) {
      state.textContent = `Could not read the path: ${err.message}`;
    } finally {
      reading = false;
    }
    if (again && !stopped) {
      again = false;
      refresh();
    }
  }

  function refresh() {
    if (stopped) return;
    if (reading || timer) {
      again = again || reading;
      return;
    }
    const wait = Math.max(0, lastRead + MIN_REFRESH_MS - Date.now());
    timer = setTimeout(() => {
      timer = null;
      read();
    }, wait);
  }

  refresh();
  return {
    refresh,
    stop() {
      stopped = true;
      if (timer) clearTimeout(timer);
      for (const c of charts) c.destroy();
    },
  };
}
