// The session reducer (spec §3.5), ported from src/atlas/sessions/reducer.py rule for rule.
//
// Folding a finished session's stream here MUST give the same view as GET /api/sessions/:id (apart from
// `ephemeral`); tests/test_ui.py folds the same logs with both implementations and compares them. Keep the two
// files in step: same guards, same field lists, same robustness against malformed events.
//
// reduce() and applyChunk() never mutate their inputs: they build a new view, a new agentBlocks array and new
// objects for the blocks they change; values taken from an event are deep-copied.

export const STATUSES = Object.freeze(["queued", "active", "completed", "failed", "skipped", "cancelled", "interrupted"]);
export const TERMINAL_STATUSES = Object.freeze(["completed", "failed", "skipped", "cancelled", "interrupted"]);
export const CHUNK_TYPES = Object.freeze(["progress", "log", "text-delta"]);
export const EPHEMERAL_LIMIT = 50;

const RAN = ["completed", "failed"];

const QUEUED_FIELDS = ["sessionId", "workspaceId", "jobName", "signalId", "task", "trigger", "correlationId",
  "rootSessionId", "depth", "rerunOf"];
const START_FIELDS = ["sessionId", "workspaceId", "jobName", "task", "signalId", "correlationId", "rootSessionId",
  "depth"];
const STEP_START_FIELDS = ["actionType", "task", "input", "outputKey", "stateId"];
const STEP_COMPLETE_FIELDS = ["durationMs", "output", "error", "errorCode", "childSessionId", "usage", "reasoning",
  "errorDetails", "cause"];

// --- helpers ------------------------------------------------------------------------------------------------

export function isTerminal(status) {
  return typeof status === "string" && TERMINAL_STATUSES.includes(status);
}

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
const isInt = (value) => typeof value === "number" && Number.isInteger(value);
const isNumber = (value) => typeof value === "number" && Number.isFinite(value);
const present = (value) => value !== undefined && value !== null;
const clone = (value) => (value === null || typeof value !== "object" ? value : structuredClone(value));
const own = (obj, key) => Object.prototype.hasOwnProperty.call(obj, key);
// Python compares names with `==`, which is structural for lists and dicts; a malformed event may carry one.
const same = (a, b) => a === b || (typeof a === "object" && typeof b === "object" && a !== null && b !== null
  && JSON.stringify(a) === JSON.stringify(b));

function lastSeq(view) {
  return isInt(view.lastSeq) ? view.lastSeq : 0;
}

function blocksOf(view) {
  return Array.isArray(view.agentBlocks) ? view.agentBlocks : [];
}

function isBlock(block, status) {
  return isObject(block) && block.status === status;
}

function copyPresent(target, source, keys) {
  for (const key of keys) {
    if (own(source, key) && present(source[key])) target[key] = clone(source[key]);
  }
}

function copyParent(target, source) {
  const parent = source.parentSessionId;
  if (typeof parent === "string" && parent) target.parentSessionId = parent;
}

function findStep(blocks, step) {
  const index = blocks.findIndex((block) => isObject(block) && isInt(block.stepNumber) && block.stepNumber === step);
  return index === -1 ? null : index;
}

function timestampOf(event) {
  return typeof event.timestamp === "string" ? event.timestamp : null;
}

function plannedBlocks(steps) {
  const blocks = [];
  for (const step of steps) {
    if (!isObject(step)) continue;
    const block = {
      agentName: present(step.agentName) ? clone(step.agentName) : "unknown",
      task: present(step.task) ? clone(step.task) : "",
      actionType: present(step.actionType) ? clone(step.actionType) : "agent",
    };
    copyPresent(block, step, ["stateId", "outputKey"]);
    block.status = "pending";
    block.toolCalls = [];
    blocks.push(block);
  }
  return blocks;
}

function replan(view, event) {
  const blocks = blocksOf(view);
  if (!Array.isArray(event.plannedSteps)) return [...blocks];
  const kept = blocks.filter((block) => !isBlock(block, "pending"));
  return [...kept, ...plannedBlocks(event.plannedSteps)];
}

/** Whole milliseconds between two RFC 3339 timestamps, never negative; null when either is not a time. */
export function durationMs(startedAt, endedAt) {
  if (typeof startedAt !== "string" || typeof endedAt !== "string") return null;
  const start = Date.parse(startedAt);
  const end = Date.parse(endedAt);
  if (Number.isNaN(start) || Number.isNaN(end)) return null;
  return Math.max(0, Math.round(end - start));
}

// --- event rules (§3.5): each returns the new view, or null when the event cannot be applied ------------------

/** The trace id of a W3C `traceparent` (`00-<32 hex>-<16 hex>-<2 hex>`), else null (as the Python reducer). */
function traceIdOf(traceparent) {
  if (typeof traceparent !== "string") return null;
  const parts = traceparent.split("-");
  return parts.length === 4 && /^[0-9a-f]{32}$/.test(parts[1]) ? parts[1] : null;
}

