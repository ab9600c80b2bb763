// Live tool calls of running `llm` steps (issue #14), folded from the stream's `tool-call` / `tool-result` chunks.
//
// They are kept here, apart from the view, on purpose: the reducers (Python and JS, which must fold alike) keep
// only `progress`, `log` and `text-delta` chunks, and only the last 50 of them, so a chatty step would push its
// calls out of `ephemeral`. Once a step ends, its recorded `toolCalls` (from `step:complete`) replace these.
// The same rules as `fold_tool_chunk` in src/atlas/cli/follow.py.

export const TOOL_CHUNK_TYPES = Object.freeze(["tool-call", "tool-result"]);

const isObject = (value) => value !== null && typeof value === "object" && !Array.isArray(value);
const isInt = (value) => typeof value === "number" && Number.isInteger(value);
const pick = (source, keys) => Object.fromEntries(keys.filter((k) => k in source).map((k) => [k, source[k]]));

/**
 * The calls of one step after a chunk (a new array; `calls` is left alone). A `tool-call` adds a call marked
 * `running`; its `tool-result` (matched by toolCallId, else by the oldest running call of that name) sets result,
 * error and duration. A result whose call we never saw (the page opened in between) is added on its own.
 */
export function foldToolChunk(calls, body) {
  const fields = pick(body, ["toolCallId", "toolName", "args", "server"]);
  if (body.type === "tool-call") return [...calls, { ...fields, running: true }];
  if (body.type !== "tool-result") return calls;
  const outcome = pick(body, ["durationMs", "result", "error", "server"]);
  const index = calls.findIndex((call) => call.running && (body.toolCallId !== undefined
    ? call.toolCallId === body.toolCallId : call.toolName === body.toolName));
  if (index === -1) return [...calls, { ...fields, ...outcome }];
  const { running, ...done } = calls[index];
  return [...calls.slice(0, index), { ...done, ...outcome }, ...calls.slice(index + 1)];
}

/**
 * `live` (a Map stepNumber → calls) after an ephemeral message `{sessionId, stepNumber?, chunk}`; the same Map
 * when the message is not a tool chunk. Without a stepNumber the chunk belongs to the first running block.
 */
export function applyToolChunk(live, view, message) {
  const body = isObject(message) ? message.chunk : null;
  if (!isObject(body) || !TOOL_CHUNK_TYPES.includes(body.type)) return live;
  let step = message.stepNumber;
  if (!isInt(step)) {
    const running = (view.agentBlocks || []).find((block) => isObject(block) && block.status === "running");
    step = running?.stepNumber;
    if (!isInt(step)) return live;
  }
  const next = new Map(live);
  next.set(step, foldToolChunk(live.get(step) || [], body));
  return next;
}

/**
 * The calls a block shows: the live ones while it runs, its recorded `toolCalls` once it ended; the live ones
 * again when the record has none (a step that the session's cancel ended without a `step:complete`), where a
 * call that was still running is marked `unfinished`.
 */
export function callsOfBlock(block, live) {
  const seen = isInt(block.stepNumber) ? live.get(block.stepNumber) || [] : [];
  if (block.status === "running") return seen;
  if (Array.isArray(block.toolCalls) && block.toolCalls.length) return block.toolCalls.filter(isObject);
  return seen.map((call) => {
    if (!call.running) return call;
    const { running, ...rest } = call;
    return { ...rest, unfinished: true };
  });
}
