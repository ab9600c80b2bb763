// Why a step or a run failed (issue #16): a python step's traceback, a shell step's last stderr lines, and the cause
// chain of a failed cascade (each failed child nested in its parent, with a link to the child's run). Everything
// shown is recorded data (`errorDetails`, `cause` on the step and on the run), so it reads the same live and later.

import { badge, h, shortId } from "./dom.js";

const sessionHref = (id) => `/sessions/${encodeURIComponent(id)}`;
const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);

/** A step's `errorDetails`: the traceback and the stderr tail as `pre` blocks (null when it has neither). */
export function errorDetailsEl(details) {
  if (!isObject(details)) return null;
  const parts = [];
  if (typeof details.traceback === "string" && details.traceback) {
    parts.push(h("pre", { class: "traceback", "aria-label": `Traceback (${details.type || "error"})` },
      details.traceback));
  }
  if (typeof details.stderrTail === "string" && details.stderrTail) {
    const exit = typeof details.exitCode === "number" ? `, exit status ${details.exitCode}` : "";
    parts.push(h("p", { class: "small muted error-details-label" }, `Last lines of stderr${exit}`),
      h("pre", { class: "stderr-tail", "aria-label": "Last lines of stderr" }, details.stderrTail));
  }
  return parts.length ? h("div", { class: "error-details" }, parts) : null;
}

function causeItem(cause) {
  const id = typeof cause.sessionId === "string" ? cause.sessionId : "";
  const job = cause.jobName || "run";
  return h("li", { class: "cause", dataset: { sessionId: id } },
    h("div", { class: "cause-head" }, "Caused by ",
      id ? h("a", { href: sessionHref(id), class: "cause-link" }, `${job} ${shortId(id)}`) : job, " ",
      badge(cause.status || "failed"),
      cause.workspaceId ? h("span", { class: "muted small" }, ` ${cause.workspaceId}`) : null),
    cause.error || cause.errorCode
      ? h("p", { class: "block-error" }, cause.error || "", cause.errorCode ? h("code", { class: "small" },
        ` ${cause.errorCode}`) : null)
      : null,
    typeof cause.stepNumber === "number"
      ? h("p", { class: "small muted" }, `in step ${cause.stepNumber} ${cause.agentName || ""}`.trimEnd())
      : null,
    errorDetailsEl(cause.errorDetails),
    isObject(cause.cause) ? h("ol", { class: "cause-chain" }, causeItem(cause.cause)) : null);
}

/** A `cause` record as a nested list, outermost child first (null when there is none). */
export function causeChain(cause) {
  if (!isObject(cause)) return null;
  return h("section", { class: "causes", "aria-label": "Cause chain" },
    h("ol", { class: "cause-chain" }, causeItem(cause)));
}
