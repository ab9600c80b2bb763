// `/sessions` and `/workspaces/<ws>/sessions`: the runs list. Filters live in the URL query (status, job,
// trigger, q = a correlationId or sessionId); queued and active runs are pinned first; refreshed every 2 s while
// the tab is visible (revalidating with the ETag when the daemon sends one).

import { api, ApiError, isAbort, qs } from "../api.js";
import { jobNames, workspaceJobs } from "../data.js";
import { empty, errorState, fill, h, loading, UUID_RE } from "../dom.js";
import { NEEDS_DAEMON, watchDaemon } from "../online.js";
import { summarize } from "../reducer.js";
import { replaceQuery } from "../router.js";
import { pinLive, runsTable } from "../runs-table.js";

const POLL_MS = 2000;
const PAGE = 50;
const MAX_LIMIT = 500;
const STATUSES = ["queued", "active", "completed", "failed", "skipped", "cancelled", "interrupted"];
const TRIGGERS = ["http", "webhook", "schedule", "cascade", "ui", "cli", "chat", "rerun"];
const EMPTY_TEXT = "No runs yet — trigger a signal or click Run on a job.";
// Time range presets (issue #16): `range` in the URL; the bound is computed at each refresh, so "last hour" slides.
const RANGES = [["", "Any time"], ["15m", "Last 15 minutes"], ["1h", "Last hour"], ["24h", "Last 24 hours"],
  ["7d", "Last 7 days"], ["custom", "Custom…"]];
const RANGE_MS = { "15m": 15 * 60_000, "1h": 3_600_000, "24h": 86_400_000, "7d": 7 * 86_400_000 };

/** The `since`/`until` query bounds (RFC 3339, UTC) of the filters; GET /api/sessions filters on startedAt. */
function timeBounds(filters) {
  if (RANGE_MS[filters.range]) return { since: new Date(Date.now() - RANGE_MS[filters.range]).toISOString() };
  if (filters.range !== "custom") return {};
  const iso = (local) => {
    const t = Date.parse(local); // a datetime-local value: the browser's zone
    return Number.isNaN(t) ? undefined : new Date(t).toISOString();
  };
  return { since: iso(filters.since), until: iso(filters.until) };
}

/** A runs' startedAt inside the bounds (the text search and the live query filter again on this side). */
function inBounds(run, { since, until }) {
  return (!since || run.startedAt >= since) && (!until || run.startedAt < until);
}

function select(id, label, options, value, onchange) {
  if (value && !options.some(([v]) => v === value)) options = [...options, [value, value]];
  const sel = h("select", { id, onchange }, options.map(([v, text]) => h("option", { value: v }, text)));
  sel.value = value;
  return h("div", { class: "filter" }, h("label", { for: id }, label), sel);
}

function matchesFilters(run, filters, workspaceId) {
  return (!workspaceId || run.workspaceId === workspaceId)
    && (!filters.job || run.jobName === filters.job)
    && (!filters.status || filters.status.split(",").includes(run.status))
    && (!filters.trigger || run.trigger === filters.trigger);
}

/** The runs matching `filters`, live ones first; `more` is true when older runs exist beyond `limit`. */
async function fetchRuns(filters, workspaceId, limit, signal) {
  const bounds = timeBounds(filters);
  const base = { workspaceId, jobName: filters.job, ...bounds };
  const text = filters.q.trim().toLowerCase();
  const opts = { signal, cache: "no-cache" };
  let runs;
  let more = false;
  if (UUID_RE.test(text)) {
    // A full id: every run of that correlation tree, else the one session with that id.
    const page = await api(`/api/sessions${qs({ ...base, correlationId: text, status: filters.status, limit: MAX_LIMIT })}`, opts);
    runs = page.sessions;
    if (!runs.length) {
      try {
        const view = await api(`/api/sessions/${encodeURIComponent(text)}`, opts);
        runs = [summarize(view)];
      } catch (exc) {
        if (!(exc instanceof ApiError && exc.status === 404)) throw exc;
        runs = [];
      }
    }
  } else {
    const wanted = filters.status ? filters.status.split(",") : STATUSES;
    const liveStatuses = wanted.filter((s) => s === "queued" || s === "active");
    const [live, page] = await Promise.all([
      liveStatuses.length
        ? api(`/api/sessions${qs({ ...base, status: liveStatuses.join(","), limit: 100 })}`, opts)
        : Promise.resolve({ sessions: [] }),
      api(`/api/sessions${qs({ ...base, status: filters.status, limit })}`, opts),
    ]);
    const seen = new Set();
    runs = [...live.sessions, ...page.sessions].filter((run) => !seen.has(run.sessionId) && seen.add(run.sessionId));
    if (text) runs = runs.filter((run) => run.sessionId.includes(text) || (run.correlationId || "").includes(text));
    more = Boolean(page.nextCursor);
  }
  return { runs: pinLive(runs.filter((run) => matchesFilters(run, filters, workspaceId) && inBounds(run, bounds))), more };
}

