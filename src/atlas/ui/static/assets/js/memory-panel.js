// The workspace's memory (issue #17): each declared corpus with its entries, newest first, and a delete button
// that asks for confirmation inline (a native confirm() would block the page and cannot be styled or announced).
// Shared by the workspace page and the chat page: `renderMemoryPanel(container, workspaceId)`.

import { api, isAbort } from "./api.js";
import { announce, empty, errorState, fill, h, loading, timeAgo } from "./dom.js";
import { NEEDS_DAEMON } from "./online.js";

/** How many entries a corpus shows (the API answers newest first). */
const SHOWN = 100;

function sourceText(source) {
  if (!source || typeof source !== "object") return null;
  if (source.chatId) return `chat ${String(source.chatId).slice(0, 8)}`;
  if (source.sessionId) return `run ${String(source.sessionId).slice(0, 8)}`;
  return null;
}

function sourceLink(source) {
  const text = sourceText(source);
  if (!text) return null;
  if (source.sessionId && !source.chatId) {
    return h("a", { href: `/sessions/${encodeURIComponent(source.sessionId)}`, class: "small" }, text);
  }
  return h("span", { class: "muted small" }, text);
}

/**
 * Render the memory panel of `workspaceId` into `container`.
 * Returns `{refresh(), el}`: `refresh()` reloads the corpora and their entries (the chat page calls it after a turn).
 * `options.signal` (an AbortSignal) stops loading when the page goes away.
 */
export function renderMemoryPanel(container, workspaceId, options = {}) {
  const enc = encodeURIComponent(workspaceId);
  const signal = options.signal;
  const el = h("div", { class: "memory-panel", dataset: { workspace: workspaceId } });
  fill(container, el);

  const entryItem = (corpus, entry, reload) => {
    const actions = h("span", { class: "memory-actions" });
    const ask = () => {
      const yes = h("button", {
        type: "button", class: "danger memory-confirm", "aria-label": `Confirm deleting memory entry ${entry.id}`,
        dataset: NEEDS_DAEMON,
        onclick: async () => {
          yes.disabled = true;
          try {
            await api(`/api/workspaces/${enc}/memory/${encodeURIComponent(corpus)}/${encodeURIComponent(entry.id)}`,
              { method: "DELETE", signal });
            announce("Memory entry deleted");
          } catch (exc) {
            if (isAbort(exc)) return;
            fill(actions, h("span", { class: "block-error", role: "alert" },
              `Could not delete: ${exc.describe ? exc.describe() : exc.message}`));
            return;
          }
          reload();
        },
      }, "Delete");
      const no = h("button", { type: "button", class: "memory-cancel", onclick: idle }, "Cancel");
      fill(actions, h("span", { class: "small" }, "Delete this entry? "), yes, " ", no);
      yes.focus();
    };
    const idle = () => fill(actions, h("button", {
      type: "button", class: "memory-delete", "aria-label": `Delete memory entry ${entry.id}`, onclick: ask,
      dataset: NEEDS_DAEMON,
    }, "Delete"));
    idle();
    return h("li", { class: "memory-entry", dataset: { entry: entry.id } },
      h("p", { class: "memory-text" }, String(entry.text ?? "")),
      h("div", { class: "memory-meta small" }, timeAgo(entry.createdAt), " ", sourceLink(entry.source), " ", actions));
  };

  const corpusSection = (corpus) => {
    const headingId = `memory-${workspaceId}-${corpus.name}`;
    const list = h("div", {}, loading("Loading entries…"));
    const section = h("section", { class: "memory-corpus", "aria-labelledby": headingId, dataset: { corpus: corpus.name } },
      h("h3", { id: headingId }, String(corpus.name), " ",
        h("span", { class: "tag", title: "Type" }, String(corpus.type)), " ",
        h("span", { class: "muted small memory-count" }, `${corpus.count} ${corpus.count === 1 ? "entry" : "entries"}`)),
      list);
    const loadEntries = async () => {
      try {
        const answer = await api(`/api/workspaces/${enc}/memory/${encodeURIComponent(corpus.name)}?limit=${SHOWN}`,
          { signal, cache: "no-cache" });
        const entries = Array.isArray(answer?.entries) ? answer.entries : [];
        if (!entries.length) fill(list, empty("Nothing remembered yet."));
        else fill(list, h("ul", { class: "memory-entries", role: "list" }, entries.map((entry) => entryItem(corpus.name, entry, refresh))));
      } catch (exc) {
        if (isAbort(exc)) return;
        fill(list, errorState(`Could not load the entries: ${exc.describe ? exc.describe() : exc.message}`, loadEntries));
      }
    };
    return { section, loadEntries };
  };

  async function refresh() {
    let corpora;
    try {
      const answer = await api(`/api/workspaces/${enc}/memory`, { signal, cache: "no-cache" });
      corpora = Array.isArray(answer?.corpora) ? answer.corpora : [];
    } catch (exc) {
      if (isAbort(exc)) return;
      fill(el, errorState(`Could not load the memory: ${exc.describe ? exc.describe() : exc.message}`, refresh));
      return;
    }
    if (!corpora.length) {
      fill(el, empty("This workspace declares no memory (add a `memory.own` corpus to workspace.yml)."));
      return;
    }
    const views = corpora.map(corpusSection);
    fill(el, views.map((v) => v.section));
    await Promise.all(views.map((v) => v.loadEntries()));
  }

  fill(el, loading("Loading memory…"));
  refresh();
  return { el, refresh };
}