function onQueued(view, event) {
  const next = { ...view };
  copyPresent(next, event, QUEUED_FIELDS);
  copyParent(next, event);
  if (isObject(event.chat)) next.chat = clone(event.chat); // the chat turn that started it (issue #17)
  const traceId = traceIdOf(event.traceparent);
  if (traceId !== null) next.traceId = traceId; // the run's OpenTelemetry trace (issue #18)
  if (own(event, "payload")) next.payload = clone(event.payload);
  const timestamp = timestampOf(event);
  if (timestamp !== null) {
    next.queuedAt = timestamp;
    next.startedAt = timestamp;
  }
  next.status = "queued";
  next.waitingFor = { reason: "pending" }; // accepted, not yet taken by a runner (issue #16)
  next.agentBlocks = replan(view, event);
  return next;
}

function onWaiting(view, event) {
  // Only a queued session waits; a late or malformed session:waiting changes nothing.
  if (view.status !== "queued" || !isObject(event.waitingFor)) return null;
  return { ...view, waitingFor: clone(event.waitingFor) };
}

function onStart(view, event) {
  const next = { ...view };
  copyPresent(next, event, START_FIELDS);
  copyParent(next, event);
  const timestamp = timestampOf(event);
  if (timestamp !== null) next.startedAt = timestamp;
  next.status = "active";
  delete next.waitingFor;
  next.agentBlocks = replan(view, event);
  return next;
}

function onStepStart(view, event) {
  const step = event.stepNumber;
  if (!isInt(step)) return null;
  const agentName = present(event.agentName) ? event.agentName : "unknown";
  const blocks = blocksOf(view);
  for (const block of blocks) {
    if (isObject(block) && isInt(block.stepNumber) && block.stepNumber === step && same(block.agentName, agentName)) {
      return { ...view };
    }
  }
  const timestamp = timestampOf(event);
  const newBlocks = [...blocks];
  const index = blocks.findIndex((block) => isBlock(block, "pending") && same(block.agentName, agentName));
  if (index !== -1) {
    const running = { ...blocks[index] };
    running.status = "running";
    running.stepNumber = step;
    copyPresent(running, event, STEP_START_FIELDS);
    if (timestamp !== null) running.startedAt = timestamp;
    newBlocks[index] = running;
  } else {
    const appended = {
      stepNumber: step,
      agentName: clone(agentName),
      actionType: present(event.actionType) ? clone(event.actionType) : "agent",
      task: present(event.task) ? clone(event.task) : "",
    };
    copyPresent(appended, event, ["stateId", "input", "outputKey"]);
    appended.status = "running";
    if (timestamp !== null) appended.startedAt = timestamp;
    appended.toolCalls = [];
    newBlocks.push(appended);
  }
  return { ...view, agentBlocks: newBlocks };
}

function onStepComplete(view, event) {
  const step = event.stepNumber;
  if (!isInt(step)) return null;
  const status = event.status;
  const blocks = blocksOf(view);
  const newBlocks = [...blocks];
  let index = findStep(blocks, step);
  let target;
  if (index !== null) {
    target = { ...blocks[index] };
  } else {
    index = newBlocks.length;
    target = { stepNumber: step, agentName: "unknown", actionType: "agent", task: "", status: "failed", toolCalls: [] };
    newBlocks.push(target);
  }
  if (RAN.includes(status)) target.status = status;
  copyPresent(target, event, STEP_COMPLETE_FIELDS);
  if (Array.isArray(event.toolCalls)) target.toolCalls = clone(event.toolCalls);
  delete target.ephemeral;
  newBlocks[index] = target;
  return { ...view, agentBlocks: newBlocks };
}

function onStepSkipped(view, event) {
  const stateId = event.stateId;
  if (!present(stateId)) return null;
  const agentName = present(event.agentName) ? event.agentName : null;
  const blocks = blocksOf(view);
  const next = { ...view };
  const index = blocks.findIndex((block) => isBlock(block, "pending") && same(block.stateId, stateId)
    && (agentName === null || same(block.agentName, agentName)));
  if (index !== -1) {
    const newBlocks = [...blocks];
    newBlocks[index] = { ...blocks[index], status: "skipped" };
    next.agentBlocks = newBlocks;
  }
  return next;
}

