"""The tool loop of `llm` steps (issue #14, items 1–5) against real parts: the official SDKs talking to the scripted
model server (`tests.fake_models`, both wire formats, streamed and not) and a real MCP server written with the
`mcp` SDK (`tests.mcp_servers.tools_server`) over stdio and streamable HTTP, pooled by `WorkspaceTools`.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from atlas.agents.base import AgentContext, StepError
from atlas.agents.llm import LlmCallConfig, run_llm
from atlas.config.model import McpConfig
from atlas.llm import retry
from atlas.llm.loop import RECORD_RESULT_CHARS
from atlas.mcp.servers import McpHub, WorkspaceTools
from atlas.templating import Templater
from tests.fake_models import FakeModels, Reply, ToolCall
from tests.mcp_servers import REPO, async_http_tools_server, tools_server_argv
from tests.test_agents import Chunks

KEY = "sk-test-tools-0123456789"
WIRES = ["openai", "anthropic"]


@pytest.fixture(autouse=True)
def keys(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    monkeypatch.setattr(retry, "RETRY_BACKOFF", (0.0,))


def stdio_server(env: dict[str, str] | None = None, **extra: Any) -> dict[str, Any]:
    argv = tools_server_argv("stdio")
    return {"transport": {"type": "stdio", "command": argv[0], "args": argv[1:]},
            "env": {"PYTHONPATH": str(REPO), **(env or {})}, **extra}


def workspace_tools(tmp_path: Path, servers: dict[str, Any], **config: Any) -> WorkspaceTools:
    return WorkspaceTools("ws", McpConfig.model_validate({"servers": servers, **config}), workspace_dir=tmp_path,
                          home=tmp_path / "home", environ=os.environ)


@pytest.fixture
async def tools(tmp_path: Path) -> AsyncIterator[WorkspaceTools]:
    pool = workspace_tools(tmp_path, {"t": stdio_server()})
    yield pool
    await pool.aclose()


def config(fake: FakeModels, wire: str, **overrides: Any) -> LlmCallConfig:
    base = {"model": "m", "prompt": "You are terse.", "provider": wire,
            "base_url": fake.openai_url if wire == "openai" else fake.anthropic_url, "tools": ("add",),
            "include_action_prompt": True, "prompt_is_system": True}
    base.update(overrides)
    return LlmCallConfig(**base)


async def run(cfg: LlmCallConfig, tools: WorkspaceTools | None, chunks: Chunks, tmp_path: Path,
              templater: Templater | None = None) -> Any:
    ctx = AgentContext(workspace_dir=tmp_path, prompt="what is 2+3?", _progress_sink=chunks)
    return await run_llm(cfg, ctx, templater or Templater(), {}, default_base_url=None, tools=tools)


def tool_messages(request: Any) -> list[Any]:
    """The tool results a model request carried, in either wire format, as (id, text, is_error)."""
    out = []
    for message in request.json["messages"]:
        if request.format == "openai" and message["role"] == "tool":
            out.append((message["tool_call_id"], message["content"], None))
        if request.format == "anthropic" and message["role"] == "user" and isinstance(message["content"], list):
            out.extend((b["tool_use_id"], b["content"], b["is_error"]) for b in message["content"])
    return out


# ---------------------------------------------------------------- the loop


@pytest.mark.parametrize("stream", [True, False], ids=["streamed", "not-streamed"])
@pytest.mark.parametrize("wire", WIRES)
async def test_tool_call_result_then_final_answer(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path, wire: str, stream: bool
) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3}, id="c1")], usage=(11, 4)),
                 Reply(text=["It is ", "5."], usage=(20, 3)))
    chunks = Chunks()
    result = await run(config(fake, wire, provider_options={} if stream else {"stream": False}), tools, chunks,
                       tmp_path)
    assert result.output == "It is 5."
    assert result.usage == {"inputTokens": 31, "outputTokens": 7, "model": "fake-model"}  # summed over the loop
    [call] = result.tool_calls
    assert call == {"toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "result": "5",
                    "durationMs": call["durationMs"], "server": "t"}
    first, second = fake.requests
    assert {first.format, second.format} == {wire}
    assert [t["function"]["name"] if wire == "openai" else t["name"] for t in first.json["tools"]] == ["add"]
    assert first.json.get("stream", False) is stream
    assert [(i, text) for i, text, _ in tool_messages(second)] == [("c1", "5")]
    system = first.json["messages"][0]["content"] if wire == "openai" else first.json["system"]
    assert system == "You are terse."  # a reference-format agent's prompt is its system prompt
    live = [c for c in chunks.items if c["type"] in ("tool-call", "tool-result")]
    assert live == [
        {"type": "tool-call", "toolCallId": "c1", "toolName": "add", "args": {"a": 2, "b": 3}, "server": "t"},
        {"type": "tool-result", "toolCallId": "c1", "toolName": "add", "durationMs": call["durationMs"],
         "result": "5", "server": "t"},
    ]
    assert "".join(c["delta"] for c in chunks.of_type("text-delta")) == "It is 5."


@pytest.mark.parametrize("wire", WIRES)
async def test_parallel_calls_run_concurrently_and_answer_in_order(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path, wire: str
) -> None:
    """Each call waits for the other's file: both answer `met` only if they ran at the same time."""
    a, b = str(tmp_path / "a"), str(tmp_path / "b")
    fake.enqueue(Reply(tool_calls=[ToolCall("rendezvous", {"mine": a, "other": b, "seconds": 20}, id="x"),
                                   ToolCall("rendezvous", {"mine": b, "other": a, "seconds": 20}, id="y")]),
                 Reply(text=["done"]))
    result = await run(config(fake, wire, tools=("rendezvous",)), tools, Chunks(), tmp_path)
    assert [(c["toolCallId"], c["result"]) for c in result.tool_calls] == [("x", "met"), ("y", "met")]
    assert [(i, text) for i, text, _ in tool_messages(fake.requests[1])] == [("x", "met"), ("y", "met")]


