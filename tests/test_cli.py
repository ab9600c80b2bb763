"""The `atlas` CLI end to end: a real daemon, the CLI run as a subprocess, stdout/stderr/exit codes (spec §11).

Output is plain here (stdout is a pipe); tests/test_cli_tty.py covers the live terminal view.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.cli.sse import parse_sse
from atlas.sessions.reducer import build_view
from tests.daemon_proc import ATLAS, FIXTURES, ROOT, DaemonProcess, wait_for

UUID = r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}"
TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}


def clean_env(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ATLAS_")}
    return {**env, "ATLAS_HOME": str(home), "NO_COLOR": "1", "COLUMNS": "200", **extra}


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """An ATLAS_HOME without daemon.json, so only --url decides which daemon the CLI talks to."""
    return clean_env(tmp_path_factory.mktemp("cli-home"))


def atlas(d: DaemonProcess | None, env: dict[str, str], *args: str, timeout: float = 60,
          stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    argv = [ATLAS, *args] + (["--url", d.url] if d is not None else [])
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, input=stdin, cwd=ROOT)


def _default_signals() -> None:
    """A test run started in the background (`make test &`, `nohup`) inherits an ignored SIGINT or SIGHUP, which
    Python then leaves ignored: the CLI must get Ctrl-C and a closed terminal as a terminal would deliver them."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGHUP, signal.SIG_DFL)


