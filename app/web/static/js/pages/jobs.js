// #/jobs: every job, newest first, refreshed while any is still queued or running; tick two or
// more and compare their loss curves.
import { get } from "../api.js";
import { h, pct, replace, short, statusBadge, table, when } from "../dom.js";
import { specSummary } from "./job.js";

const TERMINAL = ["succeeded", "failed", "cancelled"];

export async function render(root, ctx) {
  const listBox = h("div", { id: "jobs-list" });
  const compareButton = h("button", { id: "compare-button", type: "button", disabled: true }, "Compare selected");
  const chosen = new Set();
  replace(
    root,
    h("h1", {}, "Jobs"),
    h(
      "p",
      { class: "actions" },
      h("a", { class: "btn", href: "#/jobs/new" }, "New job"),
      " ",
      compareButton,
    ),
    h("section", { class: "card" }, listBox),
  );
  compareButton.addEventListener("click", () => {
    location.hash = `#/compare?ids=${[...chosen].join(",")}`;
  });

  let timer = null;
  async function refresh() {
    const jobs = await get("jobs");
    if (!ctx.alive()) return;
    replace(
      listBox,
      table(
        [
          {
            label: "",
            cell: (j) =>
              h("input", {
                type: "checkbox",
                "aria-label": `select job ${short(j.id)}`,
                "data-compare": j.id,
                checked: chosen.has(j.id),
                onchange: (ev) => {
                  if (ev.target.checked) chosen.add(j.id);
                  else chosen.delete(j.id);
                  compareButton.disabled = chosen.size < 2;
                },
              }),
          },
          { label: "Job", cell: (j) => h("a", { href: `#/jobs/${j.id}` }, h("code", {}, short(j.id))) },
          {
            label: "Status",
            cell: (j) => h("span", { title: j.error || null }, statusBadge(j.status)),
          },
          { label: "Progress", class: "num", cell: (j) => pct(j.progress, 0) },
          { label: "Spec", class: "wrap", cell: (j) => specSummary(j.spec) },
          { label: "Created", cell: (j) => when(j.created_at) },
          {
            label: "Model",
            cell: (j) => (j.model_id ? h("a", { href: `#/models/${j.model_id}` }, short(j.model_id)) : "–"),
          },
        ],
        jobs,
        {
          id: "jobs-table",
          rowAttrs: (j) => ({ "data-testid": "job-row", "data-id": j.id, "data-status": j.status }),
          empty: "No jobs yet.",
        },
      ),
    );
    if (jobs.some((j) => !TERMINAL.includes(j.status))) timer = setTimeout(refresh, 3000);
  }
  await refresh();
  return () => clearTimeout(timer);
}
