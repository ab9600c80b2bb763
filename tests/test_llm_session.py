"""An llm agent and an inline llm action inside a real daemon, against a fake OpenAI-compatible server on
127.0.0.1 (the provider is outside this machine): usage on step:complete, outputs stored, key redacted
(spec §2.5, §13 item 7)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.fake_openai import FakeOpenAI, FakeResponse, fake_openai_server
from tests.test_api_core import assert_error, post, wait_terminal

KEY = "sk-test-secret-value-1234567890"


@pytest.fixture(scope="module")
def llm_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, FakeOpenAI]]:
    with fake_openai_server() as fake:
        home: Path = tmp_path_factory.mktemp("llm-home")
        env = {"ATLAS_LLM_BASE_URL": fake.base_url, "ATLAS_TEST_LLM_KEY": KEY}
        d = DaemonProcess(home, [FIXTURES / "llm"], env).start()
        try:
            yield d, fake
        finally:
            d.stop()


def test_llm_steps_record_usage_and_outputs(llm_env: tuple[DaemonProcess, FakeOpenAI]) -> None:
    d, fake = llm_env
    fake.enqueue(
        FakeResponse(chunks=["Ducks ", "are ", "calm."], usage={"prompt_tokens": 11, "completion_tokens": 3},
                     model="gpt-test"),
        FakeResponse(chunks=["DUCKS ARE CALM!"], usage={"prompt_tokens": 7, "completion_tokens": 4},
                     model="gpt-test"),
    )
    r = post(d, "llmws", "ask", {"payload": {"topic": "ducks"}}, query="")
    assert r.status_code == 200, r.text
    assert r.json()["output"] == {"line": "Ducks are calm.", "shout": "DUCKS ARE CALM!"}
    view = wait_terminal(d, r.json()["sessionId"])
    first, second = view["agentBlocks"]
    assert first["usage"] == {"inputTokens": 11, "outputTokens": 3, "model": "gpt-test"}
    assert second["usage"] == {"inputTokens": 7, "outputTokens": 4, "model": "gpt-test"}
    assert second["actionType"] == "llm" and second["agentName"] == "shout"
    sent = fake.requests
    assert sent[0].json["messages"][-1]["content"].endswith("Write about ducks")
    assert sent[1].json["messages"][-1]["content"] == "Shout Ducks are calm."
    headers = {k.lower(): v for k, v in sent[0].headers.items()}
    assert headers["authorization"] == f"Bearer {KEY}"
    assert KEY not in d.log()
    events = httpx.get(f"{d.url}/api/sessions/{view['sessionId']}").text
    assert KEY not in events


def test_missing_key_fails_with_missing_credentials(llm_env: tuple[DaemonProcess, FakeOpenAI]) -> None:
    d, fake = llm_env
    before = len(fake.requests)
    err = assert_error(post(d, "llmws", "nokey", {}, query=""), 422, "session_failed")
    assert err["details"]["errorCode"] == "missing_credentials"
    assert len(fake.requests) == before