@pytest.mark.parametrize("wire", WIRES)
async def test_a_failing_tool_is_an_error_result_for_the_model(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path, wire: str
) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("fail", {"message": "disk on fire"}, id="f"),
                                   ToolCall("add", "{not json", id="g")]),
                 Reply(text=["sorry"]))
    result = await run(config(fake, wire, tools=("fail", "add")), tools, Chunks(), tmp_path)
    assert result.output == "sorry"
    failed, bad_args = result.tool_calls
    assert "disk on fire" in failed["error"] and failed["server"] == "t"
    assert bad_args["args"] == {} and "not valid JSON" in bad_args["error"]
    answers = tool_messages(fake.requests[1])
    assert answers[0][0] == "f" and "disk on fire" in answers[0][1]
    assert answers[1][0] == "g" and "not valid JSON" in answers[1][1]
    if wire == "anthropic":
        assert [is_error for _, _, is_error in answers] == [True, True]


@pytest.mark.parametrize("wire", WIRES)
async def test_max_steps_exceeded_fails_the_step_with_its_calls_recorded(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path, wire: str
) -> None:
    fake.enqueue(*(Reply(tool_calls=[ToolCall("add", {"a": i, "b": 1})]) for i in range(3)))
    with pytest.raises(StepError) as caught:
        await run(config(fake, wire, max_steps=3), tools, Chunks(), tmp_path)
    assert caught.value.code == "max_steps_exceeded"
    assert [c["result"] for c in caught.value.tool_calls or []] == ["1", "2"]  # the last turn's call is not run
    assert len(fake.requests) == 3 and fake.pending == 0


async def test_budget_exceeded_counts_tokens_over_the_loop(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path
) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 1})], usage=(60, 10)),
                 Reply(text=["x"], usage=(60, 10)))
    with pytest.raises(StepError) as caught:
        await run(config(fake, "openai", max_total_tokens=100), tools, Chunks(), tmp_path)
    assert caught.value.code == "budget_exceeded" and "140 tokens" in caught.value.message


@pytest.mark.parametrize("wire", WIRES)
async def test_429_then_success_is_retried(fake: FakeModels, tools: WorkspaceTools, tmp_path: Path,
                                           wire: str) -> None:
    fake.enqueue(Reply(status=429, headers={"Retry-After": "0"}),
                 Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 2})]), Reply(status=503), Reply(text=["3"]))
    result = await run(config(fake, wire), tools, Chunks(), tmp_path)
    assert result.output == "3" and len(fake.requests) == 4


async def test_max_retries_zero_fails_at_the_first_429(fake: FakeModels, tmp_path: Path) -> None:
    fake.enqueue(Reply(status=429))
    with pytest.raises(StepError) as caught:
        await run(config(fake, "openai", tools=(), max_retries=0), None, Chunks(), tmp_path)
    assert caught.value.code == "llm_error" and "HTTP 429" in caught.value.message


