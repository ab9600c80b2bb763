"""`GET /metrics` (issue #18, item 1) scraped over HTTP from a real atlasd and parsed with Prometheus's own text
parser, after a known sequence of runs: a held run (the active gauge), three completed, one failed, one refused by
its signal's schema and one `llm` step on the scripted model server that calls a tool of a real MCP server. Every
count is exact. The endpoint sits behind the API's checks: a foreign Host or Origin is refused, and a configured
token is needed.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.daemon_proc import DaemonProcess, wait_for
from tests.fake_models import FakeModels, Reply, ToolCall
from tests.mcp_servers import REPO, tools_server_argv

TOKEN = "metrics-test-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
LLM_KEY = "sk-metrics-test-0123456789"

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def workspace(root: Path, fake: FakeModels, gate: Path) -> Path:
    """A workspace with one job per kind of run the test makes (JSON is YAML: no quoting to get wrong)."""
    argv = tools_server_argv("stdio")
    hold = f"import os, time\nwhile not os.path.exists({str(gate)!r}): time.sleep(0.01)"
    config = {
        "version": "1.0",
        "workspace": {"id": "metrics", "name": "Metrics"},
        "signals": {
            "ok": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/ok"}},
            "boom": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/boom"}},
            "hold": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/hold"}},
            "typed": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/typed"},
                      "schema": {"type": "object", "required": ["n"], "properties": {"n": {"type": "integer"}}}},
            "ask": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/ask"}},
        },
        "tools": {"mcp": {"servers": {"t": {
            "transport": {"type": "stdio", "command": argv[0], "args": argv[1:]},
            "env": {"PYTHONPATH": str(REPO)},
        }}}},
        "agents": {
            "fail": {"type": "shell", "config": {"command": [sys.executable, "-c", "raise SystemExit(3)"]}},
            "wait": {"type": "shell", "config": {"command": [sys.executable, "-c", hold]}},
            "adder": {"type": "llm", "config": {
                "provider": "openai", "base_url": fake.openai_url, "api_key_env": "ATLAS_TEST_LLM_KEY",
                "model": "m", "prompt": "Add the numbers", "tools": ["add"]}},
        },
        "jobs": {
            "ok": {"triggers": [{"signal": "ok"}], "execution": {"strategy": "sequential", "agents": ["atlas/echo"]}},
            "boom": {"triggers": [{"signal": "boom"}], "execution": {"strategy": "sequential", "agents": ["fail"]}},
            "hold": {"triggers": [{"signal": "hold"}], "execution": {"strategy": "sequential", "agents": ["wait"]}},
            "typed": {"triggers": [{"signal": "typed"}],
                      "execution": {"strategy": "sequential", "agents": ["atlas/echo"]}},
            "ask": {"triggers": [{"signal": "ask"}], "execution": {"strategy": "sequential", "agents": ["adder"]}},
        },
    }
    path = root / "ws"
    path.mkdir()
    (path / "workspace.yml").write_text(json.dumps(config, indent=1))
    return path


@pytest.fixture
def gate(tmp_path: Path) -> Path:
    return tmp_path / "release-the-held-run"


@pytest.fixture
def daemon(tmp_path: Path, fake: FakeModels, gate: Path) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path / "home", [workspace(tmp_path, fake, gate)],
                      env={"ATLAS_TOKEN": TOKEN, "ATLAS_TEST_LLM_KEY": LLM_KEY}).start()
    try:
        yield d
    finally:
        d.stop()


def scrape(d: DaemonProcess) -> Samples:
    r = httpx.get(d.url + "/metrics", headers=AUTH, timeout=10)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    assert TOKEN not in r.text and LLM_KEY not in r.text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    """A sample's value; 0 for a series that does not exist (yet)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples: Samples, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    return {labels: v for (n, labels), v in samples.items() if n == name}


def trigger(d: DaemonProcess, signal: str, payload: object = None, nowait: bool = False) -> httpx.Response:
    query = "?nowait=true" if nowait else ""
    return httpx.post(f"{d.url}/api/workspaces/metrics/signals/{signal}{query}", json={"payload": payload or {}},
                      headers=AUTH, timeout=60)


