// #/jobs/new[?dataset=ID]: a form over the TrainingSpec. Choices, defaults and bounds come from the
// API's own OpenAPI schema (so the form offers what the engine accepts); the server validates,
// and each 422 error's msg is shown next to the field whose data-field matches its loc.
import { ApiError, get, post } from "../api.js";
import { fieldFor, h, notice, replace } from "../dom.js";

// Fallbacks for a server whose schema cannot be read (same names as engine's registries).
const FALLBACK_ENUMS = {
  task: ["classification", "regression"],
  loss: [
    "mse", "mae", "huber", "binary_cross_entropy", "softmax_cross_entropy",
    "multiclass_hinge", "squared_hinge",
  ],
  "model.activation": ["relu", "sigmoid", "tanh", "leaky_relu", "prelu", "linear"],
  "regularization.l1_method": ["proximal", "subgradient"],
  "dropout.mode": ["inverted", "standard", "dropconnect"],
  "optimizer.name": [
    "sgd", "momentum", "nesterov", "adagrad", "adadelta", "rmsprop", "adam", "fista",
  ],
};

// [path, label, kind, hint]
const GROUPS = [
  ["Data", [
    ["dataset_id", "Dataset", "dataset"],
    ["target", "Target column", "target"],
    ["task", "Task", "enum", "empty: inferred from the loss"],
    ["features", "Features", "features", "all checked = every column but the target"],
  ]],
  ["Model and loss", [
    ["loss", "Loss", "enum", "empty: softmax_cross_entropy or mse"],
    ["model.hidden_layers", "Hidden layers", "layers", "widths, e.g. 64, 32; empty = linear model"],
    ["model.activation", "Activation", "enum"],
  ]],
  ["Regularization", [
    ["regularization.l1", "L1", "number", "l1 · Σ|w|"],
    ["regularization.l2", "L2", "number", "l2 · Σw²"],
    ["regularization.group_l1", "Group L1", "number", "per input feature: ‖W₁[j,:]‖₂"],
    ["regularization.l1_method", "L1 method", "enum"],
  ]],
  ["Dropout (drop probabilities)", [
    ["dropout.input", "Input dropout", "number"],
    ["dropout.hidden", "Hidden dropout", "number"],
    ["dropout.mode", "Mode", "enum"],
  ]],
  ["Optimization", [
    ["optimizer.name", "Optimizer", "enum"],
    ["optimizer.learning_rate", "Learning rate", "number"],
    ["epochs", "Epochs", "integer"],
    ["batch_size", "Batch size", "integer"],
    ["validation_split", "Validation split", "number", "fraction held out, 0..1"],
    ["seed", "Seed", "integer"],
  ]],
  ["Choose lambda", [
    ["search", "Search a regularization path", "toggle", "the job's model is the fit at the chosen value"],
    ["search.param", "Parameter", "enum"],
    ["search.num", "Values", "integer", "log-spaced down from the value that zeroes every weight"],
    ["search.folds", "Folds", "integer", "K-fold cross-validation; empty: the validation split scores"],
    ["search.select", "Select", "enum", "1se: the largest value within one standard error of min"],
  ]],
];
// The search's fields start at these (folds: cross-validation, what choosing lambda usually means).
const SEARCH_START = { "search.folds": 5 };

export const PRESETS = {
  lasso: {
    label: "Lasso",
    title: "Linear regression with an L1 penalty (FISTA, exact zeros)",
    values: {
      task: "regression", loss: "mse", "model.hidden_layers": "",
      "regularization.l1": 0.01, "regularization.l2": 0, "regularization.group_l1": 0,
      "dropout.input": 0, "dropout.hidden": 0, "optimizer.name": "fista",
      "optimizer.learning_rate": "", epochs: 200, "validation_split": 0.2,
    },
  },
  "l1-logistic": {
    label: "L1 logistic",
    title: "Linear classifier with an L1 penalty (binary or softmax cross-entropy)",
    values: {
      task: "classification", loss: "softmax_cross_entropy", "model.hidden_layers": "",
      "regularization.l1": 0.005, "regularization.l2": 0, "regularization.group_l1": 0,
      "dropout.input": 0, "dropout.hidden": 0, "optimizer.name": "fista",
      "optimizer.learning_rate": "", epochs: 200, "validation_split": 0.2,
    },
  },
  mlp: {
    label: "MLP + dropout + group L1",
    title: "Two hidden layers, dropout, and group L1 that switches whole input features off",
    values: {
      task: "", loss: "", "model.hidden_layers": "64, 32", "model.activation": "relu",
      "regularization.l1": 0.0001, "regularization.l2": 0.0001, "regularization.group_l1": 0.01,
      "dropout.input": 0, "dropout.hidden": 0.2, "dropout.mode": "inverted",
      "optimizer.name": "adam", "optimizer.learning_rate": 0.01, epochs: 60, batch_size: 64,
      "validation_split": 0.2,
    },
  },
};

