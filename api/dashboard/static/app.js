// The squeeze dashboard: a job list (filtered by state, method and outcome), a job page,
// and two jobs compared side by side, read from the public /v1 API with the API key the
// user pastes. No framework, no build step, nothing fetched from elsewhere.
//
// The key: pasted into the form (kept in sessionStorage for this tab, or in localStorage
// when "remember" is ticked), or passed once in the URL fragment, `#key=sqz_...`, which
// the page moves into sessionStorage and removes from the address bar (a fragment is
// never sent to the server). Every API call sends it as `Authorization: Bearer <key>`.

const API_ROOT = new URL("../", window.location.href); // the dashboard lives at <api>/dashboard/
const KEY_NAME = "squeeze.apiKey";
const FINAL_STATES = new Set(["succeeded", "failed", "cancelled"]);
const JOB_POLL_MS = 2000;
const LIST_POLL_MS = 5000;
const EVENTS_SHOWN = 200;

let timers = [];

// --- the key ---------------------------------------------------------------------------

function takeKeyFromFragment() {
  const params = new URLSearchParams(window.location.hash.slice(1));
  const key = params.get("key");
  if (!key) return;
  sessionStorage.setItem(KEY_NAME, key);
  params.delete("key");
  const rest = params.toString();
  const url = window.location.pathname + window.location.search + (rest ? `#${rest}` : "");
  window.history.replaceState(null, "", url);
}

function apiKey() {
  return sessionStorage.getItem(KEY_NAME) || localStorage.getItem(KEY_NAME);
}

function storeKey(key, remember) {
  forgetKey();
  (remember ? localStorage : sessionStorage).setItem(KEY_NAME, key);
}

function forgetKey() {
  sessionStorage.removeItem(KEY_NAME);
  localStorage.removeItem(KEY_NAME);
}

// --- the API ---------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, problem) {
    super(problem && problem.detail ? problem.detail : `HTTP ${status}`);
    this.status = status;
  }
}

async function call(path, { method = "GET", accept = "application/json" } = {}) {
  const response = await fetch(new URL(path, API_ROOT), {
    method,
    headers: { Authorization: `Bearer ${apiKey()}`, Accept: accept },
  });
  if (!response.ok) {
    let problem = null;
    try {
      problem = await response.json();
    } catch {
      // not a problem+json body
    }
    throw new ApiError(response.status, problem);
  }
  return response;
}

async function getJson(path) {
  return (await call(path)).json();
}

const jobPath = (id) => `v1/jobs/${encodeURIComponent(id)}`;

// model id -> the file name it was uploaded as (null: deleted or unreadable), asked once
const modelNames = new Map();

async function loadModelNames(ids) {
  const missing = [...new Set(ids)].filter((id) => !modelNames.has(id));
  await Promise.all(missing.map(async (id) => {
    try {
      modelNames.set(id, (await getJson(`v1/models/${encodeURIComponent(id)}`)).filename);
    } catch (error) {
      if (error instanceof ApiError && error.status === 401) throw error;
      modelNames.set(id, null);
    }
  }));
}

// The model by its file name, with its id on hover (the id alone when it is gone).
function modelCell(id) {
  const name = modelNames.get(id);
  return el("span", { class: "model", "data-model-id": id, title: id },
    name ? name : el("code", {}, id));
}

// --- DOM helpers (text is always set as text, never parsed as HTML) ---------------------

function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === null || value === undefined || value === false) continue;
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value === true ? "" : value);
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    node.append(child instanceof Node ? child : String(child));
  }
  return node;
}

const main = () => document.getElementById("main");

function badge(state) {
  return el("span", { class: `badge ${state}`, "data-state": state }, state);
}

function bar(progress, wide = false) {
  const percent = Math.round(Math.max(0, Math.min(1, progress)) * 100);
  return el("span", { class: wide ? "bar wide" : "bar", title: `${percent}%` },
    el("span", { style: `width: ${percent}%` }));
}

function stepLabel(step) {
  const variant = step.mode || step.kind || step.family;
  return variant ? `${step.method} (${variant})` : step.method;
}