@pytest.mark.parametrize("wire", WIRES)
async def test_cancel_during_a_slow_tool_aborts_the_call(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path, wire: str
) -> None:
    marker = str(tmp_path / "slow")
    fake.enqueue(Reply(tool_calls=[ToolCall("slow", {"seconds": 600, "marker": marker})]))
    task = asyncio.create_task(run(config(fake, wire, tools=("slow", "add")), tools, Chunks(), tmp_path))
    while not await anyio.Path(marker + ".started").exists():
        assert not task.done(), task
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the pooled server outlives the cancelled call and answers the next one
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), Reply(text=["2"]))
    assert (await run(config(fake, wire), tools, Chunks(), tmp_path)).output == "2"


async def test_cancel_while_the_model_streams_closes_the_request(fake: FakeModels, tmp_path: Path) -> None:
    fake.enqueue(Reply(text=["partial"], hold=True))
    chunks = Chunks()
    task = asyncio.create_task(run(config(fake, "anthropic", tools=()), None, chunks, tmp_path))
    await asyncio.to_thread(fake.wait_for_requests, 1)
    while not chunks.of_type("text-delta"):
        await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(fake.client_gone.wait, 10)


async def test_tool_choice_required_applies_to_the_first_turn_only(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path
) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 1, "b": 1})]), Reply(text=["2"]))
    await run(config(fake, "openai", tool_choice="required"), tools, Chunks(), tmp_path)
    assert [r.json["tool_choice"] for r in fake.requests] == ["required", "auto"]


async def test_tool_choice_none_offers_no_tools_and_starts_no_server(fake: FakeModels, tmp_path: Path) -> None:
    pool = workspace_tools(tmp_path, {"t": stdio_server()})
    fake.enqueue(Reply(text=["no tools"]))
    assert (await run(config(fake, "openai", tool_choice="none"), pool, Chunks(), tmp_path)).output == "no tools"
    assert "tools" not in fake.requests[0].json and pool.servers["t"].starts == 0


async def test_reasoning_is_kept(fake: FakeModels, tools: WorkspaceTools, tmp_path: Path) -> None:
    fake.enqueue(Reply(reasoning="first think", tool_calls=[ToolCall("add", {"a": 1, "b": 1})]),
                 Reply(reasoning="then answer", text=["2"]))
    result = await run(config(fake, "anthropic"), tools, Chunks(), tmp_path)
    assert result.reasoning == "first think\n\nthen answer"
    # the signed thinking block goes back to the Messages API unchanged
    assert fake.requests[1].json["messages"][1]["content"][0]["type"] == "thinking"


async def test_large_results_are_cut_with_a_marker(fake: FakeModels, tools: WorkspaceTools, tmp_path: Path) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("big", {"n": RECORD_RESULT_CHARS + 100})]), Reply(text=["ok"]))
    result = await run(config(fake, "openai", tools=("big",)), tools, Chunks(), tmp_path)
    recorded = result.tool_calls[0]["result"]
    assert recorded == "x" * RECORD_RESULT_CHARS + "… [cut: 100 more characters]"
    assert tool_messages(fake.requests[1])[0][1] == "x" * (RECORD_RESULT_CHARS + 100)  # the model gets it whole


async def test_structured_content_is_recorded_and_the_model_gets_the_text(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path
) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("structured", {})]), Reply(text=["ok"]))
    result = await run(config(fake, "openai", tools=("structured",)), tools, Chunks(), tmp_path)
    assert result.tool_calls[0]["result"] == {"a": 1, "b": [1, 2]}
    assert json.loads(tool_messages(fake.requests[1])[0][1]) == {"a": 1, "b": [1, 2]}


# ---------------------------------------------------------------- providers and credentials


@pytest.mark.parametrize(("provider", "variable"), [("anthropic", "ANTHROPIC_API_KEY"),
                                                     ("openai", "OPENAI_API_KEY"),
                                                     ("openrouter", "OPENROUTER_API_KEY")])
async def test_a_missing_key_fails_before_any_request(
    fake: FakeModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, provider: str, variable: str
) -> None:
    monkeypatch.delenv(variable, raising=False)
    with pytest.raises(StepError) as caught:
        await run(config(fake, provider, base_url=fake.openai_url, tools=()), None, Chunks(), tmp_path)
    assert caught.value.code == "missing_credentials" and variable in caught.value.message
    assert fake.requests == []


