// Small DOM helpers. Text from the API (dataset and column names come from uploaded files) is
// always set as textContent, never as HTML.

/**
 * Create an element: h("a", {href: "#/x", class: "btn", dataset: {id: 1}, onclick: fn}, "text", child).
 * Attributes whose value is null, undefined or false are left out.
 */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "style" && typeof value === "object") Object.assign(el.style, value);
    else if (key.startsWith("on") && typeof value === "function") {
      el.addEventListener(key.slice(2), value);
    } else if (key in el && typeof value !== "string") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children.flat(Infinity)) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/** Replace all children of el. */
export function replace(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

/** A number for people: 4 significant digits, exponent notation for very small or large values. */
export function fmt(x, digits = 4) {
  if (x === null || x === undefined || x === "") return "–";
  if (typeof x !== "number") return String(x);
  if (!Number.isFinite(x)) return String(x);
  if (Number.isInteger(x) && Math.abs(x) < 1e9) return x.toLocaleString("en-US");
  const a = Math.abs(x);
  if (a !== 0 && (a < 1e-3 || a >= 1e6)) return x.toExponential(digits - 1);
  return Number(x.toPrecision(digits)).toString();
}

/** A fraction 0..1 as a percentage. */
export function pct(x, digits = 1) {
  if (x === null || x === undefined) return "–";
  return `${(100 * x).toFixed(digits)}%`;
}

/** Seconds as "1 h 2 min", "3 min 4 s" or "5.2 s". */
export function duration(s) {
  if (s === null || s === undefined || !Number.isFinite(s)) return "–";
  if (s < 10) return `${s.toFixed(1)} s`;
  const total = Math.round(s);
  const hours = Math.floor(total / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  if (hours) return `${hours} h ${minutes} min`;
  if (minutes) return `${minutes} min ${seconds} s`;
  return `${seconds} s`;
}

/** A byte count as B / kB / MB. */
export function bytes(n) {
  if (n === null || n === undefined) return "–";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} kB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

/** An ISO timestamp as local date and time. */
export function when(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? iso : d.toLocaleString();
}

/** The first characters of an id, enough to tell rows apart. */
export function short(id) {
  return id ? String(id).slice(0, 8) : "–";
}

/** A status pill for a job. */
export function statusBadge(status, id) {
  return h("span", { class: `badge status-${status}`, id, "data-status": status }, status);
}

/** A message box ("error" | "info"), e.g. for a failed request. */
export function notice(kind, text, id) {
  return h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", id }, text);
}

/** A table; columns: [{label, cell: (row, index) => node|string, class}], rowAttrs: row => attrs. */
export function table(columns, rows, { id, rowAttrs, empty = "Nothing yet." } = {}) {
  const head = h("thead", {}, h("tr", {}, columns.map((c) => h("th", { class: c.class }, c.label))));
  const body = h(
    "tbody",
    {},
    rows.length
      ? rows.map((row, i) =>
          h(
            "tr",
            rowAttrs ? rowAttrs(row) : {},
            columns.map((c) => h("td", { class: c.class }, c.cell(row, i))),
          ),
        )
      : h("tr", { class: "empty" }, h("td", { colspan: columns.length }, empty)),
  );
  return h("div", { class: "table-wrap" }, h("table", { id }, head, body));
}

/** A labelled figure for a summary row. */
export function stat(label, value, id) {
  return h(
    "div",
    { class: "stat" },
    h("span", { class: "stat-label" }, label),
    h("span", { class: "stat-value", id }, value),
  );
}

/**
 * The element under form whose data-field is the longest prefix of an error's loc
 * (["body", "regularization", "l1"] -> [data-field="regularization.l1"]); null if none.
 */
export function fieldFor(form, loc) {
  const parts = (loc || []).filter((p, i) => !(i === 0 && p === "body")).map(String);
  for (let n = parts.length; n > 0; n--) {
    const el = form.querySelector(`[data-field="${CSS.escape(parts.slice(0, n).join("."))}"]`);
    if (el) return el;
  }
  return null;
}
