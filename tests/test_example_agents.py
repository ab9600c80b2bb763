"""examples/agents end to end (issue #14, item 8 and "Done when"): the example workspace, loaded unedited by a
real atlasd, runs its Friday-format llm agent against the scripted model server, and the agent calls the REAL
`mcp-server-time` (the PyPI server the example names) over stdio, gets its result and answers with it — through
the OpenAI Chat Completions wire format (the example's own `provider: openai`) and the Anthropic Messages one
(a copy of the example whose only changes are `provider`, `model` and the workspace name, so both load in one
daemon under different ids).

The model is the only fake: the provider's base-URL variable points the SDK at it, with a dummy key.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.daemon_proc import ATLAS, ROOT, DaemonProcess
from tests.fake_models import FakeModels, Recorded, Reply, ToolCall, fake_models
from tests.test_api_core import post, wait_terminal
from tests.test_event_schemas import durable_events

EXAMPLE = ROOT / "examples" / "agents"
OPENAI_KEY = "sk-example-dummy-openai-0123456789"
ANTHROPIC_KEY = "sk-ant-example-dummy-0123456789"
QUESTION = "What time is it in UTC?"
ANSWER = "It is {} in UTC."
# workspace id by wire format: the example itself, and its copy switched to Anthropic
WORKSPACES = {"openai": "agents", "anthropic": "agents-anthropic"}


def anthropic_copy(dest: Path) -> Path:
    """The example with `provider: anthropic`: the same file, three values changed, nothing else."""
    dest.mkdir(parents=True)
    text = (EXAMPLE / "workspace.yml").read_text()
    for old, new in (("provider: openai", "provider: anthropic"), ("model: gpt-4o-mini", "model: claude-sonnet-4-5"),
                     ("name: Agents\n", "name: Agents Anthropic\n")):
        assert text.count(old) == 1, f"the example no longer has exactly one {old!r}"
        text = text.replace(old, new)
    (dest / "workspace.yml").write_text(text)
    return dest


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DaemonProcess, FakeModels]]:
    tmp = tmp_path_factory.mktemp("example-agents")
    with fake_models() as fake:
        env = {
            "OPENAI_BASE_URL": fake.openai_url,
            "OPENAI_API_KEY": OPENAI_KEY,
            "ANTHROPIC_BASE_URL": fake.anthropic_url,
            "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        }
        # a copy of the example directory would do as well; the example itself proves that it loads unedited
        d = DaemonProcess(tmp / "home", [EXAMPLE, anthropic_copy(tmp / "agents-anthropic")], env)
        try:
            d.start(timeout=60)
        except BaseException:
            print(d.log())
            d.stop()
            raise
        try:
            yield d, fake
        finally:
            d.stop()


def test_example_has_no_atlas_only_key() -> None:
    """The example is the Friday format: every agent key is one the reference has (no base_url, api_key_env…)."""
    text = (EXAMPLE / "workspace.yml").read_text()
    atlas_only = ("base_url:", "api_key_env:", "system:", "response_format:", "output_schema:", "max_total_tokens:")
    assert [key for key in atlas_only if key in text] == []


def tool_result_text(request: Recorded) -> str:
    """The tool result the second model request carries back, in either wire format."""
    messages = request.json["messages"]
    if request.format == "openai":
        tool_messages = [m for m in messages if m.get("role") == "tool"]
        assert len(tool_messages) == 1, messages
        content = tool_messages[0]["content"]
    else:
        blocks = [b for m in messages if isinstance(m.get("content"), list) for b in m["content"]
                  if b.get("type") == "tool_result"]
        assert len(blocks) == 1, messages
        content = blocks[0]["content"]
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content)
    assert isinstance(content, str)
    return content


def offered_tools(request: Recorded) -> set[str]:
    tools: list[dict[str, Any]] = request.json.get("tools") or []
    if request.format == "openai":
        return {t["function"]["name"] for t in tools}
    return {t["name"] for t in tools}


@pytest.mark.parametrize("wire", ["openai", "anthropic"])
def test_example_agent_calls_mcp_server_time(example: tuple[DaemonProcess, FakeModels], wire: str) -> None:
    d, fake = example
    before = len(fake.requests)
    fake.enqueue(
        Reply(tool_calls=[ToolCall("get_current_time", {"timezone": "UTC"})], usage=(40, 12)),
        Reply(text=["It is ", "now ", "in UTC."], usage=(90, 8)),
    )
    r = post(d, WORKSPACES[wire], "ask", {"payload": {"question": QUESTION}}, query="")
    assert r.status_code == 200, r.text + d.log()
    sid = r.json()["sessionId"]
    view = wait_terminal(d, sid, timeout=60)
    assert view["status"] == "completed", view
    assert fake.pending == 0

    # the model: two requests in this wire format, the tools offered, the tool result sent back
    first, second = fake.requests[before:]
    assert first.format == second.format == wire
    assert offered_tools(first) == {"get_current_time", "convert_time"}
    assert QUESTION in json.dumps(first.json["messages"])  # the trigger payload is the user message
    result_text = tool_result_text(second)
    assert json.loads(result_text)["timezone"] == "UTC"

    # the record: step:complete carries the call, with the real server's answer
    completes = [e for e in durable_events(d, sid) if e["type"] == "step:complete"]
    assert len(completes) == 1
    step = completes[0]
    assert step["output"] == "It is now in UTC."
    [call] = step["toolCalls"]
    assert call["toolName"] == "get_current_time"
    assert call["args"] == {"timezone": "UTC"}
    assert call["server"] == "time"
    assert "UTC" in json.dumps(call["result"])
    assert "error" not in call
    assert isinstance(call["durationMs"], int | float) and call["durationMs"] >= 0
    assert step["usage"]["inputTokens"] == 130 and step["usage"]["outputTokens"] == 20

    # the view the run page draws shows the call too, and no key is recorded anywhere
    [block] = view["agentBlocks"]
    assert [c["toolName"] for c in block["toolCalls"]] == ["get_current_time"]
    everything = json.dumps(durable_events(d, sid)) + d.log()
    assert OPENAI_KEY not in everything and ANTHROPIC_KEY not in everything


def test_readme_command_prints_the_tool_call(example: tuple[DaemonProcess, FakeModels]) -> None:
    """The README's `atlas signal trigger ask -w agents -d …` follows the run and prints the call and its result."""
    d, fake = example
    fake.enqueue(Reply(tool_calls=[ToolCall("get_current_time", {"timezone": "Asia/Tokyo"})]),
                 Reply(text=["It is late in Tokyo."]))
    argv = [ATLAS, "signal", "trigger", "ask", "-w", "agents", "-d", json.dumps({"question": "Time in Tokyo?"}),
            "--url", d.url]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert '→ tool get_current_time {"timezone":"Asia/Tokyo"} (server time)' in r.stdout, r.stdout
    assert "← get_current_time" in r.stdout and "Asia/Tokyo" in r.stdout.split("← get_current_time", 1)[1]
    assert "It is late in Tokyo." in r.stdout
