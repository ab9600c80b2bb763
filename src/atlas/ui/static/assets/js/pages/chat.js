// `/workspaces/<ws>/chat[/<chatId>]`: talk to a workspace (issue #17). The chats of the workspace (new, rename,
// delete), the messages of the open one, a reply streaming in as it is written, with its tool calls folded inside
// it and links to the runs it started, and the workspace's memory panel.
//
// Keyboard first: Enter sends, Shift+Enter is a new line. The input is disabled while a reply streams: a chat
// has one turn at a time (the daemon answers 409 chat_busy otherwise). The open chat is in the address, so a
// reload during a reply finds it still `streaming` and follows it again from its start (`…/stream`).

import { api, ApiError, isAbort } from "../api.js";
import { applyChatEvent, liveMessage, resumeChatStream, sendChatMessage } from "../chat-stream.js";
import {
  announce, badge, empty, errorState, fill, formatDuration, h, json, loading, shortId, timeAgo,
} from "../dom.js";
import { renderMemoryPanel } from "../memory-panel.js";
import { NEEDS_DAEMON, watchDaemon } from "../online.js";
import { navigate } from "../router.js";

const LIST_POLL_MS = 3000;
const ENDED = new Set(["completed", "failed", "interrupted"]);

const describe = (exc) => (exc?.describe ? exc.describe() : exc?.message || String(exc));

/** A <details> whose open state survives re-renders of the live reply (`openKeys`). */
function folded(key, label, value, openKeys) {
  const details = h("details", { open: openKeys.has(key), dataset: { key } },
    h("summary", {}, label), h("pre", { class: "json" }, typeof value === "string" ? value : json(value)));
  details.addEventListener("toggle", () => {
    if (details.open) openKeys.add(key);
    else openKeys.delete(key);
  });
  return details;
}

function toolCallEl(call, index, openKeys) {
  const name = String(call.toolName ?? "?");
  const failed = call.error !== undefined && call.error !== null;
  const state = call.running ? "running" : failed ? "failed" : null;
  const key = `${call.toolCallId ?? index}`;
  let outcome;
  if (failed) outcome = h("p", { class: "toolcall-error" }, h("strong", {}, "Error: "), String(call.error));
  else if (call.running) outcome = h("p", { class: "toolcall-pending muted small" }, "Waiting for the result…");
  else if (call.result === undefined || call.result === null) outcome = h("p", { class: "muted small" }, "No result");
  else outcome = folded(`${key}:result`, "Result", call.result, openKeys);
  return h("li", { class: `toolcall${state ? ` toolcall-${state}` : ""}`, dataset: { tool: name } },
    h("div", { class: "toolcall-head" },
      h("code", { class: "toolcall-name" }, name),
      state ? badge(state) : null,
      h("span", { class: "toolcall-duration" }, typeof call.durationMs === "number"
        ? formatDuration(call.durationMs) : "")),
    call.args === undefined ? null : folded(`${key}:args`, "Arguments", call.args, openKeys),
    outcome);
}

function toolCallsEl(calls, openKeys) {
  if (!calls.length) return null;
  return h("details", { class: "toolcalls chat-tools", open: openKeys.has("tools") || undefined,
    ontoggle: (event) => (event.currentTarget.open ? openKeys.add("tools") : openKeys.delete("tools")) },
  h("summary", { class: "toolcalls-title" }, `Tool calls (${calls.length})`),
  h("ol", { class: "toolcall-list" }, calls.map((call, i) => toolCallEl(call, i, openKeys))));
}

/** Each run the reply started, linked to its run page (where a link leads back here). */
function runsEl(sessions) {
  if (!sessions.length) return null;
  return h("div", { class: "msg-runs" }, h("span", { class: "muted small" }, "Runs started: "),
    h("ul", { class: "pills" }, sessions.map((s) => h("li", {},
      h("a", { href: `/sessions/${encodeURIComponent(s.sessionId)}`, title: s.sessionId,
        "aria-label": `Run of ${s.jobName || "a job"}, ${s.status || "started"}` },
      h("code", {}, String(s.jobName || "run")), " ", shortId(s.sessionId)),
      " ", s.status ? badge(s.status) : null))));
}

/**
 * One message's element, updated in place as the live reply grows: only the parts that changed are rebuilt, so
 * an opened tool call stays open and the text node is not replaced on every delta.
 */
