"""Structured logs (issue #18, item 3): `ATLAS_LOG_FORMAT=json` on a real atlasd.

The run's model server first answers 500 with an error message that echoes the API key (as real providers do for a
bad key); the daemon logs the retry inside the session's work. That line must be JSON, carry the session's ids, and
show the key redacted. Every line the daemon writes must be one JSON object.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.config.settings import Settings
from tests.daemon_proc import DaemonProcess, wait_for
from tests.fake_models import FakeModels, Reply

LLM_KEY = "sk-json-logs-test-0123456789abcdef"


def workspace(root: Path, fake: FakeModels) -> Path:
    config = {
        "version": "1.0",
        "workspace": {"id": "logs", "name": "Logs"},
        "signals": {"ask": {"provider": "http", "concurrency": "concurrent", "config": {"path": "/ask"}}},
        "agents": {"writer": {"type": "llm", "config": {
            "provider": "openai", "base_url": fake.openai_url, "api_key_env": "ATLAS_TEST_LLM_KEY",
            "model": "m", "prompt": "Say hi"}}},
        "jobs": {"ask": {"triggers": [{"signal": "ask"}],
                         "execution": {"strategy": "sequential", "agents": ["writer"]}}},
    }
    path = root / "ws"
    path.mkdir()
    (path / "workspace.yml").write_text(json.dumps(config, indent=1))
    return path


def lines(d: DaemonProcess) -> list[dict[str, Any]]:
    text = d.log_path.read_text(errors="replace")
    return [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is one JSON object


def test_json_log_lines_carry_the_session_and_no_secret(tmp_path: Path, fake: FakeModels) -> None:
    fake.enqueue(Reply(status=500, body={"error": {"message": f"upstream failed for key {LLM_KEY}",
                                                   "type": "api_error"}}),
                 Reply(text=["hi"]))
    d = DaemonProcess(tmp_path / "home", [workspace(tmp_path, fake)],
                      env={"ATLAS_LOG_FORMAT": "json", "ATLAS_TEST_LLM_KEY": LLM_KEY}).start()
    try:
        r = httpx.post(f"{d.url}/api/workspaces/logs/signals/ask", json={"payload": {}}, timeout=60)
        assert r.status_code == 200 and r.json()["output"] == {"writer": "hi"}, r.text
        sid, correlation = r.json()["sessionId"], r.json()["correlationId"]

        def retry_line() -> dict[str, Any] | None:
            return next((e for e in lines(d) if "model request failed" in e["message"]), None)

        entry = wait_for(retry_line, 20, what="the retry's log line")
    finally:
        assert d.stop() == 0, d.log()

    assert entry["sessionId"] == sid and entry["correlationId"] == correlation and entry["workspaceId"] == "logs"
    assert entry["level"] == "info" and entry["logger"] == "atlas.llm.retry"
    assert entry["ts"].endswith("Z") and "T" in entry["ts"]
    assert "upstream failed for key ***" in entry["message"]
    every = lines(d)
    assert LLM_KEY not in d.log_path.read_text()
    ready = next(e for e in every if e["message"].startswith("atlasd ") and "ready" in e["message"])  # no session
    assert ready["logger"] == "atlas.daemon" and "sessionId" not in ready


def test_an_unknown_log_format_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATLAS_LOG_FORMAT", "xml")
    with pytest.raises(ValueError, match="ATLAS_LOG_FORMAT"):
        Settings.from_env()
    monkeypatch.setenv("ATLAS_LOG_FORMAT", "JSON")
    assert Settings.from_env().log_format == "json"
