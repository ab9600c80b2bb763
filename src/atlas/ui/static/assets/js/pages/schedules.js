// `/schedules` (issue #16): every cron schedule of every workspace (GET /api/schedules) with its next run and last
// result; Pause and Resume call the existing routes (the flag is cluster-wide), "Run now" triggers the schedule's
// signal like the run dialog does (nowait, an Idempotency-Key) and opens the new run. Refreshed every 5 s.

import { api, isAbort, request } from "../api.js";
import { absoluteTime, badge, empty, errorState, fill, h, loading, newIdempotencyKey, shortId, timeAgo } from "../dom.js";
import { NEEDS_DAEMON, watchDaemon } from "../online.js";
import { navigate } from "../router.js";
import { scrollable } from "../runs-table.js";

const POLL_MS = 5000;

const enc = encodeURIComponent;

function lastResult(entry) {
  const result = entry.lastResult;
  const error = entry.lastError;
  if (!result && !error) return h("span", { class: "muted" }, "Not run yet");
  return h("div", {},
    result ? [badge(result.status), " ",
      h("a", { href: `/sessions/${enc(result.sessionId)}` }, shortId(result.sessionId)),
      result.scheduled ? h("span", { class: "muted small" }, " · ", timeAgo(result.scheduled)) : null] : null,
    error ? h("div", { class: "row-error", title: error.message }, `${error.code}: ${error.message}`) : null);
}

function nextRun(entry) {
  if (entry.paused) return h("span", { class: "muted" }, "paused");
  if (!entry.nextRun) return h("span", { class: "muted" }, "—");
  return [timeAgo(entry.nextRun), h("div", { class: "muted small" }, absoluteTime(entry.nextRun))];
}

export async function mount(root, ctx) {
  ctx.setTitle("Schedules");
  const slot = h("div", { class: "schedules-slot" }, loading("Loading schedules…"));
  const message = h("p", { class: "inline-msg", role: "status" });
  // With the daemon away, Pause, Resume and Run now are disabled; when it is back the table is reloaded.
  const daemon = watchDaemon(ctx, root, { onBack: () => refresh().catch(() => {}),
    what: "The schedules are shown as last seen; Pause, Resume and Run now are disabled until the daemon is back." });
  fill(root, h("div", { class: "page-head" }, h("h1", {}, "Schedules")),
    h("p", { class: "muted" }, "Cron schedules of every workspace. Pausing holds a schedule on every daemon until it is resumed."),
    daemon.el, message, slot);

  let lastKey = null;
  let busy = false;

  async function act(button, label, work) {
    if (busy) return;
    busy = true;
    button.disabled = true;
    message.textContent = "";
    try {
      await work();
    } catch (exc) {
      if (isAbort(exc)) return;
      message.textContent = `Could not ${label}: ${exc.describe ? exc.describe() : exc.message}`;
    } finally {
      busy = false;
      if (button.isConnected) button.disabled = false;
    }
    if (ctx.alive) await refresh();
  }

  function setPaused(entry, paused, button) {
    const verb = paused ? "pause" : "resume";
    return act(button, `${verb} ${entry.signalId}`, async () => {
      await api(`/api/schedules/${enc(entry.workspaceId)}/${enc(entry.signalId)}/${verb}`, { method: "POST", signal: ctx.signal });
      message.textContent = `${entry.workspaceId}/${entry.signalId} ${paused ? "paused" : "resumed"}.`;
    });
  }

  function runNow(entry, button) {
    return act(button, `run ${entry.signalId}`, async () => {
      const response = await request(`/api/workspaces/${enc(entry.workspaceId)}/signals/${enc(entry.signalId)}?nowait=true`,
        { method: "POST", body: { payload: {} }, headers: { "Idempotency-Key": newIdempotencyKey() }, signal: ctx.signal });
      const accepted = await response.json();
      if (typeof accepted?.sessionId === "string") navigate(`/sessions/${enc(accepted.sessionId)}`);
    });
  }

  function row(entry) {
    const name = `${entry.workspaceId}/${entry.signalId}`;
    const toggle = h("button", { type: "button", "aria-label": `${entry.paused ? "Resume" : "Pause"} ${name}`, dataset: NEEDS_DAEMON,
      onclick: () => setPaused(entry, !entry.paused, toggle) }, entry.paused ? "Resume" : "Pause");
    const run = h("button", { type: "button", "aria-label": `Run ${name} now`, dataset: NEEDS_DAEMON,
      onclick: () => runNow(entry, run) }, "Run now");
    return h("tr", { dataset: { schedule: name } },
      h("th", { scope: "row" }, h("a", { href: `/workspaces/${enc(entry.workspaceId)}` }, entry.workspaceId), " / ",
        h("code", {}, entry.signalId)),
      h("td", {}, h("code", {}, entry.schedule), h("div", { class: "muted small" }, entry.timezone)),
      h("td", {}, badge(entry.paused ? "paused" : "active")),
      h("td", { class: "next-run" }, nextRun(entry)),
      h("td", { class: "last-result" }, lastResult(entry)),
      h("td", {}, h("div", { class: "schedule-actions" }, toggle, run)));
  }

  async function refresh() {
    try {
      const body = await api("/api/schedules", { signal: ctx.signal, cache: "no-cache" });
      daemon.ok();
      const entries = body.schedules || [];
      const key = JSON.stringify(entries);
      if (key === lastKey || busy) return;
      lastKey = key;
      if (!entries.length) {
        fill(slot, empty("No schedules: a workspace signal with provider `schedule` shows up here."));
        return;
      }
      const table = h("table", { class: "schedules" },
        h("caption", { class: "visually-hidden" }, "Cron schedules"),
        h("thead", {}, h("tr", {}, ["Schedule", "Cron", "State", "Next run", "Last result", "Actions"]
          .map((text) => h("th", { scope: "col" }, text)))),
        h("tbody", {}, entries.map(row)));
      fill(slot, scrollable(table, "Cron schedules").el);
    } catch (exc) {
      if (isAbort(exc)) throw exc;
      if (daemon.failed(exc) && lastKey !== null) return; // the banner says it
      if (lastKey === null) fill(slot, errorState(`Could not load the schedules: ${exc.describe ? exc.describe() : exc.message}`, refresh));
      else message.textContent = `Could not refresh: ${exc.describe ? exc.describe() : exc.message}`;
    }
  }
  ctx.every(POLL_MS, refresh);
}
