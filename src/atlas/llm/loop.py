"""The tool loop (issue #14, item 3): model → tool calls → results → model, until a final answer.

Pure orchestration: the model call and the tools come in as callables, so the loop knows neither HTTP nor MCP.
Rules:
- `max_steps` counts model turns. A turn that still asks for tools when the budget is spent fails the step with
  `max_steps_exceeded` (its calls are not run: nothing would read their results).
- The calls of one turn run concurrently; each is answered, in the model's order.
- A failing tool (an MCP error, a server that died, bad arguments, a timeout) is an error *result* for the model,
  never a step failure: the model can correct itself, as with the reference's AI SDK.
- `tool_choice: required` applies to the first turn only; later turns are `auto`, or the model could never give
  its final answer.
- Usage is summed over the turns; past `max_total_tokens` the step fails `budget_exceeded`.
- Each call is recorded as the reference's ToolCallSummary `{toolName, args, result, durationMs}` plus
  `toolCallId`, `error` when it failed and `server` (the MCP server id). Results (and arguments) are cut for the
  record at `RECORD_RESULT_CHARS` and results for the model at `MODEL_RESULT_CHARS`, with a marker saying how much
  was cut; a structured value too big to record is recorded as its cut JSON text.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any, Protocol

from atlas.agents.base import StepError
from atlas.llm.conversation import (
    AssistantTurn,
    Message,
    TextSink,
    ToolCallRequest,
    ToolResultMessage,
    TurnRequest,
    Usage,
)

__all__ = [
    "CALL_ID",
    "CHUNK_RESULT_CHARS",
    "MODEL_RESULT_CHARS",
    "RECORD_RESULT_CHARS",
    "LoopResult",
    "ToolOutcome",
    "ToolRunner",
    "cut",
    "run_tool_loop",
]

#: A tool result is recorded (on `step:complete`) up to this many characters.
RECORD_RESULT_CHARS = 16 * 1024
#: A tool result is sent to the model up to this many characters.
MODEL_RESULT_CHARS = 100_000
#: A live `tool-result` chunk carries at most this many characters of the result (chunks stay below 64 KiB).
CHUNK_RESULT_CHARS = 8 * 1024


#: The id of the call a `ToolRunner.call` answers, set by the loop around each call (each runs in its own task):
#: a runner that needs it (the chat's job tools key their Idempotency-Key on it) reads it without the protocol
#: changing for every other runner.
CALL_ID: ContextVar[str | None] = ContextVar("atlas_tool_call_id", default=None)


@dataclass(frozen=True)
class ToolOutcome:
    """A finished call: `text` is what the model gets; `result` is what is recorded (structured content when
    the tool returned some, else the text); `error` is set when the call failed."""

    text: str
    result: Any = None
    error: str | None = None
    server: str | None = None


class ToolRunner(Protocol):
    def server_of(self, name: str) -> str | None: ...

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        """Run one call; only cancellation escapes (every failure is an outcome with `error`)."""
        ...


@dataclass
class LoopResult:
    text: str
    tool_calls: list[dict[str, Any]] = field(default_factory=list)
    usage: Usage = field(default_factory=Usage)
    reasoning: str | None = None
    model: str | None = None
    turns: int = 0


ModelTurn = Callable[[TurnRequest, TextSink], Awaitable[AssistantTurn]]
#: Told of each finished tool call: its server (None if unknown), whether it succeeded, and its seconds.
ToolCallObserver = Callable[[str | None, bool, float], None]


def cut(text: str, limit: int) -> str:
    """`text`, or its first `limit` characters and a marker saying how many more there were."""
    if len(text) <= limit:
        return text
    return f"{text[:limit]}… [cut: {len(text) - limit} more characters]"


def _cut_value(value: Any, limit: int) -> Any:
    """A recorded result: strings are cut; a structured value too big to record becomes its cut JSON text."""
    if isinstance(value, str):
        return cut(value, limit)
    if value is None or isinstance(value, bool | int | float):
        return value
    text = json.dumps(value, ensure_ascii=False, default=str)
    return value if len(text) <= limit else cut(text, limit)


async def run_tool_loop(
    model: ModelTurn,
    request: TurnRequest,
    tools: ToolRunner | None,
    *,
    max_steps: int,
    max_total_tokens: int | None,
    emit: Callable[[dict[str, Any]], None],
    on_text: TextSink,
    record: list[dict[str, Any]] | None = None,
    on_tool_call: ToolCallObserver | None = None,
) -> LoopResult:
    """Run turns until one answers without tool calls; raises StepError with `tool_calls` on the record.

    `record`, when given, is the list the calls are recorded into as they end: the caller still has them when the
    step is cancelled mid-turn (a call cut short is recorded with `error` "cancelled"). `on_tool_call` is told
    each finished call's server, success and seconds (metrics; this module stays free of them).
    """
    result = LoopResult(text="", tool_calls=record if record is not None else [])
    messages: list[Message] = list(request.messages)
    reasoning: list[str] = []
    choice = request.tool_choice
    for turn_number in range(1, max_steps + 1):
        turn = await model(replace(request, messages=list(messages), tool_choice=choice), on_text)
        choice = "auto" if choice == "required" else choice
        result.turns = turn_number
        result.usage.add(turn.usage)
        result.model = turn.model or result.model
        if turn.reasoning:
            reasoning.append(turn.reasoning)
        result.reasoning = "\n\n".join(reasoning) or None
        if max_total_tokens is not None and result.usage.total > max_total_tokens:
            raise _failed("budget_exceeded", f"{result.usage.total} tokens used, over max_total_tokens "
                          f"({max_total_tokens})", result)
        if not turn.tool_calls:
            result.text = turn.text
            return result
        if tools is None:
            raise _failed("llm_error", f"the model called {turn.tool_calls[0].name!r} but the step offers no tools",
                          result)
        if turn_number == max_steps:
            break
        messages.append(turn)
        answers = await _run_calls(turn.tool_calls, tools, emit, result.tool_calls, on_tool_call)
        messages.extend(answers)
    raise _failed("max_steps_exceeded", f"no final answer after {max_steps} model turns (max_steps)", result)


def _failed(code: str, message: str, result: LoopResult) -> StepError:
    error = StepError(code, message)
    error.tool_calls = result.tool_calls
    error.usage = result.usage
    return error


async def _run_calls(
    calls: list[ToolCallRequest], tools: ToolRunner, emit: Callable[[dict[str, Any]], None],
    record: list[dict[str, Any]], on_tool_call: ToolCallObserver | None = None,
) -> list[ToolResultMessage]:
    first = len(record)

    async def one(call: ToolCallRequest) -> tuple[ToolResultMessage, dict[str, Any]]:
        server = tools.server_of(call.name)
        chunk: dict[str, Any] = {"type": "tool-call", "toolCallId": call.id, "toolName": call.name,
                                 "args": _cut_value(call.args, CHUNK_RESULT_CHARS)}
        args = _cut_value(call.args, RECORD_RESULT_CHARS)  # huge arguments become their cut JSON text
        if server:
            chunk["server"] = server
        emit(chunk)
        started = time.monotonic()
        if call.args_error is not None:
            outcome = ToolOutcome(text=f"Error: {call.args_error}", error=call.args_error, server=server)
        else:
            CALL_ID.set(call.id)  # this call's own task (gather): no other call sees it
            try:
                outcome = await tools.call(call.name, call.args)
            except asyncio.CancelledError:
                record.append({"toolCallId": call.id, "toolName": call.name, "args": args,
                               "durationMs": int((time.monotonic() - started) * 1000),
                               "error": "cancelled: the step ended before the tool answered",
                               **({"server": server} if server else {})})
                raise
        elapsed = time.monotonic() - started
        if on_tool_call is not None:
            on_tool_call(outcome.server or server, outcome.error is None, elapsed)
        duration = int(elapsed * 1000)
        entry: dict[str, Any] = {"toolCallId": call.id, "toolName": call.name, "args": args,
                                 "result": _cut_value(outcome.result if outcome.result is not None else outcome.text,
                                                      RECORD_RESULT_CHARS),
                                 "durationMs": duration}
        live: dict[str, Any] = {"type": "tool-result", "toolCallId": call.id, "toolName": call.name,
                                "durationMs": duration,
                                "result": _cut_value(entry["result"], CHUNK_RESULT_CHARS)}
        if outcome.error is not None:
            entry["error"] = live["error"] = cut(outcome.error, CHUNK_RESULT_CHARS)
        if outcome.server or server:
            entry["server"] = live["server"] = outcome.server or server
        emit(live)
        record.append(entry)  # as it ends, so that a cancelled step still records its finished calls
        message = ToolResultMessage(call.id, call.name, cut(outcome.text, MODEL_RESULT_CHARS),
                                    is_error=outcome.error is not None)
        return message, entry

    done = await asyncio.gather(*(one(call) for call in calls))
    record[first:] = [entry for _, entry in done]  # the model's order, not the order they ended in
    return [message for message, _ in done]
