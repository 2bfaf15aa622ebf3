// #/models: every trained model, newest first.
import { get } from "../api.js";
import { bytes, fmt, h, replace, short, table, when } from "../dom.js";

/** The headline metrics of a model, e.g. "val_accuracy 0.93". */
export function headline(metrics) {
  return Object.entries(metrics || {})
    .filter(([k, v]) => typeof v === "number" && !["n_train", "n_val", "seconds"].includes(k))
    .slice(0, 3)
    .map(([k, v]) => `${k} ${fmt(v)}`)
    .join(" · ");
}

export async function render(root, ctx) {
  const models = await get("models");
  if (!ctx.alive()) return;
  replace(
    root,
    h("h1", {}, "Models"),
    h(
      "section",
      { class: "card" },
      table(
        [
          { label: "Model", cell: (m) => h("a", { href: `#/models/${m.id}` }, h("code", {}, short(m.id))) },
          { label: "Task", cell: (m) => m.task },
          { label: "Target", cell: (m) => m.target },
          { label: "Loss", cell: (m) => m.loss },
          { label: "Features", class: "num", cell: (m) => fmt((m.feature_names || []).length) },
          { label: "Metrics", cell: (m) => headline(m.metrics) },
          { label: "Size", class: "num", cell: (m) => bytes(m.size_bytes) },
          { label: "Created", cell: (m) => when(m.created_at) },
          {
            label: "Job",
            cell: (m) => (m.job_id ? h("a", { href: `#/jobs/${m.job_id}` }, short(m.job_id)) : "–"),
          },
        ],
        models,
        {
          id: "models-table",
          rowAttrs: (m) => ({ "data-testid": "model-row", "data-id": m.id }),
          empty: "No models yet: a job that succeeds makes one.",
        },
      ),
    ),
  );
}
