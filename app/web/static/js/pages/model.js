// #/models/ID: what the model learned to ignore (sparsity, first-layer heatmap, feature
// importance, dead units, weight histogram), a predict form built from its feature names, export.
import { ApiError, download, get, post } from "../api.js";
import { histogramChart } from "../charts.js";
import { fieldFor, fmt, h, notice, pct, replace, short, stat, table, when } from "../dom.js";
import { heatmap } from "../heatmap.js";

export async function render(root, ctx) {
  const [id] = ctx.params;
  const path = `models/${encodeURIComponent(id)}`;
  const model = await get(path);
  if (!ctx.alive()) return;
  const cleanups = [];

  const sparsityBox = h("div", { id: "sparsity" });
  const heatmapBox = h("div", { id: "heatmap-box" });
  const importanceBox = h("div", { id: "feature-importance", class: "bars" });
  const layersBox = h("div", { id: "layers" });
  const histogramBox = h("div", { id: "histogram-box" });
  const tolerance = h("input", {
    id: "tolerance-input",
    type: "number",
    step: "any",
    min: 0,
    placeholder: "server default",
    "aria-label": "near-zero tolerance",
  });
  const classes = model.classes && model.classes.length ? model.classes.join(", ") : null;

  replace(
    root,
    h("p", { class: "crumbs" }, h("a", { href: "#/models" }, "Models"), " / ", short(id)),
    h("h1", {}, "Model ", h("code", { id: "model-id" }, short(id))),
    h(
      "div",
      { class: "summary" },
      stat("Task", model.task, "model-task"),
      stat("Target", model.target),
      stat("Loss", model.loss),
      stat("Features", fmt((model.feature_names || []).length)),
      classes ? stat("Classes", classes, "model-classes") : null,
      stat("Created", when(model.created_at)),
      model.job_id ? stat("Job", h("a", { href: `#/jobs/${model.job_id}`, id: "job-link" }, short(model.job_id))) : null,
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Metrics"),
      table(
        [
          { label: "Metric", cell: ([k]) => k },
          { label: "Value", class: "num", cell: ([, v]) => (typeof v === "object" ? JSON.stringify(v) : fmt(v)) },
        ],
        Object.entries(model.metrics || {}),
        { id: "model-metrics", rowAttrs: ([k]) => ({ "data-metric": k }), empty: "No metrics." },
      ),
    ),
    h(
      "section",
      { class: "card" },
      h("h2", {}, "Sparsity"),
      h("p", { class: "inline-form" }, h("label", { for: "tolerance-input" }, "Near-zero tolerance "), tolerance),
      sparsityBox,
    ),
    h("section", { class: "card" }, h("h2", {}, "First-layer weights"), heatmapBox),
    h(
      "div",
      { class: "grid-2" },
      h("section", { class: "card" }, h("h2", {}, "Feature importance"), importanceBox),
      h("section", { class: "card" }, h("h2", {}, "Weight histogram"), histogramBox),
    ),
    h("section", { class: "card" }, h("h2", {}, "Layers"), layersBox),
    predictSection(model, path),
    exportSection(path, id),
  );

  let sparsity = null;
  async function loadSparsity() {
    const tol = tolerance.value.trim();
    try {
      sparsity = await get(`${path}/sparsity`, tol ? { tolerance: tol } : {});
    } catch (err) {
      replace(sparsityBox, notice("error", err.message, "sparsity-error"));
      return;
    }
    if (!ctx.alive()) return;
    drawSparsity(sparsity);
    drawImportance(sparsity);
    drawLayers(sparsity);
    drawHistogram(sparsity);
  }

  function drawSparsity(s) {
    const D = (model.feature_names || []).length;
    replace(
      sparsityBox,
      h(
        "div",
        { class: "summary", id: "sparsity-summary" },
        stat("Weights", fmt(s.total_weights), "total-weights"),
        stat("Exact zeros", fmt(s.zero_weights), "zero-weights"),
        stat("Zero fraction", pct(s.zero_fraction), "zero-fraction"),
        stat("Features kept", `${fmt(s.selected_features.length)} of ${fmt(D || s.selected_features.length + s.dropped_features.length)}`, "selected-count"),
        stat("Tolerance", fmt(s.tolerance)),
      ),
      s.dropped_features.length
        ? h(
            "p",
            { id: "dropped-features" },
            h("strong", {}, "Dropped by the penalty (all outgoing weights exactly zero): "),
            s.dropped_features.map((name, i) => [i ? ", " : "", h("span", { class: "dropped-name" }, name)]),
          )
        : h("p", { id: "dropped-features", class: "muted" }, "No feature was dropped."),
    );
  }

  function drawImportance(s) {
    const dropped = new Set(s.dropped_features);
    const entries = Object.entries(s.feature_importance || {}).sort((a, b) => b[1] - a[1]);
    const max = Math.max(0, ...entries.map(([, v]) => v)) || 1;
    const shown = entries.slice(0, 100);
    replace(
      importanceBox,
      shown.map(([name, value]) =>
        h(
          "div",
          {
            class: `feature-bar${dropped.has(name) ? " dropped" : ""}`,
            "data-feature": name,
            "data-value": String(value),
            title: dropped.has(name) ? `${name}: dropped (exact zeros)` : `${name}: ${fmt(value)}`,
          },
          h("span", { class: "bar-label" }, name),
          h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: { width: `${(100 * value) / max}%` } })),
          h("span", { class: "bar-value" }, dropped.has(name) ? "dropped" : fmt(value)),
        ),
      ),
      entries.length > shown.length ? h("p", { class: "muted" }, `Top ${shown.length} of ${entries.length} features.`) : null,
      h("p", { class: "muted small" }, "Importance: L2 norm of a feature's outgoing first-layer weights."),
    );
  }

  function drawLayers(s) {
    replace(
      layersBox,
      table(
        [
          { label: "Layer", cell: (l) => l.name },
          { label: "Shape", cell: (l) => (l.shape || []).join(" × ") },
          { label: "Zeros", class: "num", cell: (l) => fmt(l.zeros) },
          {
            label: "Zero fraction",
            cell: (l) =>
              h(
                "span",
                { class: "zero-bar", title: pct(l.zero_fraction) },
                h("span", { class: "zero-fill", style: { width: `${100 * l.zero_fraction}%` } }),
                h("span", { class: "zero-text" }, pct(l.zero_fraction)),
              ),
          },
          { label: "Near zero", class: "num", cell: (l) => fmt(l.near_zero) },
          { label: "Dead units", class: "num", cell: (l) => h("span", { class: l.dead_units ? "warn" : "", "data-dead-units": String(l.dead_units) }, fmt(l.dead_units)) },
          { label: "L1", class: "num", cell: (l) => fmt(l.l1_norm) },
          { label: "L2", class: "num", cell: (l) => fmt(l.l2_norm) },
          { label: "max |w|", class: "num", cell: (l) => fmt(l.max_abs) },
        ],
        s.layers || [],
        { id: "layers-table", rowAttrs: (l) => ({ "data-layer": l.name }), empty: "No weight matrices." },
      ),
    );
  }

  const layerSelect = h("select", { id: "histogram-layer", "aria-label": "layer" });
  const logBox = h("input", { id: "histogram-log", type: "checkbox" });
  const histChart = h("div", { class: "chart-box" });
  let hist = null;
  function drawHistogram(s) {
    const layers = (s.layers || []).filter((l) => l.histogram && l.histogram.counts);
    const keep = layerSelect.value;
    replace(layerSelect, layers.map((l, i) => h("option", { value: String(i), selected: String(i) === keep }, l.name)));
    replace(
      histogramBox,
      h("p", { class: "inline-form" }, layerSelect, " ", h("label", {}, logBox, " log counts")),
      histChart,
    );
    redrawHistogram(layers);
  }
  function redrawHistogram(layers) {
    if (hist) hist.destroy();
    hist = null;
    replace(histChart);
    const layer = layers[Number(layerSelect.value || 0)];
    if (!layer) {
      histChart.append(h("p", { class: "muted" }, "No histogram."));
      return;
    }
    hist = histogramChart(histChart, {
      id: "weight-histogram",
      title: `${layer.name}: ${fmt(layer.zeros)} exact zeros`,
      histogram: layer.histogram,
      log: logBox.checked,
    });
  }
  const histLayers = () => ((sparsity && sparsity.layers) || []).filter((l) => l.histogram && l.histogram.counts);
  layerSelect.addEventListener("change", () => redrawHistogram(histLayers()));
  logBox.addEventListener("change", () => redrawHistogram(histLayers()));
  cleanups.push(() => hist && hist.destroy());

  async function loadHeatmap() {
    let w;
    try {
      w = await get(`${path}/weights`, { layer: 0 });
    } catch (err) {
      if (!ctx.alive()) return;
      const why = err instanceof ApiError && err.status === 404 ? "The server has no weights endpoint for this model." : err.message;
      replace(heatmapBox, notice("error", why, "heatmap-error"));
      return;
    }
    if (!ctx.alive()) return;
    const dropped = new Set((sparsity && sparsity.dropped_features) || []);
    const draw = () =>
      replace(
        heatmapBox,
        h("p", { class: "muted small" }, `${w.layer}: ${(w.shape || []).join(" × ")} — rows are input features, columns are units.`),
        heatmap({
          id: "weights-heatmap",
          values: w.values,
          rowNames: w.row_names || model.feature_names || [],
          dropped,
          width: heatmapBox.clientWidth || 800,
        }),
      );
    draw();
    // Redraw for a new width (phone rotated, window resized).
    let lastW = heatmapBox.clientWidth;
    const onResize = () => {
      if (Math.abs(heatmapBox.clientWidth - lastW) > 40) {
        lastW = heatmapBox.clientWidth;
        draw();
      }
    };
    window.addEventListener("resize", onResize);
    cleanups.push(() => window.removeEventListener("resize", onResize));
  }

  tolerance.addEventListener("change", loadSparsity);
  await loadSparsity();
  await loadHeatmap();
  return () => cleanups.forEach((f) => f());
}