const TARGET_GUESSES = ["target", "label", "y", "class", "default", "outcome"];

/** The schema of each spec field by dotted path, read from openapi.json ({} when unavailable). */
async function specSchema() {
  let doc;
  try {
    doc = await get("openapi.json");
  } catch {
    return {};
  }
  const schemas = (doc.components && doc.components.schemas) || {};
  const deref = (s) => {
    let cur = s || {};
    for (let i = 0; i < 10 && cur.$ref; i++) cur = schemas[cur.$ref.split("/").pop()] || {};
    if (cur.allOf && cur.allOf.length === 1) return deref(cur.allOf[0]);
    return cur;
  };
  const out = {};
  const walk = (schema, prefix) => {
    for (const [name, prop] of Object.entries(deref(schema).properties || {})) {
      const path = prefix ? `${prefix}.${name}` : name;
      const s = deref(prop);
      // Optional fields (and sections) are anyOf [X, null].
      const alts = (s.anyOf || [s]).map(deref).filter((a) => a.type !== "null");
      if (alts.length === 1 && alts[0].properties) walk(alts[0], path);
      else out[path] = { ...(alts[0] || {}), default: prop.default ?? s.default };
    }
  };
  if (schemas.TrainingSpec) walk(schemas.TrainingSpec, "");
  return out;
}

