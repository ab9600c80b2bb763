// The run page's Logs tab (issue #16, item 1): what the run's steps wrote (stdout, stderr, python logs, progress,
// tool calls), one line each as `HH:MM:SS.mmm  step N  stream  text`. It reads GET /api/sessions/<sid>/logs?
// follow=true, which replays the kept log and then follows it live until the run ends, so the same code shows a
// running step's lines as they come and a finished run's log after a reload. A stream that breaks is resumed
// after the last line shown (its cursor), after 1, 2, then 4 s.

import { isAbort, readEventStream } from "./api.js";
import { h } from "./dom.js";

const RETRY_DELAYS_MS = [1000, 2000, 4000];

/** `HH:MM:SS.mmm` in local time, as `atlas sessions logs` prints it. */
function clockTime(ts) {
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return "";
  const pad = (n, w = 2) => String(n).padStart(w, "0");
  return `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}.${pad(d.getMilliseconds(), 3)}`;
}

function lineEl(line) {
  const stream = String(line.stream ?? "");
  return h("div", { class: `log-line log-${stream.replace(/[^a-z0-9-]/gi, "")}`, "data-step": String(line.stepNumber) },
    h("span", { class: "log-time" }, clockTime(line.ts)),
    h("span", { class: "log-step" }, `step ${line.stepNumber}`),
    h("span", { class: "log-stream" }, stream),
    h("span", { class: "log-text" }, String(line.text ?? "")));
}

/** `logsPanel({path, signal})` → {el, start()}: the panel, and `start` to begin reading (once; call it when the tab
 * is first shown, so a run page that nobody opens the Logs tab of costs no stream). */
export function logsPanel({ path, signal }) {
  const status = h("p", { class: "log-status small muted", role: "status" }, "Loading logs…");
  const body = h("div", { class: "log-lines", role: "log", "aria-live": "polite", "aria-label": "Step output" });
  const el = h("div", { class: "logs" }, status, body);
  let cursor = null;
  let started = false;
  let count = 0;

  function append(lines) {
    if (!lines.length) return;
    const stick = body.scrollHeight - body.scrollTop - body.clientHeight < 24; // follow the tail unless scrolled up
    const fragment = document.createDocumentFragment();
    for (const line of lines) fragment.append(lineEl(line));
    body.append(fragment);
    count += lines.length;
    if (stick) body.scrollTop = body.scrollHeight;
  }

  async function follow() {
    for (let attempt = 0; ; attempt += 1) {
      let ended = false;
      try {
        await readEventStream(path, {
          signal,
          lastEventId: cursor,
          onOpen: () => {
            status.textContent = count ? "Following the run's output…" : "Waiting for output…";
          },
          onFrame: ({ event, data }) => {
            const frame = JSON.parse(data);
            if (event === "logs") {
              append(Array.isArray(frame.lines) ? frame.lines : []);
              cursor = frame.nextCursor || cursor;
              status.textContent = "Following the run's output…";
            } else if (event === "end") {
              ended = true;
            }
          },
        });
      } catch (exc) {
        if (isAbort(exc)) return;
        if (attempt >= RETRY_DELAYS_MS.length) {
          status.textContent = `Could not load the logs: ${exc.describe ? exc.describe() : exc.message}`;
          return;
        }
      }
      if (ended) {
        status.textContent = count ? `${count} line${count === 1 ? "" : "s"} kept with this run.`
          : "This run's steps wrote no output.";
        el.dataset.state = "ended";
        return;
      }
      // The stream closed or broke without `end` (the daemon restarted): resume after the last line shown.
      await new Promise((resolve) => setTimeout(resolve, RETRY_DELAYS_MS[Math.min(attempt, RETRY_DELAYS_MS.length - 1)]));
      if (signal?.aborted) return;
    }
  }

  return {
    el,
    start() {
      if (started) return;
      started = true;
      follow();
    },
  };
}
