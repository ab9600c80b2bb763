// The runs table shared by the workspace page (recent runs) and the runs lists: one row per SessionSummary.

import { badge, durationEl, fill, h, idWithCopy, shortId, timeAgo, triggerTag } from "./dom.js";
import { jobLabel } from "./data.js";

const LIVE = new Set(["queued", "active"]);
const MAX_PILLS = 4;

/** Queued and active runs first, everything else in server order (spec §12). */
export function pinLive(runs) {
  return [...runs.filter((r) => LIVE.has(r.status)), ...runs.filter((r) => !LIVE.has(r.status))];
}

function stepPills(run) {
  const names = Array.isArray(run.agentNames) ? run.agentNames : [];
  if (!names.length) return h("span", { class: "muted" }, "—");
  const shown = names.slice(0, MAX_PILLS).map((name) => h("li", { class: "pill" }, name));
  if (names.length > MAX_PILLS) shown.push(h("li", { class: "pill pill-more" }, `+${names.length - MAX_PILLS}`));
  return h("ul", { class: "pills", "aria-label": `${names.length} step${names.length === 1 ? "" : "s"}` }, shown);
}

function row(run, { names, showWorkspace }) {
  const live = LIVE.has(run.status);
  const job = jobLabel(names, run.workspaceId, run.jobName);
  return h("tr", { class: live ? "row-live" : null, dataset: { sessionId: run.sessionId } },
    h("td", {}, badge(run.status)),
    h("th", { scope: "row" },
      h("a", { href: `/sessions/${encodeURIComponent(run.sessionId)}`, title: `Run ${run.sessionId}` }, job),
      run.depth > 0 ? h("span", { class: "muted small" }, " · child") : null,
      run.error || run.errorCode
        ? h("div", { class: run.status === "failed" || run.status === "interrupted" ? "row-error" : "row-note",
          title: run.error || run.errorCode }, run.errorCode || run.error)
        : null),
    showWorkspace
      ? h("td", {}, h("a", { href: `/workspaces/${encodeURIComponent(run.workspaceId)}` }, run.workspaceId))
      : null,
    h("td", {}, triggerTag(run.trigger)),
    h("td", {}, stepPills(run)),
    h("td", {}, timeAgo(run.startedAt)),
    h("td", {}, durationEl(run.durationMs, run.status === "active" ? run.startedAt : null, run.status === "active")),
    h("td", {}, run.correlationId
      ? idWithCopy(run.correlationId, `Copy correlation id ${shortId(run.correlationId)}`)
      : h("span", { class: "muted" }, "—")));
}

/**
 * A horizontally scrollable box for a wide table (issue #16: at 390 px the runs table was clipped with no cue).
 * While the table is wider than the box, the box gets edge shadows (`is-scrollable`) and a visible "scroll
 * sideways" line; the box is a focusable region so a keyboard can scroll it too.
 */
export function scrollable(table, label) {
  const box = h("div", { class: "table-scroll", role: "region", "aria-label": label, tabindex: "0" }, table);
  const cue = h("p", { class: "scroll-cue", hidden: true, "aria-hidden": "true" }, "Scroll sideways for more columns →");
  const check = () => {
    const more = box.scrollWidth > box.clientWidth + 1;
    box.classList.toggle("is-scrollable", more);
    cue.hidden = !more;
  };
  const observer = new ResizeObserver(check);
  observer.observe(box);
  observer.observe(table);
  return { el: h("div", { class: "table-wrap" }, box, cue), check };
}

/**
 * A table of runs that can be updated in place: `update(runs, names)` replaces only the rows whose data changed
 * (so focus on an untouched row's copy button survives polling) and rebuilds when the order changed.
 */
export function runsTable({ caption, showWorkspace = false }) {
  const tbody = h("tbody");
  const table = h("table", { class: "runs" },
    h("caption", { class: "visually-hidden" }, caption),
    h("thead", {}, h("tr", {},
      h("th", { scope: "col" }, "Status"),
      h("th", { scope: "col" }, "Job"),
      showWorkspace ? h("th", { scope: "col" }, "Workspace") : null,
      h("th", { scope: "col" }, "Trigger"),
      h("th", { scope: "col" }, "Steps"),
      h("th", { scope: "col" }, "Started"),
      h("th", { scope: "col" }, "Duration"),
      h("th", { scope: "col" }, "Correlation"))),
    tbody);
  let rows = []; // [{id, key, tr}]
  const wrapper = scrollable(table, caption);
  return {
    el: wrapper.el,
    update(runs, names) {
      const next = runs.map((run) => ({ id: run.sessionId, key: JSON.stringify(run) + jobLabel(names, run.workspaceId, run.jobName) }));
      const sameOrder = next.length === rows.length && next.every((r, i) => r.id === rows[i].id);
      if (sameOrder) {
        next.forEach((r, i) => {
          if (r.key !== rows[i].key) {
            const tr = row(runs[i], { names, showWorkspace });
            rows[i].tr.replaceWith(tr);
            rows[i] = { ...r, tr };
          }
        });
        return;
      }
      rows = next.map((r, i) => ({ ...r, tr: row(runs[i], { names, showWorkspace }) }));
      fill(tbody, ...rows.map((r) => r.tr));
    },
  };
}
