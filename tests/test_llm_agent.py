"""The `llm` agent and inline `llm` action (spec §2.5, §3.2 usage, §3.3 text-delta, §10.7, §13 item 7).

They run against `tests.fake_openai`, a real HTTP server on 127.0.0.1 that speaks the OpenAI streaming protocol,
because the real providers are outside this machine. Nothing of ours is mocked; only the retry backoff is
shortened so that retry tests do not wait seconds.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from atlas.agents import llm
from atlas.agents.base import AgentContext, StepError
from atlas.agents.llm import LlmCallConfig, run_llm
from atlas.agents.runner import run_agent, run_agent_with_usage
from atlas.config.model import LlmAction, LlmAgent
from atlas.llm import retry
from atlas.templating import Templater
from tests.fake_openai import FakeOpenAI, FakeResponse, fake_openai_server
from tests.test_agents import Chunks

KEY_ENV = "ATLAS_TEST_LLM_KEY"
KEY = "sk-test-0123456789abcdef"
PAYLOAD = {"topic": "otters", "count": 3}
RESULTS = {"fetch": {"title": "Rivers"}}
SESSION = {"id": "sess-1", "correlationId": "corr-1", "workspaceId": "ws-1", "depth": 0}


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai_server() as server:
        yield server


@pytest.fixture(autouse=True)
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(retry, "RETRY_BACKOFF", (0.0,))


@pytest.fixture
def api_key(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv(KEY_ENV, KEY)
    return KEY


@pytest.fixture
async def chunks() -> Chunks:
    return Chunks()


@pytest.fixture
def templater() -> Templater:
    return Templater()


def make_ctx(tmp_path: Path, chunks: Chunks, input_value: Any = None, prompt: str | None = None) -> AgentContext:
    return AgentContext(
        workspace_dir=tmp_path,
        input=input_value,
        prompt=prompt,
        payload=PAYLOAD,
        signal={"id": "go", "provider": "http", "workspaceId": "ws-1"},
        session=dict(SESSION),
        results=RESULTS,
        _progress_sink=chunks,
    )


def variables(input_value: Any = None) -> dict[str, Any]:
    return {
        "signal": {"id": "go", "provider": "http", "workspaceId": "ws-1"},
        "payload": PAYLOAD,
        "results": RESULTS,
        "session": SESSION,
        "input": input_value,
    }


def agent(fake: FakeOpenAI, **config: Any) -> LlmAgent:
    config = {"base_url": fake.base_url, "model": "gpt-test", "prompt": "Say hi", **config}
    return LlmAgent.model_validate({"type": "llm", "config": config})


async def call(
    target: LlmAgent, tmp_path: Path, chunks: Chunks, templater: Templater, **ctx_args: Any
) -> tuple[Any, dict[str, Any] | None]:
    ctx = make_ctx(tmp_path, chunks, **ctx_args)
    return await run_agent_with_usage(target, ctx, templater, variables(ctx.input))


def user_message(fake: FakeOpenAI, index: int = 0) -> str:
    messages = fake.requests[index].json["messages"]
    return str(messages[-1]["content"])


def system_message(fake: FakeOpenAI, index: int = 0) -> str | None:
    messages = fake.requests[index].json["messages"]
    return str(messages[0]["content"]) if messages[0]["role"] == "system" else None


# ---------------------------------------------------------------- streaming and usage


async def test_streams_text_deltas_in_order_and_returns_the_text(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=["Hel", "lo, ", "wor", "ld!"]))
    output, usage = await call(agent(fake), tmp_path, chunks, templater)
    assert output == "Hello, world!"
    assert [chunk["delta"] for chunk in chunks.of_type("text-delta")] == ["Hel", "lo, ", "wor", "ld!"]
    assert usage is None  # the fake reported none: no usage is invented
    [request] = fake.requests
    assert request.path == "/v1/chat/completions"
    assert request.json["stream"] is True
    assert request.json["stream_options"] == {"include_usage": True}
    assert request.json["model"] == "gpt-test"
    assert "Authorization" not in request.headers  # no api_key_env: a keyless local server


async def test_usage_is_reported_with_the_served_model(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(
        FakeResponse(
            chunks=["ok"],
            model="gpt-test-2025",
            usage={"prompt_tokens": 12, "completion_tokens": 5, "total_tokens": 17},
        )
    )
    output, usage = await call(agent(fake, temperature=0.2, max_tokens=64), tmp_path, chunks, templater)
    assert output == "ok"
    assert usage == {"inputTokens": 12, "outputTokens": 5, "model": "gpt-test-2025"}
    body = fake.requests[0].json
    assert body["temperature"] == 0.2
    assert body["max_tokens"] == 64
    assert "response_format" not in body


async def test_run_agent_keeps_returning_only_the_output(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=["plain"], usage={"prompt_tokens": 1, "completion_tokens": 1}))
    ctx = make_ctx(tmp_path, chunks)
    assert await run_agent(agent(fake), ctx, templater, variables()) == "plain"


async def test_inline_action_uses_default_base_url_and_its_prompt_once(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    action = LlmAction.model_validate(
        {"type": "llm", "model": "gpt-inline", "prompt": "About {{ payload.topic }}", "outputTo": "answer"}
    )
    cfg = LlmCallConfig.from_action(action)
    assert cfg.timeout == llm.DEFAULT_TIMEOUT
    fake.enqueue(FakeResponse(chunks=["fine"], usage={"prompt_tokens": 3, "completion_tokens": 1}))
    # the engine renders the action prompt into ctx.prompt for step:start; it must not be sent twice
    ctx = make_ctx(tmp_path, chunks, prompt="About otters")
    result = await run_llm(cfg, ctx, templater, variables(), default_base_url=fake.base_url)
    assert result.output == "fine"
    assert result.usage == {"inputTokens": 3, "outputTokens": 1, "model": "fake-model"}
    assert user_message(fake) == "About otters"


async def test_missing_base_url_fails_with_llm_error(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    target = LlmAgent.model_validate({"type": "llm", "config": {"model": "m", "prompt": "hi"}})
    with pytest.raises(StepError) as info:
        await call(target, tmp_path, chunks, templater)
    assert info.value.code == "llm_error"
    assert "base_url" in info.value.message


# ---------------------------------------------------------------- templating


async def test_prompt_and_system_are_rendered_over_payload_results_and_input(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    target = agent(
        fake,
        prompt="Write {{ payload.count }} lines about {{ payload.topic }} for {{ results.fetch.title }} ({{ input }})",
        system="You serve session {{ session.id }}.",
    )
    fake.enqueue(FakeResponse(chunks=["done"]))
    await call(target, tmp_path, chunks, templater, input_value="extra", prompt="Be brief.")
    assert user_message(fake) == "Write 3 lines about otters for Rivers (extra)\n\nBe brief."
    assert system_message(fake) == "You serve session sess-1."


async def test_a_native_template_value_is_sent_as_json(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=["ok"]))
    await call(agent(fake, prompt="{{ payload }}"), tmp_path, chunks, templater)
    assert json.loads(user_message(fake)) == PAYLOAD


async def test_a_template_error_fails_with_template_error_before_any_request(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    with pytest.raises(StepError) as info:
        await call(agent(fake, prompt="{{ payload.nope }}"), tmp_path, chunks, templater)
    assert info.value.code == "template_error"
    assert fake.requests == []


# ---------------------------------------------------------------- retries and errors


async def test_429_then_200_is_retried(fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    fake.enqueue(
        FakeResponse(status=429, body={"error": {"message": "slow down"}}, headers={"Retry-After": "0"}),
        FakeResponse(chunks=["second ", "time"]),
    )
    output, _ = await call(agent(fake), tmp_path, chunks, templater)
    assert output == "second time"
    assert len(fake.requests) == 2
    assert fake.requests[0].json == fake.requests[1].json


async def test_5xx_is_retried_at_most_three_times(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(*[FakeResponse(status=500, body={"error": {"message": "boom"}}) for _ in range(4)])
    fake.enqueue(FakeResponse(chunks=["never reached"]))
    with pytest.raises(StepError) as info:
        await call(agent(fake), tmp_path, chunks, templater)
    assert info.value.code == "llm_error"
    assert "HTTP 500" in info.value.message and "boom" in info.value.message
    assert len(fake.requests) == 4  # one attempt and three retries
    assert chunks.of_type("text-delta") == []


async def test_4xx_is_not_retried(fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    fake.enqueue(FakeResponse(status=400, body={"error": {"message": "unknown model"}}))
    with pytest.raises(StepError) as info:
        await call(agent(fake), tmp_path, chunks, templater)
    assert info.value.code == "llm_error"
    assert "HTTP 400" in info.value.message and "unknown model" in info.value.message
    assert len(fake.requests) == 1


async def test_a_refused_connection_is_retried_then_fails(tmp_path: Path, chunks: Chunks, templater: Templater) -> None:
    with fake_openai_server() as gone:
        base_url = gone.base_url  # a port that nobody listens on once the server has stopped
    target = LlmAgent.model_validate({"type": "llm", "config": {"base_url": base_url, "model": "m", "prompt": "hi"}})
    with pytest.raises(StepError) as info:
        await call(target, tmp_path, chunks, templater)
    assert info.value.code == "llm_error"
    assert "after 3 retries" in info.value.message


# ---------------------------------------------------------------- credentials


async def test_missing_key_fails_with_missing_credentials_and_sends_nothing(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater, monkeypatch: pytest.MonkeyPatch
) -> None:
    for value in (None, ""):
        if value is None:
            monkeypatch.delenv(KEY_ENV, raising=False)
        else:
            monkeypatch.setenv(KEY_ENV, value)
        with pytest.raises(StepError) as info:
            await call(agent(fake, api_key_env=KEY_ENV), tmp_path, chunks, templater)
        assert info.value.code == "missing_credentials"
        assert KEY_ENV in info.value.message
    assert fake.requests == []


async def test_key_is_sent_as_bearer_and_redacted(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater, api_key: str
) -> None:
    fake.enqueue(FakeResponse(chunks=[f"the key is {api_key}"]))
    output, _ = await call(agent(fake, api_key_env=KEY_ENV), tmp_path, chunks, templater)
    headers = {name.lower(): value for name, value in fake.requests[0].headers.items()}
    assert headers["authorization"] == f"Bearer {api_key}"
    assert templater.redact(output) == "the key is ***"
    assert templater.redact({"headers": {"Authorization": f"Bearer {api_key}"}}) == {
        "headers": {"Authorization": "Bearer ***"}
    }


# ---------------------------------------------------------------- JSON output


PERSON_SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


async def test_output_schema_asks_for_json_and_returns_the_parsed_object(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=['{"name": "Ada",', ' "age": 36}']))
    output, _ = await call(agent(fake, output_schema=PERSON_SCHEMA), tmp_path, chunks, templater)
    assert output == {"name": "Ada", "age": 36}
    body = fake.requests[0].json
    assert body["response_format"] == {"type": "json_object"}
    system = system_message(fake)
    assert system is not None and "JSON" in system and '"required"' in system


async def test_response_format_json_without_schema(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=["```json\n[1, 2, 3]\n```"]))
    output, _ = await call(agent(fake, response_format="json", system="Be exact."), tmp_path, chunks, templater)
    assert output == [1, 2, 3]
    assert fake.requests[0].json["response_format"] == {"type": "json_object"}
    system = system_message(fake)
    assert system is not None and system.startswith("Be exact.\n\n")


async def test_json_that_fails_the_schema_is_invalid_output_with_every_error(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=['{"name": 7, "age": -1, "extra": true}']))
    with pytest.raises(StepError) as info:
        await call(agent(fake, output_schema=PERSON_SCHEMA), tmp_path, chunks, templater)
    error = info.value
    assert error.code == "invalid_output"
    assert error.output == {"name": 7, "age": -1, "extra": True}
    assert "3 error(s)" in error.message
    assert "$.name: 7 is not of type 'string'" in error.message
    assert "$.age: -1 is less than the minimum of 0" in error.message
    assert "'extra' was unexpected" in error.message


async def test_non_json_answer_with_output_schema_is_llm_error(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=["Sure! Ada is 36."]))
    with pytest.raises(StepError) as info:
        await call(agent(fake, output_schema=PERSON_SCHEMA), tmp_path, chunks, templater)
    assert info.value.code == "llm_error"
    assert "unparseable JSON" in info.value.message


async def test_an_invalid_schema_fails_before_the_request(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    with pytest.raises(StepError) as info:
        await call(agent(fake, output_schema={"type": "no-such-type"}), tmp_path, chunks, templater)
    assert info.value.code == "llm_error"
    assert "invalid output_schema" in info.value.message
    assert fake.requests == []


async def test_provider_options_stream_false_asks_for_one_json_completion(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    completion = {
        "object": "chat.completion",
        "model": "plain-json",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "whole answer"}}],
        "usage": {"prompt_tokens": 4, "completion_tokens": 2},
    }
    fake.enqueue(FakeResponse(body=completion))
    output, usage = await call(agent(fake, provider_options={"stream": False, "top_p": 0.5}), tmp_path, chunks,
                               templater)
    body = fake.requests[0].json
    assert "stream" not in body and body["top_p"] == 0.5  # the other options go into the body unchanged
    assert output == "whole answer"
    assert usage == {"inputTokens": 4, "outputTokens": 2, "model": "plain-json"}
    assert [chunk["delta"] for chunk in chunks.of_type("text-delta")] == ["whole answer"]


# ---------------------------------------------------------------- timeout and cancellation


async def test_cancellation_mid_stream_aborts_the_request(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=["first ", "second"], hold=True))
    task = asyncio.create_task(call(agent(fake), tmp_path, chunks, templater))
    await chunks.wait_for(lambda chunk: chunk.get("delta") == "second")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # the server sees the connection closed: the request was aborted, not left running
    assert await asyncio.to_thread(fake.client_gone.wait, 10)
    assert [chunk["delta"] for chunk in chunks.of_type("text-delta")] == ["first ", "second"]


async def test_a_silent_server_times_out_with_llm_error(
    fake: FakeOpenAI, tmp_path: Path, chunks: Chunks, templater: Templater
) -> None:
    fake.enqueue(FakeResponse(chunks=["partial"], hold=True))
    with pytest.raises(StepError) as info:
        await call(agent(fake, timeout="300ms"), tmp_path, chunks, templater)
    assert info.value.code == "llm_error"
    assert "timed out after 300ms" in info.value.message
    assert len(fake.requests) == 1
