"""Friday workspace files load unedited, and the parity fixes of issue #14.

Reference-format files (tests/fixtures/friday/) load with one warning per key of Friday's schema that atlas does not
implement, positioned like errors; a key in neither schema is still an error. A job that needs an agent atlas lacks
refuses triggers with 422 `agent_unavailable` before anything is written. Parity: an FSM whose initial state is
final ends `skipped`; `skipStates` and `bypassConcurrency` are envelope keys; `GET /api/sessions` ignores unknown
query parameters. The API tests run against a real daemon (real nats-server, HTTP, SQLite).
"""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.config.loader import LoadedWorkspace, load_workspace
from atlas.runtime.workspaces import compile_workspace
from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess, wait_for

FRIDAY = FIXTURES / "friday"
TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}

# The "copy this shape" example: every warning, as (line, column, path).
SQLITE_AGENTS_WARNINGS = [
    (6, 3, "workspace.version"),
    (8, 5, "workspace.timeout.progressTimeout"),
    (15, 1, "permissions"),
    (17, 1, "skills"),
    (67, 7, "agents.reader.config.success"),
    (86, 15, "jobs.record-item.fsm.states.write.entry[0].outputType"),
]

# One key per level of Friday's schema that atlas lacks (tests/fixtures/friday/every-key/workspace.yml).
EVERY_KEY_WARNINGS = [
    (5, 3, "workspace.version"),
    (6, 14, "workspace.timeout.progressTimeout"),
    (7, 1, "server"),
    (8, 1, "communicators"),
    (9, 1, "notifications"),
    (10, 1, "federation"),
    (11, 1, "improvement"),
    (12, 1, "delegation"),
    (13, 1, "validation"),
    (14, 1, "artifacts"),
    (21, 55, "tools.mcp.servers.notes.auth.header"),
    (23, 22, "tools.mcp.servers.legacy.transport.type"),
    (26, 17, "tools.mcp.servers.keyed.auth.type"),
    (29, 12, "signals.inbox.provider"),
    (31, 62, "agents.echo.prompt"),
    (31, 81, "agents.echo.env"),
    (39, 7, "agents.thinker.config.success"),
    (40, 7, "agents.thinker.config.error"),
    (43, 5, "jobs.flow.name"),
    (44, 5, "jobs.flow.entrypoint"),
    (45, 5, "jobs.flow.context"),
    (46, 5, "jobs.flow.prompt"),
    (47, 5, "jobs.flow.inputs"),
    (48, 5, "jobs.flow.skills"),
    (49, 5, "jobs.flow.success"),
    (50, 5, "jobs.flow.error"),
    (51, 5, "jobs.flow.outputs"),
    (52, 5, "jobs.flow.improvement_key_convention"),
    (53, 5, "jobs.flow.scope_exclusions"),
    (54, 5, "jobs.flow.improvement"),
    (55, 5, "jobs.flow.concurrency"),
    (56, 30, "jobs.flow.triggers[0].condition"),
    (57, 28, "jobs.flow.config.supervision"),
    (57, 61, "jobs.flow.config.targetWorkspaceId"),
    (61, 7, "jobs.flow.fsm.documentTypes"),
    (62, 7, "jobs.flow.fsm.functions"),
    (63, 7, "jobs.flow.fsm.tools"),
    (66, 11, "jobs.flow.fsm.states.idle.documents"),
    (68, 33, "jobs.flow.fsm.states.idle.on.go.guards"),
    (71, 63, "jobs.flow.fsm.states.work.entry[0].outputType"),
    (71, 81, "jobs.flow.fsm.states.work.entry[0].skills"),
    (71, 93, "jobs.flow.fsm.states.work.entry[0].summary"),
    (72, 17, "jobs.flow.fsm.states.work.entry[0].validate"),
    (73, 89, "jobs.flow.fsm.states.work.entry[1].run_code"),
    (74, 17, "jobs.flow.fsm.states.work.entry[2].type"),
    (75, 17, "jobs.flow.fsm.states.work.entry[3].type"),
    (84, 7, "jobs.listen.execution.context"),
    (85, 28, "jobs.listen.execution.agents[0].nickname"),
    (85, 41, "jobs.listen.execution.agents[0].context"),
    (85, 68, "jobs.listen.execution.agents[0].dependencies"),
    (85, 86, "jobs.listen.execution.agents[0].tools"),
]