const fmt = {
  ratio: (v) => (v === undefined || v === null ? "–" : `${v.toFixed(3)}x`),
  change: (v) => (v === undefined || v === null ? "–" : `${v >= 0 ? "+" : ""}${v.toFixed(4)}`),
  when: (v) => (v ? new Date(v).toLocaleString() : "–"),
  percent: (v) => `${Math.round(v * 100)}%`,
  number: (v) => (Math.abs(v) >= 1000 ? Math.round(v).toLocaleString("en") : `${+v.toPrecision(4)}`),
  bytes: (v) => `${v.toLocaleString("en")} bytes`,
};

function showError(error, where = main()) {
  if (error instanceof ApiError && error.status === 401) {
    forgetKey();
    showKeyForm("The API refused that key (unknown or revoked). Paste another one.");
    return;
  }
  where.append(el("p", { class: "error" }, `Error: ${error.message}`));
}

// --- the key form ----------------------------------------------------------------------

function showKeyForm(message) {
  clearTimers();
  document.getElementById("forget-key").hidden = true;
  const input = el("input", { type: "password", name: "key", autocomplete: "off",
    placeholder: "sqz_...", required: true, "aria-label": "API key" });
  const remember = el("input", { type: "checkbox", name: "remember" });
  const form = el("form", { class: "keyform", onsubmit: (event) => {
    event.preventDefault();
    storeKey(input.value.trim(), remember.checked);
    route();
  } },
  el("h1", {}, "API key"),
  message ? el("p", { class: "error" }, message) : null,
  el("p", {}, "The dashboard reads your jobs from the API with your key. It stays in this ",
    "browser (sessionStorage; localStorage if you tick the box) and is sent only to this API."),
  input,
  el("label", {}, remember, " remember on this browser"),
  el("button", { type: "submit" }, "Use this key"));
  main().replaceChildren(form);
  input.focus();
}

// --- the job list ----------------------------------------------------------------------

function queryFilter(name, values, everyLabel) {
  const current = new URLSearchParams(window.location.search).get(name) || "";
  const select = el("select", { "aria-label": name, name, onchange: (event) => {
    const params = new URLSearchParams(window.location.search);
    if (event.target.value) params.set(name, event.target.value);
    else params.delete(name);
    window.history.pushState(null, "", `?${params}`);
    route();
  } }, ["", ...values].map((value) =>
    el("option", { value, selected: value === current }, value ? value.replace("_", " ") : everyLabel)));
  return [current, select];
}

// What a final job came to: improved, unchanged, targets missed, failed, cancelled.
function outcomeBadge(job) {
  if (!job.outcome) return "–";
  const shown = el("span", { class: `badge ${job.outcome}`, "data-outcome": job.outcome,
    title: job.outcome_reason || "" }, job.outcome.replace("_", " "));
  return shown;
}

