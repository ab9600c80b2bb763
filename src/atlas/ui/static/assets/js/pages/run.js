// `/sessions/<sid>`: the run detail, live. The page folds GET /api/sessions/<sid>/stream with the JS reducer
// (durable events `id: <seq>` + `data: <event>`, `event: ephemeral` chunks, then `event: end`). When the stream
// fails it falls back to GET /api/sessions/<sid> and retries the stream after 1, 2 and 4 s (resuming after the
// last seq it has); a daemon without the stream route is polled every 500 ms until the run ends.

import { api, ApiError, isAbort, qs, readEventStream } from "../api.js";
import { jobLabel, jobNames } from "../data.js";
import {
  absoluteTime, announce, badge, copyButton, durationEl, empty, errorState, fill, formatDuration, h, json, loading,
  shortId, timeAgo, triggerTag,
} from "../dom.js";
import { causeChain, errorDetailsEl } from "../failures.js";
import { applyChunk, initialView, isTerminal, reduce } from "../reducer.js";
import { openRunDialog } from "../run-dialog.js";
import { navigate } from "../router.js";
import { historyPanel, loadEvents } from "../history.js";
import { logsPanel } from "../logs.js";
import { NEEDS_DAEMON, watchDaemon } from "../online.js";
import { tabs } from "../tabs.js";
import { stepStatus, timelineStrip } from "../timeline.js";
import { applyToolChunk, callsOfBlock } from "../toolcalls.js";

const RETRY_DELAYS_MS = [1000, 2000, 4000];
const POLL_MS = 500;
const LINEAGE_POLL_MS = 2000;
const LOG_LINES = 6;
const ARGS_CHARS = 100; // a call's arguments in its summary line; the whole JSON is one click away
const RESULT_INLINE_CHARS = 160; // a result this short (one line) is shown as is, a longer one folded

const sessionHref = (id) => `/sessions/${encodeURIComponent(id)}`;

/** A queued run's `waitingFor`: links to the sessions it waits behind, or "a runner" while none has taken it. */
function waitingForEl(waiting) {
  const ids = Array.isArray(waiting.sessionIds) ? waiting.sessionIds.filter((id) => typeof id === "string") : [];
  if (waiting.reason === "pending") {
    return h("span", { id: "waiting-for", class: "muted" }, "a runner to pick it up (not taken yet)");
  }
  return h("span", { id: "waiting-for" },
    ids.map((id, i) => [i ? ", " : null, h("a", { href: sessionHref(id) }, shortId(id))]),
    h("span", { class: "muted" }, ids.length ? ` to end (${waiting.reason})` : String(waiting.reason)));
}

/** Only http(s) links from recorded data (a summary's keyDetails may come from a webhook payload). */
function safeUrl(url) {
  try {
    return typeof url === "string" && ["http:", "https:"].includes(new URL(url, window.location.href).protocol);
  } catch {
    return false;
  }
}

function latest(ephemeral, type) {
  if (!Array.isArray(ephemeral)) return null;
  for (let i = ephemeral.length - 1; i >= 0; i -= 1) if (ephemeral[i]?.type === type) return ephemeral[i];
  return null;
}

/** The live part of a running block: its latest progress (bar or text), recent log lines and streamed text. */
function liveInfo(block) {
  const eph = block.ephemeral;
  if (block.status !== "running" || !Array.isArray(eph) || !eph.length) return null;
  const parts = [];
  const progress = latest(eph, "progress");
  if (progress) {
    const { current, total, message } = progress;
    if (typeof current === "number" && typeof total === "number" && total > 0) {
      parts.push(h("div", { class: "progress-row" },
        h("progress", { max: String(total), value: String(Math.min(current, total)),
          "aria-label": `Progress of ${block.agentName}` }),
        h("span", { class: "small" }, message || `${current}/${total}`)));
    } else if (message) {
      parts.push(h("p", { class: "progress-text small" }, message));
    }
  }
  // A log chunk may carry many lines (the daemon coalesces output): show the last LOG_LINES lines, not chunks.
  const logChunks = eph.filter((c) => c?.type === "log");
  const logs = [];
  for (let i = logChunks.length - 1; i >= 0 && logs.length < LOG_LINES; i -= 1) {
    const c = logChunks[i];
    const lines = String(c.line ?? "").split("\n").slice(-(LOG_LINES - logs.length));
    logs.unshift(...lines.map((line) => `${c.stream === "stderr" ? "! " : ""}${line}`));
  }
  if (logs.length) {
    parts.push(h("pre", { class: "log", "aria-label": "Latest output lines" }, logs.join("\n")));
  }
  const deltas = eph.filter((c) => c?.type === "text-delta").map((c) => c.delta ?? "").join("");
  if (deltas) parts.push(h("p", { class: "stream-text" }, deltas));
  return parts.length ? h("div", { class: "live", role: "status" }, parts) : null;
}