def positions(loaded: LoadedWorkspace) -> list[tuple[int, int, str]]:
    return [(w.line, w.column, w.path) for w in loaded.warnings]


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workspace.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


# ---------------------------------------------------------------- loading


def test_the_sqlite_agents_example_loads_with_exactly_its_warnings() -> None:
    """Friday's own shape (an SQLite MCP server over stdio, two `type: llm` agents with `provider`, `tools` and
    `max_steps`, plus memory, permissions and skills) loads; what atlas lacks warns, and the model never holds it.
    Its `memory` is atlas's too (issue #17): it loads without a warning."""
    loaded = load_workspace(FRIDAY / "sqlite-agents")
    assert loaded.errors == []
    assert positions(loaded) == SQLITE_AGENTS_WARNINGS
    permissions = loaded.warnings[2]
    assert permissions.message == "'permissions' is ignored: atlas does not support permissions"
    assert permissions.file.endswith("tests/fixtures/friday/sqlite-agents/workspace.yml")
    assert loaded.config is not None
    dumped = loaded.config.model_dump(mode="json", by_alias=True)
    assert not {"permissions", "skills"} & set(dumped)
    assert dumped["memory"] == {"own": [{"name": "notes", "type": "long_term", "strategy": "narrative"}]}
    assert "version" not in dumped["workspace"] and "progressTimeout" not in dumped["workspace"]["timeout"]
    writer, reader = dumped["agents"]["writer"]["config"], dumped["agents"]["reader"]["config"]
    assert (writer["provider"], writer["tools"], writer["max_steps"]) == ("anthropic", ["create_table", "write_query"],
                                                                          5)
    assert reader["tools"] == ["read_query"] and "success" not in reader
    assert "outputType" not in dumped["jobs"]["record-item"]["fsm"]["states"]["write"]["entry"][0]
    sqlite = dumped["tools"]["mcp"]["servers"]["sqlite"]
    assert sqlite["transport"] == {"type": "stdio", "command": "mcp-server-sqlite", "args": ["--db-path", "./data.db"]}


def test_every_reference_key_warns_once_at_its_position() -> None:
    loaded = load_workspace(FRIDAY / "every-key")
    assert loaded.errors == []
    assert positions(loaded) == EVERY_KEY_WARNINGS
    assert len({w.path for w in loaded.warnings}) == len(loaded.warnings)
    by_path = {w.path: w.message for w in loaded.warnings}
    assert by_path["signals.inbox.provider"].startswith("atlas does not support provider 'slack': loaded as a "
                                                        "'system' signal")
    assert by_path["jobs.flow.fsm.states.work.entry[2].type"] == ("atlas does not support a `code` action: the "
                                                                  "action is ignored")
    assert "MCP server 'legacy' is not loaded" in by_path["tools.mcp.servers.legacy.transport.type"]
    config = loaded.config
    assert config is not None
    # What atlas keeps: the signal as a system one, the servers it can speak to, the actions it can run.
    assert config.signals["inbox"].provider == "system"
    assert config.tools.mcp is not None and list(config.tools.mcp.servers) == ["notes"]
    notes_auth = config.tools.mcp.servers["notes"].auth
    assert notes_auth is not None and notes_auth.token_env == "NOTES_TOKEN"
    job = config.jobs["flow"]
    assert job.fsm is not None and [a.type for a in job.fsm.states["work"].entry] == ["agent", "llm", "emit"]
    assert job.config.timeout == "1m"
    assert config.workspace.timeout.maxTotalTimeout == "5m"


def test_a_file_with_only_workspace_and_memory_is_valid(tmp_path: Path) -> None:
    """`version` may be left out (issue #14); Friday's files always have it, and then it must be "1.0"."""
    loaded = load_workspace(write(tmp_path, """\
        workspace: { name: Notes }
        memory: { own: [{ name: notes, type: long_term }] }
    """))
    assert loaded.errors == [] and loaded.config is not None and loaded.config.version == "1.0"
    assert positions(loaded) == []  # memory is atlas's own since issue #17
    assert [c.name for c in loaded.config.memory.own] == ["notes"]
    wrong = load_workspace(write(tmp_path, 'version: "2.0"\nworkspace: { name: Notes }\n'))
    assert [(e.line, e.column, e.path) for e in wrong.errors] == [(1, 1, "version")]


