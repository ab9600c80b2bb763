"""Self-tests of the test doubles of issue #14: the scripted model server and the MCP tools server.

The model server is only useful if the official SDKs parse it as they parse the real providers, so these tests
drive it with `openai.AsyncOpenAI` and `anthropic.AsyncAnthropic` (their stream helpers and raw events), streamed
and not. The MCP server is checked with the official `mcp.Client` over stdio and over streamable HTTP.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anthropic
import anyio
import httpx
import openai
import pytest
from anthropic.types import ToolParam
from mcp import Client
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client
from mcp_types import TextContent
from openai.types.chat import ChatCompletionFunctionToolParam, ChatCompletionMessageFunctionToolCall

from tests.fake_models import NO_REPLY_LEFT, FakeModels, Reply, ToolCall
from tests.mcp_servers import async_http_tools_server, http_tools_server, stdio_params

KEY = "sk-fake-0123456789"
TOOL: ChatCompletionFunctionToolParam = {
    "type": "function",
    "function": {"name": "add", "parameters": {"type": "object"}},
}
A_TOOL: ToolParam = {"name": "add", "input_schema": {"type": "object"}}
MESSAGES: list[Any] = [{"role": "user", "content": "hi"}]


def oa(fake: FakeModels, retries: int = 0) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(api_key=KEY, base_url=fake.openai_url, max_retries=retries)


def an(fake: FakeModels, retries: int = 0) -> anthropic.AsyncAnthropic:
    return anthropic.AsyncAnthropic(api_key=KEY, base_url=fake.anthropic_url, max_retries=retries)


TOOL_REPLY = Reply(
    text=["Let me ", "add."],
    tool_calls=[ToolCall("add", {"a": 1, "b": 2}, id="c1"), ToolCall("echo", {"text": 'héllo "q"'})],
    reasoning="think about it",
    usage=(12, 7),
)


# --------------------------------------------------------------------------------------------------------------
# OpenAI Chat Completions


async def test_openai_streamed_text_tool_calls_reasoning_usage(fake: FakeModels) -> None:
    fake.enqueue(TOOL_REPLY)
    client = oa(fake)
    chunks = []
    stream = await client.chat.completions.create(
        model="m", messages=MESSAGES, tools=[TOOL], stream=True, stream_options={"include_usage": True}
    )
    async for chunk in stream:
        chunks.append(chunk)
    reasoning = "".join(
        (c.choices[0].delta.model_extra or {}).get("reasoning_content", "") for c in chunks if c.choices
    )
    assert reasoning == "think about it"
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (12, 7)
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finishes == ["tool_calls"]
    # the argument JSON arrives in several deltas after the one that names the call
    arg_deltas = [c for c in chunks if c.choices and c.choices[0].delta.tool_calls]
    assert len(arg_deltas) > 2 * 2

    # the SDK's own accumulator agrees
    fake.enqueue(TOOL_REPLY)
    async with client.chat.completions.stream(model="m", messages=MESSAGES, tools=[TOOL]) as helper:
        final = await helper.get_final_completion()
    message = final.choices[0].message
    assert message.content == "Let me add."
    assert final.choices[0].finish_reason == "tool_calls"
    calls = [c for c in message.tool_calls or [] if isinstance(c, ChatCompletionMessageFunctionToolCall)]
    assert [(c.id, c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("c1", "add", {"a": 1, "b": 2}),
        (calls[1].id, "echo", {"text": 'héllo "q"'}),
    ]
    assert calls[1].id and calls[1].id != "c1"
    assert final.usage is None  # include_usage was not asked for this time
    assert fake.pending == 0


async def test_openai_not_streamed(fake: FakeModels) -> None:
    fake.enqueue(TOOL_REPLY, Reply(text=["The answer is 3."], usage=(20, 4)))
    client = oa(fake)
    first = await client.chat.completions.create(model="m", messages=MESSAGES, tools=[TOOL])
    message = first.choices[0].message
    assert message.content == "Let me add."
    calls = [c for c in message.tool_calls or [] if isinstance(c, ChatCompletionMessageFunctionToolCall)]
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("add", {"a": 1, "b": 2}),
        ("echo", {"text": 'héllo "q"'}),
    ]
    assert first.choices[0].finish_reason == "tool_calls" and calls[0].id == "c1"
    assert (message.model_extra or {})["reasoning_content"] == "think about it"
    second = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert second.choices[0].message.content == "The answer is 3."
    assert second.choices[0].message.tool_calls is None
    assert second.choices[0].finish_reason == "stop"
    assert second.usage is not None and (second.usage.prompt_tokens, second.usage.total_tokens) == (20, 24)


async def test_openai_raw_bad_json_arguments_and_recorded_requests(fake: FakeModels) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("add", '{"a": 1,')]))
    client = oa(fake)
    async with client.chat.completions.stream(model="m", messages=MESSAGES, tools=[TOOL]) as helper:
        async for _ in helper:
            pass
        final = await helper.get_final_completion()
    [call] = final.choices[0].message.tool_calls or []
    assert isinstance(call, ChatCompletionMessageFunctionToolCall) and call.function.arguments == '{"a": 1,'
    [request] = fake.requests
    assert request.format == "openai" and request.path == "/v1/chat/completions"
    assert request.headers["authorization"] == f"Bearer {KEY}"
    assert request.json["stream"] is True and request.json["tools"] == [TOOL]


async def test_openai_429_then_success_and_no_reply_left(fake: FakeModels) -> None:
    fake.enqueue(Reply(status=429, headers={"Retry-After": "0"}), Reply(text=["ok"]))
    client = oa(fake, retries=1)
    done = await client.chat.completions.create(model="m", messages=MESSAGES)
    assert done.choices[0].message.content == "ok"
    assert len(fake.requests) == 2
    with pytest.raises(openai.RateLimitError) as limited:
        fake.enqueue(Reply(status=429))
        await oa(fake).chat.completions.create(model="m", messages=MESSAGES)
    assert isinstance(limited.value.body, dict) and limited.value.body["type"] == "rate_limit_error"
    # beyond the script: a 500 the SDK does not retry (x-should-retry: false), even with retries allowed
    with pytest.raises(openai.InternalServerError, match=NO_REPLY_LEFT):
        await oa(fake, retries=2).chat.completions.create(model="m", messages=MESSAGES)
    assert len(fake.requests) == 4


async def test_openai_hold_sees_client_go_away(fake: FakeModels) -> None:
    fake.enqueue(Reply(text=["partial"], hold=True))
    client = oa(fake)
    stream = await client.chat.completions.create(model="m", messages=MESSAGES, stream=True)
    first = [await stream.__anext__() for _ in range(2)]
    assert first[1].choices[0].delta.content == "partial"
    await stream.close()
    assert await asyncio.to_thread(fake.client_gone.wait, 10)


async def _openai_texts(fake: FakeModels) -> AsyncIterator[str]:
    stream = await oa(fake).chat.completions.create(model="m", messages=MESSAGES, stream=True)
    async for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            yield chunk.choices[0].delta.content


async def _anthropic_texts(fake: FakeModels) -> AsyncIterator[str]:
    async with an(fake).messages.stream(model="m", max_tokens=10, messages=MESSAGES) as stream:
        async for text in stream.text_stream:
            if text:
                yield text


@pytest.mark.parametrize("texts_of", [_openai_texts, _anthropic_texts], ids=["openai", "anthropic"])
async def test_a_gated_reply_waits_mid_stream_until_the_gate_opens(fake: FakeModels, texts_of: Any) -> None:
    """`gate`: the text but its last piece goes out, then nothing until the test opens the gate, then the rest."""
    gate = threading.Event()
    fake.enqueue(Reply(text=["Hello ", "there"], gate=gate))
    texts: AsyncIterator[str] = texts_of(fake)
    assert await anext(texts) == "Hello "
    second = asyncio.ensure_future(anext(texts))
    done, _ = await asyncio.wait({second}, timeout=0.3)  # can only pass wrongly (a slow server), never flake
    assert not done, "the piece after the gate came before the gate opened"
    gate.set()
    assert await second == "there"
    assert await anext(texts, None) is None  # and then the stream ends


# --------------------------------------------------------------------------------------------------------------
# Anthropic Messages


async def test_anthropic_streamed_blocks_and_usage(fake: FakeModels) -> None:
    fake.enqueue(TOOL_REPLY)
    client = an(fake)
    kinds: list[str] = []
    async with client.messages.stream(model="m", max_tokens=100, messages=MESSAGES, tools=[A_TOOL]) as stream:
        async for event in stream:
            kinds.append(event.type)
        final = await stream.get_final_message()
    assert kinds[0] == "message_start" and kinds[-1] == "message_stop"
    assert "input_json" in kinds and "thinking" in kinds and "signature" in kinds
    assert [b.type for b in final.content] == ["thinking", "text", "tool_use", "tool_use"]
    thinking, text, add, echo = final.content
    assert thinking.type == "thinking" and thinking.thinking == "think about it" and thinking.signature
    assert text.type == "text" and text.text == "Let me add."
    assert add.type == "tool_use" and (add.id, add.name, add.input) == ("c1", "add", {"a": 1, "b": 2})
    assert echo.type == "tool_use" and echo.input == {"text": 'héllo "q"'} and echo.id.startswith("toolu_")
    assert final.stop_reason == "tool_use"
    assert (final.usage.input_tokens, final.usage.output_tokens) == (12, 7)
    [request] = fake.requests
    assert request.format == "anthropic" and request.path == "/v1/messages"
    # this SDK version sends the key as a bearer token; older ones used x-api-key
    assert KEY in (request.headers.get("x-api-key"), request.headers.get("authorization", "").removeprefix("Bearer "))
    assert request.json["stream"] is True


async def test_anthropic_not_streamed(fake: FakeModels) -> None:
    fake.enqueue(TOOL_REPLY, Reply(text=["The answer ", "is 3."], usage=(30, 6)))
    client = an(fake)
    first = await client.messages.create(model="m", max_tokens=100, messages=MESSAGES, tools=[A_TOOL])
    assert [b.type for b in first.content] == ["thinking", "text", "tool_use", "tool_use"]
    assert first.stop_reason == "tool_use"
    second = await client.messages.create(model="m", max_tokens=100, messages=MESSAGES)
    assert [(b.type, getattr(b, "text", None)) for b in second.content] == [("text", "The answer is 3.")]
    assert second.stop_reason == "end_turn"
    assert (second.usage.input_tokens, second.usage.output_tokens) == (30, 6)


async def test_anthropic_errors(fake: FakeModels) -> None:
    fake.enqueue(Reply(status=429, headers={"retry-after": "0"}), Reply(text=["ok"]))
    done = await an(fake, retries=1).messages.create(model="m", max_tokens=10, messages=MESSAGES)
    assert done.content[0].type == "text" and done.content[0].text == "ok"
    fake.enqueue(Reply(status=400))
    with pytest.raises(anthropic.BadRequestError) as bad:
        await an(fake).messages.create(model="m", max_tokens=10, messages=MESSAGES)
    assert isinstance(bad.value.body, dict) and bad.value.body["type"] == "error"
    assert bad.value.body["error"]["type"] == "invalid_request_error"
    with pytest.raises(anthropic.InternalServerError, match=NO_REPLY_LEFT):
        await an(fake, retries=2).messages.create(model="m", max_tokens=10, messages=MESSAGES, stream=True)
    assert len(fake.requests) == 4


async def test_one_queue_for_both_formats_and_delay(fake: FakeModels) -> None:
    fake.enqueue(Reply(text=["from openai"]), Reply(text=["from anthropic"], delay=0.05))
    first = await oa(fake).chat.completions.create(model="m", messages=MESSAGES)
    second = await an(fake).messages.create(model="m", max_tokens=10, messages=MESSAGES)
    assert first.choices[0].message.content == "from openai"
    assert second.content[0].type == "text" and second.content[0].text == "from anthropic"
    assert [r.format for r in fake.requests] == ["openai", "anthropic"]


async def test_held_requests_see_the_client_go_away(fake: FakeModels) -> None:
    """A held non-streamed request never answers; a held Anthropic stream stops before message_delta."""
    fake.enqueue(Reply(text=["never"], hold=True))
    call = asyncio.create_task(an(fake).messages.create(model="m", max_tokens=10, messages=MESSAGES))
    await asyncio.to_thread(fake.wait_for_requests, 1)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    assert await asyncio.to_thread(fake.client_gone.wait, 10)
    fake.client_gone.clear()
    fake.enqueue(Reply(text=["part"], hold=True))
    kinds = []
    async with an(fake).messages.stream(model="m", max_tokens=10, messages=MESSAGES) as stream:
        async for event in stream:
            kinds.append(event.type)
            if event.type == "content_block_stop":
                break
    assert kinds == ["message_start", "content_block_start", "content_block_delta", "text", "content_block_stop"]
    assert await asyncio.to_thread(fake.client_gone.wait, 10)


async def test_wait_for_requests_has_a_deadline(fake: FakeModels) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(fake.wait_for_requests, 1, 0.01)


# --------------------------------------------------------------------------------------------------------------
# The MCP tools server


def _text(result: Any) -> str:
    return "".join(part.text for part in result.content if isinstance(part, TextContent))


async def _exercise(client: Client) -> None:
    names = {tool.name for tool in (await client.list_tools()).tools}
    assert {"add", "echo", "fail", "slow", "env", "pid", "spawn_child", "counter", "big", "structured"} <= names
    added = await client.call_tool("add", {"a": 2, "b": 3})
    assert not added.is_error and _text(added) == "5" and added.structured_content is None
    assert _text(await client.call_tool("echo", {"text": "hé"})) == "hé"
    failed = await client.call_tool("fail", {"message": "boom"})
    assert failed.is_error and "boom" in _text(failed)
    structured = await client.call_tool("structured", {})
    assert structured.structured_content == {"a": 1, "b": [1, 2]}
    assert [_text(await client.call_tool("counter", {})) for _ in range(2)] == ["1", "2"]


async def test_mcp_tools_server_over_stdio(tmp_path: Path) -> None:
    async with Client(stdio_params({"FAKES_MARK": "set-by-test"})) as client:
        await _exercise(client)
        assert _text(await client.call_tool("env", {"name": "FAKES_MARK"})) == "set-by-test"
        assert _text(await client.call_tool("env", {"name": "FAKES_NOT_SET_ANYWHERE"})) == "<unset>"
        assert _text(await client.call_tool("big", {"n": 5})) == "xxxxx"
        server_pid = int(_text(await client.call_tool("pid", {})))
        child = int(_text(await client.call_tool("spawn_child", {})))
        try:
            assert os.getpgid(child) == os.getpgid(server_pid) and child != server_pid
        finally:
            os.kill(child, signal.SIGKILL)
        # a slow call writes its marker, then can be cancelled by the client; the server keeps serving
        marker = tmp_path / "m"
        call = asyncio.create_task(client.call_tool("slow", {"seconds": 600, "marker": str(marker)}))
        await wait_for_file(Path(f"{marker}.started"))
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert _text(await client.call_tool("slow", {"seconds": 0})) == "slept"


async def wait_for_file(path: Path, timeout: float = 10.0) -> None:
    """Poll (with a deadline) until `path` exists."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await anyio.Path(path).exists():
        assert asyncio.get_running_loop().time() < deadline, f"{path} never appeared"
        await asyncio.sleep(0.02)


async def test_mcp_tools_server_over_http_with_bearer() -> None:
    async with async_http_tools_server(bearer_env="FAKES_TOKEN", env={"FAKES_TOKEN": "tok-123"}) as url:
        async with httpx.AsyncClient() as raw:
            for headers in ({}, {"Authorization": "Bearer wrong"}):
                refused = await raw.post(url, json={}, headers=headers)
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "unauthorized"
        http = create_mcp_http_client(headers={"Authorization": "Bearer tok-123"})
        async with http, Client(streamable_http_client(url, http_client=http)) as client:
            await _exercise(client)
            assert int(_text(await client.call_tool("pid", {}))) != os.getpid()


def test_sync_http_helper_without_bearer() -> None:
    with http_tools_server() as url:
        answered = httpx.post(url, json={}, headers={"Accept": "application/json, text/event-stream"})
        # served, without a token: the empty message is refused as bad JSON-RPC, not as unauthorized
        assert answered.status_code == 400 and answered.json()["jsonrpc"] == "2.0"