/** Folded content whose open state survives re-renders (`openKeys`); `text` defaults to the value's JSON. */
function collapsible(key, label, value, openKeys, text = json(value)) {
  const details = h("details", { open: openKeys.has(key), dataset: { key } },
    h("summary", { dataset: { focusKey: key } }, label), h("pre", { class: "json" }, text));
  details.addEventListener("toggle", () => {
    if (details.open) openKeys.add(key);
    else openKeys.delete(key);
  });
  return details;
}

function cut(text, limit) {
  return text.length <= limit ? text : `${text.slice(0, limit - 1)}…`;
}

/** JSON on one line, as the model sent it (`{"a":2,"b":3}`); a string stays itself. */
function oneLine(value) {
  if (typeof value === "string") return value;
  try {
    return JSON.stringify(value) ?? String(value);
  } catch {
    return String(value);
  }
}

/** The result of a call: short one-line text inline, anything longer (or structured) folded. */
function callResult(call, key, openKeys) {
  if (call.error !== undefined && call.error !== null) {
    return h("p", { class: "toolcall-error" }, h("strong", {}, "Error: "), String(call.error));
  }
  if (call.running) return h("p", { class: "toolcall-pending muted small" }, "Waiting for the result…");
  if (call.unfinished) return h("p", { class: "toolcall-pending muted small" }, "No result: the step ended first.");
  if (call.result === undefined || call.result === null) return h("p", { class: "muted small" }, "No result");
  const text = typeof call.result === "string" ? call.result : json(call.result);
  if (typeof call.result === "string" && text.length <= RESULT_INLINE_CHARS && !text.includes("\n")) {
    return h("p", { class: "toolcall-result" }, h("span", { class: "muted" }, "Result: "), h("code", {}, text));
  }
  return collapsible(`${key}:result`, `Result (${text.length.toLocaleString()} characters)`, call.result, openKeys,
    text);
}

function toolCallItem(call, key, openKeys) {
  const name = String(call.toolName ?? "?");
  const state = call.running ? "running" : call.error !== undefined && call.error !== null ? "failed" : null;
  const args = call.args === undefined ? null : oneLine(call.args);
  return h("li", { class: `toolcall${state ? ` toolcall-${state}` : ""}`, dataset: { tool: name } },
    h("div", { class: "toolcall-head" },
      h("code", { class: "toolcall-name" }, name),
      call.server ? h("span", { class: "tag", title: `MCP server ${call.server}` }, String(call.server)) : null,
      state ? badge(state) : null,
      h("span", { class: "toolcall-duration" }, typeof call.durationMs === "number" ? formatDuration(call.durationMs)
        : "")),
    args === null ? null : collapsible(`${key}:args`,
      ["Arguments ", h("code", { class: "toolcall-args" }, cut(args, ARGS_CHARS))], call.args, openKeys),
    callResult(call, key, openKeys));
}

/** The step's tool calls: the live ones while it runs (from the chunks), its recorded `toolCalls` afterwards. */
function toolCallList(block, index, calls, openKeys) {
  if (!calls.length) return null;
  const titleId = `block-${index}-tools`;
  return h("section", { class: "toolcalls", "aria-labelledby": titleId },
    h("h4", { id: titleId, class: "toolcalls-title" }, `Tool calls (${calls.length})`),
    h("ol", { class: "toolcall-list" }, calls.map((call, i) =>
      toolCallItem(call, `${index}:tool:${call.toolCallId ?? i}`, openKeys))));
}

function renderBlock(block, index, openKeys, calls, view) {
  const running = block.status === "running";
  const shown = stepStatus(block, view); // a step cut short by a cancel shows `cancelled`, not `failed`
  const step = typeof block.stepNumber === "number" ? `Step ${block.stepNumber}` : "Planned";
  const titleId = `block-${index}-title`;
  const sections = [];
  if (block.input !== undefined) sections.push(collapsible(`${index}:input`, "Input", block.input, openKeys));
  if (block.output !== undefined) sections.push(collapsible(`${index}:output`, "Output", block.output, openKeys));
  if (block.usage) sections.push(collapsible(`${index}:usage`, "Usage", block.usage, openKeys));
  if (typeof block.reasoning === "string" && block.reasoning) {
    sections.push(collapsible(`${index}:reasoning`, "Reasoning", block.reasoning, openKeys, block.reasoning));
  }
  return h("li", { class: `block block-${shown}`, "aria-labelledby": titleId },
    h("div", { class: "block-head" },
      h("span", { class: "step-no" }, step),
      h("h3", { id: titleId, class: "block-title" }, block.agentName || "unknown"),
      block.actionType && block.actionType !== "agent" ? h("span", { class: "tag" }, block.actionType) : null,
      badge(shown),
      h("span", { class: "block-duration" },
        durationEl(block.durationMs, running ? block.startedAt : null, running))),
    block.task && block.task !== block.agentName ? h("p", { class: "task" }, block.task) : null,
    toolCallList(block, index, calls, openKeys),
    liveInfo(block),
    block.error ? h("p", { class: "block-error" }, block.error,
      block.errorCode ? h("code", { class: "small" }, ` ${block.errorCode}`) : null) : null,
    errorDetailsEl(block.errorDetails),
    causeChain(block.cause),
    block.childSessionId ? h("p", { class: "small" }, "Child run: ",
      h("a", { href: sessionHref(block.childSessionId) }, shortId(block.childSessionId))) : null,
    sections.length ? h("div", { class: "block-io" }, sections) : null);
}