def test_execution_strategy_defaults_to_sequential_as_in_the_reference(tmp_path: Path) -> None:
    loaded = load_workspace(write(tmp_path, """\
        version: "1.0"
        workspace: { name: Pipeline }
        signals: { go: { provider: http, config: { path: /go } } }
        jobs:
          j: { triggers: [{ signal: go }], execution: { agents: [atlas/echo] } }
    """))
    assert loaded.errors == [] and loaded.warnings == [] and loaded.config is not None
    execution = loaded.config.jobs["j"].execution
    assert execution is not None and execution.strategy == "sequential"


def test_a_key_in_neither_schema_is_still_an_error(tmp_path: Path) -> None:
    loaded = load_workspace(write(tmp_path, """\
        version: "1.0"
        workspace: { name: Mixed }
        permissions: {}
        memoryz: {}
        signals: { go: { provider: http, config: { path: /go } } }
        jobs:
          j:
            triggers: [{ signal: go }]
            fsm:
              initial: a
              states:
                a: { entry: [{ type: agent, agentId: atlas/echo, outputType: t, outputTypo: t }] }
    """))
    assert [(e.line, e.column, e.path, e.message) for e in loaded.errors] == [
        (4, 1, "memoryz", "unknown key 'memoryz': did you mean 'memory'?"),
        (12, 73, "jobs.j.fsm.states.a.entry[0].outputTypo", "unknown key 'outputTypo': did you mean 'outputTo'?"),
    ]
    assert positions(loaded) == [(3, 1, "permissions"), (12, 58, "jobs.j.fsm.states.a.entry[0].outputType")]


def test_problems_after_an_ignored_action_point_at_the_file(tmp_path: Path) -> None:
    """An ignored action (`code`) is taken out of its list; errors about later actions still name their index and
    position in the file, from the model (a missing key) and from the cross-checks (an unknown agent) alike."""
    text = """\
        version: "1.0"
        workspace: { name: Shift }
        signals: { go: { provider: http, config: { path: /go } } }
        jobs:
          j:
            triggers: [{ signal: go }]
            fsm:
              initial: a
              states:
                a:
                  entry:
                    - { type: code, function: f }
                    - { type: notification, message: m }
                    - { type: agent, agentId: nobody }
                    - { type: emit, %s }
                b: { type: final }
    """
    structural = load_workspace(write(tmp_path, text % "evnt: X"))
    # The typo is one error (issue #16: the missing 'event' and the unknown 'evnt' merged).
    assert [(e.line, e.column, e.path) for e in structural.errors] == [(15, 29, "jobs.j.fsm.states.a.entry[3].evnt")]
    cross = load_workspace(write(tmp_path, text % "event: X"))
    assert [(e.line, e.column, e.path, e.message) for e in cross.errors] == [
        (14, 30, "jobs.j.fsm.states.a.entry[2].agentId",
         "unknown agent 'nobody' (known agents: atlas/sleep, atlas/echo, atlas/count)")]
    assert positions(cross) == [(12, 17, "jobs.j.fsm.states.a.entry[0].type"),
                                (13, 17, "jobs.j.fsm.states.a.entry[1].type")]


def test_agents_atlas_cannot_run_warn_and_mark_their_jobs() -> None:
    loaded = load_workspace(FRIDAY / "bundled")
    assert loaded.errors == []
    assert positions(loaded) == [(12, 5, "agents.web.agent"), (16, 5, "agents.conversation.type")]
    assert loaded.warnings[0].message == ("bundled agent 'web' is not available in atlas: jobs that use agent 'web' "
                                          "cannot run (a trigger answers 422 agent_unavailable)")
    assert loaded.unavailable_agents == {"web": "bundled agent 'web'", "conversation": "system agent 'conversation'"}
    assert loaded.config is not None and list(loaded.config.agents) == ["echo"]
    ws = compile_workspace(loaded)
    assert ws.unavailable == {"browse": ["web"], "converse": ["conversation"]}
    assert [w["path"] for w in ws.entry()["warnings"]] == ["agents.web.agent", "agents.conversation.type"]


# ---------------------------------------------------------------- atlas workspace validate


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([ATLAS, "workspace", "validate", *args], capture_output=True, text=True, timeout=60,
                          cwd=ROOT)