def spawn(d: DaemonProcess, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([ATLAS, *args, "--url", d.url], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=env, cwd=ROOT, preexec_fn=_default_signals)


def ids_from(stdout: str) -> tuple[str, str]:
    """The first two lines of a trigger's human output are the correlationId and the sessionId."""
    lines = stdout.splitlines()
    first = re.fullmatch(rf"correlationId  ({UUID})", lines[0])
    second = re.fullmatch(rf"sessionId      ({UUID})", lines[1])
    assert first and second, stdout
    return first.group(1), second.group(1)


def api(d: DaemonProcess, path: str, **params: Any) -> Any:
    r = httpx.get(d.url + path, params=params, timeout=10)
    assert r.status_code == 200, r.text
    return r.json()


def tree_of(d: DaemonProcess, correlation_id: str) -> list[dict[str, Any]]:
    return api(d, "/api/sessions", correlationId=correlation_id, limit=500)["sessions"]


def nowait(d: DaemonProcess, sig: str, payload: dict[str, Any]) -> dict[str, Any]:
    r = httpx.post(f"{d.url}/api/workspaces/core/signals/{sig}?nowait=true", json={"payload": payload}, timeout=10)
    assert r.status_code == 202, r.text
    return r.json()


def wait_status(d: DaemonProcess, sid: str, statuses: set[str], timeout: float = 30) -> dict[str, Any]:
    def reached() -> dict[str, Any] | None:
        view: dict[str, Any] = api(d, f"/api/sessions/{sid}")
        return view if view["status"] in statuses else None

    return wait_for(reached, timeout, what=f"session {sid} to be {statuses}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---------------------------------------------------------------- trigger → wait → exit code


def test_trigger_wait_completed(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--data", '{"n": 3}')
    assert r.returncode == 0, r.stderr
    cid, sid = ids_from(r.stdout)
    tree = tree_of(daemon, cid)
    assert [(s["sessionId"], s["status"]) for s in tree] == [(sid, "completed")]
    lines = r.stdout.splitlines()
    assert any(line.endswith(f"{sid[:8]}  core/echo  queued payload {{\"n\": 3}}") for line in lines), r.stdout
    assert any('step 1 atlas/echo completed in ' in line and '→ {"n": 3}' in line for line in lines), r.stdout
    assert re.fullmatch(rf"completed  core/echo \({sid[:8]}\) in \d+ms", lines[-1]), lines[-1]
    assert r.stderr == ""


def test_trigger_wait_failed(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "fail", "-w", "core")
    assert r.returncode == 6, r.stdout + r.stderr
    _, sid = ids_from(r.stdout)
    assert re.fullmatch(rf"failed  core/fail \({sid[:8]}\) in \d+ms: exit_status: command exited with status 3",
                        r.stdout.splitlines()[-1]), r.stdout
    assert api(daemon, f"/api/sessions/{sid}")["errorCode"] == "exit_status"


def test_trigger_wait_skipped(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "nomatch", "-w", "core")
    assert r.returncode == 8, r.stdout + r.stderr
    assert r.stdout.splitlines()[-1].startswith("skipped  core/nomatch (")
    assert "no_transition: " in r.stdout.splitlines()[-1]
    # The concurrency policy's skip: a second hold-skip while the first one runs.
    first = nowait(daemon, "hold-skip", {"duration": "3s"})
    wait_status(daemon, first["sessionId"], {"active"})
    r = atlas(daemon, env, "signal", "trigger", "hold-skip", "-w", "core")
    assert r.returncode == 8, r.stdout + r.stderr
    assert "skipped-duplicate" in r.stdout.splitlines()[-1]
    wait_status(daemon, first["sessionId"], TERMINAL)


def test_trigger_wait_cascade_follows_the_whole_tree(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "fan", "-w", "core", "-d", '{"n": 4}')
    assert r.returncode == 0, r.stdout + r.stderr
    cid, sid = ids_from(r.stdout)
    tree = tree_of(daemon, cid)
    assert len(tree) == 2 and all(s["status"] == "completed" for s in tree)
    child = next(s for s in tree if s["sessionId"] != sid)
    # The child's timeline is part of the output, indented under its parent, ended before the CLI returned.
    assert f"{child['sessionId'][:8]}    other/child  completed in " in r.stdout
    assert f"{child['sessionId'][:8]}    other/child  queued (child of {sid[:8]}, depth 1)" in r.stdout
    assert r.stdout.splitlines()[-1].endswith("; tree: 2 sessions (2 completed)")

    # `sessions list --correlation-id` prints exactly that tree, root first, the child indented.
    listed = atlas(daemon, env, "sessions", "list", "--correlation-id", cid)
    assert listed.returncode == 0, listed.stderr
    rows = listed.stdout.splitlines()
    assert rows[0].split() == ["ID", "JOB", "STATUS", "STARTED", "DURATION", "CORRELATIONID"]
    assert len(rows) == 3
    assert rows[1].split()[:3] == [sid[:8], "core/fan", "completed"] and rows[1].endswith(cid)
    assert rows[2].split()[:4] == [child["sessionId"][:8], "└", "other/child", "completed"]
    as_json = json.loads(atlas(daemon, env, "sessions", "list", "--correlation-id", cid, "--json").stdout)
    assert as_json == {"sessions": tree}


def test_wait_json_lines(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "fan", "-w", "core", "-d", '{"n": 2}', "--json")
    assert r.returncode == 0, r.stderr
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    head, events, final = docs[0], docs[1:-1], docs[-1]
    assert set(head) == {"correlationId", "sessionId", "workspaceId", "signalId"}
    assert head["workspaceId"] == "core" and head["signalId"] == "fan"
    tree = tree_of(daemon, head["correlationId"])
    root = next(s for s in tree if s["sessionId"] == head["sessionId"])
    assert final == root  # the last line is the root's final SessionSummary, exactly as the API lists it
    assert {e["sessionId"] for e in events} == {s["sessionId"] for s in tree}
    for session in tree:
        mine = [e for e in events if e["sessionId"] == session["sessionId"]]
        assert mine[0]["type"] == "session:queued" and mine[-1]["type"] == "session:complete"
        assert mine[-1]["status"] == "completed"
        if all("seq" in e for e in mine):  # streamed (not polled): the durable events in order, no gaps
            assert [e["seq"] for e in mine] == list(range(1, len(mine) + 1))
            assert build_view(mine)["status"] == "completed"


def test_nowait_and_json_documents_match_the_api(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "-d", '{"n": 5}', "--nowait", "--json")
    assert r.returncode == 0, r.stderr
    accepted = json.loads(r.stdout)
    assert set(accepted) == {"message", "status", "workspaceId", "signalId", "correlationId", "sessionId"}
    assert re.fullmatch(UUID, accepted["correlationId"]) and re.fullmatch(UUID, accepted["sessionId"])
    sid = accepted["sessionId"]
    wait_status(daemon, sid, TERMINAL)
    assert json.loads(atlas(daemon, env, "sessions", "show", sid, "--json").stdout) == \
        api(daemon, f"/api/sessions/{sid}")
    assert json.loads(atlas(daemon, env, "sessions", "show", sid[:8], "--json").stdout)["sessionId"] == sid
    assert json.loads(atlas(daemon, env, "workspace", "list", "--json").stdout) == api(daemon, "/api/workspaces")
    assert json.loads(atlas(daemon, env, "signal", "list", "-w", "core", "--json").stdout) == \
        api(daemon, "/api/workspaces/core/signals")
    shown = json.loads(atlas(daemon, env, "workspace", "show", "core", "--json").stdout)
    assert shown["workspace"] == api(daemon, "/api/workspaces/core")
    assert shown["jobs"] == api(daemon, "/api/workspaces/core/jobs")
    status = json.loads(atlas(daemon, env, "daemon", "status", "--json").stdout)
    expected = api(daemon, "/api/daemon/status")
    assert set(status) == set(expected)
    assert {k: status[k] for k in ("pid", "daemonId", "bind", "nats", "version")} == \
        {k: expected[k] for k in ("pid", "daemonId", "bind", "nats", "version")}
    listed = json.loads(atlas(daemon, env, "sessions", "list", "-w", "core", "--job", "echo", "--limit", "3",
                              "--json").stdout)
    assert listed == {"sessions": api(daemon, "/api/sessions", workspaceId="core", jobName="echo", limit=3)["sessions"]}
    assert listed["sessions"]


def test_human_nowait_prints_ids_first(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--nowait")
    assert r.returncode == 0
    cid, sid = ids_from(r.stdout)
    assert r.stdout.splitlines()[2:] == [f"url            {daemon.url}/sessions/{sid}"]  # the run in the UI
    assert r.stderr == f"Follow it with: atlas follow --correlation-id {cid}\n"
    assert tree_of(daemon, cid)[0]["sessionId"] == sid


def test_idempotency_key_returns_the_same_run(daemon: DaemonProcess, env: dict[str, str]) -> None:
    args = ("signal", "trigger", "echo", "-w", "core", "-d", '{"n": 8}', "--nowait", "--json",
            "--idempotency-key", f"cli-{os.getpid()}-{id(env)}")
    first, again = json.loads(atlas(daemon, env, *args).stdout), json.loads(atlas(daemon, env, *args).stdout)
    assert first == again


def test_data_from_file_and_stdin(daemon: DaemonProcess, env: dict[str, str], tmp_path: Path) -> None:
    data = tmp_path / "data.json"
    data.write_text('{"n": 11, "text": "from a file"}')
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--data", f"@{data}", "--json")
    assert r.returncode == 0, r.stderr
    final = json.loads(r.stdout.splitlines()[-1])
    view = api(daemon, f"/api/sessions/{final['sessionId']}")
    assert view["payload"] == {"n": 11, "text": "from a file"}
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "-d", "@-", "--nowait", "--json",
              stdin='{"n": 12}')
    assert r.returncode == 0, r.stderr
    sid = json.loads(r.stdout)["sessionId"]
    assert wait_status(daemon, sid, TERMINAL)["payload"] == {"n": 12}


def test_stream_mode(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "-d", '{"n": 6}', "--stream", "--json")
    assert r.returncode == 0, r.stderr
    frames = [json.loads(line) for line in r.stdout.splitlines()]
    assert frames[0]["type"] == "data-session-accepted"
    assert frames[-1]["type"] == "job-complete" and frames[-1]["data"]["output"] == {"atlas/echo": {"n": 6}}
    human = atlas(daemon, env, "signal", "trigger", "fail", "-w", "core", "--stream")
    assert human.returncode == 6
    ids_from(human.stdout)
    assert human.stdout.splitlines()[-1].startswith("failed  core/fail (")


# ---------------------------------------------------------------- follow, sessions, ps, cancel


def test_follow_commands_on_a_finished_run(daemon: DaemonProcess, env: dict[str, str]) -> None:
    accepted = nowait(daemon, "fan", {"n": 1})
    r = atlas(daemon, env, "follow", "--correlation-id", accepted["correlationId"])
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[-1].endswith("; tree: 2 sessions (2 completed)")
    r = atlas(daemon, env, "sessions", "follow", accepted["sessionId"][:10], "--json")
    assert r.returncode == 0
    docs = [json.loads(line) for line in r.stdout.splitlines()]
    assert docs[0]["sessionId"] == accepted["sessionId"]
    assert {d.get("sessionId") for d in docs[1:]} == {accepted["sessionId"]}  # this session only
    failed = nowait(daemon, "fail", {})
    assert atlas(daemon, env, "sessions", "follow", failed["sessionId"]).returncode == 6
    r = atlas(daemon, env, "follow", "--correlation-id", "00000000-0000-4000-8000-000000000000")
    assert r.returncode == 4
    assert r.stderr == "atlas: no sessions with correlationId 00000000-0000-4000-8000-000000000000\n"


def test_sessions_show_human(daemon: DaemonProcess, env: dict[str, str]) -> None:
    accepted = nowait(daemon, "fan", {"n": 9})
    view = wait_status(daemon, accepted["sessionId"], TERMINAL)
    child = view["agentBlocks"][0]["childSessionId"]
    wait_status(daemon, child, TERMINAL)
    r = atlas(daemon, env, "sessions", "show", accepted["sessionId"])
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert out.splitlines()[0] == "core/fan  completed"
    assert f"correlationId  {accepted['correlationId']}" in out
    assert "lineage        root session (depth 0)" in out
    assert f"child          {child}  other/child  completed" in out
    assert re.search(rf"^1  child  signal  completed  [\d.]+m?s\s+child {child[:8]} completed$", out, re.M), out
    r = atlas(daemon, env, "sessions", "show", child)
    assert f"parent         {accepted['sessionId']} (depth 1)" in r.stdout
    failed = nowait(daemon, "fail", {})
    wait_status(daemon, failed["sessionId"], TERMINAL)
    r = atlas(daemon, env, "sessions", "show", failed["sessionId"])
    assert "error          exit_status: command exited with status 3" in r.stdout
    assert re.search(r"^1  failing  agent  failed  [\d.]+m?s\s+exit_status: command exited with status 3 → ", r.stdout,
                     re.M), r.stdout


def test_cancel_ps_and_wait_exit_7(daemon: DaemonProcess, env: dict[str, str]) -> None:
    proc = spawn(daemon, env, "signal", "trigger", "slow", "-w", "core", "-d", '{"duration": "60s"}')
    assert proc.stdout is not None
    cid = proc.stdout.readline().split()[1]
    sid = proc.stdout.readline().split()[1]
    wait_status(daemon, sid, {"active"})
    ps = atlas(daemon, env, "ps")
    assert any(line.startswith(sid[:8]) and " active " in line for line in ps.stdout.splitlines()), ps.stdout
    assert sid in {s["sessionId"] for s in json.loads(atlas(daemon, env, "ps", "--json").stdout)["sessions"]}
    r = atlas(daemon, env, "sessions", "cancel", sid[:8], "--yes")
    assert r.returncode == 0, r.stderr
    assert r.stdout == f"Session {sid} is now cancelled\n"
    rest, err = proc.communicate(timeout=30)
    assert proc.returncode == 7, rest + err
    assert rest.splitlines()[-1].startswith(f"cancelled  core/slow ({sid[:8]}) in ")
    assert tree_of(daemon, cid)[0]["errorCode"] == "cancelled_by_user"
    again = atlas(daemon, env, "sessions", "cancel", sid, "--yes")
    assert again.returncode == 1
    assert again.stderr.startswith(f"atlas: session_not_active: Session '{sid}' already ended cancelled\n")
    # The step the cancel cut short is recorded failed (cancelled_by_user) and shown cancelled, as on the run page.
    assert api(daemon, f"/api/sessions/{sid}")["agentBlocks"][0]["status"] == "failed"
    shown = atlas(daemon, env, "sessions", "show", sid)
    step_row = next(line for line in shown.stdout.splitlines() if line.lstrip().startswith("1 "))
    assert " cancelled " in step_row and " failed " not in step_row, shown.stdout


def test_ctrl_c_detaches_without_cancelling(daemon: DaemonProcess, env: dict[str, str]) -> None:
    proc = spawn(daemon, env, "signal", "trigger", "slow", "-w", "core", "-d", '{"duration": "60s"}')
    assert proc.stdout is not None
    cid = proc.stdout.readline().split()[1]
    sid = proc.stdout.readline().split()[1]
    wait_status(daemon, sid, {"active"})
    wait_for(lambda: "step 1 wait (agent) started" in proc.stdout.readline(), what="the step to show")  # type: ignore[union-attr]
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert err == ("Detached: the run keeps going (nothing was cancelled). "
                   f"Resume with: atlas follow --correlation-id {cid}\n")
    assert api(daemon, f"/api/sessions/{sid}")["status"] == "active"
    # Closing the terminal (SIGHUP) neither: the session keeps running; then resume following with --timeout.
    hup = spawn(daemon, env, "follow", "--correlation-id", cid)
    assert hup.stdout is not None
    wait_for(lambda: "started" in hup.stdout.readline(), what="the follower to print")  # type: ignore[union-attr]
    hup.send_signal(signal.SIGHUP)
    hup.wait(timeout=10)
    assert api(daemon, f"/api/sessions/{sid}")["status"] == "active"
    r = atlas(daemon, env, "follow", "--correlation-id", cid, "--timeout", "1s")
    assert r.returncode == 9
    assert r.stderr == (f"atlas: still running after 1.0s; the run continues; resume with: atlas follow "
                        f"--correlation-id {cid}\n")
    assert atlas(daemon, env, "sessions", "cancel", sid, "--yes").returncode == 0


# ---------------------------------------------------------------- errors: exact messages and exit codes


def test_no_daemon(env: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    for args in (["signal", "trigger", "echo", "-w", "core"], ["sessions", "list"], ["ps"], ["daemon", "status"],
                 ["workspace", "list"]):
        r = subprocess.run([ATLAS, *args, "--url", url], capture_output=True, text=True, env=env, timeout=30)
        assert r.returncode == 3, (args, r.stderr)
        assert r.stdout == ""
        assert r.stderr == (f"atlas: cannot reach the daemon at {url}: connection refused; start it with: "
                            "atlas daemon start --detach\n")
    r = subprocess.run([ATLAS, "ps", "--json"], capture_output=True, text=True, timeout=30,
                       env={**env, "ATLAS_URL": url})
    assert r.returncode == 3
    assert json.loads(r.stdout) == {"error": {"code": "daemon_unreachable", "message":
                                              f"cannot reach the daemon at {url}: connection refused"}}


def test_bad_data(daemon: DaemonProcess, env: dict[str, str], tmp_path: Path) -> None:
    before = len(api(daemon, "/api/sessions", limit=500)["sessions"])
    cases = {
        '{"n": 1 "text": "x"}': "atlas: --data is not valid JSON: Expecting ',' delimiter at line 1, column 9 "
                                "(char 8)\n",
        "{\n  \"n\": 1,\n}": "atlas: --data is not valid JSON: Expecting property name enclosed in double quotes "
                             "at line 3, column 1 (char 12)\n",
        "[1, 2]": "atlas: --data must be a JSON object, not an array\n",
        '"text"': "atlas: --data must be a JSON object, not a string\n",
        f"@{tmp_path / 'missing.json'}": f"atlas: --data @{tmp_path / 'missing.json'}: cannot read "
                                         f"{tmp_path / 'missing.json'}: No such file or directory\n",
    }
    for data, message in cases.items():
        r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--data", data)
        assert (r.returncode, r.stderr, r.stdout) == (2, message, ""), data
    bad = tmp_path / "bad.json"
    bad.write_text('{"n": 1,\n "text": }')
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--data", f"@{bad}")
    assert (r.returncode, r.stderr) == (2, f"atlas: --data @{bad} is not valid JSON: Expecting value at line 2, "
                                           "column 10 (char 18)\n")
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--data", "[]", "--json")
    assert json.loads(r.stdout) == {"error": {"code": "invalid_data",
                                              "message": "--data must be a JSON object, not an array"}}
    assert len(api(daemon, "/api/sessions", limit=500)["sessions"]) == before  # nothing was sent


def test_api_errors(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "nope")
    assert (r.returncode, r.stdout, r.stderr) == (4, "", "atlas: workspace_not_found: Workspace 'nope' not found\n")
    r = atlas(daemon, env, "signal", "trigger", "nope", "-w", "core")
    assert (r.returncode, r.stderr) == (4, "atlas: signal_not_found: Signal 'nope' not found in workspace 'core'\n")
    r = atlas(daemon, env, "signal", "list", "-w", "nope")
    assert (r.returncode, r.stderr) == (4, "atlas: workspace_not_found: Workspace 'nope' not found\n")
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "-d", '{"n": "three"}')
    assert (r.returncode, r.stderr) == (5, "atlas: payload_invalid: Payload does not match the schema of signal "
                                           "'echo'\n  n: 'three' is not of type 'integer'\n")
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "-d", '{"n": "three"}', "--json")
    assert json.loads(r.stdout) == {"error": {
        "code": "payload_invalid", "message": "Payload does not match the schema of signal 'echo'",
        "details": [{"path": "n", "message": "'three' is not of type 'integer'"}]}}
    r = atlas(daemon, env, "sessions", "show", "00000000-0000-4000-8000-000000000000")
    assert (r.returncode, r.stderr) == (4, "atlas: session_not_found: Session "
                                           "'00000000-0000-4000-8000-000000000000' not found\n")
    r = atlas(daemon, env, "sessions", "list", "--status", "weird")
    assert r.returncode == 5 and r.stderr.startswith("atlas: invalid_query: Unknown status weird; expected one of")
    r = atlas(daemon, env, "sessions", "show", "abc")
    assert (r.returncode, r.stderr) == (2, "atlas: session id 'abc' is too short: give the full id or a prefix of "
                                           "8+ characters\n")
    r = atlas(daemon, env, "signal", "trigger", "echo", "-w", "core", "--nowait", "--stream")
    assert (r.returncode, r.stderr) == (2, "atlas: choose one of --wait, --nowait and --stream\n")


# ---------------------------------------------------------------- workspaces


def test_workspace_commands(daemon: DaemonProcess, env: dict[str, str], tmp_path: Path) -> None:
    r = atlas(daemon, env, "workspace", "list")
    assert r.stdout.splitlines()[0].split() == ["ID", "NAME", "STATUS", "SIGNALS", "JOBS", "PATH"]
    assert any(line.split()[:4] == ["core", "Core", "tests", "ready"] for line in r.stdout.splitlines())
    r = atlas(daemon, env, "workspace", "show", "core")
    assert r.returncode == 0
    assert re.search(r"^echo\s+http\s+concurrent\s+n: integer, text: string\s+echo$", r.stdout, re.M), r.stdout
    assert re.search(r"^fan\s+Fan out into the other workspace\s+fan\s+child \(signal\)$", r.stdout, re.M)
    good = tmp_path / "added"
    good.mkdir()
    (good / "workspace.yml").write_text((FIXTURES / "other" / "workspace.yml").read_text().replace(
        "id: other, name: Other", "id: cli-added, name: CLI added"))
    r = atlas(daemon, env, "workspace", "add", str(good))
    assert (r.returncode, r.stdout) == (0, f"Added workspace 'cli-added' (CLI added) from {good}\n")
    r = atlas(daemon, env, "workspace", "add", str(good / "workspace.yml"), "--json")
    assert json.loads(r.stdout)["created"] is False
    r = atlas(daemon, env, "workspace", "remove", "cli-added")
    assert (r.returncode, r.stdout) == (0, "Workspace 'cli-added' removed\n")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "workspace.yml").write_text('version: "1.0"\nworkspace: {name: Bad}\nbogus: 1\n')
    r = atlas(daemon, env, "workspace", "add", str(bad))
    assert r.returncode == 5
    lines = r.stderr.splitlines()
    assert lines[0].startswith("atlas: workspace_invalid: Workspace file ")
    assert lines[1].startswith(f"  {bad / 'workspace.yml'}:3:1: bogus: ")
    r = atlas(daemon, env, "workspace", "add", str(tmp_path / "none"))
    assert r.returncode == 5 and r.stderr.startswith("atlas: path_not_found: ")


def test_workspace_validate_needs_no_daemon(env: dict[str, str], tmp_path: Path) -> None:
    no_daemon = {**env, "ATLAS_URL": f"http://127.0.0.1:{free_port()}"}
    r = subprocess.run([ATLAS, "workspace", "validate", str(FIXTURES / "core")], capture_output=True, text=True,
                       env=no_daemon, timeout=30)
    assert r.returncode == 0 and r.stdout.startswith("ok: ")
    bad = tmp_path / "workspace.yml"
    bad.write_text('version: "1.0"\nworkspace: {name: Bad}\nbogus: 1\n')
    r = subprocess.run([ATLAS, "workspace", "validate", str(tmp_path)], capture_output=True, text=True,
                       env=no_daemon, timeout=30)
    assert r.returncode == 5 and r.stdout.startswith(f"{bad}:3:1: bogus: ")
    r = subprocess.run([ATLAS, "workspace", "validate", str(tmp_path), "--json"], capture_output=True, text=True,
                       env=no_daemon, timeout=30)
    doc = json.loads(r.stdout)
    assert r.returncode == 5 and doc["ok"] is False and doc["errors"][0]["path"] == "bogus"
    assert doc["errors"][0]["line"] == 3


# ---------------------------------------------------------------- daemon lifecycle


def test_daemon_detach_status_stop_restart(tmp_path: Path) -> None:
    home = tmp_path / "home"
    env = clean_env(home, ATLAS_TOKEN="cli-test-token-" + "x" * 32)  # the daemon requires it; the CLI sends it
    run = lambda *a: subprocess.run([ATLAS, *a], capture_output=True, text=True, env=env, timeout=60)  # noqa: E731
    r = run("daemon", "start", "--detach", "--port", "0", "--workspace", str(FIXTURES / "core"), "--json")
    assert r.returncode == 0, r.stderr
    started = json.loads(r.stdout)
    try:
        assert started["log"] == str(home / "daemon.log") and started["home"] == str(home)
        assert (home / "daemon.pid").read_text().strip() == str(started["pid"])
        assert json.loads((home / "daemon.json").read_text())["pid"] == started["pid"]
        assert httpx.get(started["url"] + "/health").json()["status"] == "ok"
        # Found through $ATLAS_HOME/daemon.json: no --url needed.
        r = run("daemon", "status")
        lines = r.stdout.splitlines()
        assert lines[0] == f"atlasd 0.1.0 running at {started['url']} (pid {started['pid']})"
        assert re.fullmatch(r"nats        embedded \(nats://127\.0\.0\.1:\d+\)", lines[2]), lines
        assert lines[3] == "workspaces  1: core (ready)" and lines[4] == "sessions    0 active, 0 queued"
        r = run("ps", "--token", "wrong")
        assert (r.returncode, r.stderr) == (3, "atlas: unauthorized: Missing or invalid bearer token: send "
                                               "'Authorization: Bearer <ATLAS_TOKEN>'; set ATLAS_TOKEN (or pass "
                                               "--token) to the daemon's token\n")
        assert httpx.get(started["url"] + "/api/sessions").status_code == 401
        # Already running on this home: prints the status, exits 0.
        again = run("daemon", "start", "--detach", "--port", "0")
        assert again.returncode == 0 and again.stdout.startswith(f"atlasd 0.1.0 running at {started['url']}")
        # stop refuses while a session is active.
        r = run("signal", "trigger", "slow", "-w", "core", "-d", '{"duration": "60s"}', "--nowait", "--json")
        accepted = json.loads(r.stdout)
        wait_for(lambda: json.loads(run("sessions", "show", accepted["sessionId"], "--json").stdout)["status"]
                 == "active", what="the slow session to start")
        r = run("daemon", "stop")
        assert r.returncode == 1
        assert r.stderr == (f"atlas: 1 session is active ({accepted['sessionId'][:8]} core/slow); stopping would end "
                            "it interrupted; wait for it, cancel it (atlas sessions cancel ID), or use --force\n")
        r = run("sessions", "cancel", accepted["sessionId"], "--yes")
        assert r.returncode == 0, r.stderr
        r = run("daemon", "restart")
        assert r.returncode == 0, r.stderr
        restarted_pid = int(re.search(r"\(pid (\d+)\)", r.stdout).group(1))  # type: ignore[union-attr]
        assert restarted_pid != started["pid"] and r.stdout.startswith(f"atlasd running at {started['url']} ")
        status = run("daemon", "status")
        assert "workspaces  1: core (ready)" in status.stdout, status.stdout + status.stderr  # persisted
        r = run("daemon", "stop", "--json")
        assert r.returncode == 0, r.stderr
        assert json.loads(r.stdout) == {"stopped": True, "pid": restarted_pid, "url": started["url"]}
        assert not (home / "daemon.pid").exists() and not (home / "daemon.json").exists()
        assert "atlas: stopped" in (home / "daemon.log").read_text()
        r = run("daemon", "stop")
        assert (r.returncode, r.stdout) == (0, "No daemon is running at http://127.0.0.1:8080.\n")
    finally:
        subprocess.run([ATLAS, "daemon", "stop", "--force"], capture_output=True, env=env, timeout=60)


# ---------------------------------------------------------------- help and completion


def test_every_command_has_complete_help() -> None:
    import typer.main

    from atlas.cli.main import app

    root = typer.main.get_command(app)

    def walk(cmd: Any, path: list[str]) -> list[tuple[list[str], Any]]:
        out = [(path, cmd)]
        for name, sub in getattr(cmd, "commands", {}).items():
            out += walk(sub, [*path, name])
        return out

    commands = walk(root, [])
    names = {" ".join(p) for p, _ in commands}
    assert {"daemon start", "daemon stop", "daemon status", "daemon restart", "workspace add", "workspace list",
            "workspace show", "workspace remove", "workspace validate", "signal list", "signal trigger",
            "sessions list", "sessions show", "sessions follow", "sessions cancel", "follow", "ps"} <= names
    for path, cmd in commands:
        assert cmd.help, f"atlas {' '.join(path)} has no help"
        for param in cmd.params:
            if param.name not in ("help",):
                assert getattr(param, "help", None), f"atlas {' '.join(path)}: {param.name} has no help"
        if path and not hasattr(cmd, "commands"):
            has_json = any(p.name == "json_out" for p in cmd.params)
            assert has_json, f"atlas {' '.join(path)} has no --json"
            if path[0] != "workspace" or path[-1] != "validate":
                if path[:2] != ["daemon", "start"]:
                    assert any(p.name == "url" for p in cmd.params), f"atlas {' '.join(path)} has no --url"
        r = subprocess.run([ATLAS, *path, "--help"], capture_output=True, text=True, timeout=30,
                           env={**os.environ, "COLUMNS": "120"})
        assert r.returncode == 0 and "Usage: atlas" in r.stdout, (path, r.stderr)


def test_shell_completion(daemon: DaemonProcess, env: dict[str, str]) -> None:
    r = subprocess.run([ATLAS, "--show-completion", "bash"], capture_output=True, text=True, env=env, timeout=30)
    assert r.returncode == 0 and "_ATLAS_COMPLETE=complete_bash" in r.stdout

    def complete(words: str) -> list[str]:
        cword = len(words.split()) - (0 if words.endswith(" ") else 1)
        out = subprocess.run([ATLAS], capture_output=True, text=True, timeout=30, env={
            **env, "ATLAS_URL": daemon.url, "_ATLAS_COMPLETE": "complete_bash", "COMP_WORDS": words,
            "COMP_CWORD": str(cword)}).stdout
        return out.split()

    assert "sessions" in complete("atlas sess")
    assert complete("atlas signal tr") == ["trigger"]
    assert complete("atlas signal list -w c") == ["core"]
    assert sorted(complete("atlas signal trigger -w core fa")) == ["fail", "fan", "fan-slow"]


# ---------------------------------------------------------------- the building blocks of following


def test_parse_sse() -> None:
    lines = ["id: 3", "data: {\"a\": 1}", "", ": keep-alive", "", "event: ephemeral", "data: {}", "",
             "event: end", "data: {\"status\": \"completed\"}", ""]
    frames = list(parse_sse(lines))
    assert [(f.event, f.id) for f in frames] == [("message", "3"), ("ephemeral", None), ("end", None)]
    assert json.loads(frames[0].data) == {"a": 1}