/** Nested list of a correlation tree (summaries), the current run marked. */
function treeList(sessions, currentId, names) {
  const byParent = new Map();
  const ids = new Set(sessions.map((s) => s.sessionId));
  for (const s of sessions) {
    const parent = s.parentSessionId && ids.has(s.parentSessionId) ? s.parentSessionId : "";
    if (!byParent.has(parent)) byParent.set(parent, []);
    byParent.get(parent).push(s);
  }
  for (const list of byParent.values()) list.sort((a, b) => (a.queuedAt || "").localeCompare(b.queuedAt || ""));
  const render = (parent) => {
    const kids = byParent.get(parent) || [];
    if (!kids.length) return null;
    return h("ul", { class: "tree" }, kids.map((s) => h("li", {},
      h("span", { class: "tree-node" }, badge(s.status), " ",
        s.sessionId === currentId
          ? h("strong", { "aria-current": "page" }, `${jobLabel(names, s.workspaceId, s.jobName)} (this run)`)
          : h("a", { href: sessionHref(s.sessionId) }, jobLabel(names, s.workspaceId, s.jobName)),
        " ", h("span", { class: "muted small" }, `${s.workspaceId} · ${shortId(s.sessionId)}`)),
      render(s.sessionId))));
  };
  return render("");
}

// A session id shorter than a UUID: the unique prefix the CLI prints (`sessions list`, `ps`), resolved like the CLI.
// The CLI wants 8+ characters (spec §11); a page can list the candidates, so any prefix is looked up here.
const SHORT_ID = /^[A-Za-z0-9_-]{1,35}$/;
const CANDIDATES = 10; // an ambiguous prefix lists this many of its runs (newest first)

/** One run an ambiguous prefix matches: its full id as the link, then status, job and start. */
function candidateEl(s) {
  return h("li", { dataset: { sessionId: s.sessionId } },
    h("a", { href: sessionHref(s.sessionId) }, h("code", {}, s.sessionId)), " ", badge(s.status), " ",
    h("span", {}, `${s.workspaceId} / ${s.jobName}`), " ", h("span", { class: "muted small" }, timeAgo(s.startedAt)));
}

/**
 * `/sessions/<prefix>`: ask the daemon for the runs whose id starts with it (`sessionIdPrefix`) and replace the
 * URL with the run's when exactly one does; otherwise say that none match, or list the ones that do.
 */
async function resolveShortId(root, ctx, prefix) {
  fill(root, loading("Finding run…"));
  let sessions;
  try {
    const found = await api(`/api/sessions${qs({ sessionIdPrefix: prefix, limit: CANDIDATES + 1 })}`,
      { signal: ctx.signal });
    // Filtered again here: a daemon without the parameter ignores it and answers its newest runs.
    sessions = (found.sessions || []).filter((s) => s.sessionId.startsWith(prefix));
  } catch (exc) {
    if (!isAbort(exc)) fill(root, errorState(`Could not look up run ${prefix}: ${exc.describe ? exc.describe() : exc.message}`));
    return;
  }
  if (!ctx.alive) return;
  if (sessions.length === 1) {
    navigate(sessionHref(sessions[0].sessionId), { replace: true });
    return;
  }
  ctx.setTitle(sessions.length ? "Ambiguous run id" : "Run not found");
  if (!sessions.length) {
    fill(root, h("h1", {}, "Run not found"),
      empty(`No run id starts with ${prefix}.`, h("p", {}, h("a", { href: "/sessions" }, "See all runs"), ".")));
    return;
  }
  const more = sessions.length > CANDIDATES;
  fill(root, h("h1", {}, "Ambiguous run id"),
    empty(`More than one run id starts with ${prefix}: give more characters, or pick one.`,
      h("ul", { class: "candidates", "aria-label": `Runs whose id starts with ${prefix}` },
        sessions.slice(0, CANDIDATES).map(candidateEl)),
      more ? h("p", { class: "muted small" }, `The ${CANDIDATES} newest are shown; `,
        h("a", { href: `/sessions?q=${encodeURIComponent(prefix)}` }, "search the runs"), " for the others.") : null));
}