function messageView(message) {
  const openKeys = new Set();
  const role = message.role === "user" ? "user" : "assistant";
  const textEl = h("div", { class: "msg-text" });
  const toolsSlot = h("div", { class: "msg-tools" });
  const runsSlot = h("div", {});
  const statusSlot = h("div", {});
  const el = h("li", { class: `msg msg-${role}`, dataset: { role } },
    h("div", { class: "msg-head" }, h("span", { class: "msg-role" }, role === "user" ? "You" : "Assistant"),
      message.createdAt ? timeAgo(message.createdAt) : null),
    toolsSlot, textEl, runsSlot, statusSlot);
  const keys = {};
  const update = (msg) => {
    const status = msg.status || (role === "user" ? "" : "completed");
    el.dataset.status = status;
    if (msg.id) el.dataset.messageId = msg.id;
    if (textEl.textContent !== (msg.text || "")) textEl.textContent = msg.text || "";
    const toolsKey = JSON.stringify(msg.toolCalls || []);
    if (toolsKey !== keys.tools) {
      keys.tools = toolsKey;
      fill(toolsSlot, toolCallsEl(Array.isArray(msg.toolCalls) ? msg.toolCalls : [], openKeys));
    }
    const runsKey = JSON.stringify(msg.sessions || []);
    if (runsKey !== keys.runs) {
      keys.runs = runsKey;
      fill(runsSlot, runsEl(Array.isArray(msg.sessions) ? msg.sessions : []));
    }
    const statusKey = JSON.stringify([status, msg.error]);
    if (statusKey !== keys.status) {
      keys.status = statusKey;
      fill(statusSlot, status === "streaming"
        ? h("p", { class: "msg-streaming muted small", role: "status" }, "Writing…")
        : status === "failed" || status === "interrupted"
          ? h("p", { class: "msg-error" }, badge(status), " ", msg.error ? String(msg.error)
            : status === "interrupted" ? "The reply was cut short." : "")
          : null);
    }
  };
  update(message);
  return { el, update };
}

/** Ask first: a deleted chat cannot be brought back. Resolves true to go ahead. */
function confirmDelete(ctx, title) {
  return new Promise((resolve) => {
    const keep = h("button", { type: "button", onclick: () => dialog.close("keep") }, "Keep chat");
    const dialog = h("dialog", { class: "dialog confirm-dialog", role: "alertdialog",
      "aria-labelledby": "confirm-delete-title", "aria-describedby": "confirm-delete-text" },
    h("h2", { id: "confirm-delete-title" }, "Delete this chat?"),
    h("p", { id: "confirm-delete-text" }, `“${title}” and all its messages are deleted. This cannot be undone.`),
    h("div", { class: "dialog-actions" }, keep,
      h("button", { type: "button", class: "danger", onclick: () => dialog.close("delete") }, "Delete chat")));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "delete");
    });
    ctx.onCleanup(() => dialog.open && dialog.close());
    document.body.append(dialog);
    dialog.showModal();
    keep.focus(); // the safe choice has the focus
  });
}

/** A small dialog asking for a chat's new title. Resolves to the trimmed title, or null when dismissed. */
function askTitle(ctx, current) {
  return new Promise((resolve) => {
    const input = h("input", { id: "chat-title-input", type: "text", value: current, required: true,
      maxlength: "200", autocomplete: "off" });
    const dialog = h("dialog", { class: "dialog", "aria-labelledby": "rename-title" },
      h("form", {
        method: "dialog",
        onsubmit: (event) => {
          event.preventDefault();
          if (input.value.trim()) dialog.close("save");
        },
      },
      h("h2", { id: "rename-title" }, "Rename chat"),
      h("div", { class: "field" }, h("label", { for: "chat-title-input" }, "Title"), input),
      h("div", { class: "dialog-actions" },
        h("button", { type: "button", onclick: () => dialog.close("cancel") }, "Cancel"),
        h("button", { type: "submit", class: "primary" }, "Save title"))));
    dialog.addEventListener("close", () => {
      dialog.remove();
      resolve(dialog.returnValue === "save" ? input.value.trim() : null);
    });
    ctx.onCleanup(() => dialog.open && dialog.close());
    document.body.append(dialog);
    dialog.showModal();
    input.select();
  });
}