function predictSection(model, path) {
  const features = model.feature_names || [];
  const result = h("div", { id: "predict-result", "aria-live": "polite" });
  const form = h("form", { id: "predict-form", class: "predict-form", novalidate: true });
  const inputs = features.map((name) =>
    h("input", { name, "data-feature": name, type: "text", inputmode: "decimal", autocomplete: "off" }),
  );
  form.append(
    h(
      "div",
      { class: "predict-grid" },
      features.map((name, i) =>
        h("div", { class: "field", "data-field": `rows.0.${name}` }, h("label", {}, name, inputs[i]), h("span", { class: "field-error" })),
      ),
    ),
    h("div", { class: "actions" }, h("button", { id: "predict-submit", type: "submit" }, "Predict")),
    result,
  );

  // Prefill with the training data's means (numbers) so one click gives a prediction.
  if (model.dataset_id) {
    get(`datasets/${encodeURIComponent(model.dataset_id)}`)
      .then((ds) => {
        const cols = new Map((ds.columns || []).map((c) => [c.name, c]));
        features.forEach((name, i) => {
          const c = cols.get(name);
          if (c && c.dtype === "number" && typeof c.mean === "number" && !inputs[i].value) {
            inputs[i].value = String(Number(c.mean.toPrecision(4)));
          } else if (c && c.dtype === "string") {
            inputs[i].placeholder = `text (${c.distinct ?? "?"} values)`;
          }
        });
      })
      .catch(() => {});
  }

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    const row = {};
    features.forEach((name, i) => {
      const t = inputs[i].value.trim();
      const n = Number(t);
      row[name] = t === "" ? null : t !== "" && Number.isFinite(n) ? n : t;
    });
    replace(result, h("p", { class: "muted" }, "Predicting…"));
    try {
      const out = await post(`${path}/predict`, { rows: [row] });
      replace(result, predictionView(out));
    } catch (err) {
      const errors = err instanceof ApiError ? err.errors : [{ loc: [], msg: String(err) }];
      const general = [];
      for (const e of errors) {
        const field = fieldFor(form, e.loc);
        if (field) field.querySelector(".field-error").textContent = e.msg;
        else general.push(e.msg);
      }
      replace(result, general.length ? notice("error", general.join(" "), "predict-error") : null);
    }
  });
  return h("section", { class: "card" }, h("h2", {}, "Predict"), form);
}

