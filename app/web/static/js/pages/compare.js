// #/compare?ids=a,b[&metric=val_loss]: several jobs' curves of one quantity overlaid.
import { get } from "../api.js";
import { overlayChart, PALETTE } from "../charts.js";
import { h, notice, replace, short, statusBadge, table, when } from "../dom.js";
import { specSummary } from "./job.js";

const QUANTITIES = ["loss", "val_loss", "data_loss", "penalty", "metric", "val_metric", "zero_fraction", "learning_rate"];

export async function render(root, ctx) {
  const ids = (ctx.query.get("ids") || "").split(",").map((s) => s.trim()).filter(Boolean);
  const metric = QUANTITIES.includes(ctx.query.get("metric")) ? ctx.query.get("metric") : "loss";
  const jobs = await get("jobs");
  if (!ctx.alive()) return;
  const chosen = new Set(ids);

  const go = (nextIds, nextMetric) => {
    const q = new URLSearchParams();
    if (nextIds.length) q.set("ids", nextIds.join(","));
    if (nextMetric !== "loss") q.set("metric", nextMetric);
    location.hash = `#/compare${q.toString() ? `?${q}` : ""}`;
  };

  const quantity = h(
    "select",
    { id: "compare-metric", "aria-label": "quantity" },
    QUANTITIES.map((q) => h("option", { value: q, selected: q === metric }, q)),
  );
  quantity.addEventListener("change", () => go([...chosen], quantity.value));

  const picker = h(
    "div",
    { id: "compare-picker", class: "checklist picker" },
    jobs.length
      ? jobs.map((j) =>
          h(
            "label",
            { class: "check" },
            h("input", {
              type: "checkbox",
              value: j.id,
              "data-compare": j.id,
              checked: chosen.has(j.id),
              onchange: (ev) => {
                if (ev.target.checked) chosen.add(j.id);
                else chosen.delete(j.id);
              },
            }),
            " ",
            h("code", {}, short(j.id)),
            " ",
            statusBadge(j.status),
            " ",
            h("span", { class: "muted" }, `${specSummary(j.spec)} · ${when(j.created_at)}`),
          ),
        )
      : h("p", { class: "muted" }, "No jobs yet."),
  );
  const show = h("button", { id: "compare-show", type: "button", onclick: () => go([...chosen], quantity.value) }, "Show");
  const chartBox = h("div", { id: "compare-charts" });

  replace(
    root,
    h("h1", {}, "Compare jobs"),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Jobs"),
      picker,
      h("p", { class: "inline-form" }, h("label", { for: "compare-metric" }, "Quantity "), quantity, " ", show),
    ),
    chartBox,
  );

  if (ids.length < 2) {
    chartBox.append(notice("info", "Tick two or more jobs and press Show."));
    return;
  }
  const byId = new Map(jobs.map((j) => [j.id, j]));
  const histories = await Promise.all(
    ids.map((id) =>
      get(`jobs/${encodeURIComponent(id)}/history`).then(
        (hist) => ({ id, records: hist.epochs || [] }),
        (err) => ({ id, records: [], error: err.message }),
      ),
    ),
  );
  if (!ctx.alive()) return;
  for (const run of histories.filter((r) => r.error)) {
    chartBox.append(notice("error", `${short(run.id)}: ${run.error}`));
  }
  const runs = histories
    .filter((r) => !r.error)
    .map((r) => ({ ...r, label: short(r.id) }));
  const chart = overlayChart(chartBox, {
    id: "compare-chart",
    title: `${metric} per epoch`,
    runs,
    key: metric,
    yLabel: metric,
  });
  // The spec of each line, in the chart's colours (the legend keeps only the short ids).
  chartBox.append(
    h(
      "section",
      { class: "card" },
      table(
        [
          {
            label: "",
            cell: (_r, i) => h("span", { class: "swatch", style: { background: PALETTE[i % PALETTE.length] } }),
          },
          { label: "Job", cell: (r) => h("a", { href: `#/jobs/${r.id}` }, h("code", {}, short(r.id))) },
          { label: "Status", cell: (r) => statusBadge((byId.get(r.id) || {}).status || "?") },
          { label: "Epochs", class: "num", cell: (r) => String(r.records.length) },
          { label: "Spec", class: "wrap", cell: (r) => specSummary((byId.get(r.id) || {}).spec) },
        ],
        runs,
        { id: "compare-legend" },
      ),
    ),
  );
  return () => chart.destroy();
}
