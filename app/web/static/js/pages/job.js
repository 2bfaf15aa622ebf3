// #/jobs/ID: status, progress with ETA, cancel, and live curves of the loss history.
// First GET jobs/ID and jobs/ID/history, then follow the event stream (or poll as a fallback).
import { followJob, get, post } from "../api.js";
import { epochChart } from "../charts.js";
import { duration, fmt, h, notice, pct, replace, short, stat, statusBadge, when } from "../dom.js";
import { renderPath } from "./path.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

const CHARTS = [
  {
    id: "loss-chart",
    title: "Loss (total = data loss + penalty)",
    yLabel: "loss",
    series: [
      { key: "loss", label: "loss" },
      { key: "data_loss", label: "data_loss", dash: [6, 4] },
      { key: "penalty", label: "penalty", dash: [2, 3] },
      { key: "val_loss", label: "val_loss" },
    ],
  },
  {
    id: "metric-chart",
    title: "Metric",
    yLabel: "metric",
    series: [
      { key: "metric", label: "metric" },
      { key: "val_metric", label: "val_metric" },
    ],
  },
  {
    id: "sparsity-chart",
    title: "Exact zeros among the weights",
    yLabel: "zero fraction",
    series: [{ key: "zero_fraction", label: "zero_fraction", color: "#555" }],
  },
  {
    id: "lr-chart",
    title: "Learning rate",
    yLabel: "learning rate",
    series: [{ key: "learning_rate", label: "learning_rate", color: "#9467bd" }],
  },
];

/** Seconds left: the job's eta_seconds if the API gives it, else mean epoch time × epochs left. */
export function eta(job, records) {
  if (typeof job.eta_seconds === "number") return { seconds: job.eta_seconds, estimated: false };
  const total = job.spec && job.spec.epochs;
  const timed = records.filter((r) => typeof r.seconds === "number");
  if (!total || !timed.length) return null;
  const perEpoch = timed.reduce((s, r) => s + r.seconds, 0) / timed.length;
  const done = Math.max(job.epochs_done || 0, records.length);
  return { seconds: Math.max(0, total - done) * perEpoch, estimated: true };
}

