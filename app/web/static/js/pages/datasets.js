// #/datasets: the list and a drag-and-drop upload; #/datasets/ID: one dataset's column profile.
import { ApiError, get, request } from "../api.js";
import { bytes, fmt, h, notice, replace, short, stat, table, when } from "../dom.js";

export async function renderList(root, ctx) {
  const status = h("div", { id: "upload-status", class: "upload-status", role: "status" });
  const input = h("input", {
    id: "upload-input",
    type: "file",
    accept: ".csv,.parquet,.pq,.npz,.zip,text/csv",
    class: "visually-hidden",
  });
  const zone = h(
    "label",
    { id: "upload-drop", class: "drop-zone", for: "upload-input", "data-testid": "upload-drop" },
    h("strong", {}, "Drop a CSV or Parquet file here"),
    h("span", {}, " or click to choose one (images: .npz with x/y, or a .zip of class folders)."),
  );
  const listBox = h("div", { id: "datasets-list" });
  replace(
    root,
    h("h1", {}, "Datasets"),
    h("section", { class: "card" }, h("h2", {}, "Upload"), input, zone, status),
    h("section", { class: "card" }, h("h2", {}, "Uploaded"), listBox),
  );

  async function refresh() {
    const rows = await get("datasets");
    if (!ctx.alive()) return;
    replace(
      listBox,
      table(
        [
          { label: "Name", cell: (d) => h("a", { href: `#/datasets/${d.id}` }, d.name) },
          { label: "Rows", cell: (d) => fmt(d.rows), class: "num" },
          { label: "Columns", cell: (d) => fmt((d.columns || []).length), class: "num" },
          { label: "Size", cell: (d) => bytes(d.size_bytes), class: "num" },
          { label: "Uploaded", cell: (d) => when(d.created_at) },
          {
            label: "",
            cell: (d) => h("a", { class: "btn small", href: `#/jobs/new?dataset=${d.id}` }, "Train"),
          },
        ],
        rows,
        {
          id: "datasets-table",
          rowAttrs: (d) => ({ "data-testid": "dataset-row", "data-id": d.id }),
          empty: "No datasets yet: upload one above.",
        },
      ),
    );
  }

  async function upload(file) {
    if (!file) return;
    replace(status, `Uploading ${file.name} (${bytes(file.size)})…`);
    status.className = "upload-status busy";
    const form = new FormData();
    form.append("file", file, file.name);
    try {
      const ds = await request("datasets", { method: "POST", body: form });
      status.className = "upload-status ok";
      replace(
        status,
        "Uploaded ",
        h("a", { href: `#/datasets/${ds.id}`, id: "upload-result", "data-id": ds.id }, ds.name),
        `: ${fmt(ds.rows)} rows, ${(ds.columns || []).length} columns.`,
      );
      await refresh();
    } catch (err) {
      status.className = "upload-status error";
      const msgs = err instanceof ApiError ? err.errors.map((e) => e.msg) : [String(err)];
      replace(status, h("span", { class: "field-error", id: "upload-error" }, msgs.join(" ")));
    } finally {
      input.value = "";
    }
  }

  input.addEventListener("change", () => upload(input.files[0]));
  for (const name of ["dragenter", "dragover"]) {
    zone.addEventListener(name, (ev) => {
      ev.preventDefault();
      zone.classList.add("over");
    });
  }
  for (const name of ["dragleave", "drop"]) {
    zone.addEventListener(name, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (ev) => {
    ev.preventDefault();
    const file = ev.dataTransfer && ev.dataTransfer.files[0];
    upload(file);
  });

  await refresh();
}

export async function renderDetail(root, ctx) {
  const [id] = ctx.params;
  const ds = await get(`datasets/${encodeURIComponent(id)}`);
  if (!ctx.alive()) return;
  const columns = ds.columns || [];
  const remove = h(
    "button",
    {
      id: "dataset-delete",
      class: "danger secondary",
      type: "button",
      onclick: async () => {
        if (!confirm(`Delete dataset ${ds.name}?`)) return;
        try {
          await request(`datasets/${encodeURIComponent(id)}`, { method: "DELETE" });
          location.hash = "#/datasets";
        } catch (err) {
          remove.after(notice("error", err.message));
        }
      },
    },
    "Delete",
  );
  replace(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/datasets" }, "Datasets"), " / ", ds.name),
    h("h1", { id: "dataset-name" }, ds.name),
    h(
      "div",
      { class: "summary" },
      stat("Rows", fmt(ds.rows), "dataset-rows"),
      stat("Columns", fmt(columns.length)),
      stat("Size", bytes(ds.size_bytes)),
      stat("Uploaded", when(ds.created_at)),
      stat("Id", short(ds.id)),
    ),
    h(
      "p",
      { class: "actions" },
      h("a", { class: "btn", id: "dataset-train", href: `#/jobs/new?dataset=${ds.id}` }, "Train a model"),
      " ",
      remove,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Column profile"),
      table(
        [
          { label: "Column", cell: (c) => c.name },
          { label: "Type", cell: (c) => h("span", { class: `dtype dtype-${c.dtype}` }, c.dtype) },
          {
            label: "Missing",
            class: "num",
            cell: (c) => h("span", { class: c.missing ? "warn" : "" }, fmt(c.missing)),
          },
          { label: "Min", class: "num", cell: (c) => fmt(c.min) },
          { label: "Max", class: "num", cell: (c) => fmt(c.max) },
          { label: "Mean", class: "num", cell: (c) => fmt(c.mean) },
          { label: "Distinct", class: "num", cell: (c) => fmt(c.distinct) },
        ],
        columns,
        {
          id: "dataset-profile",
          rowAttrs: (c) => ({ "data-column": c.name }),
          empty: "This dataset has no columns.",
        },
      ),
    ),
  );
}
