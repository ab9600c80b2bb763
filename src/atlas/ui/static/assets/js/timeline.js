// The run page's Gantt-like strip (issue #16, item 6): one bar for the queue wait (queuedAt → startedAt) and one
// per step (its startedAt → its end), on a shared time axis from the moment the run was queued to its end (or
// now, while it runs). The view has no per-step end time: a step ends at startedAt + durationMs, and a step the
// session ended (no durationMs) at the session's completedAt.

import { badge, formatDuration, h } from "./dom.js";

/** How a step is shown: a step that failed because its run was cancelled is `cancelled`, not a red `failed`. */
export function stepStatus(block, view) {
  if (block?.status === "failed" && view?.status === "cancelled"
      && (!block.errorCode || !view.errorCode || block.errorCode === view.errorCode)) {
    return "cancelled";
  }
  return block?.status;
}

const ms = (iso) => (typeof iso === "string" && iso ? Date.parse(iso) : NaN);

/** Local wall-clock time with milliseconds (steps are often shorter than a second). */
export function clockTime(t) {
  if (!Number.isFinite(t)) return "";
  const d = new Date(t);
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

/** The end of a step in ms since the epoch, or NaN while it has none (pending, or running when `now` is NaN). */
function stepEnd(block, view, now) {
  const start = ms(block.startedAt);
  if (block.status === "running") return now;
  if (Number.isFinite(start) && typeof block.durationMs === "number") return start + block.durationMs;
  const end = ms(view.completedAt);
  return Number.isFinite(start) && Number.isFinite(end) ? Math.max(start, end) : NaN;
}

/** The bars of a view: [{kind, label, status, start, end}] in ms, the queue wait first; pending steps have none. */
export function timelineBars(view, now = Date.now()) {
  const bars = [];
  const queued = ms(view.queuedAt);
  const started = ms(view.startedAt);
  if (Number.isFinite(queued)) {
    const waiting = view.status === "queued";
    const end = waiting ? now : Number.isFinite(started) ? started : ms(view.completedAt);
    if (Number.isFinite(end)) {
      bars.push({ kind: "queue", label: "Queue wait", status: waiting ? "queued" : "waited", start: queued, end });
    }
  }
  const running = view.status === "active" || view.status === "queued";
  for (const block of Array.isArray(view.agentBlocks) ? view.agentBlocks : []) {
    const start = ms(block?.startedAt);
    if (!Number.isFinite(start)) continue;
    const end = stepEnd(block, view, running ? now : NaN);
    bars.push({ kind: "step", label: `${typeof block.stepNumber === "number" ? `Step ${block.stepNumber}: ` : ""}${
      block.agentName || "unknown"}`, status: stepStatus(block, view), start, end, stepNumber: block.stepNumber });
  }
  return bars;
}

function pct(value) {
  return `${Math.max(0, Math.min(100, value)).toFixed(3)}%`;
}

/** The strip as an element (a list of rows: label, times, bar on the shared axis); null before anything ran. */
export function timelineStrip(view, now = Date.now()) {
  const bars = timelineBars(view, now);
  if (!bars.length) return null;
  const t0 = Math.min(...bars.map((b) => b.start));
  const ends = bars.map((b) => b.end).filter(Number.isFinite);
  const t1 = Math.max(t0 + 1, ...ends);
  const span = t1 - t0;
  const rows = bars.map((bar) => {
    const open = !Number.isFinite(bar.end);
    const end = open ? t1 : bar.end;
    const duration = end - bar.start;
    const times = `${clockTime(bar.start)} → ${open ? "…" : clockTime(bar.end)}`;
    const title = `${bar.label}: ${times} (${formatDuration(duration)})`;
    const el = h("span", { class: `gantt-bar gantt-bar-${bar.status}`, title });
    // Through the CSSOM: the daemon's CSP (style-src 'self') drops inline style attributes, not style properties.
    el.style.left = pct(((bar.start - t0) / span) * 100);
    el.style.width = pct(Math.max(0.4, (duration / span) * 100));
    return h("li", { class: `gantt-row gantt-${bar.kind}`, dataset: { kind: bar.kind, start: new Date(bar.start).toISOString(),
      end: open ? "" : new Date(bar.end).toISOString(), step: bar.stepNumber ?? "" } },
    h("span", { class: "gantt-label" }, bar.label, " ", bar.kind === "step" ? badge(bar.status) : null),
    h("span", { class: "gantt-track", "aria-hidden": "true" }, el),
    h("span", { class: "gantt-times small" }, h("time", { datetime: new Date(bar.start).toISOString() }, clockTime(bar.start)),
      " → ", open ? "…" : h("time", { datetime: new Date(bar.end).toISOString() }, clockTime(bar.end)),
      h("span", { class: "muted" }, ` (${formatDuration(duration)})`)));
  });
  return h("div", { class: "gantt" },
    h("ol", { class: "gantt-rows", "aria-label": "Queue wait and step times" }, rows),
    h("p", { class: "gantt-axis small muted" }, h("span", {}, clockTime(t0)), h("span", {}, clockTime(t1))));
}
