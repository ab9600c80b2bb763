"""The Anthropic Messages wire format, through the official `anthropic` SDK (issue #14, item 2).

Like `atlas.llm.openai_wire`, it only translates: the SDK builds the request and parses the typed stream events
(`message_start`, `content_block_*`, `message_delta`); SDK retries are off because `atlas.llm.retry` owns the
policy. Thinking blocks are kept verbatim (with their signatures) in the turn, because the Messages API wants
them sent back unchanged when a conversation with tool use continues.
"""

from __future__ import annotations

import json
from typing import Any

import anthropic

from atlas.llm.conversation import (
    AssistantTurn,
    TextSink,
    ToolResultMessage,
    TurnRequest,
    Usage,
    UserMessage,
)
from atlas.llm.openai_wire import decode_args
from atlas.llm.providers import Endpoint

__all__ = ["DEFAULT_MAX_TOKENS", "AnthropicMessages"]

#: The Messages API requires `max_tokens`; this is sent when the agent sets none.
DEFAULT_MAX_TOKENS = 4096
_TOOL_CHOICE = {"auto": {"type": "auto"}, "required": {"type": "any"}, "none": {"type": "none"}}


class AnthropicMessages:
    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        self._client = anthropic.AsyncAnthropic(
            api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=0, timeout=timeout
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __call__(self, request: TurnRequest, on_text: TextSink) -> AssistantTurn:
        body: dict[str, Any] = {
            "model": request.model,
            "messages": _messages(request),
            "max_tokens": request.max_tokens or DEFAULT_MAX_TOKENS,
        }
        if request.system:
            body["system"] = request.system
        if request.tools:
            body["tools"] = [
                {"name": t.name, "description": t.description, "input_schema": t.input_schema} for t in request.tools
            ]
            body["tool_choice"] = _TOOL_CHOICE[request.tool_choice]
        if request.temperature is not None:
            body["temperature"] = request.temperature
        extra = {**body, **request.provider_options}
        # plain JSON as `extra_body`, past the SDK's per-turn typed transform of the whole history (see openai_wire)
        typed: dict[str, Any] = {"model": request.model, "messages": [], "max_tokens": body["max_tokens"]}
        if not request.stream:
            message = await self._client.messages.create(**typed, extra_body=extra)
            return _from_message(message, request.model, on_text)
        stream = await self._client.messages.create(**typed, stream=True, extra_body=extra)
        return await _from_stream(stream, request.model, on_text)


def _messages(request: TurnRequest) -> list[dict[str, Any]]:
    """Neutral messages as Messages API turns; consecutive tool results share one `user` turn, as required."""
    out: list[dict[str, Any]] = []
    for message in request.messages:
        if isinstance(message, UserMessage):
            out.append({"role": "user", "content": message.text})
        elif isinstance(message, ToolResultMessage):
            block = {
                "type": "tool_result",
                "tool_use_id": message.call_id,
                "content": message.text,
                "is_error": message.is_error,
            }
            last = out[-1] if out else None
            if last is not None and last["role"] == "user" and isinstance(last["content"], list):
                last["content"].append(block)
            else:
                out.append({"role": "user", "content": [block]})
        else:
            content: list[dict[str, Any]] = list(message.provider_blocks or [])
            if message.text:
                content.append({"type": "text", "text": message.text})
            for call in message.tool_calls:
                content.append({"type": "tool_use", "id": call.id, "name": call.name, "input": call.args})
            out.append({"role": "assistant", "content": content or [{"type": "text", "text": ""}]})
    return out


def _usage(raw: Any, previous: Usage | None = None) -> Usage:
    usage = previous or Usage()
    if raw is None:
        return usage
    for source, target in (
        ("input_tokens", "input_tokens"),
        ("output_tokens", "output_tokens"),
        ("cache_read_input_tokens", "cache_read_tokens"),
    ):
        value = getattr(raw, source, None)
        if isinstance(value, int):
            setattr(usage, target, value)
            usage.reported = True
    return usage


def _from_message(message: Any, requested_model: str, on_text: TextSink) -> AssistantTurn:
    turn = AssistantTurn(model=getattr(message, "model", None) or requested_model, usage=_usage(message.usage))
    turn.stop_reason = message.stop_reason
    texts: list[str] = []
    thoughts: list[str] = []
    blocks: list[dict[str, Any]] = []
    for block in message.content:
        if block.type == "text":
            texts.append(block.text)
        elif block.type == "tool_use":
            turn.tool_calls.append(decode_args(block.id, block.name, json.dumps(block.input)))
        elif block.type == "thinking":
            thoughts.append(block.thinking)
            blocks.append({"type": "thinking", "thinking": block.thinking, "signature": block.signature})
        elif block.type == "redacted_thinking":
            blocks.append({"type": "redacted_thinking", "data": block.data})
    turn.text = "".join(texts)
    if turn.text:
        on_text(turn.text)
    turn.reasoning = "".join(thoughts) or None
    turn.provider_blocks = blocks or None
    return turn


async def _from_stream(stream: Any, requested_model: str, on_text: TextSink) -> AssistantTurn:
    turn = AssistantTurn(model=requested_model)
    blocks: dict[int, dict[str, Any]] = {}
    texts: list[str] = []
    async with stream:
        async for event in stream:
            kind = event.type
            if kind == "message_start":
                turn.model = event.message.model or requested_model
                turn.usage = _usage(event.message.usage)
            elif kind == "content_block_start":
                block = event.content_block
                entry: dict[str, Any] = {"type": block.type, "parts": []}
                if block.type == "tool_use":
                    entry["id"], entry["name"] = block.id, block.name
                elif block.type == "redacted_thinking":
                    entry["data"] = block.data
                elif block.type == "thinking":
                    entry["signature"] = getattr(block, "signature", "") or ""
                    if getattr(block, "thinking", ""):
                        entry["parts"].append(block.thinking)
                blocks[event.index] = entry
            elif kind == "content_block_delta":
                entry = blocks.setdefault(event.index, {"type": "text", "parts": []})
                delta = event.delta
                if delta.type == "text_delta":
                    entry["parts"].append(delta.text)
                    texts.append(delta.text)
                    on_text(delta.text)
                elif delta.type == "input_json_delta":
                    entry["parts"].append(delta.partial_json)
                elif delta.type == "thinking_delta":
                    entry["parts"].append(delta.thinking)
                elif delta.type == "signature_delta":
                    entry["signature"] = entry.get("signature", "") + delta.signature
            elif kind == "message_delta":
                turn.stop_reason = event.delta.stop_reason or turn.stop_reason
                turn.usage = _usage(event.usage, turn.usage)
    turn.text = "".join(texts)
    thoughts: list[str] = []
    kept: list[dict[str, Any]] = []
    for index in sorted(blocks):
        entry = blocks[index]
        if entry["type"] == "tool_use":
            turn.tool_calls.append(decode_args(entry["id"], entry["name"], "".join(entry["parts"])))
        elif entry["type"] == "thinking":
            thought = "".join(entry["parts"])
            thoughts.append(thought)
            kept.append({"type": "thinking", "thinking": thought, "signature": entry.get("signature", "")})
        elif entry["type"] == "redacted_thinking":
            kept.append({"type": "redacted_thinking", "data": entry["data"]})
    turn.reasoning = "".join(thoughts) or None
    turn.provider_blocks = kept or None
    return turn