export async function render(root, ctx) {
  const [datasets, schema] = await Promise.all([get("datasets"), specSchema()]);
  if (!ctx.alive()) return;
  const wanted = ctx.query.get("dataset");
  const fields = {};
  const generalErrors = h("ul", { id: "form-errors", class: "form-errors", role: "alert" });
  const preview = h("pre", { id: "spec-preview", class: "spec-preview" });
  const extra = h("textarea", {
    id: "spec-extra",
    rows: 4,
    spellcheck: "false",
    placeholder: '{"early_stopping": {"patience": 10}, "optimizer": {"momentum": 0.9}}',
  });
  let columns = [];

  function enumOptions(path) {
    const s = schema[path] || {};
    return s.enum || FALLBACK_ENUMS[path] || [];
  }

  function control(path, kind) {
    const id = `f-${path.replace(/\./g, "-")}`;
    const s = schema[path] || {};
    if (kind === "dataset") {
      return h(
        "select",
        { id: "dataset-select", name: path },
        h("option", { value: "" }, datasets.length ? "— choose —" : "— upload a dataset first —"),
        datasets.map((d) =>
          h("option", { value: d.id, selected: d.id === wanted }, `${d.name} (${d.rows} rows)`),
        ),
      );
    }
    if (kind === "target") return h("select", { id: "target-select", name: path });
    if (kind === "features") return h("div", { id: "features-list", class: "checklist" });
    if (kind === "enum") {
      const def = s.default;
      const optional = def === undefined || def === null;
      return h(
        "select",
        { id, name: path },
        optional ? h("option", { value: "" }, "(default)") : null,
        enumOptions(path).map((v) => h("option", { value: v, selected: v === def }, v)),
      );
    }
    if (kind === "toggle") return h("input", { id, name: path, type: "checkbox" });
    if (kind === "layers") {
      const def = Array.isArray(s.default) ? s.default.join(", ") : "64, 32";
      return h("input", { id, name: path, type: "text", value: def, inputmode: "numeric" });
    }
    const attrs = { id, name: path, type: "number", step: kind === "integer" ? "1" : "any" };
    if (s.default !== undefined && s.default !== null) attrs.placeholder = String(s.default);
    if (SEARCH_START[path] !== undefined) attrs.value = String(SEARCH_START[path]);
    if (s.minimum !== undefined) attrs.min = s.minimum;
    if (s.maximum !== undefined) attrs.max = s.maximum;
    return h("input", attrs);
  }

  const form = h("form", { id: "job-form", class: "job-form", novalidate: true });
  const presetBar = h(
    "div",
    { class: "presets", role: "group", "aria-label": "Presets" },
    h("span", { class: "muted" }, "Presets: "),
    Object.entries(PRESETS).map(([key, p]) =>
      h(
        "button",
        { type: "button", class: "secondary", "data-preset": key, title: p.title, onclick: () => applyPreset(key) },
        p.label,
      ),
    ),
  );
  form.append(presetBar);
  for (const [title, list] of GROUPS) {
    const fs = h("fieldset", { "data-group": list[0][0] }, h("legend", {}, title));
    for (const [path, label, kind, hint] of list) {
      const input = control(path, kind);
      fields[path] = input;
      const id = input.id;
      fs.append(
        h(
          "div",
          { class: `field field-${kind}`, "data-field": path },
          h("label", { for: kind === "features" ? null : id }, label),
          input,
          hint ? h("small", { class: "hint" }, hint) : null,
          h("span", { class: "field-error", role: "alert" }),
        ),
      );
    }
    form.append(fs);
  }
  form.append(
    h(
      "details",
      { class: "advanced" },
      h("summary", {}, "Extra spec JSON (merged over the form)"),
      h("div", { class: "field", "data-field": "extra" }, extra, h("span", { class: "field-error" })),
    ),
    generalErrors,
    h(
      "div",
      { class: "actions" },
      h("button", { id: "job-submit", type: "submit" }, "Start training"),
    ),
    h("details", { class: "advanced" }, h("summary", {}, "Spec to be posted"), preview),
  );

  replace(root, h("h1", {}, "New training job"), h("section", { class: "card" }, form));

  async function loadColumns() {
    const id = fields.dataset_id.value;
    columns = [];
    if (id) {
      try {
        const ds = await get(`datasets/${encodeURIComponent(id)}`);
        columns = ds.columns || [];
      } catch (err) {
        showErrors([{ loc: ["body", "dataset_id"], msg: err.message }]);
      }
    }
    const names = columns.map((c) => c.name);
    const guess = names.find((n) => TARGET_GUESSES.includes(n.toLowerCase())) || names[names.length - 1];
    replace(
      fields.target,
      names.length ? null : h("option", { value: "" }, "— choose a dataset —"),
      columns.map((c) =>
        h("option", { value: c.name, selected: c.name === guess }, `${c.name} (${c.dtype})`),
      ),
    );
    renderFeatures();
  }

  function renderFeatures() {
    const target = fields.target.value;
    replace(
      fields.features,
      columns
        .filter((c) => c.name !== target)
        .map((c) =>
          h(
            "label",
            { class: "check" },
            h("input", { type: "checkbox", value: c.name, checked: true, "data-feature": c.name }),
            ` ${c.name}`,
          ),
        ),
    );
    updatePreview();
  }

  function applyPreset(key) {
    const preset = PRESETS[key];
    const values = { ...preset.values };
    if (key === "l1-logistic") {
      const target = columns.find((c) => c.name === fields.target.value);
      // Two classes: the sigmoid output of binary cross-entropy; more: softmax.
      if (target && target.distinct === 2) values.loss = "binary_cross_entropy";
    }
    for (const [path, value] of Object.entries(values)) {
      if (fields[path]) fields[path].value = value === null ? "" : String(value);
    }
    for (const b of presetBar.querySelectorAll("[data-preset]")) {
      b.classList.toggle("active", b.dataset.preset === key);
    }
    clearErrors();
    updatePreview();
  }

  function numberOrRaw(text) {
    const t = text.trim();
    if (t === "") return undefined;
    const n = Number(t);
    // Send what cannot be parsed as typed, so the server's message names the field.
    return Number.isFinite(n) ? n : t;
  }

  function setPath(obj, path, value) {
    const keys = path.split(".");
    let cur = obj;
    for (const k of keys.slice(0, -1)) cur = cur[k] = cur[k] || {};
    cur[keys[keys.length - 1]] = value;
  }

  function deepMerge(into, from) {
    for (const [k, v] of Object.entries(from)) {
      if (v && typeof v === "object" && !Array.isArray(v) && into[k] && typeof into[k] === "object") {
        deepMerge(into[k], v);
      } else into[k] = v;
    }
    return into;
  }

  /** The spec from the form: empty fields are left out so the engine's defaults apply. */
  function buildSpec() {
    const spec = {};
    for (const [, list] of GROUPS) {
      for (const [path, , kind] of list) {
        const el = fields[path];
        let value;
        if (kind === "toggle" || (path.startsWith("search.") && !fields.search.checked)) {
          continue; // the search section is sent only when it is switched on
        } else if (kind === "features") {
          const boxes = [...el.querySelectorAll("input[type=checkbox]")];
          const chosen = boxes.filter((b) => b.checked).map((b) => b.value);
          value = boxes.length && chosen.length < boxes.length ? chosen : undefined;
        } else if (kind === "layers") {
          const parts = el.value.split(/[\s,;]+/).filter(Boolean);
          value = parts.map((p) => numberOrRaw(p));
        } else if (kind === "number" || kind === "integer") {
          value = numberOrRaw(el.value);
        } else {
          value = el.value === "" ? undefined : el.value;
        }
        if (value !== undefined) setPath(spec, path, value);
        // a search with every field empty is still a search (the engine's defaults)
        else if (path.startsWith("search.")) spec.search = spec.search || {};
      }
    }
    const raw = extra.value.trim();
    if (raw) deepMerge(spec, JSON.parse(raw));
    return spec;
  }

  function updatePreview() {
    try {
      preview.textContent = JSON.stringify(buildSpec(), null, 2);
    } catch (err) {
      preview.textContent = `Extra JSON is not valid: ${err.message}`;
    }
  }

  function clearErrors() {
    for (const el of form.querySelectorAll(".field-error")) el.textContent = "";
    for (const el of form.querySelectorAll(".field.invalid")) el.classList.remove("invalid");
    generalErrors.replaceChildren();
  }

  /** Put each error next to the field whose data-field is the longest prefix of its loc. */
  function showErrors(errors) {
    for (const err of errors) {
      const loc = (err.loc || []).filter((p, i) => !(i === 0 && p === "body")).map(String);
      const field = fieldFor(form, err.loc);
      if (field) {
        field.classList.add("invalid");
        const slot = field.querySelector(".field-error");
        slot.textContent = slot.textContent ? `${slot.textContent} ${err.msg}` : err.msg;
      } else {
        generalErrors.append(h("li", {}, loc.length ? `${loc.join(".")}: ${err.msg}` : err.msg));
      }
    }
    const first = form.querySelector(".field.invalid input, .field.invalid select");
    if (first) first.focus();
  }

  function showSearch() {
    const on = fields.search.checked;
    form.querySelector('[data-group="search"]').classList.toggle("collapsed", !on);
    document.getElementById("job-submit").textContent = on ? "Start the search" : "Start training";
  }

  form.addEventListener("input", updatePreview);
  form.addEventListener("change", (ev) => {
    if (ev.target === fields.dataset_id) loadColumns();
    else if (ev.target === fields.target) renderFeatures();
    else if (ev.target === fields.search) showSearch();
  });
  showSearch();
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    clearErrors();
    let spec;
    try {
      spec = buildSpec();
    } catch (err) {
      showErrors([{ loc: ["extra"], msg: `Not valid JSON: ${err.message}` }]);
      return;
    }
    const button = document.getElementById("job-submit");
    button.disabled = true;
    try {
      const job = await post("jobs", spec);
      location.hash = `#/jobs/${job.id}`;
    } catch (err) {
      if (err instanceof ApiError && err.status !== 401) showErrors(err.errors);
      else if (!(err instanceof ApiError)) generalErrors.append(h("li", {}, String(err)));
      else generalErrors.append(h("li", {}, err.message));
    } finally {
      button.disabled = false;
    }
  });

  if (!datasets.length) {
    form.before(
      notice("info", "No dataset yet: upload one on the Datasets page first."),
    );
  } else if (!fields.dataset_id.value && datasets.length === 1) {
    fields.dataset_id.value = datasets[0].id;
  }
  await loadColumns();
}