def test_metrics_after_a_known_sequence_of_runs(daemon: DaemonProcess, fake: FakeModels, gate: Path) -> None:
    # A run held in its step: the gauges show it active while it runs.
    held = trigger(daemon, "hold", nowait=True)
    assert held.status_code == 202, held.text
    wait_for(lambda: value(scrape(daemon), "atlas_sessions", status="active", workspace="metrics") == 1,
             what="the held run counted active")
    assert value(scrape(daemon), "atlas_sessions", status="queued", workspace="metrics") == 0
    gate.touch()

    for n in range(3):
        r = trigger(daemon, "ok", {"n": n})
        assert r.status_code == 200 and r.json()["status"] == "completed", r.text
    failed = trigger(daemon, "boom")
    assert failed.json()["error"]["details"]["status"] == "failed", failed.text
    refused = trigger(daemon, "typed", {"n": "not a number"})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == "payload_invalid"
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3})], usage=(11, 4)),
                 Reply(text=["5"], usage=(17, 2)))
    asked = trigger(daemon, "ask")
    assert asked.status_code == 200 and asked.json()["output"], asked.text

    wait_for(lambda: value(scrape(daemon), "atlas_sessions_ended_total", status="completed") == 5,
             what="the held run ended")
    m = scrape(daemon)
    # Triggers: six accepted (hold, 3 ok, boom, ask), one refused by the schema.
    assert series(m, "atlas_triggers_total") == {
        (("code", ""), ("outcome", "accepted")): 6,
        (("code", "payload_invalid"), ("outcome", "refused")): 1,
    }
    assert value(m, "atlas_accept_seconds_count") == 6
    # Sessions: five completed, one failed; nothing queued or active any more.
    assert series(m, "atlas_sessions_ended_total") == {(("status", "completed"),): 5, (("status", "failed"),): 1}
    assert series(m, "atlas_sessions") == {}
    assert value(m, "atlas_queue_wait_seconds_count") == 6
    assert {labels: v for labels, v in series(m, "atlas_session_seconds_count").items()} == {
        (("job", "ok"),): 3, (("job", "boom"),): 1, (("job", "hold"),): 1, (("job", "ask"),): 1,
    }
    # Steps, by agent type: atlas/echo is a built-in, `fail` and `wait` are shell agents, `adder` an llm agent.
    assert series(m, "atlas_step_seconds_count") == {
        (("agent_type", "builtin"),): 3, (("agent_type", "shell"),): 2, (("agent_type", "llm"),): 1,
    }
    # The llm step: two model turns (the tool call, then the answer), their tokens, one tool call on server `t`.
    assert series(m, "atlas_model_calls_total") == {(("model", "m"), ("outcome", "ok"), ("provider", "openai")): 2}
    assert value(m, "atlas_model_call_seconds_count", provider="openai", model="m") == 2
    assert value(m, "atlas_model_tokens_total", provider="openai", model="m", direction="input") == 28
    assert value(m, "atlas_model_tokens_total", provider="openai", model="m", direction="output") == 6
    assert series(m, "atlas_tool_calls_total") == {(("outcome", "ok"), ("server", "t")): 1}
    assert value(m, "atlas_tool_call_seconds_count", server="t") == 1
    # The bus had no trouble; the read model wrote rows (each row's lag observed once per commit).
    assert series(m, "atlas_bus_publish_errors_total") == {}
    assert value(m, "atlas_bus_reconnects_total") == 0
    assert value(m, "atlas_readmodel_write_lag_seconds_count") > 0
    # No label names a session or a correlation.
    sids = {held.json()["sessionId"], asked.json()["sessionId"]}
    assert not any(v in sids for (_, labels) in m for _, v in labels)


def test_metrics_is_behind_the_api_checks(daemon: DaemonProcess) -> None:
    url = daemon.url + "/metrics"
    no_token = httpx.get(url, timeout=10)
    assert no_token.status_code == 401 and no_token.json()["error"]["code"] == "unauthorized"
    wrong = httpx.get(url, headers={"Authorization": "Bearer nope"}, timeout=10)
    assert wrong.status_code == 401
    foreign_host = httpx.get(url, headers={**AUTH, "Host": "evil.example"}, timeout=10)
    assert foreign_host.status_code == 403 and foreign_host.json()["error"]["code"] == "host_not_allowed"
    foreign_origin = httpx.get(url, headers={**AUTH, "Origin": "http://evil.example"}, timeout=10)
    assert foreign_origin.status_code == 403 and foreign_origin.json()["error"]["code"] == "forbidden_origin"
    assert httpx.get(url, headers=AUTH, timeout=10).status_code == 200
    # OpenMetrics for a scraper that asks for it (prometheus-client negotiates the format).
    om = httpx.get(url, headers={**AUTH, "Accept": "application/openmetrics-text; version=1.0.0"}, timeout=10)
    assert om.headers["content-type"].startswith("application/openmetrics-text") and om.text.endswith("# EOF\n")