async def test_provider_base_url_variable_and_key_are_used_and_the_key_is_redacted(
    fake: FakeModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_BASE_URL", fake.anthropic_url)
    fake.enqueue(Reply(text=[f"echo {KEY}"]))
    templater = Templater()
    result = await run(config(fake, "anthropic", base_url=None, tools=()), None, Chunks(), tmp_path, templater)
    headers = fake.requests[0].headers
    assert KEY in (headers.get("x-api-key", "") + headers.get("authorization", ""))
    assert templater.redact(result.output) == "echo ***"


async def test_ollama_needs_no_key_and_sends_no_authorization(
    fake: FakeModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("OLLAMA_BASE_URL", fake.openai_url)
    fake.enqueue(Reply(text=["local"]))
    assert (await run(config(fake, "ollama", base_url=None, tools=()), None, Chunks(), tmp_path)).output == "local"
    assert "authorization" not in fake.requests[0].headers


# ---------------------------------------------------------------- MCP servers


async def test_unknown_tool_lists_the_offered_names(fake: FakeModels, tools: WorkspaceTools, tmp_path: Path) -> None:
    with pytest.raises(StepError) as caught:
        await run(config(fake, "openai", tools=("add", "nope")), tools, Chunks(), tmp_path)
    assert caught.value.code == "unknown_tool"
    assert "'nope'" in caught.value.message and "add, big, counter, echo" in caught.value.message
    assert fake.requests == []


async def test_a_name_offered_by_two_servers_names_both(fake: FakeModels, tmp_path: Path) -> None:
    pool = workspace_tools(tmp_path, {"one": stdio_server(), "two": stdio_server(tools={"allow": ["add", "echo"]})})
    try:
        with pytest.raises(StepError) as caught:
            await run(config(fake, "openai", tools=("echo",)), pool, Chunks(), tmp_path)
        assert caught.value.code == "tool_conflict"
        assert "'one' and 'two'" in caught.value.message
        # a name only one of them offers is fine, and a server id offers all its allowed tools
        fake.enqueue(Reply(text=["ok"]))
        await run(config(fake, "openai", tools=("counter",)), pool, Chunks(), tmp_path)
        resolved = await pool.resolve(["two"])
        assert [spec.name for spec in resolved.specs] == ["add", "echo"]
    finally:
        await pool.aclose()


async def test_allow_and_deny_filter_the_offered_tools(tmp_path: Path) -> None:
    pool = workspace_tools(tmp_path, {"t": stdio_server(tools={"deny": ["fail", "spawn_child"]})})
    try:
        listing = await pool.listing()
        names = [tool["name"] for tool in listing[0]["tools"]]
        assert "fail" not in names and "spawn_child" not in names and "add" in names
        with pytest.raises(StepError) as caught:
            await pool.resolve(["fail"])
        assert caught.value.code == "unknown_tool"
    finally:
        await pool.aclose()


async def test_stdio_server_gets_a_minimal_environment_plus_its_env(
    fake: FakeModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_TEST_DAEMON_SECRET", "do-not-leak")
    monkeypatch.setenv("ATLAS_TEST_SOURCE", "from-daemon")
    pool = workspace_tools(tmp_path, {"t": stdio_server(env={"GREETING": "hi ${ATLAS_TEST_SOURCE}"})})
    try:
        resolved = await pool.resolve(["env"])
        values = {name: (await resolved.call("env", {"name": name})).text
                  for name in ("ATLAS_TEST_DAEMON_SECRET", "OPENAI_API_KEY", "GREETING", "HOME")}
        assert values["ATLAS_TEST_DAEMON_SECRET"] == "<unset>" and values["OPENAI_API_KEY"] == "<unset>"
        assert values["GREETING"] == "hi from-daemon" and values["HOME"] == os.environ["HOME"]
    finally:
        await pool.aclose()


async def test_an_unset_env_variable_is_a_start_error_naming_it(fake: FakeModels, tmp_path: Path) -> None:
    pool = workspace_tools(tmp_path, {"t": stdio_server(env={"TOKEN": "${ATLAS_TEST_NEVER_SET}"})})
    listing = await pool.listing()
    assert listing[0]["status"] == "error" and "ATLAS_TEST_NEVER_SET" in listing[0]["error"]
    with pytest.raises(StepError) as caught:
        await run(config(fake, "openai"), pool, Chunks(), tmp_path)
    assert caught.value.code == "unknown_tool" and "ATLAS_TEST_NEVER_SET" in caught.value.message


async def test_a_dead_server_is_restarted_on_next_use(fake: FakeModels, tools: WorkspaceTools, tmp_path: Path) -> None:
    resolved = await tools.resolve(["pid", "counter"])
    first = int((await resolved.call("pid", {})).text)
    assert (await resolved.call("counter", {})).text == "1"
    os.kill(first, 9)
    server = tools.servers["t"]
    while server.running():
        await asyncio.sleep(0.01)
    second = int((await resolved.call("pid", {})).text)
    assert second != first and server.starts == 2
    assert (await resolved.call("counter", {})).text == "1"  # a new process: fresh state


async def test_streamable_http_server_with_bearer_auth(
    fake: FakeModels, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ATLAS_TEST_MCP_TOKEN", "tok-123")
    async with async_http_tools_server(bearer_env="ATLAS_TEST_MCP_TOKEN",
                                       env={"ATLAS_TEST_MCP_TOKEN": "tok-123"}) as url:
        pool = workspace_tools(tmp_path, {"h": {"transport": {"type": "http", "url": url},
                                                "auth": {"type": "bearer", "token_env": "ATLAS_TEST_MCP_TOKEN"}}})
        bad = workspace_tools(tmp_path, {"h": {"transport": {"type": "http", "url": url}}})
        try:
            fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 20, "b": 22})]), Reply(text=["42"]))
            result = await run(config(fake, "anthropic"), pool, Chunks(), tmp_path)
            assert result.tool_calls[0]["result"] == "42" and result.tool_calls[0]["server"] == "h"
            listing = await bad.listing()
            assert listing[0]["status"] == "error"
            assert "tok-123" not in json.dumps(listing)
        finally:
            await pool.aclose()
            await bad.aclose()


