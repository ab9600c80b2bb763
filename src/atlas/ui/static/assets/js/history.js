// The run page's Event history (issue #16, item 6): the session's durable events, one compact line each (seq,
// time, type, what it says) with the raw JSON one click away. The page collects the events it reads from the
// session stream; when it has not seen them all (it fell back to GET, or joined late), `loadEvents` reads the
// stream once from the start, stopping at the `end` frame or once it holds `lastSeq`.

import { isAbort, readEventStream } from "./api.js";
import { h, json } from "./dom.js";
import { clockTime } from "./timeline.js";

/** The one line that says what an event is about; the raw JSON has the rest. */
export function eventGist(event) {
  const parts = [];
  if (typeof event.stepNumber === "number") parts.push(`step ${event.stepNumber}`);
  if (event.agentName) parts.push(String(event.agentName));
  if (event.status) parts.push(String(event.status));
  if (event.trigger) parts.push(`trigger ${event.trigger}`);
  if (typeof event.durationMs === "number") parts.push(`${event.durationMs} ms`);
  if (event.errorCode) parts.push(String(event.errorCode));
  if (event.error && typeof event.error === "string") parts.push(event.error.length > 120 ? `${event.error.slice(0, 119)}…` : event.error);
  if (Array.isArray(event.plannedSteps)) parts.push(`${event.plannedSteps.length} planned step${event.plannedSteps.length === 1 ? "" : "s"}`);
  return parts.join(" · ");
}

/** Every durable event of the session (sorted by seq), read from its stream from the beginning. */
export async function loadEvents(streamPath, { signal, lastSeq = 0 }) {
  const got = new Map();
  const controller = new AbortController();
  const stop = () => controller.abort();
  signal?.addEventListener("abort", stop, { once: true });
  try {
    await readEventStream(streamPath, {
      signal: controller.signal,
      onFrame: ({ event, data }) => {
        if (event === "end") {
          controller.abort();
          return;
        }
        if (event !== "message") return;
        let parsed;
        try {
          parsed = JSON.parse(data);
        } catch {
          return;
        }
        if (Number.isInteger(parsed?.seq)) got.set(parsed.seq, parsed);
        if (lastSeq && got.size >= lastSeq) controller.abort(); // caught up with the view: a live run never ends
      },
    });
  } catch (exc) {
    if (!isAbort(exc) || signal?.aborted) throw exc;
  } finally {
    signal?.removeEventListener("abort", stop);
  }
  return [...got.values()].sort((a, b) => a.seq - b.seq);
}

/** The panel: `update(events, lastSeq)` re-renders when the list grew; `onLoadAll` fetches what is missing. */
export function historyPanel({ onLoadAll }) {
  const list = h("ol", { class: "event-list", "aria-label": "Durable events" });
  const note = h("p", { class: "small muted event-note" });
  const el = h("div", { class: "event-history" }, note, list);
  let shownKey = "";
  return {
    el,
    update(events, lastSeq, { loading = false } = {}) {
      const key = `${events.length}:${events.at(-1)?.seq ?? 0}:${lastSeq}:${loading}`;
      if (key === shownKey) return;
      shownKey = key;
      const missing = Math.max(0, (lastSeq || 0) - events.length);
      note.replaceChildren(`${events.length} event${events.length === 1 ? "" : "s"}`,
        missing ? ` (${missing} not received yet) ` : "",
        missing && !loading ? h("button", { type: "button", class: "link-button", onclick: onLoadAll }, "Load all") : null,
        loading ? " — loading…" : "");
      list.replaceChildren(...events.map((event) => h("li", { class: "event-row", dataset: { seq: event.seq, type: event.type } },
        h("details", {},
          h("summary", {},
            h("span", { class: "event-seq" }, `#${event.seq}`),
            h("time", { class: "event-time small", datetime: event.timestamp || "" },
              clockTime(Date.parse(event.timestamp))),
            h("code", { class: "event-type" }, String(event.type)),
            h("span", { class: "event-gist small" }, eventGist(event))),
          h("pre", { class: "json event-json" }, json(event))))));
    },
  };
}
