// `/`: every workspace with its description, job and signal counts, and its latest run's status.

import { api, isAbort, qs } from "../api.js";
import { jobLabel, jobNames } from "../data.js";
import { badge, empty, errorState, fill, h, loading, timeAgo } from "../dom.js";

const POLL_MS = 2000;

function plural(n, word) {
  return `${n} ${word}${n === 1 ? "" : "s"}`;
}

function latestRun(run, names) {
  if (run === undefined) return h("p", { class: "latest muted" }, "Latest run: unavailable");
  if (run === null) return h("p", { class: "latest muted" }, "No runs yet");
  return h("p", { class: "latest" }, "Latest run: ", badge(run.status), " ",
    h("a", { href: `/sessions/${encodeURIComponent(run.sessionId)}` }, jobLabel(names, run.workspaceId, run.jobName)),
    " · ", timeAgo(run.startedAt));
}

function card(ws, run, names) {
  const headingId = `ws-${ws.id}`;
  return h("li", { class: "card ws-card", "aria-labelledby": headingId },
    h("div", { class: "card-head" },
      h("h2", { id: headingId }, h("a", { href: `/workspaces/${encodeURIComponent(ws.id)}` }, ws.name || ws.id)),
      badge(ws.status || "ready")),
    h("p", { class: ws.description ? "description" : "description muted" }, ws.description || "No description"),
    h("p", { class: "meta" }, plural(ws.jobCount ?? 0, "job"), " · ", plural(ws.signalCount ?? 0, "signal"),
      " · ", h("code", { title: ws.path || "" }, ws.id)),
    h("div", { class: "card-foot" }, latestRun(run, names),
      h("span", { class: "head-links small" },
        h("a", { href: `/workspaces/${encodeURIComponent(ws.id)}/chat` }, "Chat"),
        h("a", { href: `/workspaces/${encodeURIComponent(ws.id)}/sessions` }, "All runs"))));
}

export async function mount(root, ctx) {
  ctx.setTitle("Workspaces");
  const body = h("div", { class: "ws-body" }, loading("Loading workspaces…"));
  const banner = h("div", { class: "banner-slot" });
  fill(root,
    h("div", { class: "page-head" }, h("h1", {}, "Workspaces"), h("a", { href: "/sessions" }, "All runs")),
    banner, body);
  let lastKey = null;
  let loaded = false;

  const refresh = async () => {
    try {
      const workspaces = await api("/api/workspaces", { signal: ctx.signal, cache: "no-cache" });
      const latest = await Promise.all(workspaces.map((ws) =>
        api(`/api/sessions${qs({ workspaceId: ws.id, limit: 1 })}`, { signal: ctx.signal, cache: "no-cache" })
          .then((page) => page.sessions[0] ?? null)
          .catch((exc) => {
            if (isAbort(exc)) throw exc;
            return undefined;
          })));
      const names = await jobNames(latest.filter(Boolean).map((run) => run.workspaceId));
      banner.replaceChildren();
      const key = JSON.stringify([workspaces, latest, [...names]]);
      if (key === lastKey) return;
      lastKey = key;
      loaded = true;
      if (!workspaces.length) {
        fill(body, empty("No workspaces loaded yet.",
          h("p", { class: "muted" }, "Start the daemon with ", h("code", {}, "--workspace PATH"), " or run ",
            h("code", {}, "atlas workspace add PATH"), ".")));
        return;
      }
      fill(body, h("ul", { class: "cards", role: "list" },
        workspaces.map((ws, i) => card(ws, latest[i], names))));
    } catch (exc) {
      if (isAbort(exc)) throw exc;
      const text = `Could not load the workspaces: ${exc.describe ? exc.describe() : exc.message}`;
      if (loaded) fill(banner, h("p", { class: "banner banner-error", role: "alert" }, text));
      else fill(body, errorState(text, refresh));
    }
  };
  ctx.every(POLL_MS, refresh);
}
