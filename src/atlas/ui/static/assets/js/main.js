// The atlas web UI: a tiny client-side router over native ES modules (no build step; spec §12).
//
// Routes: /                          workspaces
//         /workspaces/<ws>           one workspace: jobs (Run), signals, recent runs
//         /workspaces/<ws>/sessions  that workspace's runs
//         /workspaces/<ws>/chat[/<chatId>]  talk to the workspace (issue #17)
//         /sessions                  every run
//         /sessions/<sid>            run detail (live)
//         /schedules                 cron schedules: pause, resume, run now
// Each page gets a context whose timers, pollers and fetches are all cancelled when the user navigates away.

import { isAbort, onUnauthorized, setToken } from "./api.js";
import { fill, h, tick } from "./dom.js";
import * as chatPage from "./pages/chat.js";
import * as runPage from "./pages/run.js";
import * as runsPage from "./pages/runs.js";
import * as schedulesPage from "./pages/schedules.js";
import * as workspacePage from "./pages/workspace.js";
import * as workspacesPage from "./pages/workspaces.js";
import { navigate, setRenderer } from "./router.js";

const ROUTES = [
  [/^\/$/, workspacesPage, () => ({})],
  [/^\/workspaces\/([^/]+)$/, workspacePage, (m) => ({ workspaceId: decodeURIComponent(m[1]) })],
  [/^\/workspaces\/([^/]+)\/sessions$/, runsPage, (m) => ({ workspaceId: decodeURIComponent(m[1]) })],
  [/^\/workspaces\/([^/]+)\/chat(?:\/([^/]+))?$/, chatPage,
    (m) => ({ workspaceId: decodeURIComponent(m[1]), chatId: m[2] ? decodeURIComponent(m[2]) : null })],
  [/^\/sessions$/, runsPage, () => ({ workspaceId: null })],
  [/^\/sessions\/([^/]+)$/, runPage, (m) => ({ sessionId: decodeURIComponent(m[1]) })],
  [/^\/schedules$/, schedulesPage, () => ({})],
];

const main = document.getElementById("main");
let current = null; // the mounted page's context

/** Per-page lifetime: an AbortSignal for fetches, cleanups, and visibility-aware pollers. */
class PageContext {
  constructor(params, query) {
    this.params = params;
    this.query = query;
    this.controller = new AbortController();
    this.signal = this.controller.signal;
    this.cleanups = [];
  }

  get alive() {
    return !this.signal.aborted;
  }

  onCleanup(fn) {
    this.cleanups.push(fn);
  }

  sleep(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.onCleanup(() => clearTimeout(timer));
    });
  }

  /**
   * Run `fn` now, then every `ms` after each run finishes, but only while the tab is visible (a hidden tab
   * pauses, and showing it again runs at once). Returns a function that stops it.
   */
  every(ms, fn) {
    let timer = null;
    let running = false;
    let stopped = false;
    const run = async () => {
      timer = null;
      if (stopped || document.hidden) return;
      running = true;
      try {
        await fn();
      } catch (exc) {
        if (!isAbort(exc)) console.error(exc);
      }
      running = false;
      if (!stopped && !document.hidden) timer = setTimeout(run, ms);
    };
    const onVisibility = () => {
      if (!document.hidden && timer === null && !running && !stopped) run();
    };
    const stop = () => {
      stopped = true;
      clearTimeout(timer);
      document.removeEventListener("visibilitychange", onVisibility);
    };
    document.addEventListener("visibilitychange", onVisibility);
    this.onCleanup(stop);
    run();
    return stop;
  }

  setTitle(text) {
    document.title = text ? `${text} · atlas` : "atlas";
  }

  destroy() {
    this.controller.abort();
    for (const fn of this.cleanups.splice(0)) {
      try {
        fn();
      } catch (exc) {
        console.error(exc);
      }
    }
  }
}

function notFound(root) {
  fill(root,
    h("h1", { tabindex: "-1" }, "Page not found"),
    h("p", {}, "There is nothing at this address. ", h("a", { href: "/" }, "Go to the workspaces"), "."),
  );
}

function route({ focus = true } = {}) {
  const path = window.location.pathname.replace(/\/+$/, "") || "/";
  const query = new URLSearchParams(window.location.search);
  if (current) current.destroy();
  current = null;
  for (const dialog of document.querySelectorAll("dialog.run-dialog[open]")) dialog.close();
  main.replaceChildren();
  main.setAttribute("aria-busy", "true");
  for (const [pattern, page, paramsOf] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    const ctx = new PageContext(paramsOf(match), query);
    current = ctx;
    Promise.resolve(page.mount(main, ctx))
      .catch((exc) => {
        if (!isAbort(exc)) console.error(exc);
      })
      .finally(() => {
        if (current === ctx) main.removeAttribute("aria-busy");
      });
    highlightNav(path);
    if (focus) focusHeading();
    return;
  }
  document.title = "Not found · atlas";
  notFound(main);
  main.removeAttribute("aria-busy");
  highlightNav(path);
  if (focus) focusHeading();
}

function highlightNav(path) {
  for (const link of document.querySelectorAll(".topbar nav a:not(.brand)")) {
    const href = link.getAttribute("href");
    const active = href === "/" ? path === "/" || path.startsWith("/workspaces") : path.startsWith(href);
    if (active) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

/** Move focus to the new page's heading once it is rendered, so screen readers announce the page. */
function focusHeading() {
  requestAnimationFrame(() => {
    const heading = main.querySelector("h1");
    if (heading) {
      heading.setAttribute("tabindex", "-1");
      heading.focus({ preventScroll: true });
    } else {
      main.focus({ preventScroll: true });
    }
  });
}

document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey
      || event.altKey) return;
  const link = event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download")) return;
  const url = new URL(link.href, window.location.href);
  if (url.origin !== window.location.origin || /^\/(api|assets|health|openapi\.json)(\/|$)/.test(url.pathname)) return;
  if (url.pathname === window.location.pathname && url.search === window.location.search && url.hash) return;
  event.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", () => route());

// --- bearer token (spec §10.2): asked once, kept in this tab's sessionStorage ---------------------------------

let tokenDialog = null;

function askForToken() {
  if (tokenDialog?.open) return;
  const input = h("input", { id: "token-input", type: "password", autocomplete: "off", required: true,
    "aria-describedby": "token-help" });
  tokenDialog = h("dialog", { class: "dialog", "aria-labelledby": "token-title" },
    h("form", {
      method: "dialog",
      onsubmit: (event) => {
        event.preventDefault();
        if (!input.value.trim()) return;
        setToken(input.value.trim());
        tokenDialog.close();
        tokenDialog.remove();
        route();
      },
    },
    h("h2", { id: "token-title" }, "API token required"),
    h("p", { id: "token-help" }, "This daemon requires its ATLAS_TOKEN. It is kept in this tab only."),
    h("div", { class: "field" }, h("label", { for: "token-input" }, "Token"), input),
    h("div", { class: "dialog-actions" }, h("button", { type: "submit", class: "primary" }, "Save token"))));
  document.body.append(tokenDialog);
  tokenDialog.showModal();
}

onUnauthorized(askForToken);
setRenderer(route);

setInterval(() => tick(main), 1000);
route({ focus: false });