async function showJobList() {
  const [state, filter] = queryFilter("state",
    ["queued", "running", "succeeded", "failed", "cancelled"], "every state");
  const [method, methodFilter] = queryFilter("method",
    ["quantize", "prune", "distill", "search", "auto"], "every method");
  const [outcome, outcomeFilter] = queryFilter("outcome",
    ["improved", "unchanged", "targets_missed", "failed", "cancelled"], "every outcome");
  const body = el("tbody");
  const more = el("button", { type: "button", hidden: true }, "Load more");
  // two jobs ticked -> the compare view; the picks survive the list's refreshes
  const picked = new Set();
  const compare = el("button", { type: "button", id: "compare", disabled: true, onclick: () => {
    window.history.pushState(null, "", `?compare=${[...picked].map(encodeURIComponent).join(",")}`);
    route();
  } }, "Compare 2 jobs");
  const onPick = (id, checked) => {
    if (checked) picked.add(id);
    else picked.delete(id);
    compare.disabled = picked.size !== 2;
  };
  main().replaceChildren(
    el("h1", {}, "Jobs"),
    el("div", { class: "toolbar" }, filter, methodFilter, outcomeFilter, compare,
      el("span", { class: "muted", id: "list-status" })),
    el("table", { class: "jobs" },
      el("thead", {}, el("tr", {}, ["", "job", "model", "submitted", "state", "progress", "steps",
        "size ratio", "latency ratio", "metric change", "outcome"].map((h) => el("th", {}, h)))),
      body),
    more);

  let cursor = null;
  let shown = 0;
  async function load(append) {
    const query = new URLSearchParams({ limit: String(append ? 20 : Math.max(20, shown)) });
    if (state) query.set("state", state);
    if (method) query.set("method", method);
    if (outcome) query.set("outcome", outcome);
    if (append && cursor) query.set("cursor", cursor);
    const page = await getJson(`v1/jobs?${query}`);
    await loadModelNames(page.items.map((job) => job.spec.model_id));
    const rows = page.items.map((job) => jobRow(job, picked.has(job.id), onPick));
    if (append) body.append(...rows);
    else body.replaceChildren(...rows);
    shown = body.children.length;
    cursor = page.next_cursor;
    more.hidden = !cursor;
    document.getElementById("list-status").textContent =
      shown ? `${shown} job${shown === 1 ? "" : "s"}` : "no jobs yet";
    return page.items.some((job) => !FINAL_STATES.has(job.state));
  }
  more.addEventListener("click", () => load(true).catch((error) => showError(error)));
  try {
    let active = await load(false);
    const poll = async () => {
      if (!active) return;
      active = await load(false);
    };
    timers.push(setInterval(() => poll().catch(() => {}), LIST_POLL_MS));
  } catch (error) {
    showError(error);
  }
}

function jobRow(job, checked, onPick) {
  const verdict = job.result ? job.result.verdict : null;
  return el("tr", { "data-job-id": job.id },
    el("td", {}, el("input", { type: "checkbox", class: "pick", checked, "aria-label": `compare ${job.id}`,
      onchange: (event) => onPick(job.id, event.target.checked) })),
    el("td", {}, el("a", { href: `?job=${encodeURIComponent(job.id)}` }, el("code", {}, job.id))),
    el("td", {}, modelCell(job.spec.model_id)),
    el("td", {}, fmt.when(job.created_at)),
    el("td", {}, badge(job.state)),
    el("td", {}, bar(job.progress), " ", fmt.percent(job.progress)),
    el("td", {}, job.spec.steps.map(stepLabel).join(" → ")),
    el("td", { class: "num", title: "final size / original size" }, fmt.ratio(verdict && verdict.size_ratio)),
    el("td", { class: "num", title: `final latency / original latency at batch ${job.spec.batch_size}` },
      fmt.ratio(verdict && verdict.latency_ratio)),
    el("td", { class: "num" }, fmt.change(verdict && verdict.metric_change)),
    el("td", {}, outcomeBadge(job)));
}

// --- one job ---------------------------------------------------------------------------

async function showJob(id) {
  const status = el("div", { class: "status", id: "job-status" });
  const report = el("div", { id: "report", class: "muted" }, "Loading the report…");
  const events = el("ol", { class: "events", id: "events" });
  const artifacts = el("ul", { id: "artifacts" });
  main().replaceChildren(
    el("p", {}, el("a", { href: "./" }, "← all jobs")),
    el("h1", {}, "Job ", el("code", { id: "job-id" }, id)),
    status,
    el("section", {}, el("h2", {}, "Report"), report),
    el("section", {}, el("h2", {}, "Artifacts"), artifacts),
    el("section", {}, el("h2", {}, "Events"), events));

  let lastEvent = 0;
  let shownState = null;
  let shownStep = null;
  async function refresh() {
    const job = await getJson(jobPath(id));
    await loadModelNames([job.spec.model_id]);
    renderStatus(status, job);
    const newEvents = await getJson(`${jobPath(id)}/events?after=${lastEvent}&limit=1000`);
    for (const event of newEvents.items) {
      events.append(el("li", {}, el("span", { class: "muted" }, `${fmt.when(event.at)} `), event.message));
    }
    while (events.children.length > EVENTS_SHOWN) events.firstChild.remove();
    lastEvent = newEvents.next_after;
    // the report changes when a step ends or the job does: reload it then, not every poll
    if (job.state !== shownState || job.current_step !== shownStep) {
      shownState = job.state;
      shownStep = job.current_step;
      await loadReport(id, report);
      if (FINAL_STATES.has(job.state)) await loadArtifacts(id, artifacts);
    }
    return FINAL_STATES.has(job.state);
  }
  try {
    if (await refresh()) return;
    const timer = setInterval(async () => {
      try {
        if (await refresh()) clearInterval(timer);
      } catch (error) {
        clearInterval(timer);
        showError(error, status);
      }
    }, JOB_POLL_MS);
    timers.push(timer);
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      main().replaceChildren(el("p", { class: "error" }, `No job ${id} for this API key.`),
        el("p", {}, el("a", { href: "./" }, "← all jobs")));
      return;
    }
    showError(error);
  }
}

