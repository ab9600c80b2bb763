"""One chat turn: the model, the prompt, the history, the tool loop, and the reply recorded as it streams.

The model is the workspace's `chat:` block (`provider`, `model`) else the daemon's `ATLAS_CHAT_PROVIDER` /
`ATLAS_CHAT_MODEL`; the server and key are resolved exactly as for `llm` agents (`atlas.llm.providers`), so
`OPENAI_API_KEY` + `OPENAI_BASE_URL` (or `ANTHROPIC_…`, or `ATLAS_LLM_BASE_URL`) work the same. Without a model
the chat answers `chat_unavailable` before anything is written.

The system prompt is the built-in one, then the workspace's `chat.prompt`, then the workspace's long-term memory
(`narrative_prompt` of `atlas.memory`). The history is the chat's earlier messages as user / assistant turns (their
text; tool calls are not replayed: their results were already put into words by the replies).

Recording: every text delta, tool call, tool result and session link goes to a `Recorder`, which appends them to
the chat's log in order with one write in flight at a time; deltas that arrive meanwhile are merged into one
record, so a fast model costs a few writes per second rather than one per token. Everything recorded passes
through the `Templater`'s redaction first (the API key is registered as a secret before the first request). The
streamed text is redacted as one text, not piece by piece: the recorder holds back the last characters that could
be the beginning of a secret until more text, another record or the end shows whether they are, so a secret a
model streams in two pieces is redacted too.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from atlas.agents.base import StepError
from atlas.bus.chatlog import ChatLog
from atlas.errors import AtlasError
from atlas.llm.anthropic_wire import AnthropicMessages
from atlas.llm.conversation import AssistantTurn, Message, TextSink, TurnRequest, UserMessage
from atlas.llm.loop import run_tool_loop
from atlas.llm.openai_wire import OpenAIChat
from atlas.llm.providers import PROVIDERS, Endpoint, resolve_endpoint
from atlas.llm.retry import call_with_retries
from atlas.runtime.workspaces import Workspace
from atlas.templating import StreamRedactor

__all__ = ["ChatModel", "ChatSettings", "Recorder", "history", "resolve_model", "run_model", "system_prompt"]

log = logging.getLogger("atlas.chat")

#: Model turns per chat turn (tool rounds included) before the reply fails `max_steps_exceeded`.
MAX_STEPS = 16
#: One model turn, its retries included.
TURN_TIMEOUT_S = 120.0
MAX_RETRIES = 3

BUILTIN_PROMPT = """You are the assistant of the atlas workspace "{name}".{description}
The workspace's jobs are your tools: calling one runs that job, and its result is the run's output (or, when the \
run takes longer than the wait, its session id and status: then say that it is still running and give the \
session id). When a tool answers with an error, read it: you may correct the arguments and call again.
Answer concisely, in the language of the user."""


@dataclass(frozen=True)
class ChatSettings:
    """The daemon's chat settings (`ATLAS_CHAT_*`) and the fallback base URL of OpenAI-compatible providers."""

    provider: str | None
    model: str | None
    llm_base_url: str | None
    job_wait_s: float


@dataclass(frozen=True)
class ChatModel:
    model: str
    endpoint: Endpoint
    prompt: str | None
    tools: tuple[str, ...]


def resolve_model(ws: Workspace, settings: ChatSettings, environ: Mapping[str, str]) -> ChatModel:
    """The workspace's chat model and endpoint, or `chat_unavailable` saying what to set."""
    block = ws.config.chat
    if block is not None and not block.enabled:
        raise AtlasError("chat_unavailable", f"Chat is disabled in workspace '{ws.id}' (chat.enabled: false)")
    provider = (block.provider if block is not None and block.provider else None) or settings.provider
    model = (block.model if block is not None and block.model else None) or settings.model
    if not model:
        raise AtlasError("chat_unavailable", "No chat model is configured: set ATLAS_CHAT_MODEL (and "
                         "ATLAS_CHAT_PROVIDER) on the daemon, or `chat.model` in the workspace")
    if provider is not None and provider not in PROVIDERS:
        raise AtlasError("chat_unavailable", f"Unknown chat provider {provider!r} (ATLAS_CHAT_PROVIDER): use one of "
                         + ", ".join(sorted(PROVIDERS)))
    try:
        endpoint = resolve_endpoint(provider, None, None, default_base_url=settings.llm_base_url, environ=environ)
    except StepError as exc:
        raise AtlasError("chat_unavailable", f"The chat model cannot be reached: {exc.message}") from None
    return ChatModel(model, endpoint, block.prompt if block is not None else None,
                     tuple(block.tools) if block is not None else ())


