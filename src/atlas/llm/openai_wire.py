"""The OpenAI Chat Completions wire format, through the official `openai` SDK (issue #14, item 2).

`provider: openai`, `openrouter`, `ollama` and any OpenAI-compatible server (vLLM, LM Studio) use it. The SDK
builds requests, parses the streamed `chat.completion.chunk`s and raises typed errors; this module only
translates the neutral conversation (`atlas.llm.conversation`) to and from its message shapes. The SDK's own
retries are off (`max_retries=0`): atlas retries in `atlas.llm.retry`, one policy for both formats, which must
know whether text already went out to watchers.
"""

from __future__ import annotations

import json
from typing import Any

import openai

from atlas.llm.conversation import (
    AssistantTurn,
    Message,
    TextSink,
    ToolCallRequest,
    ToolResultMessage,
    TurnRequest,
    Usage,
    UserMessage,
)
from atlas.llm.providers import Endpoint

__all__ = ["OpenAIChat"]


class OpenAIChat:
    """One step's client; `aclose` releases its connections."""

    def __init__(self, endpoint: Endpoint, timeout: float) -> None:
        # a keyless local server gets no Authorization header at all (the SDK wants that said per request)
        self._headers: dict[str, Any] = {} if endpoint.api_key else {"Authorization": openai.Omit()}
        if endpoint.api_key:
            self._client = openai.AsyncOpenAI(
                api_key=endpoint.api_key, base_url=endpoint.base_url, max_retries=0, timeout=timeout
            )
        else:
            self._client = openai.AsyncOpenAI(
                api_key="", base_url=endpoint.base_url, max_retries=0, timeout=timeout, _enforce_credentials=False
            )

    async def aclose(self) -> None:
        await self._client.close()

    async def __call__(self, request: TurnRequest, on_text: TextSink) -> AssistantTurn:
        options = dict(request.provider_options)
        body: dict[str, Any] = {"model": request.model, "messages": _messages(request)}
        if request.tools:
            body["tools"] = [
                {
                    "type": "function",
                    "function": {"name": t.name, "description": t.description, "parameters": t.input_schema},
                }
                for t in request.tools
            ]
            body["tool_choice"] = request.tool_choice
        if request.temperature is not None:
            body["temperature"] = request.temperature
        if request.max_tokens is not None:
            body["max_tokens"] = request.max_tokens
        if request.json_output:
            body["response_format"] = {"type": "json_object"}
        # The body goes in as `extra_body` (merged over the typed parameters, SDK-documented precedence): it is
        # plain JSON already, and the SDK's typed-parameter transform walks the whole history on every turn, which
        # made a 10-turn tool loop cost milliseconds per turn in the SDK alone (bench/tool_roundtrip.py).
        if not request.stream:
            completion = await self._client.chat.completions.create(
                model=request.model, messages=[], extra_body={**body, **options}, extra_headers=self._headers
            )
            return _from_completion(completion, request.model, on_text)
        stream = await self._client.chat.completions.create(
            model=request.model, messages=[], stream=True, extra_headers=self._headers,
            extra_body={**body, "stream_options": {"include_usage": True}, **options},
        )
        return await _from_stream(stream, request.model, on_text)


def _messages(request: TurnRequest) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for message in request.messages:
        out.append(_message(message))
    return out


def _message(message: Message) -> dict[str, Any]:
    if isinstance(message, UserMessage):
        return {"role": "user", "content": message.text}
    if isinstance(message, ToolResultMessage):
        return {"role": "tool", "tool_call_id": message.call_id, "content": message.text}
    entry: dict[str, Any] = {"role": "assistant", "content": message.text or None}
    if message.tool_calls:
        entry["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {"name": call.name, "arguments": json.dumps(call.args, ensure_ascii=False)},
            }
            for call in message.tool_calls
        ]
    return entry


def decode_args(call_id: str, name: str, raw: str | None) -> ToolCallRequest:
    """The model's argument string as a JSON object; anything else becomes an `args_error` for the model."""
    text = (raw or "").strip() or "{}"
    try:
        value = json.loads(text)
    except ValueError as exc:
        return ToolCallRequest(call_id, name, {}, f"arguments are not valid JSON ({exc}): {text[:200]!r}")
    if not isinstance(value, dict):
        return ToolCallRequest(call_id, name, {}, f"arguments must be a JSON object, got {type(value).__name__}")
    return ToolCallRequest(call_id, name, value)


def _usage(raw: Any) -> Usage:
    if raw is None:
        return Usage()
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) if details is not None else None
    return Usage(
        input_tokens=int(getattr(raw, "prompt_tokens", 0) or 0),
        output_tokens=int(getattr(raw, "completion_tokens", 0) or 0),
        cache_read_tokens=int(cached or 0),
        reported=True,
    )


def _reasoning_of(obj: Any) -> str | None:
    """`reasoning_content` (DeepSeek, vLLM) or `reasoning` (OpenRouter): not in the SDK's types, so extras."""
    for name in ("reasoning_content", "reasoning"):
        value = getattr(obj, name, None)
        if value is None and getattr(obj, "model_extra", None):
            value = obj.model_extra.get(name)
        if isinstance(value, str) and value:
            return value
    return None


def _from_completion(completion: Any, requested_model: str, on_text: TextSink) -> AssistantTurn:
    turn = AssistantTurn(model=getattr(completion, "model", None) or requested_model, usage=_usage(completion.usage))
    if not completion.choices:
        raise ValueError("completion without choices")
    choice = completion.choices[0]
    message = choice.message
    turn.stop_reason = choice.finish_reason
    if message.content:
        turn.text = message.content
        on_text(message.content)
    turn.reasoning = _reasoning_of(message)
    for call in message.tool_calls or []:
        function = getattr(call, "function", None)
        if function is not None:
            turn.tool_calls.append(decode_args(call.id, function.name, function.arguments))
    return turn


async def _from_stream(stream: Any, requested_model: str, on_text: TextSink) -> AssistantTurn:
    turn = AssistantTurn(model=requested_model)
    parts: list[str] = []
    reasoning: list[str] = []
    calls: dict[int, dict[str, Any]] = {}
    async with stream:
        async for chunk in stream:
            if getattr(chunk, "model", None):
                turn.model = chunk.model
            if chunk.usage is not None:
                turn.usage = _usage(chunk.usage)
            for choice in chunk.choices or []:
                if choice.index != 0:
                    continue
                delta = choice.delta
                if choice.finish_reason:
                    turn.stop_reason = choice.finish_reason
                if delta is None:
                    continue
                thought = _reasoning_of(delta)
                if thought:
                    reasoning.append(thought)
                if delta.content:
                    parts.append(delta.content)
                    on_text(delta.content)
                for piece in delta.tool_calls or []:
                    slot = calls.setdefault(piece.index, {"id": None, "name": "", "arguments": []})
                    if piece.id:
                        slot["id"] = piece.id
                    function = piece.function
                    if function is not None:
                        if function.name:
                            slot["name"] += function.name
                        if function.arguments:
                            slot["arguments"].append(function.arguments)
    turn.text = "".join(parts)
    turn.reasoning = "".join(reasoning) or None
    for index in sorted(calls):
        slot = calls[index]
        turn.tool_calls.append(decode_args(slot["id"] or f"call_{index}", slot["name"], "".join(slot["arguments"])))
    return turn