function renderStatus(container, job) {
  const parts = [
    badge(job.state),
    el("span", {}, bar(job.progress, true), " ", el("span", { id: "job-progress" }, fmt.percent(job.progress))),
    el("span", { id: "job-model" }, "model ", modelCell(job.spec.model_id)),
    job.current_step ? el("span", {}, "step ", el("code", {}, job.current_step)) : null,
    el("span", { class: "muted" }, `submitted ${fmt.when(job.created_at)}`),
    job.finished_at ? el("span", { class: "muted" }, `finished ${fmt.when(job.finished_at)}`) : null,
  ];
  if (!FINAL_STATES.has(job.state)) {
    parts.push(el("button", { type: "button", onclick: async () => {
      try {
        await call(`${jobPath(job.id)}/cancel`, { method: "POST" });
      } catch (error) {
        showError(error, container);
      }
    } }, "Cancel"));
  }
  if (job.outcome && job.state === "succeeded") {
    parts.push(el("span", { id: "job-outcome" }, outcomeBadge(job), " ", job.outcome_reason || ""));
  }
  if (job.error) parts.push(el("span", { class: "error" }, `${job.error.code}: ${job.error.message}`));
  container.replaceChildren(...parts.filter(Boolean));
  container.dataset.state = job.state;
}

// The report is the API's HTML page (GET /v1/jobs/{id}/report), escaped and drawn on the
// server: its styles and article are moved into this page, anything active removed first.
async function loadReport(id, container) {
  try {
    const response = await call(`${jobPath(id)}/report`, { accept: "text/html" });
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const article = page.querySelector("article.sq-report");
    if (!article) throw new Error("the report page has no report in it");
    const style = page.querySelector("style[data-sq-report]");
    inert(article);
    container.classList.remove("muted");
    container.replaceChildren(...[style, article].filter(Boolean).map((node) => document.importNode(node, true)));
  } catch (error) {
    container.replaceChildren();
    showError(error, container);
  }
}

function inert(root) {
  root.querySelectorAll("script, iframe, object, embed, link, meta, base, form, foreignObject")
    .forEach((node) => node.remove());
  for (const node of root.querySelectorAll("*")) {
    for (const attribute of [...node.attributes]) {
      if (/^on/i.test(attribute.name) || /^\s*javascript:/i.test(attribute.value)) {
        node.removeAttribute(attribute.name);
      }
    }
  }
}

async function loadArtifacts(id, list) {
  const artifacts = await getJson(`${jobPath(id)}/artifacts`);
  list.replaceChildren(...artifacts.items.map((artifact) => el("li", {},
    el("button", { type: "button", onclick: () => download(artifact).catch((error) => showError(error, list)) },
      "Download"), " ", el("code", {}, artifact.name),
    el("span", { class: "muted" }, ` ${artifact.media_type}, ${artifact.size_bytes.toLocaleString()} bytes`))));
  if (!artifacts.items.length) list.replaceChildren(el("li", { class: "muted" }, "none"));
}