def system_prompt(ws: Workspace, workspace_prompt: str | None, narrative: str) -> str:
    info = ws.config.workspace
    description = f" {info.description}" if getattr(info, "description", None) else ""
    parts = [BUILTIN_PROMPT.format(name=getattr(info, "name", None) or ws.id, description=description)]
    if workspace_prompt:
        parts.append(workspace_prompt)
    if narrative:
        parts.append(narrative)
    return "\n\n".join(parts)


def history(msgs: list[dict[str, Any]], turn_id: str) -> list[Message]:
    """The earlier messages as conversation turns; an earlier attempt of this same turn (a retry) is left out."""
    out: list[Message] = []
    for msg in msgs:
        if msg.get("turnId") == turn_id or not msg.get("text"):
            continue
        out.append(UserMessage(msg["text"]) if msg["role"] == "user" else AssistantTurn(text=msg["text"]))
    return out


class Recorder:
    """Appends a reply's records in order, one write in flight, merging the text deltas that wait meanwhile."""

    def __init__(self, chat_log: ChatLog, workspace_id: str, chat_id: str, message_id: str,
                 redact: Callable[[Any], Any], text: StreamRedactor | None = None) -> None:
        """`text`: the streamed text's redactor (`redact` is applied to every record as it is written)."""
        self._log = chat_log
        self._ws = workspace_id
        self._chat = chat_id
        self.message_id = message_id
        self._redact = redact
        self._text = text
        self._queue: list[dict[str, Any]] = []
        self._wake = asyncio.Event()
        self._closed = False
        self._task = asyncio.create_task(self._write(), name=f"chat-recorder-{chat_id}")

    def put(self, record: dict[str, Any]) -> None:
        if self._closed:
            return
        if record["type"] == "text-delta":
            self._put_text(record["delta"])
            return
        self._release_held()
        self._queue.append({**record, "messageId": self.message_id})
        self._wake.set()

    def _put_text(self, delta: str) -> None:
        released = self._text.feed(delta) if self._text is not None else delta
        if released:
            self._queue_text(released)

    def _release_held(self) -> None:
        """Another record, or the end: no secret starts in the held text any more."""
        held = self._text.flush() if self._text is not None else ""
        if held:
            self._queue_text(held)

    def _queue_text(self, text: str) -> None:
        last = self._queue[-1] if self._queue else None
        if last is not None and last["type"] == "text-delta":
            last["delta"] += text
        else:
            self._queue.append({"type": "text-delta", "delta": text, "messageId": self.message_id})
        self._wake.set()

    async def close(self) -> None:
        """Write what is left, then stop."""
        self._release_held()
        self._closed = True
        self._wake.set()
        await self._task

    async def _write(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._queue:
                record = self._queue.pop(0)
                try:
                    await self._log.append(self._ws, self._chat, self._redact(record))
                except Exception as exc:  # the bus is gone for longer than a write rides through: keep the turn going
                    log.warning("chat %s: a record of the reply could not be written: %s", self._chat, exc)
            if self._closed:
                return


def _client(endpoint: Endpoint) -> OpenAIChat | AnthropicMessages:
    if endpoint.wire == "anthropic":
        return AnthropicMessages(endpoint, TURN_TIMEOUT_S)
    return OpenAIChat(endpoint, TURN_TIMEOUT_S)


async def run_model(model: ChatModel, system: str, messages: list[Message], tools: Any, recorder: Recorder) -> str:
    """The tool loop of one turn; every live chunk (text, tool call, tool result) is recorded. Raises StepError."""
    client = _client(model.endpoint)
    label = f"chat {model.endpoint.provider} {model.model}"

    async def turn(req: TurnRequest, on_text: TextSink) -> AssistantTurn:
        return await call_with_retries(client, req, on_text, max_retries=MAX_RETRIES, timeout=TURN_TIMEOUT_S,
                                       label=label)

    def on_text(text: str) -> None:
        recorder.put({"type": "text-delta", "delta": text})

    def emit(chunk: dict[str, Any]) -> None:
        if chunk.get("type") in ("tool-call", "tool-result"):
            recorder.put({k: v for k, v in chunk.items() if k != "server"})

    request = TurnRequest(model=model.model, system=system, messages=messages, tools=list(tools.specs) if tools
                          else [], tool_choice="auto", temperature=None, max_tokens=None, json_output=False,
                          provider_options={})
    try:
        result = await run_tool_loop(turn, request, tools if tools and tools.specs else None, max_steps=MAX_STEPS,
                                     max_total_tokens=None, emit=emit, on_text=on_text)
    finally:
        with contextlib.suppress(Exception):
            await client.aclose()
    return result.text