async def test_progress_timeout_bounds_a_silent_tool(fake: FakeModels, tmp_path: Path) -> None:
    pool = workspace_tools(tmp_path, {"t": stdio_server()},
                           client_config={"timeout": {"progressTimeout": "300ms", "maxTotalTimeout": "30m"}})
    try:
        fake.enqueue(Reply(tool_calls=[ToolCall("slow", {"seconds": 600})]), Reply(text=["gave up"]))
        result = await run(config(fake, "openai", tools=("slow",)), pool, Chunks(), tmp_path)
        assert result.output == "gave up"
        assert "progressTimeout" in result.tool_calls[0]["error"]
    finally:
        await pool.aclose()


async def test_a_reloaded_workspace_gets_new_servers_and_the_old_ones_stop(tmp_path: Path) -> None:
    hub = McpHub(tmp_path / "home")
    first = McpConfig.model_validate({"servers": {"t": stdio_server()}})
    pool = hub.for_workspace("ws", first, tmp_path)
    assert pool is not None and hub.for_workspace("ws", first, tmp_path) is pool  # same config: same servers
    old_pid = int((await (await pool.resolve(["pid"])).call("pid", {})).text)
    changed = McpConfig.model_validate({"servers": {"t": stdio_server(env={"X": "1"})}})
    fresh = hub.for_workspace("ws", changed, tmp_path)
    assert fresh is not None and fresh is not pool
    new_pid = int((await (await fresh.resolve(["pid"])).call("pid", {})).text)
    await hub.aclose()  # waits for the old servers' stop too
    assert new_pid != old_pid
    for pid in (old_pid, new_pid):
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


async def test_huge_arguments_are_cut_on_the_record_but_reach_the_tool_whole(
    fake: FakeModels, tools: WorkspaceTools, tmp_path: Path
) -> None:
    text = "y" * (RECORD_RESULT_CHARS + 50)
    fake.enqueue(Reply(tool_calls=[ToolCall("echo", {"text": text})]), Reply(text=["ok"]))
    result = await run(config(fake, "openai", tools=("echo",)), tools, Chunks(), tmp_path)
    [call] = result.tool_calls
    assert isinstance(call["args"], str) and call["args"].endswith("more characters]")
    assert len(call["args"]) < RECORD_RESULT_CHARS + 100
    assert tool_messages(fake.requests[1])[0][1] == text  # the tool got the whole argument and echoed it
