// `/workspaces/<ws>`: jobs (with Run), the 5 most recent runs (live first), the signals with their schedules, the
// memory corpora with their entries, the MCP servers with their tools (loaded last: listing starts them), and the
// file's load warnings.

import { api, ApiError, isAbort, qs } from "../api.js";
import { schedules } from "../data.js";
import {
  absoluteTime, badge, empty, errorState, fill, h, loading, prettifyId, relativeTime, timeAgo,
} from "../dom.js";
import { renderMemoryPanel } from "../memory-panel.js";
import { NEEDS_DAEMON, watchDaemon } from "../online.js";
import { openRunDialog, signalLabel } from "../run-dialog.js";
import { pinLive, runsTable, scrollable } from "../runs-table.js";

const POLL_MS = 2000;
const RECENT = 5;
const PER_JOB = 3;

function signalCell(entry, schedule) {
  const sig = entry.signal;
  const config = sig.config || {};
  if (sig.provider === "schedule") {
    const parts = [h("code", {}, config.schedule || "?"), " ", h("span", { class: "muted" }, config.timezone || "UTC")];
    if (schedule?.paused) parts.push(h("div", {}, badge("paused")));
    else if (schedule?.nextRun) {
      parts.push(h("div", { class: "small" }, "Next run ",
        h("time", { datetime: schedule.nextRun, title: absoluteTime(schedule.nextRun), dataset: { rel: schedule.nextRun } },
          relativeTime(schedule.nextRun)),
        h("span", { class: "muted" }, ` (${absoluteTime(schedule.nextRun)})`)));
    }
    return parts;
  }
  if (sig.provider === "http") return [h("code", {}, config.path || "/")];
  return [h("span", { class: "muted" }, "Fired by other jobs")];
}

function schemaFields(schema) {
  const props = schema && typeof schema.properties === "object" ? Object.keys(schema.properties) : [];
  if (!props.length) return h("span", { class: "muted" }, "—");
  const required = new Set(Array.isArray(schema.required) ? schema.required : []);
  return h("ul", { class: "pills", "aria-label": "Payload fields" },
    props.map((name) => h("li", { class: "pill" }, name, required.has(name)
      ? h("abbr", { class: "req", title: "required" }, "*") : null)));
}

