// Whether the daemon can be reached, for every page (issue #16, item 7: "with the daemon down the page says so and
// disables actions"). A page marks the buttons that need the daemon with `data-needs-daemon`; while the daemon is
// unreachable a banner says so and those buttons are disabled (also ones rendered meanwhile), and when it answers
// again they are enabled and the page is told, so it can refresh what it shows.
//
// "Down" means a network failure, not an error answer: a 503 is a degraded daemon that answered, and its answers
// (errors included) are the page's to show. Pages that poll their data report each poll (`failed`, `ok`); a page
// that does not poll (a finished run) asks for `/health` checks instead.

import { api, ApiError, isAbort } from "./api.js";
import { fill, h } from "./dom.js";

const HEALTH_POLL_MS = 3000;
const SELECTOR = "button[data-needs-daemon]";

/** `dataset` of a button that needs the daemon: `h("button", { dataset: NEEDS_DAEMON, … })`. */
export const NEEDS_DAEMON = Object.freeze({ needsDaemon: "" });

/** True for an ApiError that says the daemon could not be reached (not an answer it gave). */
export const unreachable = (exc) => exc instanceof ApiError && exc.network;

/**
 * Watch the daemon for the page mounted in `root`. Options: `what` (the banner's second sentence: what the page
 * shows and what it cannot do meanwhile), `pollHealth()` (true while `/health` should be asked every 3 s),
 * `onDown()` and `onBack()` (called when a check or a report changes the state; not for `set`).
 * Returns `{el, down, set(down), failed(exc), ok()}`: `el` is the banner's slot for the page to place;
 * `set` shows a state the page found itself, without the callbacks; `failed` reports a failed request (true
 * when it was a network failure: the banner then speaks for it) and `ok` a request that was answered.
 */
export function watchDaemon(ctx, root, { what, pollHealth = () => false, onDown = () => {}, onBack = () => {} } = {}) {
  const el = h("div", { class: "offline-slot" });
  let down = false;

  // Buttons this module disabled carry `data-offline`; only those are enabled again (a button disabled for its
  // own reason, such as a job without a trigger, stays disabled).
  const disableAll = () => {
    for (const button of root.querySelectorAll(SELECTOR)) {
      if (button.disabled && !button.dataset.offline) continue;
      if (!button.disabled) button.disabled = true;
      button.dataset.offline = "1";
    }
  };
  const enableAll = () => {
    for (const button of root.querySelectorAll(`${SELECTOR}[data-offline]`)) {
      delete button.dataset.offline;
      button.disabled = false;
    }
  };
  // A page may re-render rows, or enable a button when its own request ends, while the daemon is away.
  const observer = new MutationObserver(() => {
    if (down) disableAll();
  });
  observer.observe(root, { subtree: true, childList: true, attributes: true, attributeFilter: ["disabled"] });
  ctx.onCleanup(() => observer.disconnect());

  function set(next) {
    if (next === down) return;
    down = next;
    fill(el, down ? h("p", { class: "banner banner-error", role: "alert" },
      h("strong", {}, "The daemon is not reachable. "),
      what || "This page shows what was last seen; its actions are disabled until the daemon is back.") : null);
    if (down) disableAll();
    else enableAll();
  }

  function detected(next) {
    if (next === down || !ctx.alive) return;
    set(next);
    if (next) onDown();
    else onBack();
  }

  ctx.every(HEALTH_POLL_MS, async () => {
    if (!pollHealth()) return;
    try {
      await api("/health", { signal: ctx.signal, cache: "no-store" });
      detected(false);
    } catch (exc) {
      if (!isAbort(exc)) detected(unreachable(exc));
    }
  });

  return {
    el,
    get down() {
      return down;
    },
    set,
    failed(exc) {
      if (exc instanceof ApiError) detected(exc.network); // any answer, an error too, means it is there
      return unreachable(exc);
    },
    ok() {
      detected(false);
    },
  };
}