export async function mount(root, ctx) {
  const wsId = ctx.params.workspaceId;
  const enc = encodeURIComponent(wsId);
  const base = `/api/workspaces/${enc}/chat`;
  const pageUrl = (id) => `/workspaces/${enc}/chat${id ? `/${encodeURIComponent(id)}` : ""}`;
  let chatId = ctx.params.chatId || null;
  ctx.setTitle(`Chat · ${wsId}`);
  fill(root, loading("Loading the chat…"));

  let ws;
  try {
    ws = await api(`/api/workspaces/${enc}`, { signal: ctx.signal });
  } catch (exc) {
    if (isAbort(exc)) throw exc;
    if (exc instanceof ApiError && exc.status === 404) {
      fill(root, h("h1", {}, "Workspace not found"),
        h("p", {}, `No workspace with id “${wsId}” is loaded. `, h("a", { href: "/" }, "Back to the workspaces"),
          "."));
      return;
    }
    fill(root, h("h1", {}, "Chat"),
      errorState(`Could not load the workspace: ${describe(exc)}`, () => mount(root, ctx)));
    return;
  }
  const wsName = ws.name || ws.id || wsId;

  // --- the page's parts -----------------------------------------------------------------------------------
  const heading = h("h1", { id: "chat-heading" }, "New chat");
  const listSlot = h("div", { class: "chat-list-slot" }, loading("Loading chats…"));
  const messagesEl = h("ol", { class: "chat-messages", "aria-label": "Messages" });
  const messagesSlot = h("div", { class: "chat-messages-slot" });
  const input = h("textarea", { id: "chat-input", rows: "3", autocomplete: "off",
    "aria-describedby": "chat-input-help", placeholder: "Ask the workspace something…" });
  const sendButton = h("button", { type: "submit", class: "primary", dataset: NEEDS_DAEMON }, "Send");
  // With the daemon away Send, Rename and Delete are disabled; the chat list (polled) notices it coming back.
  const daemon = watchDaemon(ctx, root, { onBack: () => refreshList().catch(() => {}),
    what: "This page shows the chat as last seen; sending, renaming and deleting wait until the daemon is back." });
  const formError = h("div", { class: "chat-form-error" });
  const form = h("form", { class: "chat-form", onsubmit: (event) => {
    event.preventDefault();
    send();
  } },
  h("label", { for: "chat-input", class: "visually-hidden" }, "Message"),
  input,
  h("div", { class: "chat-form-foot" },
    h("span", { id: "chat-input-help", class: "muted small" }, "Enter sends · Shift+Enter for a new line"),
    sendButton),
  formError);
  const memorySlot = h("div", { class: "memory-slot" });
  const memorySection = h("section", { class: "chat-memory", "aria-labelledby": "memory-title" },
    h("h2", { id: "memory-title" }, "Memory"), memorySlot);

  fill(root,
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("ol", {},
      h("li", {}, h("a", { href: "/" }, "Workspaces")),
      h("li", {}, h("a", { href: `/workspaces/${enc}` }, wsName)),
      h("li", { "aria-current": "page" }, "Chat"))),
    daemon.el,
    h("div", { class: "chat-layout" },
      h("nav", { class: "chat-sidebar", "aria-labelledby": "chats-title" },
        h("div", { class: "section-head" }, h("h2", { id: "chats-title" }, "Chats"),
          h("a", { href: pageUrl(null), id: "new-chat" }, "New chat")),
        listSlot),
      h("section", { class: "chat-main", "aria-labelledby": "chat-heading" },
        heading, messagesSlot, form),
      memorySection));

  input.addEventListener("keydown", (event) => {
    if (event.key !== "Enter" || event.shiftKey || event.isComposing) return;
    event.preventDefault(); // Enter sends; Shift+Enter keeps the textarea's own new line
    send();
  });

  // The workspace's memory (shared with the workspace page); reloaded after each reply, which may have saved to it.
  const memory = renderMemoryPanel(memorySlot, wsId, { signal: ctx.signal });

  // --- state --------------------------------------------------------------------------------------------
  let busy = false;
  let chats = [];
  let listKey = null;
  const views = []; // the message views of the open chat, in order

  const setBusy = (value) => {
    busy = value;
    input.disabled = value;
    sendButton.disabled = value;
    form.setAttribute("aria-busy", value ? "true" : "false");
    if (!value && ctx.alive) input.focus();
  };

  const setHeading = (title) => {
    heading.textContent = title || "New chat";
    ctx.setTitle(`${title || "New chat"} · Chat · ${wsName}`);
  };

  const scrollToEnd = () => {
    const last = messagesEl.lastElementChild;
    if (last) last.scrollIntoView({ block: "end" });
  };

  const showMessages = () => {
    if (messagesSlot.firstChild !== messagesEl) fill(messagesSlot, messagesEl);
  };

  const addMessage = (message) => {
    showMessages();
    const view = messageView(message);
    messagesEl.append(view.el);
    views.push(view);
    return view;
  };

  const removeView = (view) => {
    view.el.remove();
    const index = views.indexOf(view);
    if (index !== -1) views.splice(index, 1);
  };

  // --- the chat list ------------------------------------------------------------------------------------
  const renderList = () => {
    if (!chats.length) {
      fill(listSlot, h("p", { class: "muted small" }, "No chats yet."));
      return;
    }
    fill(listSlot, h("ul", { class: "chat-list", role: "list" }, chats.map((chat) => {
      const title = chat.title || "Untitled chat";
      const current = chat.chatId === chatId;
      return h("li", { class: "chat-item", dataset: { chatId: chat.chatId } },
        h("a", { href: pageUrl(chat.chatId), class: "chat-link", "aria-current": current ? "page" : null },
          h("span", { class: "chat-title" }, title),
          h("span", { class: "muted small" }, timeAgo(chat.updatedAt))),
        h("div", { class: "chat-actions" },
          h("button", { type: "button", class: "link-button small", "aria-label": `Rename chat “${title}”`, dataset: NEEDS_DAEMON,
            onclick: () => rename(chat) }, "Rename"),
          h("button", { type: "button", class: "link-button small danger-link", dataset: NEEDS_DAEMON,
            "aria-label": `Delete chat “${title}”`,
            onclick: () => remove(chat) }, "Delete")));
    })));
  };

  const refreshList = async () => {
    try {
      const body = await api(base, { signal: ctx.signal, cache: "no-cache" });
      daemon.ok();
      chats = Array.isArray(body?.chats) ? body.chats : [];
      const key = JSON.stringify([chats, chatId]);
      if (key === listKey) return;
      listKey = key;
      renderList();
    } catch (exc) {
      if (isAbort(exc)) throw exc;
      daemon.failed(exc);
      if (listKey === null) fill(listSlot, errorState(`Could not list the chats: ${describe(exc)}`, refreshList));
    }
  };

  async function rename(chat) {
    const title = await askTitle(ctx, chat.title || "");
    if (title === null || !ctx.alive) return;
    try {
      const summary = await api(`${base}/${encodeURIComponent(chat.chatId)}/title`,
        { method: "PATCH", body: { title }, signal: ctx.signal });
      if (chat.chatId === chatId) setHeading(summary?.title ?? title);
      announce("Chat renamed");
    } catch (exc) {
      if (isAbort(exc)) return;
      fill(formError, h("p", { class: "banner banner-error", role: "alert" },
        `Could not rename the chat: ${describe(exc)}`));
    }
    await refreshList().catch(() => {});
  }

  async function remove(chat) {
    if (!(await confirmDelete(ctx, chat.title || "Untitled chat")) || !ctx.alive) return;
    try {
      await api(`${base}/${encodeURIComponent(chat.chatId)}`, { method: "DELETE", signal: ctx.signal });
    } catch (exc) {
      if (isAbort(exc)) return;
      if (!(exc instanceof ApiError && exc.status === 404)) {
        fill(formError, h("p", { class: "banner banner-error", role: "alert" },
          `Could not delete the chat: ${describe(exc)}`));
        return;
      }
    }
    announce("Chat deleted");
    if (chat.chatId === chatId) {
      navigate(pageUrl(null), { replace: true });
      return;
    }
    await refreshList().catch(() => {});
  }

  // --- a reply --------------------------------------------------------------------------------------------

  /** The `chat` event: a new chat gets its id (the address follows it, so a reload finds it) and its title. */
  const onChatStarted = (data) => {
    if (!chatId && data.chatId) {
      chatId = data.chatId;
      history.replaceState(null, "", pageUrl(chatId));
    }
    if (data.title) setHeading(data.title);
    refreshList().catch(() => {});
  };

  /** Follow a reply stream into `view`; resolves to the folded message (its status stays "streaming" when the
   * stream closed before `done`). */
  const follow = async (view, open) => {
    let message = liveMessage();
    await open((event, data) => {
      if (event === "chat") {
        onChatStarted(data);
        return;
      }
      message = applyChatEvent(message, event, data);
      view.update(message);
      if (event === "text-delta" || event === "tool-call") scrollToEnd();
    });
    return message;
  };

  /** Follow the turn in progress again, from its start. Resolves to its final message, or null when there was
   * none (the stream only repeated an earlier reply's `done`). */
  const resume = async () => {
    const view = addMessage(liveMessage());
    const message = await follow(view, (onEvent) => resumeChatStream(wsId, chatId, { signal: ctx.signal, onEvent }));
    const known = message.id && views.some((v) => v !== view && v.el.dataset.messageId === message.id);
    if (known || (!message.text && !message.toolCalls.length && message.status !== "streaming"
      && message.id === undefined)) {
      removeView(view);
      return null;
    }
    return { view, message };
  };

  const finishReply = (view, message) => {
    if (message.status === "streaming") {
      view.update({ ...message, status: "interrupted",
        error: "The reply stream closed early: reload to see the rest." });
    }
    announce(message.status === "completed" ? "Reply complete" : `Reply ${message.status}`);
    refreshList().catch(() => {});
    memory.refresh();
  };

  async function send() {
    const text = input.value;
    if (busy || !text.trim()) return;
    fill(formError);
    setBusy(true);
    const userView = addMessage({ role: "user", text, createdAt: new Date().toISOString() });
    const view = addMessage(liveMessage());
    input.value = "";
    scrollToEnd();
    let message = null;
    let started = false; // the stream opened: the daemon took the turn
    try {
      message = await follow(view, (onEvent) => sendChatMessage(wsId, { message: text, chatId },
        { signal: ctx.signal, onOpen: () => { started = true; }, onEvent }));
    } catch (exc) {
      if (isAbort(exc)) return;
      if (!started) {
        // Refused before it began (busy, no chat model, …): nothing was sent, so the text goes back in the box.
        removeView(view);
        removeView(userView);
        input.value = text;
        fill(formError, h("p", { class: "banner banner-error", role: "alert" }, describe(exc),
          exc.code === "chat_unavailable"
            ? h("span", { class: "muted" }, " — the daemon has no chat model configured.")
            : null));
        setBusy(false);
        return;
      }
    }
    try {
      if ((!message || message.status === "streaming") && chatId && ctx.alive) {
        // The stream broke mid-reply: the turn goes on in the daemon, so follow it again from its start.
        removeView(view);
        const resumed = await resume();
        if (resumed) finishReply(resumed.view, resumed.message);
      } else {
        finishReply(view, message || liveMessage());
      }
    } catch (exc) {
      if (isAbort(exc)) return;
      fill(formError, h("p", { class: "banner banner-error", role: "alert" },
        `The reply stream was lost: ${describe(exc)}. Reload the page to see the reply.`));
    } finally {
      if (ctx.alive) setBusy(false);
    }
  }

  // --- open the chat in the address -------------------------------------------------------------------------
  ctx.every(LIST_POLL_MS, refreshList); // other tabs and the CLI add chats too

  if (!chatId) {
    setHeading(null);
    fill(messagesSlot, empty("Start a new chat: ask about the workspace, or ask it to run one of its jobs."));
    input.focus();
    return;
  }
  fill(messagesSlot, loading("Loading messages…"));
  let chat;
  try {
    chat = await api(`${base}/${encodeURIComponent(chatId)}`, { signal: ctx.signal, cache: "no-cache" });
  } catch (exc) {
    if (isAbort(exc)) throw exc;
    if (exc instanceof ApiError && exc.status === 404) {
      setHeading("Chat not found");
      form.hidden = true;
      fill(messagesSlot, empty("This chat does not exist (it may have been deleted).",
        h("p", {}, h("a", { href: pageUrl(null) }, "Start a new chat"))));
      return;
    }
    fill(messagesSlot, errorState(`Could not load the chat: ${describe(exc)}`, () => navigate(pageUrl(chatId),
      { replace: true })));
    return;
  }
  setHeading(chat.title);
  const messages = Array.isArray(chat.messages) ? chat.messages : [];
  showMessages();
  for (const message of messages) addMessage(message);
  if (!messages.length) fill(messagesSlot, empty("No messages yet."));
  scrollToEnd();

  // A reply still being written (the page was reloaded during it): drop its partial copy and follow it live.
  const last = messages[messages.length - 1];
  if (last && (last.role === "user" || !ENDED.has(last.status || "completed"))) {
    setBusy(true);
    try {
      if (last.role === "assistant") removeView(views[views.length - 1]);
      const resumed = await resume();
      if (resumed) finishReply(resumed.view, resumed.message);
    } catch (exc) {
      if (isAbort(exc)) return;
      fill(formError, h("p", { class: "banner banner-error", role: "alert" },
        `Could not follow the reply: ${describe(exc)}`));
    } finally {
      if (ctx.alive) setBusy(false);
    }
  } else {
    input.focus();
  }
}