function signalsTable(signals, scheduleMap) {
  if (!signals.length) return empty("This workspace declares no signals.");
  return scrollable(h("table", { class: "signals" },
    h("caption", { class: "visually-hidden" }, "Signals"),
    h("thead", {}, h("tr", {},
      ["Signal", "Provider", "Schedule / path", "Concurrency", "Payload", "Job"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, signals.map((entry) => {
      const sig = entry.signal;
      return h("tr", {},
        h("th", { scope: "row" }, h("span", {}, sig.title || entry.name),
          sig.title ? h("div", {}, h("code", { class: "small" }, entry.name)) : null,
          sig.description ? h("div", { class: "muted small" }, sig.description) : null),
        h("td", {}, h("span", { class: `tag tag-provider` }, sig.provider)),
        h("td", {}, signalCell(entry, scheduleMap?.get(entry.key))),
        h("td", {}, sig.concurrency || "skip"),
        h("td", {}, schemaFields(sig.schema)),
        h("td", {}, (entry.jobs || []).join(", ") || h("span", { class: "muted" }, "none")));
    }))), "Signals table").el; // scrolls sideways with a cue on a narrow screen (issue #16)
}

/** Load warnings (reference keys atlas does not implement), each with its position; nothing when there are none. */
function warningsSection(warnings) {
  if (!Array.isArray(warnings) || !warnings.length) return null;
  return h("section", { class: "banner banner-warn warnings-banner", "aria-labelledby": "warnings-title" },
    h("h2", { id: "warnings-title" }, `Configuration warnings (${warnings.length})`),
    h("ul", { class: "warnings" }, warnings.map((w) => h("li", {},
      h("code", {}, [w.file, w.line, w.column].filter((part) => part !== undefined && part !== null).join(":")),
      w.path ? [" ", h("code", {}, String(w.path))] : null,
      " ", String(w.message ?? "")))));
}

function toolsTable(server) {
  const tools = Array.isArray(server.tools) ? server.tools : [];
  if (!tools.length) return h("p", { class: "muted" }, server.status === "error" ? "No tools: the server is not running."
    : "This server offers no tools.");
  return scrollable(h("table", { class: "tools" },
    h("caption", { class: "visually-hidden" }, `Tools of ${server.id}`),
    h("thead", {}, h("tr", {}, ["Tool", "Description", "Arguments"].map((t) => h("th", { scope: "col" }, t)))),
    h("tbody", {}, tools.map((tool) => h("tr", { dataset: { tool: tool.name } },
      h("th", { scope: "row" }, h("code", {}, String(tool.name))),
      h("td", {}, tool.description ? String(tool.description) : h("span", { class: "muted" }, "—")),
      h("td", {}, schemaFields(tool.inputSchema)))))), `Tools of ${server.id} table`).el;
}

function serversList(servers) {
  if (!servers.length) return empty("This workspace declares no MCP servers.");
  return h("ul", { class: "servers", role: "list" }, servers.map((server) => {
    const headingId = `server-${server.id}`;
    return h("li", { class: "server", "aria-labelledby": headingId, dataset: { server: server.id } },
      h("div", { class: "server-head" },
        h("h3", { id: headingId }, String(server.id)),
        h("span", { class: "tag", title: "Transport" }, String(server.transport ?? "?")),
        badge(server.status === "running" ? "running" : "error", { class: "server-status" })),
      server.description ? h("p", { class: "description" }, String(server.description)) : null,
      server.error ? h("p", { class: "block-error" }, String(server.error)) : null,
      toolsTable(server));
  }));
}

function jobCard(job, signalsById, onRun) {
  const name = job.name || job.title || prettifyId(job.id);
  const headingId = `job-${job.id}`;
  const lastRuns = h("div", { class: "last-runs", dataset: { job: job.id } });
  const triggers = job.triggers || [];
  const card = h("li", { class: "card job-card", "aria-labelledby": headingId },
    h("div", { class: "card-head" },
      h("div", {}, h("h3", { id: headingId }, name), h("code", { class: "small muted" }, job.id)),
      h("button", {
        type: "button",
        class: "primary run-button",
        "aria-label": `Run ${name}`,
        dataset: NEEDS_DAEMON,
        disabled: triggers.length === 0,
        title: triggers.length === 0 ? "This job has no trigger" : null,
        onclick: (event) => onRun(job, event.currentTarget),
      }, "Run")),
    job.description ? h("p", { class: "description" }, job.description) : null,
    h("dl", { class: "facts" },
      h("dt", {}, "Triggers"),
      h("dd", {}, triggers.length
        ? h("ul", { class: "pills" }, triggers.map((id) => h("li", { class: "pill pill-signal", title: id },
          signalLabel(id, signalsById.get(id)))))
        : h("span", { class: "muted" }, "none")),
      h("dt", {}, "Steps"),
      h("dd", {}, (job.plannedSteps || []).length
        ? h("ol", { class: "steps" }, job.plannedSteps.map((step) => h("li", { title: step.task || "" },
          h("span", { class: "pill" }, step.agentName), step.task && step.task !== step.agentName
            ? h("span", { class: "muted small" }, ` ${step.task}`) : null)))
        : h("span", { class: "muted" }, "none")),
      h("dt", {}, "Last runs"),
      h("dd", {}, lastRuns)));
  return { card, lastRuns };
}

function renderLastRuns(el, runs) {
  if (!runs.length) {
    fill(el, h("span", { class: "muted" }, "No runs yet"));
    return;
  }
  fill(el, h("ul", { class: "mini-runs" }, runs.map((run) => h("li", {},
    h("a", { href: `/sessions/${encodeURIComponent(run.sessionId)}`, "aria-label": `${run.status} run, ${relativeTime(run.startedAt)}` },
      badge(run.status), " ", timeAgo(run.startedAt))))));
}

export async function mount(root, ctx) {
  const wsId = ctx.params.workspaceId;
  const enc = encodeURIComponent(wsId);
  ctx.setTitle(wsId);
  fill(root, loading("Loading workspace…"));
  let ws;
  let jobs;
  let signals;
  try {
    [ws, jobs, signals] = await Promise.all([
      api(`/api/workspaces/${enc}`, { signal: ctx.signal }),
      api(`/api/workspaces/${enc}/jobs`, { signal: ctx.signal }),
      api(`/api/workspaces/${enc}/signals`, { signal: ctx.signal }),
    ]);
  } catch (exc) {
    if (isAbort(exc)) throw exc;
    if (exc instanceof ApiError && exc.status === 404) {
      fill(root, h("h1", {}, "Workspace not found"),
        h("p", {}, `No workspace with id “${wsId}” is loaded. `, h("a", { href: "/" }, "Back to the workspaces"), "."));
      return;
    }
    fill(root, h("h1", {}, wsId), errorState(`Could not load the workspace: ${exc.describe ? exc.describe() : exc.message}`,
      () => mount(root, ctx)));
    return;
  }
  const name = ws.name || ws.id;
  ctx.setTitle(name);
  const signalList = signals.signals || [];
  const signalsById = new Map(signalList.map((entry) => [entry.name, entry.signal]));
  for (const entry of signalList) entry.key = `${wsId}/${entry.name}`;

  // With the daemon away the Run buttons are disabled; when it is back the recent runs are reloaded at once.
  const daemon = watchDaemon(ctx, root, { onBack: () => refresh().catch(() => {}),
    what: "This page shows the workspace as last seen; Run is disabled until the daemon is back." });
  const onRun = (job, opener) => openRunDialog({ workspaceId: wsId, job, signalsById, opener });
  const jobViews = jobs.map((job) => ({ job, ...jobCard(job, signalsById, onRun) }));
  const recent = runsTable({ caption: `Recent runs of ${name}` });
  const recentSlot = h("div", {}, loading("Loading runs…"));
  const signalsSlot = h("div", {}, signalsTable(signalList, null));
  const welcome = ws.config?.workspace?.welcome;
  // MCP servers: listing them starts them (a second or two), so they load after the page, into their own slot.
  const declared = ws.config ? Object.keys(ws.config?.tools?.mcp?.servers || {}).length > 0 : true;
  const serversSlot = h("div", {}, loading("Starting the MCP servers…"));
  const serversSection = declared ? h("section", { "aria-labelledby": "servers-title" },
    h("h2", { id: "servers-title" }, "MCP servers"), serversSlot) : null;
  // Memory (issue #17): the corpora of `memory.own` and their entries; shown when the workspace declares some.
  const memorySlot = h("div", {});
  const memorySection = (ws.config?.memory?.own || []).length ? h("section", { "aria-labelledby": "memory-title" },
    h("h2", { id: "memory-title" }, "Memory"), memorySlot) : null;

  fill(root,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("ol", {},
      h("li", {}, h("a", { href: "/" }, "Workspaces")), h("li", { "aria-current": "page" }, name))),
    h("div", { class: "page-head" },
      h("h1", {}, name, " ", badge(ws.status || "ready")),
      h("div", { class: "head-links" }, h("a", { href: `/workspaces/${enc}/chat`, id: "chat-link" }, "Chat"),
        h("a", { href: `/workspaces/${enc}/sessions` }, "All runs"))),
    daemon.el,
    ws.description ? h("p", { class: "lead" }, ws.description) : null,
    welcome ? h("p", { class: "welcome" }, welcome) : null,
    warningsSection(ws.warnings),
    h("section", { "aria-labelledby": "jobs-title" },
      h("h2", { id: "jobs-title" }, "Jobs"),
      jobs.length ? h("ul", { class: "cards jobs", role: "list" }, jobViews.map((v) => v.card))
        : empty("This workspace has no jobs.")),
    h("section", { "aria-labelledby": "recent-title" },
      h("div", { class: "section-head" }, h("h2", { id: "recent-title" }, "Recent runs"),
        h("a", { href: `/workspaces/${enc}/sessions` }, "All runs")),
      recentSlot),
    h("section", { "aria-labelledby": "signals-title" },
      h("h2", { id: "signals-title" }, "Signals"), signalsSlot),
    memorySection,
    serversSection);

  if (memorySection) renderMemoryPanel(memorySlot, wsId, { signal: ctx.signal });

  if (serversSection) {
    const loadServers = () => api(`/api/workspaces/${enc}/tools`, { signal: ctx.signal }).then((listing) => {
      if (!ctx.alive) return;
      const servers = Array.isArray(listing?.servers) ? listing.servers : [];
      if (!servers.length && !ws.config) serversSection.remove();
      else fill(serversSlot, serversList(servers));
    }).catch((exc) => {
      if (isAbort(exc) || !ctx.alive) return;
      fill(serversSlot, errorState(`Could not list the MCP servers: ${exc.describe ? exc.describe() : exc.message}`,
        () => {
          fill(serversSlot, loading("Starting the MCP servers…"));
          loadServers();
        }));
    });
    loadServers();
  }

  if (signalList.some((entry) => entry.signal.provider === "schedule")) {
    schedules(ctx.signal).then((map) => {
      if (map && ctx.alive) fill(signalsSlot, signalsTable(signalList, map));
    }).catch(() => {});
  }

  const names = new Map(jobs.map((job) => [`${wsId}/${job.id}`, job.name || job.title || job.id]));
  let lastKey = null;
  let loaded = false;
  const refresh = async () => {
    try {
      const [live, latest] = await Promise.all([
        api(`/api/sessions${qs({ workspaceId: wsId, status: "queued,active", limit: 100 })}`, { signal: ctx.signal, cache: "no-cache" }),
        api(`/api/sessions${qs({ workspaceId: wsId, limit: 100 })}`, { signal: ctx.signal, cache: "no-cache" }),
      ]);
      daemon.ok();
      const seen = new Set();
      const merged = pinLive([...live.sessions, ...latest.sessions].filter((run) => !seen.has(run.sessionId)
        && seen.add(run.sessionId)));
      const key = JSON.stringify(merged);
      if (key === lastKey) return;
      lastKey = key;
      if (!merged.length) {
        fill(recentSlot, empty("No runs yet — trigger a signal or click Run on a job."));
      } else {
        if (!loaded || recentSlot.firstChild !== recent.el) fill(recentSlot, recent.el);
        recent.update(merged.slice(0, RECENT), names);
      }
      loaded = true;
      for (const view of jobViews) {
        renderLastRuns(view.lastRuns, merged.filter((run) => run.jobName === view.job.id).slice(0, PER_JOB));
      }
    } catch (exc) {
      if (isAbort(exc)) throw exc;
      daemon.failed(exc);
      const text = `Could not load the runs: ${exc.describe ? exc.describe() : exc.message}`;
      if (!loaded) fill(recentSlot, errorState(text, refresh));
    }
  };
  ctx.every(POLL_MS, refresh);
}
