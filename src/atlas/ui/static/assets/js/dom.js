// DOM and formatting helpers. Everything user- or server-provided goes in as text nodes, never as HTML.

/**
 * h("a", {href: "/", class: "x", onclick: fn, "aria-label": "…"}, "text", child, [more]) → Element.
 * `null`, `undefined` and `false` children are skipped; boolean attributes are set when true.
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "class") el.className = value;
    else if (key === "dataset") Object.assign(el.dataset, value);
    else if (key === "value" || key === "checked" || key === "disabled" || key === "open") el[key] = value;
    else el.setAttribute(key, value === true ? "" : String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === undefined || child === null || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

export function clear(el) {
  el.replaceChildren();
  return el;
}

/** Replace the children of `el`; like h(), skips null/false children and flattens arrays. */
export function fill(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

// --- ids, times, durations -----------------------------------------------------------------------------------

export const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

export const shortId = (id) => (typeof id === "string" ? id.slice(0, 8) : "");

export function newIdempotencyKey() {
  if (crypto.randomUUID) return crypto.randomUUID();
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

/** "just now", "12 s ago", "5 min ago", "3 h ago", "2 d ago", or "in 4 h" for future times. */
export function relativeTime(iso, now = Date.now()) {
  const t = Date.parse(iso);
  if (Number.isNaN(t)) return "";
  const delta = Math.round((now - t) / 1000);
  const future = delta < 0;
  const s = Math.abs(delta);
  let text;
  if (s < 5) return future ? "in a moment" : "just now";
  if (s < 60) text = `${s} s`;
  else if (s < 3600) text = `${Math.floor(s / 60)} min`;
  else if (s < 86400) text = `${Math.floor(s / 3600)} h`;
  else text = `${Math.floor(s / 86400)} d`;
  return future ? `in ${text}` : `${text} ago`;
}

export function absoluteTime(iso) {
  const t = Date.parse(iso);
  return Number.isNaN(t) ? "" : new Date(t).toLocaleString();
}

/** 850 ms, 1.2 s, 2 min 5 s, 1 h 3 min. */
export function formatDuration(ms) {
  if (typeof ms !== "number" || !Number.isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s < 10 ? s.toFixed(1) : Math.round(s)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${Math.floor(s % 60)} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}

/** A <time> that the page ticker keeps relative ("5 s ago"), with the absolute time as tooltip. */
export function timeAgo(iso) {
  if (!iso) return h("span", { class: "muted" }, "—");
  return h("time", { datetime: iso, title: absoluteTime(iso), dataset: { rel: iso } }, relativeTime(iso));
}

/** A duration; while `running`, the ticker keeps it growing from `since`. */
export function durationEl(ms, since, running) {
  if (running && since) {
    return h("span", { class: "duration", dataset: { since } }, formatDuration(Date.now() - Date.parse(since)));
  }
  return h("span", { class: "duration" }, typeof ms === "number" ? formatDuration(ms) : "—");
}

/** Refresh every relative time and live duration under `root` (called once a second). */
export function tick(root = document) {
  const now = Date.now();
  for (const el of root.querySelectorAll("[data-rel]")) {
    const text = relativeTime(el.dataset.rel, now);
    if (el.textContent !== text) el.textContent = text;
  }
  for (const el of root.querySelectorAll("[data-since]")) {
    const text = formatDuration(now - Date.parse(el.dataset.since));
    if (text && el.textContent !== text) el.textContent = text;
  }
}

// --- badges and small widgets ------------------------------------------------------------------------------

const KNOWN_STATUSES = new Set(["queued", "active", "completed", "failed", "skipped", "cancelled", "interrupted",
  "pending", "running", "ready", "invalid", "missing", "paused", "unknown", "error"]);

export function badge(status, attrs = {}) {
  const known = KNOWN_STATUSES.has(status) ? status : "unknown";
  return h("span", { ...attrs, class: `badge badge-${known}${attrs.class ? ` ${attrs.class}` : ""}` },
    status || "unknown");
}

export function triggerTag(trigger) {
  if (!trigger) return null;
  return h("span", { class: `tag tag-${trigger}`, title: `Trigger: ${trigger}` }, trigger);
}

/** Pretty JSON for <pre>. */
export function json(value) {
  try {
    return JSON.stringify(value, null, 2);
  } catch {
    return String(value);
  }
}

let announcer = null;

/** Say something to screen readers (polite live region). */
export function announce(text) {
  announcer ??= document.getElementById("announcer");
  if (!announcer) return;
  announcer.textContent = "";
  setTimeout(() => {
    announcer.textContent = text;
  }, 30);
}

async function writeClipboard(text) {
  if (navigator.clipboard && window.isSecureContext) {
    await navigator.clipboard.writeText(text);
    return;
  }
  const area = h("textarea", { class: "visually-hidden", readonly: true }, text);
  document.body.append(area);
  area.select();
  const ok = document.execCommand("copy");
  area.remove();
  if (!ok) throw new Error("copy failed");
}

/** A button copying `text`, with an accessible name and a short "Copied" confirmation. */
export function copyButton(text, label, visible = "Copy") {
  const button = h("button", { type: "button", class: "copy", "aria-label": label, title: label }, visible);
  button.addEventListener("click", async () => {
    try {
      await writeClipboard(text);
      button.textContent = "Copied";
      announce("Copied to the clipboard");
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => {
      button.textContent = visible;
    }, 1500);
  });
  return button;
}

/** A short id in <code> with the full id as tooltip, followed by its copy button. */
export function idWithCopy(id, label) {
  return h("span", { class: "id-copy" }, h("code", { title: id }, shortId(id)), copyButton(id, label));
}

/** Status message blocks: loading, empty and error states. */
export function loading(text = "Loading…") {
  return h("p", { class: "state state-loading", role: "status" }, text);
}

export function empty(text, ...extra) {
  return h("div", { class: "state state-empty" }, h("p", {}, text), ...extra);
}

export function errorState(text, retry) {
  return h("div", { class: "state state-error", role: "alert" }, h("p", {}, text),
    retry ? h("button", { type: "button", onclick: retry }, "Retry") : null);
}

/** "Deploy a service" from a job listing entry, else the prettified id (spec §2.3). */
export function prettifyId(id) {
  const text = String(id || "").replace(/[-_]+/g, " ").trim();
  return text ? text[0].toUpperCase() + text.slice(1) : "";
}
