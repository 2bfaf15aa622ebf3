// A weight-matrix heatmap on a canvas: W (D, M), one row per input feature, one column per unit.
// Diverging colours (blue < 0 < red, sqrt-scaled so small weights still show); EXACT zeros are a
// flat grey, distinct from any non-zero weight however small.
import { fmt, h } from "./dom.js";

export const ZERO_COLOR = "#9aa0a6";
const NEG = [33, 102, 172];
const POS = [178, 24, 43];
const MID = [247, 247, 247];

/** The colour of weight v when the largest |w| is maxAbs. */
export function weightColor(v, maxAbs) {
  if (v === 0) return ZERO_COLOR;
  const t = Math.min(1, Math.sqrt(Math.abs(v) / (maxAbs || 1)));
  const end = v < 0 ? NEG : POS;
  const c = MID.map((m, i) => Math.round(m + (end[i] - m) * t));
  return `rgb(${c[0]}, ${c[1]}, ${c[2]})`;
}

/**
 * Draw values (D rows of M numbers) with rowNames; rows of dropped features get grey labels.
 * Returns the figure element (canvas#id with data-rows, data-cols, data-zeros).
 */
export function heatmap({ id, values, rowNames = [], dropped = new Set(), width = 800 }) {
  const D = values.length;
  const M = D ? values[0].length : 0;
  let maxAbs = 0;
  let zeros = 0;
  for (const row of values) {
    for (const v of row) {
      if (v === 0) zeros += 1;
      else maxAbs = Math.max(maxAbs, Math.abs(v));
    }
  }
  const cellH = D <= 40 ? 18 : Math.max(2, Math.min(14, Math.floor(640 / D)));
  const showLabels = cellH >= 9;
  const labelW = showLabels ? Math.min(180, 12 + 7 * Math.max(0, ...rowNames.map((n) => String(n).length))) : 0;
  const cellW = Math.max(2, Math.min(36, Math.floor((width - labelW - 8) / Math.max(1, M))));
  const headH = cellW >= 6 ? 16 : 4;
  const cssW = labelW + cellW * M;
  const cssH = headH + cellH * D;
  const dpr = window.devicePixelRatio || 1;
  const canvas = h("canvas", {
    id,
    width: Math.ceil(cssW * dpr),
    height: Math.ceil(cssH * dpr),
    "data-rows": String(D),
    "data-cols": String(M),
    "data-zeros": String(zeros),
    "aria-label": `First-layer weights: ${D} features × ${M} units, ${zeros} exact zeros`,
    role: "img",
  });
  canvas.style.width = `${cssW}px`;
  canvas.style.height = `${cssH}px`;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  g.font = "12px system-ui, sans-serif";
  g.textBaseline = "middle";
  if (headH > 4) {
    g.fillStyle = "#666";
    g.textAlign = "center";
    // Every k-th unit number, so that two-digit numbers never run into each other.
    const every = Math.ceil((M >= 10 ? 20 : 12) / cellW);
    for (let j = 0; j < M; j += every) g.fillText(String(j), labelW + j * cellW + cellW / 2, headH / 2);
  }
  g.textAlign = "right";
  for (let i = 0; i < D; i++) {
    const y = headH + i * cellH;
    const name = rowNames[i] ?? `x${i}`;
    if (showLabels) {
      g.fillStyle = dropped.has(name) ? "#aaa" : "#222";
      g.fillText(String(name).slice(0, 24), labelW - 6, y + cellH / 2);
    }
    for (let j = 0; j < M; j++) {
      g.fillStyle = weightColor(values[i][j], maxAbs);
      g.fillRect(labelW + j * cellW, y, cellW, cellH);
    }
  }
  // Thin separators keep neighbouring cells apart when they are large enough to see.
  if (cellW >= 6 && cellH >= 6) {
    g.strokeStyle = "rgba(255,255,255,0.7)";
    g.lineWidth = 1;
    g.beginPath();
    for (let i = 1; i < D; i++) {
      g.moveTo(labelW, headH + i * cellH + 0.5);
      g.lineTo(labelW + M * cellW, headH + i * cellH + 0.5);
    }
    for (let j = 1; j < M; j++) {
      g.moveTo(labelW + j * cellW + 0.5, headH);
      g.lineTo(labelW + j * cellW + 0.5, headH + D * cellH);
    }
    g.stroke();
  }

  const tip = h("div", { id: `${id}-tip`, class: "heatmap-tip muted" }, "Point at a cell to read its weight.");
  canvas.addEventListener("mousemove", (ev) => {
    const r = canvas.getBoundingClientRect();
    const x = ev.clientX - r.left - labelW;
    const y = ev.clientY - r.top - headH;
    const i = Math.floor(y / cellH);
    const j = Math.floor(x / cellW);
    if (x < 0 || y < 0 || i >= D || j >= M) return;
    const v = values[i][j];
    tip.textContent = `${rowNames[i] ?? `x${i}`} → unit ${j}: ${v === 0 ? "0 (exact zero)" : fmt(v)}`;
  });

  const legend = h(
    "div",
    { class: "heatmap-legend" },
    h("span", {}, fmt(-maxAbs, 3)),
    h("span", { class: "gradient" }),
    h("span", {}, fmt(maxAbs, 3)),
    h(
      "span",
      { class: "zero-key" },
      h("span", { class: "swatch", style: { background: ZERO_COLOR } }),
      ` exact zero (${zeros} of ${D * M})`,
    ),
  );
  return h("div", { class: "heatmap" }, h("div", { class: "heatmap-scroll" }, canvas), legend, tip);
}