def test_validate_prints_warnings_and_exits_0_unless_there_are_errors(tmp_path: Path) -> None:
    r = validate("tests/fixtures/friday/sqlite-agents")
    assert r.returncode == 0, r.stdout + r.stderr
    file = "tests/fixtures/friday/sqlite-agents/workspace.yml"
    lines = r.stdout.splitlines()
    assert lines[2] == (f"warning: {file}:15:1: permissions: 'permissions' is ignored: "
                        "atlas does not support permissions")
    assert [line.split(": ", 2)[1] for line in lines[:-1]] == [
        f"{file}:{line}:{column}" for line, column, _ in SQLITE_AGENTS_WARNINGS]
    assert lines[-1] == f"ok: {file} (workspace 'sqlite-agents')"

    bad = write(tmp_path, 'version: "1.0"\nworkspace: { name: Bad }\nskills: []\nskillz: []\n')
    r = validate(str(bad))
    assert r.returncode == 5
    assert r.stdout.splitlines() == [
        f"warning: {bad}:3:1: skills: 'skills' is ignored: atlas does not support skills",
        f"{bad}:4:1: skillz: unknown key 'skillz'",
    ]

    r = validate("tests/fixtures/friday/sqlite-agents", "--json")
    assert r.returncode == 0
    body = json.loads(r.stdout)
    assert body["ok"] is True and body["errors"] == []
    assert [(w["line"], w["column"], w["path"]) for w in body["warnings"]] == SQLITE_AGENTS_WARNINGS
    assert set(body["warnings"][0]) == {"file", "line", "column", "path", "message"}


# ---------------------------------------------------------------- the API