// Downloads need the key too: fetch the file and hand the browser a local copy.
async function download(artifact) {
  const blob = await (await call(artifact.url.replace(/^\//, ""), { accept: "*/*" })).blob();
  const url = URL.createObjectURL(blob);
  const link = el("a", { href: url, download: artifact.name });
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

// --- two jobs side by side ---------------------------------------------------------------

// One row per measure: [key, label, value of a job (text or a node)]
const COMPARED = [
  ["job", "job", (job) => el("a", { href: `?job=${encodeURIComponent(job.id)}` }, el("code", {}, job.id))],
  ["model", "model", (job) => modelCell(job.spec.model_id)],
  ["steps", "steps", (job) => job.spec.steps.map(stepLabel).join(" → ")],
  ["state", "state", (job) => badge(job.state)],
  ["outcome", "outcome", (job) => el("span", {}, outcomeBadge(job), " ", job.outcome_reason || "")],
  ["targets_met", "targets met", (job) => (verdictOf(job) ? (verdictOf(job).targets_met ? "yes" : "NO") : "–")],
  ["size_ratio", "size ratio (final / original)", (job) => fmt.ratio(verdictOf(job) && verdictOf(job).size_ratio)],
  ["latency_ratio", "latency ratio (final / original)",
    (job) => fmt.ratio(verdictOf(job) && verdictOf(job).latency_ratio)],
  ["metric_change", "metric change", (job) => fmt.change(verdictOf(job) && verdictOf(job).metric_change)],
  ["metric", "final metric", (job) => (job.result
    ? `${job.result.final.metric_name} ${job.result.final.metric_value.toFixed(4)}` : "–")],
  ["size", "final size", (job) => (job.result ? fmt.bytes(job.result.final.size_bytes) : "–")],
  ["latency", "final latency (ms, median)", (job) => (job.result
    ? job.result.final.latency.map((l) => `${l.median_ms.toFixed(3)} at batch ${l.batch_size}`).join(", ") : "–")],
  ["checks", "target checks", (job) => (verdictOf(job)
    ? el("ul", { class: "checks" }, verdictOf(job).checks.map((c) => el("li", {},
      `${c.target}${c.batch_size ? ` (batch ${c.batch_size})` : ""}: ${fmt.number(c.measured)} vs ${fmt.number(c.limit)} `,
      el("span", { class: `badge ${c.met ? "met" : "missed"}` }, c.met ? "met" : "missed"))))
    : "–")],
];

const verdictOf = (job) => (job.result ? job.result.verdict : null);

async function showCompare(ids) {
  main().replaceChildren(el("p", {}, el("a", { href: "./" }, "← all jobs")),
    el("h1", {}, "Two jobs side by side"));
  if (ids.length !== 2) {
    main().append(el("p", { class: "error" }, "Pick exactly two jobs to compare (?compare=JOB,JOB)."));
    return;
  }
  let jobs;
  try {
    jobs = await Promise.all(ids.map((id) => getJson(jobPath(id))));
    await loadModelNames(jobs.map((job) => job.spec.model_id));
  } catch (error) {
    if (error instanceof ApiError && error.status === 404) {
      main().append(el("p", { class: "error" }, `No such job for this API key: ${error.message}`));
      return;
    }
    showError(error);
    return;
  }
  const table = el("table", { class: "jobs compare", id: "comparison" },
    el("thead", {}, el("tr", {}, el("th", {}, ""), jobs.map((job) => el("th", { "data-job-id": job.id }, job.id)))),
    el("tbody", {}, COMPARED.map(([key, label, value]) => el("tr", { "data-row": key },
      el("th", {}, label), jobs.map((job) => el("td", { "data-job-id": job.id }, value(job)))))));
  main().append(table);
}

// --- routing ---------------------------------------------------------------------------

function clearTimers() {
  for (const timer of timers) clearInterval(timer);
  timers = [];
}

function route() {
  clearTimers();
  if (!apiKey()) {
    showKeyForm();
    return;
  }
  const forget = document.getElementById("forget-key");
  forget.hidden = false;
  forget.onclick = () => {
    forgetKey();
    showKeyForm("Key forgotten.");
  };
  const query = new URLSearchParams(window.location.search);
  const job = query.get("job");
  const compared = query.get("compare");
  if (job) showJob(job);
  else if (compared !== null) showCompare(compared.split(",").filter(Boolean));
  else showJobList();
}

takeKeyFromFragment();
window.addEventListener("popstate", route);
route();