export async function mount(root, ctx) {
  const sid = ctx.params.sessionId;
  if (SHORT_ID.test(sid)) {
    await resolveShortId(root, ctx, sid);
    return;
  }
  const enc = encodeURIComponent(sid);
  ctx.setTitle(`Run ${shortId(sid)}`);
  fill(root, loading("Loading run…"));

  let view = initialView();
  let liveCalls = new Map(); // stepNumber → the tool calls seen live (toolcalls.js)
  let have = false; // a view with a sessionId has arrived
  let names = new Map();
  const openKeys = new Set(["results"]); // the run's output starts open; the user's toggles win afterwards
  let ui = null; // skeleton elements, built with the first view
  let lastStatus = null;
  let frame = 0;

  const schedule = () => {
    if (frame) return;
    frame = requestAnimationFrame(() => {
      frame = 0;
      if (ctx.alive) render();
    });
  };
  ctx.onCleanup(() => cancelAnimationFrame(frame));

  const apply = (next) => {
    if (next === view) return;
    const before = view;
    view = next;
    if (view.sessionId && !have) {
      have = true;
      firstView();
    }
    if (signalStepsChanged(before, view)) refreshLineage();
    schedule();
  };

  function signalStepsChanged(a, b) {
    const key = (v) => JSON.stringify((v.agentBlocks || []).filter((blk) => blk.actionType === "signal")
      .map((blk) => [blk.status, blk.childSessionId]));
    return key(a) !== key(b) || (isTerminal(b.status) && !isTerminal(a.status));
  }

  // --- rendering ---------------------------------------------------------------------------------------------

  function build() {
    const title = h("span", { class: "run-title" });
    const status = h("span", { class: "run-status" });
    const meta = h("dl", { class: "meta-grid" });
    const cancelButton = h("button", { type: "button", class: "danger", dataset: NEEDS_DAEMON, onclick: cancelRun },
      "Cancel run");
    const cancelMsg = h("p", { class: "inline-msg", role: "alert" });
    const rerunButton = h("button", { type: "button", hidden: true, dataset: NEEDS_DAEMON,
      onclick: () => rerunRun(rerunButton) }, "Re-run");
    const connection = h("span", { class: "connection small muted", role: "status" });
    const errorBox = h("div", { class: "run-error-slot" });
    const outcome = h("div", { class: "outcome-slot" });
    const lineage = h("div", { class: "lineage" }, loading("Loading lineage…"));
    const payload = h("div", { class: "payload-slot" });
    const timeline = h("ol", { class: "timeline" });
    const strip = h("div", { class: "gantt-slot" });
    const history = historyPanel({ onLoadAll: loadAllEvents });
    const logs = logsPanel({ path: `/api/sessions/${enc}/logs?follow=true`, signal: ctx.signal }); // issue #16
    const panes = tabs([
      { id: "steps", label: "Steps", panel: timeline },
      { id: "events", label: "Event history", panel: history.el },
      { id: "logs", label: "Logs", panel: logs.el },
    ], { label: "Run details", onSelect: (id) => { if (id === "logs") logs.start(); schedule(); } });
    const crumbWs = h("a", {});
    const crumbRuns = h("a", { href: "/sessions" }, "Runs");
    fill(root,
      h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("ol", {},
        h("li", {}, h("a", { href: "/" }, "Workspaces")),
        h("li", {}, crumbWs),
        h("li", {}, crumbRuns),
        h("li", { "aria-current": "page" }, `Run ${shortId(sid)}`))),
      h("div", { class: "page-head run-head" },
        h("h1", {}, title, " ", status),
        h("div", { class: "head-actions" }, connection, rerunButton, cancelButton)),
      cancelMsg,
      daemon.el,
      meta,
      errorBox,
      h("div", { class: "run-columns" },
        h("div", { class: "main-column" },
          outcome,
          h("section", { class: "timeline-section", "aria-labelledby": "timeline-title" },
            h("h2", { id: "timeline-title" }, "Timeline"), strip, panes.el)),
        h("aside", { class: "side" },
          h("section", { "aria-labelledby": "lineage-title" }, h("h2", { id: "lineage-title" }, "Lineage"), lineage),
          h("section", { "aria-labelledby": "payload-title" }, h("h2", { id: "payload-title" }, "Input payload"), payload))));
    ui = { title, status, meta, cancelButton, rerunButton, cancelMsg, connection, errorBox, outcome, lineage, payload, timeline,
      crumbWs, crumbRuns, blocks: [], metaKey: null, payloadKey: null, errorKey: null, outcomeKey: null, strip, history,
      panes };
    setMode(mode); // the stream may have opened before the first view built the page: show its state now
  }

  function render() {
    if (!have) return;
    if (!ui) build();
    const v = view;
    const job = jobLabel(names, v.workspaceId, v.jobName);
    if (ui.title.textContent !== job) ui.title.textContent = job;
    ctx.setTitle(`${job} · ${v.status}`);
    if (v.status !== lastStatus) {
      fill(ui.status, badge(v.status, { id: "run-status-badge" }));
      if (lastStatus !== null) announce(`Run ${v.status}`);
      lastStatus = v.status;
    }
    ui.crumbWs.textContent = v.workspaceId;
    ui.crumbWs.href = `/workspaces/${encodeURIComponent(v.workspaceId)}`;
    ui.crumbRuns.href = `/workspaces/${encodeURIComponent(v.workspaceId)}/sessions`;
    ui.cancelButton.hidden = isTerminal(v.status);
    ui.rerunButton.hidden = !isTerminal(v.status);

    const metaKey = JSON.stringify([v.sessionId, v.trigger, v.signalId, v.startedAt, v.queuedAt, v.status,
      v.durationMs, v.correlationId, v.depth, v.rerunOf, v.waitingFor, v.duplicateOf, v.chat, v.traceId]);
    if (metaKey !== ui.metaKey) {
      ui.metaKey = metaKey;
      renderMeta(v);
    }
    const errorKey = JSON.stringify([v.error, v.errorCode, v.status, v.cause]);
    if (errorKey !== ui.errorKey) {
      ui.errorKey = errorKey;
      fill(ui.errorBox, v.error || v.errorCode
        ? h("div", { class: `banner banner-${v.status === "failed" || v.status === "interrupted" ? "error" : "warn"}` },
          h("strong", {}, `Run ${v.status}: `), v.error || "", v.errorCode ? h("code", {}, ` ${v.errorCode}`) : null,
          causeChain(v.cause))
        : "");
    }
    const outcomeKey = JSON.stringify([v.results, v.aiSummary]);
    if (outcomeKey !== ui.outcomeKey) {
      ui.outcomeKey = outcomeKey;
      fill(ui.outcome, v.aiSummary || v.results
        ? h("section", { class: "outcome", "aria-labelledby": "outcome-title" },
          h("h2", { id: "outcome-title" }, "Result"),
          v.aiSummary?.summary ? h("p", { class: "summary" }, v.aiSummary.summary) : null,
          Array.isArray(v.aiSummary?.keyDetails) && v.aiSummary.keyDetails.length
            ? h("dl", { class: "key-details" }, v.aiSummary.keyDetails.flatMap((d) => [
              h("dt", {}, d.label), h("dd", {}, safeUrl(d.url)
                ? h("a", { href: d.url, rel: "noopener noreferrer" }, String(d.value)) : String(d.value))]))
            : null,
          v.results ? collapsible("results", "Output", v.results, openKeys) : null)
        : "");
    }
    const payloadKey = JSON.stringify(v.payload ?? null);
    if (payloadKey !== ui.payloadKey) {
      ui.payloadKey = payloadKey;
      fill(ui.payload, v.payload === undefined || v.payload === null
        || (typeof v.payload === "object" && !Array.isArray(v.payload) && !Object.keys(v.payload).length)
        ? h("p", { class: "muted" }, "No payload")
        : h("pre", { class: "json" }, json(v.payload)));
    }
    renderTimeline(v.agentBlocks || []);
    fill(ui.strip, timelineStrip(v));
    if (ui.panes.selected() === "events") ui.history.update(eventList(), v.lastSeq || 0, { loading: loadingEvents });
  }

  // The run's OpenTelemetry trace (issue #18): its id, and a link to it when the daemon has ATLAS_TRACE_URL_TEMPLATE
  // (read from /api/daemon/status once, when the first traced run is shown).
  let traceTemplate; // undefined: not asked yet; null: none
  function traceEl(traceId) {
    if (traceTemplate === undefined) {
      traceTemplate = null;
      api("/api/daemon/status", { signal: ctx.signal }).then((status) => {
        if (typeof status.traceUrlTemplate !== "string" || !status.traceUrlTemplate) return;
        traceTemplate = status.traceUrlTemplate;
        renderMeta(view);
      }).catch(() => {}); // no link: the id is still shown
    }
    const url = traceTemplate ? traceTemplate.replaceAll("{traceId}", encodeURIComponent(traceId)) : null;
    return h("span", { class: "id-copy" }, h("code", { id: "trace-id" }, traceId), copyButton(traceId, "Copy trace id"),
      url && safeUrl(url)
        ? h("a", { href: url, id: "trace-link", class: "small", rel: "noopener noreferrer", target: "_blank" }, "Open trace")
        : null);
  }

  function renderMeta(v) {
    const rows = [
      ["Session", h("code", { id: "session-id" }, v.sessionId)],
      ["Trigger", [triggerTag(v.trigger), v.signalId ? h("span", { class: "muted" }, ` signal ${v.signalId}`) : null]],
      ["Started", v.status === "queued" ? h("span", { class: "muted" }, "waiting to start (queued ", timeAgo(v.queuedAt), ")")
        : [h("time", { datetime: v.startedAt }, absoluteTime(v.startedAt)), " (", timeAgo(v.startedAt), ")"]],
      ["Duration", v.status === "queued" ? h("span", { class: "muted" }, "—")
        : durationEl(v.durationMs, v.status === "active" ? v.startedAt : null, v.status === "active")],
      ["Correlation id", v.correlationId
        ? h("span", { class: "id-copy" }, h("code", { id: "correlation-id" }, v.correlationId),
          copyButton(v.correlationId, "Copy correlation id"),
          h("a", { href: `/sessions${qs({ q: v.correlationId })}`, class: "small" }, "All runs with this id"))
        : h("span", { class: "muted" }, "—")],
    ];
    if (v.traceId) rows.push(["Trace", traceEl(v.traceId)]);
    if (v.rerunOf) {
      rows.splice(2, 0, ["Re-run of", h("a", { href: sessionHref(v.rerunOf), id: "rerun-of" }, shortId(v.rerunOf))]);
    }
    // A run a chat turn started (issue #17) links back to that chat.
    if (v.chat && typeof v.chat.chatId === "string") {
      rows.splice(2, 0, ["Chat", h("a", { id: "chat-link", href: `/workspaces/${encodeURIComponent(v.workspaceId)}/chat/${
        encodeURIComponent(v.chat.chatId)}` }, "Open the chat that started this run")]);
    }
    // Why it has not run (issue #16): what a queued run waits for, the running session a skipped one duplicates.
    if (v.status === "queued" && v.waitingFor) rows.splice(2, 0, ["Waiting for", waitingForEl(v.waitingFor)]);
    if (v.duplicateOf) {
      rows.splice(2, 0, ["Skipped", h("span", { id: "duplicate-of" }, "duplicate of ",
        h("a", { href: sessionHref(v.duplicateOf) }, shortId(v.duplicateOf)))]);
    }
    fill(ui.meta, ...rows.flatMap(([label, value]) => [h("div", { class: "meta-item" },
      h("dt", {}, label), h("dd", {}, value))]));
  }

  function renderTimeline(blocks) {
    if (!blocks.length) {
      if (!ui.timeline.dataset.empty) {
        fill(ui.timeline, h("li", { class: "muted" }, "No steps planned for this run."));
        ui.timeline.dataset.empty = "1";
        ui.blocks = [];
      }
      return;
    }
    if (ui.timeline.dataset.empty) {
      ui.timeline.replaceChildren();
      delete ui.timeline.dataset.empty;
    }
    const active = document.activeElement;
    blocks.forEach((block, i) => {
      const calls = callsOfBlock(block, liveCalls);
      const key = JSON.stringify([block, calls, view.status, view.errorCode]);
      const old = ui.blocks[i];
      if (old && old.key === key) return;
      const el = renderBlock(block, i, openKeys, calls, view);
      if (old) {
        const focusKey = old.el.contains(active) ? active.dataset.focusKey : null;
        old.el.replaceWith(el);
        if (focusKey) el.querySelector(`[data-focus-key="${CSS.escape(focusKey)}"]`)?.focus();
      } else {
        ui.timeline.append(el);
      }
      ui.blocks[i] = { key, el };
    });
    for (const extra of ui.blocks.splice(blocks.length)) extra.el.remove();
  }

  // --- lineage: parent, children, the correlation tree ------------------------------------------------------

  let lineageKey = null;
  let lineageSettled = false;
  let lineageBusy = false;

  async function refreshLineage() {
    if (!have || lineageBusy || !ctx.alive) return;
    if (!ui) build();
    lineageBusy = true;
    try {
      const [children, tree] = await Promise.all([
        api(`/api/sessions/${enc}/children`, { signal: ctx.signal, cache: "no-cache" }),
        view.correlationId
          ? api(`/api/sessions${qs({ correlationId: view.correlationId, limit: 500 })}`, { signal: ctx.signal, cache: "no-cache" })
          : Promise.resolve({ sessions: [] }),
      ]);
      const kids = children.sessions || [];
      const members = tree.sessions || [];
      const treeNames = await jobNames([...kids, ...members].map((s) => s.workspaceId));
      for (const [k, value] of treeNames) names.set(k, value);
      lineageSettled = isTerminal(view.status) && [...kids, ...members].every((s) => isTerminal(s.status));
      const key = JSON.stringify([view.parentSessionId, kids, members, [...names]]);
      if (key === lineageKey) return;
      lineageKey = key;
      renderLineage(kids, members);
      schedule();
    } catch (exc) {
      if (isAbort(exc)) return;
      if (ui && lineageKey === null) fill(ui.lineage, errorState(`Could not load the lineage: ${exc.describe ? exc.describe() : exc.message}`));
    } finally {
      lineageBusy = false;
    }
  }

  function renderLineage(kids, members) {
    const parts = [];
    if (view.parentSessionId) {
      const parent = members.find((s) => s.sessionId === view.parentSessionId);
      parts.push(h("p", {}, "Parent: ", h("a", { href: sessionHref(view.parentSessionId) },
        parent ? jobLabel(names, parent.workspaceId, parent.jobName) : shortId(view.parentSessionId)),
      parent ? [" ", badge(parent.status)] : null));
    } else {
      parts.push(h("p", { class: "muted" }, "Root run (no parent)"));
    }
    parts.push(h("h3", {}, "Children"));
    parts.push(kids.length
      ? h("ul", { class: "children" }, kids.map((s) => h("li", {}, badge(s.status), " ",
        h("a", { href: sessionHref(s.sessionId) }, jobLabel(names, s.workspaceId, s.jobName)),
        h("span", { class: "muted small" }, ` ${s.workspaceId} · ${shortId(s.sessionId)}`))))
      : h("p", { class: "muted" }, "No child runs"));
    parts.push(h("h3", {}, "Correlation tree"));
    parts.push(members.length > 1
      ? treeList(members, sid, names)
      : h("p", { class: "muted" }, "This run is the only one with its correlation id."));
    fill(ui.lineage, ...parts);
  }

  // --- event history (issue #16) ---------------------------------------------------------------------------

  const events = new Map(); // seq → durable event, as read from the stream
  let loadingEvents = false;

  function eventList() {
    return [...events.values()].sort((a, b) => a.seq - b.seq);
  }

  /** Read the whole stream once for the events this page did not see (it polled, or a resume skipped them). */
  async function loadAllEvents() {
    if (loadingEvents) return;
    loadingEvents = true;
    schedule();
    try {
      for (const event of await loadEvents(`/api/sessions/${enc}/stream`, { signal: ctx.signal, lastSeq: view.lastSeq })) {
        events.set(event.seq, event);
      }
    } catch (exc) {
      if (isAbort(exc)) return;
      ui.cancelMsg.textContent = `Could not load the events: ${exc.describe ? exc.describe() : exc.message}`;
    } finally {
      loadingEvents = false;
      if (ctx.alive) schedule();
    }
  }

  // --- cancel ---------------------------------------------------------------------------------------------

  /** Ask first, as `atlas sessions cancel` does: a cancel cannot be undone. Resolves true to go ahead. */
  function confirmCancel() {
    return new Promise((resolve) => {
      const titleId = "confirm-cancel-title";
      const keep = h("button", { type: "button", onclick: () => dialog.close("keep") }, "Keep running");
      const dialog = h("dialog", { class: "dialog confirm-dialog", role: "alertdialog", "aria-labelledby": titleId,
        "aria-describedby": "confirm-cancel-text" },
      h("h2", { id: titleId }, "Cancel this run?"),
      h("p", { id: "confirm-cancel-text" }, "Its running step is stopped and its live child runs are cancelled too. ",
        "This cannot be undone."),
      h("div", { class: "dialog-actions" }, keep,
        h("button", { type: "button", class: "danger", onclick: () => dialog.close("cancel") }, "Cancel run")));
      dialog.addEventListener("close", () => {
        dialog.remove();
        resolve(dialog.returnValue === "cancel");
      });
      ctx.onCleanup(() => dialog.open && dialog.close());
      document.body.append(dialog);
      dialog.showModal();
      keep.focus(); // the safe choice has the focus: Enter does not cancel by accident
    });
  }

  async function cancelRun() {
    if (!(await confirmCancel()) || !ctx.alive) {
      if (ctx.alive) ui.cancelButton.focus();
      return;
    }
    const button = ui.cancelButton;
    button.disabled = true;
    button.textContent = "Cancelling…";
    ui.cancelMsg.textContent = "";
    try {
      const answer = await api(`/api/sessions/${enc}`, { method: "DELETE", signal: ctx.signal });
      if (answer?.cancelRequested) ui.cancelMsg.textContent = "Cancel requested — waiting for the run to stop.";
      if (mode !== "live") await getOnce();
    } catch (exc) {
      if (isAbort(exc)) return;
      if (exc instanceof ApiError && exc.code === "session_not_active") {
        ui.cancelMsg.textContent = `This run already ended (${exc.details?.status || "terminal"}).`;
      } else {
        ui.cancelMsg.textContent = `Could not cancel: ${exc.describe ? exc.describe() : exc.message}`;
      }
      button.disabled = false;
      button.textContent = "Cancel run";
    }
  }

  // --- re-run (issue #16) ---------------------------------------------------------------------------------------

  /** Open the run dialog on this finished run's signal, pre-filled with its payload; it posts to …/rerun. */
  async function rerunRun(button) {
    const v = view;
    let signalsById = new Map();
    try {
      const body = await api(`/api/workspaces/${encodeURIComponent(v.workspaceId)}/signals`, { signal: ctx.signal });
      signalsById = new Map((body.signals || []).map((entry) => [entry.name, entry.signal]));
    } catch (exc) {
      if (isAbort(exc)) return;
      // The workspace may be gone: the dialog still opens, and the re-run's own answer says what is wrong.
    }
    if (!ctx.alive) return;
    openRunDialog({ workspaceId: v.workspaceId, job: { id: v.jobName, name: jobLabel(names, v.workspaceId, v.jobName) },
      signalsById, opener: button, rerun: { sessionId: v.sessionId, signalId: v.signalId, payload: v.payload } });
  }

  // --- data: stream first, GET as fallback --------------------------------------------------------------------

  let mode = "connecting";
  const setMode = (next, text) => {
    mode = next;
    const labels = { connecting: "Connecting…", live: "● Live", reconnecting: "Reconnecting…", polling: "Updating",
      done: "", offline: "Could not reach the daemon — retrying" };
    if (ui) {
      ui.connection.textContent = text ?? labels[next] ?? "";
      ui.connection.classList.toggle("offline", next === "offline");
    }
    daemon.set(next === "offline"); // the banner, and Cancel and Re-run disabled until the daemon is back
  };

  // A finished run's page no longer streams: it asks /health now and then, so it notices the daemon going away.
  const daemon = watchDaemon(ctx, root, {
    what: "This page shows the run as last seen; Cancel and Re-run are disabled until the daemon is back.",
    pollHealth: () => isTerminal(view.status) && (mode === "done" || mode === "offline"),
    onDown: () => setMode("offline"),
    onBack: () => setMode("done"),
  });

  function notFound() {
    ctx.setTitle("Run not found");
    fill(root, h("h1", {}, "Run not found"),
      empty(`No run with id ${sid} is known to this daemon.`, h("p", {}, h("a", { href: "/sessions" }, "See all runs"), ".")));
  }

  /** One GET of the view; true when it answered. Replaces the folded view when the server is ahead. */
  async function getOnce() {
    try {
      const got = await api(`/api/sessions/${enc}`, { signal: ctx.signal, cache: "no-store" });
      if (!have || (got.lastSeq ?? 0) > (view.lastSeq ?? 0) || (isTerminal(got.status) && !isTerminal(view.status))) {
        apply(got);
      }
      if (mode === "offline") setMode("polling");
      return true;
    } catch (exc) {
      if (isAbort(exc)) throw exc;
      if (exc instanceof ApiError && exc.status === 404 && !have) {
        notFound();
        throw exc;
      }
      if (!have) fill(root, errorState(`Could not load the run: ${exc.describe ? exc.describe() : exc.message}`));
      setMode("offline");
      return false;
    }
  }

  async function poll() {
    setMode("polling");
    while (ctx.alive && !isTerminal(view.status)) {
      await getOnce();
      if (isTerminal(view.status)) break;
      await ctx.sleep(POLL_MS);
    }
    finish();
  }

  function finish() {
    setMode("done");
    refreshLineage();
  }

  async function follow() {
    let failures = 0;
    while (ctx.alive) {
      let ended = false;
      let frames = 0;
      try {
        setMode(failures ? "reconnecting" : "connecting");
        await readEventStream(`/api/sessions/${enc}/stream`, {
          lastEventId: view.lastSeq || null,
          signal: ctx.signal,
          onOpen: () => setMode("live"),
          onFrame: ({ event, data }) => {
            frames += 1;
            if (event === "end") {
              ended = true;
              return;
            }
            let parsed;
            try {
              parsed = JSON.parse(data);
            } catch {
              return;
            }
            if (event === "message") {
              if (Number.isInteger(parsed?.seq)) events.set(parsed.seq, parsed);
              apply(reduce(view, parsed));
            } else if (event === "ephemeral") {
              const calls = applyToolChunk(liveCalls, view, parsed);
              if (calls !== liveCalls && !isTerminal(view.status)) {
                liveCalls = calls;
                schedule();
              }
              apply(applyChunk(view, parsed));
            }
          },
        });
        if (ended || isTerminal(view.status)) {
          if (!isTerminal(view.status)) await getOnce();
          if (isTerminal(view.status)) finish();
          else await poll(); // an `end` before the last event reached us: poll the view to the end
          return;
        }
        throw new ApiError(0, "network", "The event stream closed before the run ended");
      } catch (exc) {
        if (isAbort(exc) || !ctx.alive) return;
        if (exc instanceof ApiError && (exc.status === 404 || exc.status === 405 || exc.code === "not_a_stream")) {
          // No stream route on this daemon (or a session it cannot stream): poll the view instead.
          try {
            await poll();
          } catch (inner) {
            if (!isAbort(inner) && !(inner instanceof ApiError && inner.status === 404)) console.error(inner);
          }
          return;
        }
        if (exc instanceof ApiError && exc.status === 401) {
          if (!have) fill(root, errorState("The daemon needs an API token to show this run."));
          return;
        }
        if (frames) failures = 0;
        try {
          await getOnce(); // fall back to GET at once, then retry the stream after 1, 2 and 4 s
        } catch {
          return; // not found, or navigated away
        }
        if (isTerminal(view.status)) {
          finish();
          return;
        }
        if (failures >= RETRY_DELAYS_MS.length) {
          await poll();
          return;
        }
        if (mode !== "offline") setMode("reconnecting");
        await ctx.sleep(RETRY_DELAYS_MS[failures]);
        failures += 1;
      }
    }
  }

  // Job display names for the header, then lineage (kept fresh while any run of the tree is live).
  async function firstView() {
    ctx.every(LINEAGE_POLL_MS, async () => {
      if (!lineageSettled) await refreshLineage();
    });
    ctx.every(1000, () => {
      if (!isTerminal(view.status)) schedule(); // the strip's open bars grow with the clock
    });
    const found = await jobNames([view.workspaceId]);
    for (const [k, value] of found) names.set(k, value);
    if (ctx.alive) schedule();
  }

  // Not awaited: the page is usable (and not aria-busy) while the run is followed.
  follow().catch((exc) => {
    if (!isAbort(exc)) console.error(exc);
  });
}
