// Hash router: #/datasets, #/datasets/ID, #/jobs, #/jobs/new, #/jobs/ID, #/models, #/models/ID,
// #/compare?ids=a,b. Each page module exports render(root, ctx) and may return a cleanup function
// (closing event streams, timers, charts) that runs when the user navigates away.
import { ApiError, initAuthPanel } from "./api.js";
import { h, notice, replace } from "./dom.js";
import * as compare from "./pages/compare.js";
import * as datasets from "./pages/datasets.js";
import * as job from "./pages/job.js";
import * as jobs from "./pages/jobs.js";
import * as model from "./pages/model.js";
import * as models from "./pages/models.js";
import * as newJob from "./pages/new-job.js";

const ROUTES = [
  [/^\/?$/, datasets.renderList, "datasets"],
  [/^\/datasets\/?$/, datasets.renderList, "datasets"],
  [/^\/datasets\/([^/]+)$/, datasets.renderDetail, "datasets"],
  [/^\/jobs\/?$/, jobs.render, "jobs"],
  [/^\/jobs\/new$/, newJob.render, "new"],
  [/^\/jobs\/([^/]+)$/, job.render, "jobs"],
  [/^\/models\/?$/, models.render, "models"],
  [/^\/models\/([^/]+)$/, model.render, "models"],
  [/^\/compare\/?$/, compare.render, "compare"],
];

let cleanup = null;
let generation = 0;

function parseHash() {
  const raw = location.hash.replace(/^#/, "") || "/";
  const [path, qs = ""] = raw.split("?");
  return { path, query: new URLSearchParams(qs) };
}

async function route() {
  const root = document.getElementById("app");
  if (typeof cleanup === "function") {
    try {
      cleanup();
    } catch (err) {
      console.error(err);
    }
  }
  cleanup = null;
  const mine = ++generation;
  const { path, query } = parseHash();
  const match = ROUTES.map(([re, fn, nav]) => [re.exec(path), fn, nav]).find(([m]) => m);
  for (const a of document.querySelectorAll("#nav a[data-nav]")) {
    a.classList.toggle("active", Boolean(match) && a.dataset.nav === match[2]);
  }
  if (!match) {
    replace(root, h("h1", {}, "Not found"), notice("error", `No page at #${path}.`));
    return;
  }
  const [m, fn] = match;
  const params = m.slice(1).map(decodeURIComponent);
  const ctx = {
    params,
    query,
    // A page checks alive() after each await, so a slow answer never draws over the next page.
    alive: () => mine === generation,
  };
  replace(root, h("p", { class: "loading" }, "Loading…"));
  document.body.dataset.page = match[2];
  try {
    const result = await fn(root, ctx);
    if (mine === generation) cleanup = result || null;
    else if (typeof result === "function") result();
  } catch (err) {
    if (mine !== generation) return;
    if (err instanceof ApiError && err.status === 401) {
      // The key field above is open; saving a key reloads this page.
      replace(root, notice("info", `${err.message} Paste an API key above.`, "auth-needed"));
      return;
    }
    console.error(err);
    replace(
      root,
      h("h1", {}, "Something went wrong"),
      notice("error", err.message || String(err), "page-error"),
    );
  }
}

initAuthPanel();
window.addEventListener("hashchange", route);
window.addEventListener("regula:auth", route);
route();
