// A chat turn's reply stream (issue #17): `POST /api/workspaces/<ws>/chat` answers with server-sent events, and
// `GET …/chat/<chatId>/stream` replays the turn in progress from its start. Both are read with fetch streaming
// (EventSource can neither POST nor send the bearer token) and folded into one assistant message here, apart from
// the page, so that a live reply and a reloaded one are built by the same rules as the stored message
// (`GET …/chat/<chatId>`: {text, toolCalls, sessions, status, error}).

import { readEventStream } from "./api.js";
import { foldToolChunk } from "./toolcalls.js";

const chatPath = (workspaceId) => `/api/workspaces/${encodeURIComponent(workspaceId)}/chat`;

/** A new, empty assistant message that the stream's events fill in. */
export function liveMessage() {
  return { role: "assistant", text: "", toolCalls: [], sessions: [], status: "streaming" };
}

/**
 * The message after one stream event (a new object; `message` is left alone). `chat` (the turn's ids) is the
 * page's business and leaves the message as it is; an unknown event is ignored, so a newer daemon's extra
 * events do not break an older page.
 */
export function applyChatEvent(message, event, data) {
  if (data === null || typeof data !== "object") return message;
  switch (event) {
    case "text-delta":
      return { ...message, text: message.text + (typeof data.delta === "string" ? data.delta : "") };
    case "tool-call":
    case "tool-result":
      return { ...message, toolCalls: foldToolChunk(message.toolCalls, { ...data, type: event }) };
    case "session": { // sent when the run starts and again when it ends: the later one updates its status
      const known = message.sessions.some((s) => s.sessionId === data.sessionId);
      const sessions = known ? message.sessions.map((s) => (s.sessionId === data.sessionId ? { ...s, ...data } : s))
        : [...message.sessions, { ...data }];
      return { ...message, sessions };
    }
    case "done":
      return { ...message, id: data.messageId ?? message.id, status: data.status || "completed",
        error: data.error ?? undefined };
    default:
      return message;
  }
}

/** Parse one SSE frame and hand `(event, data)` on; a frame whose data is not JSON is skipped. */
function frameHandler(onEvent) {
  return ({ event, data }) => {
    let parsed;
    try {
      parsed = JSON.parse(data);
    } catch {
      return;
    }
    onEvent(event, parsed);
  };
}

/**
 * Send a message: `POST …/chat` with `{message, chatId?}`; `onOpen` is called once the daemon took the turn (the
 * stream opened). Resolves when the stream closes (after `done`);
 * throws ApiError when the turn is refused before it starts (409 chat_busy, 503 chat_unavailable, 404 …).
 */
export function sendChatMessage(workspaceId, { message, chatId }, { signal, onOpen, onEvent }) {
  const body = chatId ? { message, chatId } : { message };
  return readEventStream(chatPath(workspaceId), { method: "POST", body, signal, onOpen,
    onFrame: frameHandler(onEvent) });
}

/** Follow the turn in progress of a chat from its start (or get the last reply's `done` when none is). */
export function resumeChatStream(workspaceId, chatId, { signal, onEvent }) {
  return readEventStream(`${chatPath(workspaceId)}/${encodeURIComponent(chatId)}/stream`,
    { signal, onFrame: frameHandler(onEvent) });
}