function onComplete(view, event) {
  const status = event.status;
  if (!isTerminal(status)) return null;
  const error = present(event.error) ? event.error : null;
  const errorCode = present(event.errorCode) ? event.errorCode : null;
  const newBlocks = blocksOf(view).map((block) => {
    if (isBlock(block, "pending")) return { ...block, status: "skipped" };
    if (isBlock(block, "running")) {
      const failed = { ...block, status: "failed" };
      if (error !== null) failed.error = clone(error);
      if (errorCode !== null) failed.errorCode = clone(errorCode);
      delete failed.ephemeral;
      return failed;
    }
    return block;
  });
  const results = {};
  let hasResults = false;
  for (const block of newBlocks) {
    if (isBlock(block, "completed") && present(block.output) && typeof block.outputKey === "string") {
      results[block.outputKey] = block.output;
      hasResults = true;
    }
  }
  const next = { ...view, agentBlocks: newBlocks, status };
  delete next.waitingFor;
  if (hasResults) next.results = results;
  else delete next.results;
  const completedAt = timestampOf(event);
  if (completedAt !== null) next.completedAt = completedAt;
  if (isNumber(event.durationMs)) {
    next.durationMs = event.durationMs;
  } else {
    const computed = durationMs(next.startedAt, next.completedAt);
    if (computed !== null) next.durationMs = computed;
  }
  if (error !== null) next.error = clone(error);
  if (errorCode !== null) next.errorCode = clone(errorCode);
  if (isObject(event.cause)) next.cause = clone(event.cause);
  if (typeof event.duplicateOf === "string" && event.duplicateOf !== "") next.duplicateOf = event.duplicateOf;
  return next;
}

function onSummary(view, event) {
  return {
    ...view,
    aiSummary: {
      summary: present(event.summary) ? clone(event.summary) : "",
      keyDetails: Array.isArray(event.keyDetails) ? clone(event.keyDetails) : [],
    },
  };
}

const RULES = {
  "session:queued": onQueued,
  "session:waiting": onWaiting,
  "session:start": onStart,
  "step:start": onStepStart,
  "step:complete": onStepComplete,
  "step:skipped": onStepSkipped,
  "session:complete": onComplete,
  "session:summary": onSummary,
};

// --- public API -------------------------------------------------------------------------------------------------

export function initialView() {
  return { sessionId: "", workspaceId: "", jobName: "", task: "", status: "queued", queuedAt: "", startedAt: "",
    agentBlocks: [], lastSeq: 0 };
}

/** Apply one durable event; returns `view` itself when the event is stale, malformed or not applicable. */
export function reduce(view, event) {
  if (!isObject(event)) return view;
  const seq = event.seq;
  if (!isInt(seq) || seq <= lastSeq(view)) return view;
  const type = event.type;
  if (typeof type !== "string") return view;
  if (isTerminal(view.status) && type !== "session:summary") return view;
  if (!own(RULES, type)) return view;
  const next = RULES[type](view, event);
  if (next === null) return view;
  next.lastSeq = seq;
  return next;
}

/** Attach a live-only chunk `{sessionId, stepNumber?, chunk}` to a block's `ephemeral` (last 50 kept). */
export function applyChunk(view, chunk) {
  if (!isObject(chunk) || isTerminal(view.status)) return view;
  const body = chunk.chunk;
  if (!isObject(body)) return view;
  if (typeof body.type !== "string" || !CHUNK_TYPES.includes(body.type)) return view;
  const blocks = blocksOf(view);
  let target = null;
  if (isInt(chunk.stepNumber)) target = findStep(blocks, chunk.stepNumber);
  if (target === null) {
    const running = blocks.findIndex((block) => isBlock(block, "running"));
    target = running === -1 ? null : running;
  }
  if (target === null) return view;
  const block = { ...blocks[target] };
  const ephemeral = Array.isArray(block.ephemeral) ? [...block.ephemeral] : [];
  ephemeral.push(clone(body));
  block.ephemeral = ephemeral.slice(-EPHEMERAL_LIMIT);
  const newBlocks = [...blocks];
  newBlocks[target] = block;
  return { ...view, agentBlocks: newBlocks };
}

export function buildView(events) {
  let view = initialView();
  for (const event of events) view = reduce(view, event);
  return view;
}

/** The SessionSummary of a view (§3.4), as the list endpoints return it. */
export function summarize(view) {
  const blocks = blocksOf(view).filter(isObject);
  const counted = isTerminal(view.status) ? blocks.filter((block) => RAN.includes(block.status)) : blocks;
  const agentNames = counted.map((block) => (present(block.agentName) ? block.agentName : "unknown"));
  const field = (key, fallback) => (present(view[key]) ? view[key] : fallback);
  const summary = {
    sessionId: field("sessionId", ""), workspaceId: field("workspaceId", ""), jobName: field("jobName", ""),
    task: field("task", ""), status: field("status", "queued"), startedAt: field("startedAt", ""),
    stepCount: agentNames.length, agentNames, correlationId: field("correlationId", ""),
    signalId: field("signalId", ""), trigger: field("trigger", ""), rootSessionId: field("rootSessionId", ""),
    depth: field("depth", 0), queuedAt: field("queuedAt", ""),
  };
  for (const key of ["completedAt", "durationMs", "error", "errorCode", "rerunOf", "duplicateOf", "traceId"]) {
    if (present(view[key])) summary[key] = view[key];
  }
  if (isObject(view.chat)) summary.chat = clone(view.chat);
  if (present(view.aiSummary)) summary.aiSummary = clone(view.aiSummary);
  if (typeof view.parentSessionId === "string" && view.parentSessionId) summary.parentSessionId = view.parentSessionId;
  return summary;
}