function predictionView(out) {
  const prediction = (out.predictions || [])[0];
  const probs = out.probabilities && out.probabilities[0];
  const classes = out.classes || [];
  return h(
    "div",
    { class: "prediction" },
    h("p", {}, "Prediction: ", h("strong", { "data-testid": "prediction" }, typeof prediction === "number" ? fmt(prediction, 6) : String(prediction))),
    probs
      ? h(
          "div",
          { class: "bars", id: "predict-probabilities" },
          probs.map((p, i) =>
            h(
              "div",
              { class: "feature-bar", "data-class": String(classes[i]) },
              h("span", { class: "bar-label" }, String(classes[i] ?? i)),
              h("span", { class: "bar-track" }, h("span", { class: "bar-fill", style: { width: `${100 * p}%` } })),
              h("span", { class: "bar-value" }, pct(p)),
            ),
          ),
        )
      : null,
  );
}

function exportSection(path, id) {
  const status = h("span", { class: "muted", id: "export-status" });
  const link = (format, label, elId) =>
    h(
      "a",
      {
        id: elId,
        class: "btn secondary",
        href: `${path}/export${format === "npz" ? "" : `?format=${format}`}`,
        download: `model-${short(id)}.${format}`,
        onclick: async (ev) => {
          // A plain link cannot carry the API key; fetch the file with it instead.
          ev.preventDefault();
          status.textContent = "Downloading…";
          try {
            await download(`${path}/export`, format === "npz" ? {} : { format }, `model-${short(id)}.${format}`);
            status.textContent = "";
          } catch (err) {
            status.textContent = err.message;
          }
        },
      },
      label,
    );
  return h(
    "section",
    { class: "card" },
    h("h2", {}, "Export"),
    h(
      "p",
      { class: "actions" },
      link("npz", "Weights + spec (.npz)", "export-link"),
      " ",
      link("onnx", "ONNX", "export-onnx-link"),
      " ",
      status,
    ),
    h("p", { class: "muted small" }, "The .npz loads with engine.serialize; ONNX runs in onnxruntime."),
  );
}