export async function mount(root, ctx) {
  const workspaceId = ctx.params.workspaceId;
  const filters = {
    status: ctx.query.get("status") || "",
    job: ctx.query.get("job") || "",
    trigger: ctx.query.get("trigger") || "",
    q: ctx.query.get("q") || "",
    range: ctx.query.get("range") || "",
    since: ctx.query.get("since") || "",
    until: ctx.query.get("until") || "",
  };
  if ((filters.since || filters.until) && !filters.range) filters.range = "custom";
  let limit = PAGE;
  let wsName = workspaceId;
  ctx.setTitle(workspaceId ? `Runs · ${workspaceId}` : "Runs");

  const table = runsTable({ caption: workspaceId ? `Runs of ${workspaceId}` : "All runs", showWorkspace: !workspaceId });
  const slot = h("div", { class: "runs-slot" }, loading("Loading runs…"));
  const banner = h("div", { class: "banner-slot" });
  const count = h("p", { class: "muted small count" });
  const more = h("button", { type: "button", hidden: true, dataset: NEEDS_DAEMON, onclick: () => {
    limit = Math.min(MAX_LIMIT, limit + PAGE);
    refresh();
  } }, "Show older runs");

  const jobSelectWrap = h("div", { class: "filter" });
  const onFilter = () => {
    replaceQuery(filters);
    lastKey = null;
    clear.hidden = !Object.values(filters).some(Boolean);
    refresh();
  };
  const statusFilter = select("filter-status", "Status",
    [["", "All statuses"], ["queued,active", "queued or active"], ...STATUSES.map((s) => [s, s])], filters.status,
    (e) => { filters.status = e.target.value; onFilter(); });
  const triggerFilter = select("filter-trigger", "Trigger", [["", "Any trigger"], ...TRIGGERS.map((t) => [t, t])],
    filters.trigger, (e) => { filters.trigger = e.target.value; onFilter(); });
  let debounce = null;
  const text = h("input", { id: "filter-q", type: "search", value: filters.q, autocomplete: "off", spellcheck: "false",
    placeholder: "correlationId or sessionId", "aria-describedby": "filter-q-help",
    oninput: (e) => {
      clearTimeout(debounce);
      debounce = setTimeout(() => { filters.q = e.target.value.trim(); onFilter(); }, 300);
    } });
  ctx.onCleanup(() => clearTimeout(debounce));
  const timeInput = (id, key) => h("input", { id, type: "datetime-local", step: "1", value: filters[key],
    onchange: (e) => { filters[key] = e.target.value; onFilter(); } });
  const sinceInput = timeInput("filter-since", "since");
  const untilInput = timeInput("filter-until", "until");
  const custom = h("div", { class: "filter filter-time-custom", hidden: filters.range !== "custom" },
    h("div", { class: "filter filter-time" }, h("label", { for: "filter-since" }, "Started from"), sinceInput),
    h("div", { class: "filter filter-time" }, h("label", { for: "filter-until" }, "Started before"), untilInput));
  const rangeFilter = select("filter-range", "Started", RANGES, filters.range, (e) => {
    filters.range = e.target.value;
    custom.hidden = filters.range !== "custom";
    if (filters.range !== "custom") Object.assign(filters, { since: "", until: "" });
    onFilter();
  });
  const clear = h("button", { type: "button", class: "link-button", hidden: !Object.values(filters).some(Boolean),
    onclick: () => {
      Object.assign(filters, { status: "", job: "", trigger: "", q: "", range: "", since: "", until: "" });
      rangeFilter.querySelector("select").value = "";
      sinceInput.value = "";
      untilInput.value = "";
      custom.hidden = true;
      statusFilter.querySelector("select").value = "";
      triggerFilter.querySelector("select").value = "";
      text.value = "";
      const jobSel = jobSelectWrap.querySelector("select");
      if (jobSel) jobSel.value = "";
      onFilter();
    } }, "Clear filters");

  const heading = h("h1", {}, workspaceId ? `Runs of ${workspaceId}` : "Runs");
  // With the daemon away the list stays as last seen; when it is back it is reloaded at once.
  const daemon = watchDaemon(ctx, root, { onBack: () => refresh().catch(() => {}),
    what: "The runs are shown as last seen; they are reloaded when the daemon is back." });
  fill(root,
    workspaceId
      ? h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("ol", {},
        h("li", {}, h("a", { href: "/" }, "Workspaces")),
        h("li", {}, h("a", { href: `/workspaces/${encodeURIComponent(workspaceId)}`, class: "ws-crumb" }, workspaceId)),
        h("li", { "aria-current": "page" }, "Runs")))
      : null,
    h("div", { class: "page-head" }, heading,
      workspaceId ? h("a", { href: "/sessions" }, "Runs of every workspace") : null),
    h("form", { class: "filters", role: "search", "aria-label": "Filter runs", onsubmit: (e) => e.preventDefault() },
      statusFilter, jobSelectWrap, triggerFilter, rangeFilter, custom,
      h("div", { class: "filter filter-text" }, h("label", { for: "filter-q" }, "Correlation or session id"), text,
        h("p", { id: "filter-q-help", class: "help" }, "A full id searches every run; part of an id filters the runs shown.")),
      clear),
    daemon.el, banner, count, slot, h("div", { class: "more" }, more));

  // Job filter options: this workspace's jobs, or every workspace's jobs for the global list.
  (async () => {
    let options = [];
    try {
      if (workspaceId) {
        const [ws, jobs] = await Promise.all([
          api(`/api/workspaces/${encodeURIComponent(workspaceId)}`, { signal: ctx.signal }).catch(() => null),
          workspaceJobs(workspaceId),
        ]);
        if (ws?.name) {
          wsName = ws.name;
          heading.textContent = `Runs of ${wsName}`;
          root.querySelector(".ws-crumb")?.replaceChildren(wsName);
          ctx.setTitle(`Runs · ${wsName}`);
        }
        options = jobs.map((job) => [job.id, job.name || job.id]);
      } else {
        const workspaces = await api("/api/workspaces", { signal: ctx.signal });
        const lists = await Promise.all(workspaces.map((ws) => workspaceJobs(ws.id).catch(() => [])));
        const seen = new Map();
        lists.forEach((jobs, i) => jobs.forEach((job) => {
          if (!seen.has(job.id)) seen.set(job.id, `${job.name || job.id} (${workspaces[i].id})`);
        }));
        options = [...seen];
      }
    } catch (exc) {
      if (isAbort(exc)) return;
    }
    if (filters.job && !options.some(([id]) => id === filters.job)) options.push([filters.job, filters.job]);
    if (!ctx.alive) return;
    jobSelectWrap.replaceWith(select("filter-job", "Job", [["", "All jobs"], ...options], filters.job,
      (e) => { filters.job = e.target.value; onFilter(); }));
  })();

  let lastKey = null;
  let loaded = false;
  let generation = 0;
  const refresh = async () => {
    const mine = ++generation;
    try {
      const { runs, more: hasMore } = await fetchRuns(filters, workspaceId, limit, ctx.signal);
      const names = await jobNames(runs.map((run) => run.workspaceId));
      daemon.ok();
      if (mine !== generation) return; // a newer refresh (filter change) already answered
      banner.replaceChildren();
      more.hidden = !hasMore || limit >= MAX_LIMIT;
      const key = JSON.stringify([runs, [...names]]);
      if (key === lastKey) return;
      lastKey = key;
      loaded = true;
      const live = runs.filter((run) => run.status === "queued" || run.status === "active").length;
      count.textContent = runs.length
        ? `${runs.length} run${runs.length === 1 ? "" : "s"}${live ? `, ${live} in progress` : ""}` : "";
      if (!runs.length) {
        const filtered = Object.values(filters).some(Boolean);
        fill(slot, filtered
          ? empty("No runs match these filters.")
          : empty(EMPTY_TEXT, workspaceId
            ? h("p", {}, h("a", { href: `/workspaces/${encodeURIComponent(workspaceId)}` }, `Open ${wsName}`), " to run a job.")
            : h("p", {}, h("a", { href: "/" }, "Open a workspace"), " to run a job.")));
        return;
      }
      if (slot.firstChild !== table.el) fill(slot, table.el);
      table.update(runs, names);
    } catch (exc) {
      if (isAbort(exc)) throw exc;
      if (mine !== generation) return;
      if (daemon.failed(exc) && loaded) {
        banner.replaceChildren(); // the daemon's banner says it
        return;
      }
      const message = `Could not load the runs: ${exc.describe ? exc.describe() : exc.message}`;
      if (loaded) fill(banner, h("p", { class: "banner banner-error", role: "alert" }, message));
      else fill(slot, errorState(message, refresh));
    }
  };
  ctx.every(POLL_MS, refresh);
}