@pytest.fixture(scope="module")
def friday(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    home: Path = tmp_path_factory.mktemp("atlas-home")
    proc = DaemonProcess(home, [FRIDAY / "sqlite-agents", FRIDAY / "bundled", FRIDAY / "parity"]).start()
    yield proc
    code = proc.stop()
    assert code == 0, f"daemon exited with {code}:\n{proc.log()}"


def trigger(d: DaemonProcess, ws: str, sig: str, body: Any, query: str = "?nowait=true",
            headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.post(f"{d.url}/api/workspaces/{ws}/signals/{sig}{query}", json=body, headers=headers, timeout=30)


def sessions(d: DaemonProcess, **params: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{d.url}/api/sessions", params=params, timeout=10)
    assert r.status_code == 200, r.text
    result: list[dict[str, Any]] = r.json()["sessions"]
    return result


def wait_terminal(d: DaemonProcess, sid: str) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        view: dict[str, Any] = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=5).json()
        return view if view.get("status") in TERMINAL else None

    result: dict[str, Any] = wait_for(done, 60, what=f"session {sid} to end")
    return result


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"] == code and body["error"]["message"]
    result: dict[str, Any] = body["error"]
    return result


def test_get_workspace_returns_its_warnings(friday: DaemonProcess) -> None:
    r = httpx.get(f"{friday.url}/api/workspaces/sqlite-agents", timeout=10)
    assert r.status_code == 200, r.text
    body = r.json()
    expected = [w.to_dict() for w in load_workspace((FRIDAY / "sqlite-agents").resolve()).warnings]
    assert body["warnings"] == expected
    assert [(w["line"], w["column"], w["path"]) for w in body["warnings"]] == SQLITE_AGENTS_WARNINGS
    assert not {"permissions", "skills"} & set(body["config"])
    listing = {w["id"]: w for w in httpx.get(f"{friday.url}/api/workspaces", timeout=10).json()}
    assert listing["sqlite-agents"]["warnings"] == expected and listing["parity"]["warnings"] == []


def test_a_job_using_an_agent_atlas_lacks_is_422_before_anything_is_written(friday: DaemonProcess) -> None:
    for query, headers in (("?nowait=true", None), ("", None), ("?nowait=true", {"Idempotency-Key": "k1"})):
        err = error(trigger(friday, "bundled", "browse", {}, query, headers), 422, "agent_unavailable")
        assert "'browse'" in err["message"] and "'web'" in err["message"]
        assert err["details"] == {"jobId": "browse", "agents": [{"id": "web", "agent": "bundled agent 'web'"}]}
    err = error(trigger(friday, "bundled", "converse", {"payload": {}}), 422, "agent_unavailable")
    assert err["details"]["agents"] == [{"id": "conversation", "agent": "system agent 'conversation'"}]
    assert sessions(friday, workspaceId="bundled", jobName="browse") == []
    assert sessions(friday, workspaceId="bundled", jobName="converse") == []
    # The key was never reserved: the same key on a runnable job of the workspace is a fresh request.
    r = trigger(friday, "bundled", "plain", {"payload": {"n": 1}}, headers={"Idempotency-Key": "k1"})
    assert r.status_code == 202, r.text
    assert wait_terminal(friday, r.json()["sessionId"])["status"] == "completed"


def test_an_fsm_whose_initial_state_is_final_ends_skipped(friday: DaemonProcess) -> None:
    r = trigger(friday, "parity", "nothing", {})
    assert r.status_code == 202, r.text
    view = wait_terminal(friday, r.json()["sessionId"])
    assert (view["status"], view["errorCode"]) == ("skipped", "no_transition")
    assert view["error"] == 'Signal "nothing" had no matching transition in state "done" (the initial state is final)'
    assert view["agentBlocks"] == []


def test_skip_states_records_the_entry_steps_skipped_and_emits_still_run(friday: DaemonProcess) -> None:
    r = trigger(friday, "parity", "steps", {"payload": {"n": 3}, "skipStates": ["first"]})
    assert r.status_code == 202, r.text
    accepted = r.json()
    assert accepted["message"] == "Signal accepted"  # an envelope, no longer a webhook
    view = wait_terminal(friday, accepted["sessionId"])
    assert view["status"] == "completed", view
    assert view["results"] == {"second": {"n": 3}}
    assert [(b["stateId"], b["agentName"], b["status"]) for b in view["agentBlocks"]] == [
        ("first", "echo", "skipped"), ("first", "thought", "skipped"), ("first", "spawned", "skipped"),
        ("second", "echo", "completed")]
    # The skipped signal action started no child.
    assert [s["sessionId"] for s in sessions(friday, correlationId=accepted["correlationId"])] == \
        [accepted["sessionId"]]


def test_skip_states_naming_an_unknown_state_is_400_and_nothing_is_written(friday: DaemonProcess) -> None:
    before = sessions(friday, workspaceId="parity", jobName="steps")
    err = error(trigger(friday, "parity", "steps", {"skipStates": ["first", "nope"]}), 400, "invalid_body")
    assert err["details"] == [{"path": "skipStates[1]", "message": "unknown state 'nope'"}]
    err = error(trigger(friday, "parity", "steps", {"skipStates": "first"}), 400, "invalid_body")
    assert err["details"] == [{"path": "skipStates", "message": "must be a list of state ids (strings)"}]
    assert sessions(friday, workspaceId="parity", jobName="steps") == before


def test_bypass_concurrency_is_refused_over_http(friday: DaemonProcess) -> None:
    before = sessions(friday, workspaceId="parity", jobName="child")
    for query in ("?nowait=true", ""):
        err = error(trigger(friday, "parity", "child", {"bypassConcurrency": True}, query), 403,
                    "bypass_not_allowed")
        assert "bypassConcurrency" in err["message"]
    error(trigger(friday, "parity", "child", {"bypassConcurrency": "yes"}), 400, "invalid_body")
    assert sessions(friday, workspaceId="parity", jobName="child") == before
    r = trigger(friday, "parity", "child", {"payload": {"n": 1}, "bypassConcurrency": False})
    assert r.status_code == 202 and r.json()["message"] == "Signal accepted", r.text
    assert wait_terminal(friday, r.json()["sessionId"])["results"] == {"echo": {"n": 1}}


def test_the_session_list_ignores_unknown_query_parameters(friday: DaemonProcess) -> None:
    r = trigger(friday, "parity", "nothing", {})
    sid = r.json()["sessionId"]
    wait_terminal(friday, sid)
    plain = sessions(friday, workspaceId="parity", jobName="nothing")
    assert sid in [s["sessionId"] for s in plain]
    assert sessions(friday, workspaceId="parity", jobName="nothing", streamId="x", page="2") == plain
    err = error(httpx.get(f"{friday.url}/api/sessions", params={"limit": "0", "whatever": "1"}, timeout=10), 400,
                "invalid_query")
    assert err["details"][0]["path"] == "limit"