export async function render(root, ctx) {
  const [id] = ctx.params;
  const path = `jobs/${encodeURIComponent(id)}`;
  let [job, history] = await Promise.all([get(path), get(`${path}/history`)]);
  if (!ctx.alive()) return;

  const records = new Map();
  for (const r of history.epochs || []) records.set(r.epoch, r);
  const sorted = () => [...records.values()].sort((a, b) => a.epoch - b.epoch);

  const statusBox = h("span", { id: "job-status-box" });
  const progress = h("progress", { id: "progress", max: 1, value: 0, "aria-label": "Progress" });
  const progressText = h("span", { id: "progress-text", class: "progress-text" });
  const etaBox = h("span", { id: "eta", class: "muted" });
  const cancel = h("button", { id: "cancel-button", type: "button", class: "danger" }, "Cancel");
  const outcome = h("div", { id: "job-outcome" });
  const latest = h("div", { id: "latest-epoch", class: "summary" });
  const streamMode = h("span", { id: "stream-mode", class: "muted small" });
  const chartsBox = h("div", { class: "charts" });

  replace(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs" }, "Jobs"), " / ", short(id)),
    h("h1", {}, "Job ", h("code", { id: "job-id" }, short(id)), " ", statusBox),
    h(
      "section",
      { class: "card" },
      h("div", { class: "progress-row" }, progress, progressText, etaBox, cancel),
      outcome,
      latest,
      h("p", { class: "meta" }, specSummary(job.spec), " · created ", when(job.created_at), " · ", streamMode),
    ),
    chartsBox,
    h(
      "details",
      { class: "card" },
      h("summary", {}, "Normalized spec"),
      h("pre", { id: "job-spec" }, JSON.stringify(job.spec, null, 2)),
    ),
  );

  // A search job has a regularization path instead of one loss history.
  const search = Boolean(job.spec && job.spec.search);
  const charts = search ? [] : CHARTS.map((c) => epochChart(chartsBox, { ...c, sync: `job-${id}` }));
  const pathView = search ? renderPath(chartsBox, id) : null;
  const stopPath = () => pathView && pathView.stop();
  // The points of every split (folds + the path on all training rows) that progress counts.
  const searchPoints = search
    ? (job.spec.search.values ? job.spec.search.values.length : job.spec.search.num) *
      ((job.spec.search.folds || 0) + 1)
    : 0;
  const pointsSeen = new Set(); // "fold/index" of the stream's point events

  function drawCharts() {
    if (search) {
      // The path section has the search's figures; its final fit records no epochs.
      latest.hidden = true;
      return;
    }
    const list = sorted();
    for (const c of charts) c.set(list);
    const last = list[list.length - 1];
    replace(
      latest,
      last
        ? [
            stat("Epoch", fmt(last.epoch)),
            stat("Loss", fmt(last.loss)),
            stat("Val loss", fmt(last.val_loss)),
            stat("Metric", fmt(last.metric)),
            stat("Val metric", fmt(last.val_metric)),
            stat("Zeros", pct(last.zero_fraction)),
          ]
        : h("span", { class: "muted" }, "No epoch finished yet."),
    );
  }

  function drawStatus() {
    replace(statusBox, statusBadge(job.status, "job-status"));
    const total = job.spec && job.spec.epochs;
    let p = typeof job.progress === "number" ? job.progress : 0;
    // Epoch and point events arrive between status events: count them so the bar keeps moving.
    if (!TERMINAL.includes(job.status)) {
      if (search) p = Math.max(p, Math.min(1, pointsSeen.size / searchPoints));
      else if (total) p = Math.max(p, Math.min(1, records.size / total));
    }
    progress.value = p;
    progress.dataset.value = String(p);
    let counted = "";
    if (search) counted = ` · ${Math.round(p * searchPoints)} of ${searchPoints} path points`;
    else if (total) counted = ` · epoch ${Math.max(job.epochs_done || 0, records.size)} of ${total}`;
    replace(progressText, `${pct(p, 0)}`, counted);
    const left = TERMINAL.includes(job.status) ? null : eta(job, sorted());
    replace(
      etaBox,
      left ? `ETA ${left.estimated ? "≈ " : ""}${duration(left.seconds)}` : "",
    );
    cancel.hidden = TERMINAL.includes(job.status);
    cancel.disabled = Boolean(job.cancel_requested);
    if (job.cancel_requested && !TERMINAL.includes(job.status)) cancel.textContent = "Cancelling…";
    const parts = [];
    if (job.status === "succeeded" && job.model_id) {
      parts.push(
        h(
          "div",
          { class: "notice info", role: "status" },
          "Training finished.",
          h("a", { id: "model-link", class: "btn", href: `#/models/${job.model_id}` }, "Open the model"),
        ),
      );
    } else if (job.status === "cancelled") {
      parts.push(
        h(
          "div",
          { class: "notice info", role: "status" },
          "The job was cancelled.",
          job.model_id
            ? h("a", { id: "model-link", class: "btn", href: `#/models/${job.model_id}` }, "Open the model it kept")
            : null,
        ),
      );
    } else if (job.status === "failed") {
      parts.push(
        notice("error", `Failed${job.error_code ? ` (${job.error_code})` : ""}: ${job.error || "no reason given"}`, "job-error"),
      );
    }
    replace(outcome, parts);
  }

  cancel.addEventListener("click", async () => {
    cancel.disabled = true;
    try {
      job = await post(`${path}/cancel`);
      drawStatus();
    } catch (err) {
      cancel.disabled = false;
      outcome.append(notice("error", err.message));
    }
  });

  drawCharts();
  drawStatus();
  if (TERMINAL.includes(job.status)) {
    streamMode.textContent = "finished";
    return () => {
      stopPath();
      charts.forEach((c) => c.destroy());
    };
  }

  const lastEpoch = records.size ? Math.max(...records.keys()) : null;
  const stop = followJob(id, lastEpoch, {
    status(j) {
      job = { ...job, ...j };
      drawStatus();
      if (pathView) pathView.refresh(); // a poll (no stream), or the job's state changed
    },
    point(pt) {
      if (job.status === "queued") job.status = "running";
      pointsSeen.add(`${pt.fold}/${pt.index}`);
      drawStatus();
      if (pathView) pathView.refresh();
    },
    epoch(record) {
      // An epoch can arrive in the same chunk just before the status event that says running.
      if (job.status === "queued") job.status = "running";
      records.set(record.epoch, record);
      if (!TERMINAL.includes(job.status)) {
        job.epochs_done = Math.max(job.epochs_done || 0, records.size);
      }
      drawCharts();
      drawStatus();
    },
    async end(end) {
      streamMode.textContent = "finished";
      // The end event carries status and model_id; the job row has error and progress too.
      try {
        job = await get(path);
        const again = await get(`${path}/history`);
        for (const r of again.epochs || []) records.set(r.epoch, r);
      } catch {
        job = { ...job, ...end };
      }
      if (!ctx.alive()) return;
      drawCharts();
      drawStatus();
      if (pathView) pathView.refresh();
    },
    mode(name) {
      streamMode.textContent = name === "stream" ? "live (event stream)" : "live (polling every 2 s)";
      streamMode.dataset.mode = name;
    },
    error(err) {
      streamMode.textContent = `polling: ${err.message}`;
    },
  });
  return () => {
    stop();
    stopPath();
    charts.forEach((c) => c.destroy());
  };
}

/** One line describing a spec: model shape, loss and penalties. */
export function specSummary(spec) {
  if (!spec) return "";
  const layers = (spec.model && spec.model.hidden_layers) || [];
  const reg = spec.regularization || {};
  const parts = [layers.length ? `MLP [${layers.join(", ")}]` : "linear", spec.loss];
  for (const k of ["l1", "l2", "group_l1"]) if (reg[k]) parts.push(`${k}=${reg[k]}`);
  const d = spec.dropout || {};
  if (d.hidden) parts.push(`dropout=${d.hidden}`);
  if (spec.optimizer) parts.push(spec.optimizer.name);
  return parts.filter(Boolean).join(" · ");
}
