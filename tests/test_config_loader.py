"""Loading and validating `workspace.yml` (spec §2.8, §13 items 1 and 2).

Every invalid file is written inline so that line and column numbers are part of the assertion: the point of
the loader is that each error names the file, the position of the offending key and its YAML path.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from atlas.cli.validate import validate_command
from atlas.config.loader import (
    MAX_DEPTH,
    MAX_ERRORS,
    ConfigProblem,
    LoadedWorkspace,
    load_workspace,
    slugify_workspace_id,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

# A valid header used by most cases: 6 lines, so the job-level YAML of a case starts on line 7.
HEADER = """\
version: "1.0"
workspace: { id: ws, name: Test }
signals:
  go: { provider: http, config: { path: /go } }
agents:
  builder: { type: atlas, agent: atlas/echo }
"""


def write(tmp_path: Path, text: str, *, header: bool = True) -> Path:
    path = tmp_path / "workspace.yml"
    path.write_text((HEADER if header else "") + textwrap.dedent(text), encoding="utf-8")
    return path


def positions(loaded: LoadedWorkspace) -> list[tuple[int, int, str, str]]:
    return [(e.line, e.column, e.path, e.message) for e in loaded.errors]


# ---------------------------------------------------------------- valid files


@pytest.mark.parametrize("name", ["demo", "reports", "knowledge-base"])
def test_examples_load_clean(name: str) -> None:
    loaded = load_workspace(EXAMPLES / name)
    assert loaded.errors == []
    assert loaded.warnings == []
    assert loaded.ok
    assert loaded.config is not None
    assert loaded.id == name
    assert loaded.path == (EXAMPLES / name).resolve()
    assert loaded.file == (EXAMPLES / name / "workspace.yml").resolve()
    assert len(loaded.digest) == 64


def test_demo_has_count_and_sleep_job() -> None:
    config = load_workspace(EXAMPLES / "demo").config
    assert config is not None
    job = config.jobs["count-and-sleep"]
    assert [t.signal for t in job.triggers] == ["count-and-sleep"]
    assert job.execution is not None and job.execution.agents == ["counter", "stamp"]


def test_on_is_a_string_key_in_yaml_1_2(tmp_path: Path) -> None:
    """YAML 1.1 loaders read `on:` as `True`; workspace files are YAML 1.2, where it is the key "on"."""
    path = write(
        tmp_path,
        """\
        jobs:
          build:
            triggers: [ { signal: go } ]
            fsm:
              initial: idle
              states:
                idle:
                  on:
                    go: { target: done }
                done: { type: final }
        """,
    )
    loaded = load_workspace(path)
    assert loaded.errors == []
    assert loaded.config is not None
    fsm = loaded.config.jobs["build"].fsm
    assert fsm is not None and list(fsm.states["idle"].on) == ["go"]


def test_yes_no_and_dates_stay_strings(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: "1.0"
        workspace: { name: Dates, description: 2024-01-01, welcome: no }
        """,
        header=False,
    )
    loaded = load_workspace(path)
    assert loaded.errors == []
    assert loaded.config is not None
    assert loaded.config.workspace.description == "2024-01-01"
    assert loaded.config.workspace.welcome == "no"


def test_id_is_derived_from_name(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: "1.0"\nworkspace: { name: "  My  Great_Workspace! " }\n', header=False)
    loaded = load_workspace(path)
    assert loaded.ok
    assert loaded.id == "my-great-workspace"


def test_slugify_rules() -> None:
    assert slugify_workspace_id("Demo") == "demo"
    assert slugify_workspace_id("--A b/c--") == "a-b-c"
    assert slugify_workspace_id("!!!") == ""
    assert len(slugify_workspace_id("x" * 100)) == 63


def test_unparsable_file_takes_the_directory_slug(tmp_path: Path) -> None:
    directory = tmp_path / "My Space"
    directory.mkdir()
    (directory / "workspace.yml").write_text("version: [\n", encoding="utf-8")
    loaded = load_workspace(directory)
    assert not loaded.ok
    assert loaded.config is None
    assert loaded.id == "my-space"


def test_signal_action_to_another_workspace_is_not_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        jobs:
          build:
            triggers: [ { signal: go } ]
            fsm:
              initial: idle
              states:
                idle:
                  entry: [ { type: signal, workspace: elsewhere, signal: go, wait: true } ]
                  on: { go: { target: done } }
                done: { type: final }
        """,
    )
    assert load_workspace(path).errors == []


def test_builtin_agents_may_be_used_directly(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        jobs:
          build:
            triggers: [ { signal: go } ]
            execution: { strategy: sequential, agents: [ atlas/count, { id: atlas/sleep, prompt: hi } ] }
        """,
    )
    assert load_workspace(path).errors == []


# ---------------------------------------------------------------- one mistake per file


JOB_WITH_AGENT = """\
jobs:
  build:
    triggers: [ { signal: go } ]
    fsm:
      initial: run
      states:
        run:
          entry: [ { type: agent, agentId: {agent} } ]
          on: { ADVANCE: { target: {target} } }
        done: { type: final }
"""

CASES: dict[str, tuple[str, tuple[int, int, str, str]]] = {
    "unknown top-level key": (
        "toolz: {}\n",
        (7, 1, "toolz", "unknown key 'toolz': did you mean 'tools'?"),
    ),
    "unknown nested key": (
        JOB_WITH_AGENT.replace("{agent}", "builder")
        .replace("{target}", "done")
        .replace("on: {", "onn: 1\n          on: {"),
        (15, 11, "jobs.build.fsm.states.run.onn", "unknown key 'onn'"),
    ),
    "missing required key (at its parent mapping)": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n    fsm:\n      states: { a: { type: final } }\n",
        (11, 7, "jobs.build.fsm.initial", "missing required key 'initial'"),
    ),
    "unknown agent": (
        JOB_WITH_AGENT.replace("{agent}", "buidler").replace("{target}", "done"),
        (14, 35, "jobs.build.fsm.states.run.entry[0].agentId",
         "unknown agent 'buidler': did you mean 'builder'?"
         " (known agents: builder, atlas/sleep, atlas/echo, atlas/count)"),
    ),
    "bad target state": (
        JOB_WITH_AGENT.replace("{agent}", "builder").replace("{target}", "nowhere"),
        (15, 28, "jobs.build.fsm.states.run.on.ADVANCE.target", "unknown state 'nowhere'"),
    ),
    "bad initial state": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n"
        "    fsm: { initial: start, states: { a: { type: final } } }\n",
        (10, 12, "jobs.build.fsm.initial", "unknown state 'start'"),
    ),
    "unknown trigger signal": (
        "jobs:\n  build:\n    triggers: [ { signal: go }, { signal: og } ]\n"
        "    execution: { strategy: sequential, agents: [ builder ] }\n",
        (9, 35, "jobs.build.triggers[1].signal", "unknown signal 'og' (known signals: go)"),
    ),
    "both fsm and execution": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n"
        "    fsm: { initial: a, states: { a: { type: final } } }\n"
        "    execution: { strategy: sequential, agents: [ builder ] }\n",
        (11, 5, "jobs.build.execution", "a job has either 'fsm' or 'execution', not both"),
    ),
    "neither fsm nor execution": (
        "jobs:\n  build:\n    title: Build\n    triggers: [ { signal: go } ]\n",
        (9, 5, "jobs.build", "a job needs 'fsm' or 'execution'"),
    ),
    "signal handled by two jobs": (
        "jobs:\n  a:\n    triggers: [ { signal: go } ]\n"
        "    execution: { strategy: sequential, agents: [ builder ] }\n"
        "  b:\n    triggers: [ { signal: go } ]\n"
        "    execution: { strategy: sequential, agents: [ builder ] }\n",
        (
            12,
            19,
            "jobs.b.triggers[0].signal",
            "signal 'go' is already handled by job 'a' (a signal triggers at most one job)",
        ),
    ),
    "unknown agent in execution": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n"
        "    execution: { strategy: sequential, agents: [ builder, { id: tester } ] }\n",
        (10, 61, "jobs.build.execution.agents[1].id",
         "unknown agent 'tester' (known agents: builder, atlas/sleep, atlas/echo, atlas/count)"),
    ),
    "strategy parallel": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n"
        "    execution: { strategy: parallel, agents: [ builder ] }\n",
        (
            10,
            18,
            "jobs.build.execution.strategy",
            "strategy 'parallel' is not supported: only 'sequential' is",
        ),
    ),
    "bad duration": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n    config: { timeout: 10 minutes }\n"
        "    execution: { strategy: sequential, agents: [ builder ] }\n",
        (
            10,
            15,
            "jobs.build.config.timeout",
            "invalid duration '10 minutes': expected <integer><unit> with unit ms, s, m, h",
        ),
    ),
    "zero duration": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n    config: { timeout: 0s }\n"
        "    execution: { strategy: sequential, agents: [ builder ] }\n",
        (10, 15, "jobs.build.config.timeout", "invalid duration '0s': must be greater than zero"),
    ),
    "invalid job id": (
        "jobs:\n  build it:\n    triggers: [ { signal: go } ]\n"
        "    execution: { strategy: sequential, agents: [ builder ] }\n",
        (8, 3, "jobs.build it", "invalid id 'build it': use 1-64 letters, digits, '_' or '-'"),
    ),
    "wait true signal action on its own trigger": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n    fsm:\n      initial: a\n      states:\n"
        "        a:\n          entry:\n            - { type: signal, signal: go, wait: true }\n"
        "          on: { go: { target: b } }\n        b: { type: final }\n",
        (
            15,
            31,
            "jobs.build.fsm.states.a.entry[0].signal",
            "a 'wait: true' signal action cannot trigger its own job's signal 'go'"
            " (it would wait for itself)",
        ),
    ),
    "unknown action type": (
        "jobs:\n  build:\n    triggers: [ { signal: go } ]\n    fsm:\n      initial: a\n      states:\n"
        "        a:\n          entry:\n            - { type: agnet, agentId: builder }\n"
        "        b: { type: final }\n",
        (
            15,
            17,
            "jobs.build.fsm.states.a.entry[0].type",
            "unknown type 'agnet': expected one of 'agent', 'llm', 'emit', 'signal'",
        ),
    ),
    "wrong type in a plain union": (
        JOB_WITH_AGENT.replace("{agent}", "builder, inputFrom: 5").replace("{target}", "done"),
        (
            14,
            53,
            "jobs.build.fsm.states.run.entry[0].inputFrom",
            "expected a string or a list, got the integer 5",
        ),
    ),
}

SIGNAL_CASES: dict[str, tuple[str, tuple[int, int, str, str]]] = {
    "bad cron": (
        "  nightly: { provider: schedule, config: { schedule: '61 * * * *' } }\n",
        (
            5,
            44,
            "signals.nightly.config.schedule",
            "invalid cron expression '61 * * * *': expected 5 cron fields (minute hour day month weekday)"
            " or one of @hourly, @daily, @weekly, @monthly",
        ),
    ),
    "six-field cron": (
        "  nightly: { provider: schedule, config: { schedule: '0 0 2 * * *' } }\n",
        (
            5,
            44,
            "signals.nightly.config.schedule",
            "invalid cron expression '0 0 2 * * *': expected 5 cron fields (minute hour day month weekday)"
            " or one of @hourly, @daily, @weekly, @monthly",
        ),
    ),
    "bad timezone": (
        "  nightly:\n    provider: schedule\n    config:\n"
        "      schedule: '@daily'\n      timezone: Mars/Olympus\n",
        (9, 7, "signals.nightly.config.timezone", "unknown time zone 'Mars/Olympus'"),
    ),
    "schema root not an object": (
        "  typed: { provider: system, schema: { type: array } }\n",
        (5, 40, "signals.typed.schema.type", "the schema root must be 'type: object'"),
    ),
    "schema not valid JSON Schema": (
        "  typed:\n    provider: system\n    schema:\n      type: object\n      properties:\n"
        "        n: { type: integr }\n",
        (
            10,
            14,
            "signals.typed.schema.properties.n.type",
            "invalid JSON Schema: 'integr' is not valid under any of the given schemas",
        ),
    ),
    "unknown provider": (
        "  hook: { provider: webhook }\n",
        (
            5,
            11,
            "signals.hook.provider",
            "unknown provider 'webhook': expected one of 'http', 'schedule', 'system'",
        ),
    ),
    "missing provider (at its parent mapping)": (
        "  hook: { config: { path: /x } }\n",
        (5, 9, "signals.hook.provider", "missing required key 'provider'"),
    ),
    "http path without slash": (
        "  hook: { provider: http, config: { path: hook } }\n",
        (5, 37, "signals.hook.config.path", "invalid path 'hook': must start with '/'"),
    ),
}


def _signal_file(extra_signal: str) -> str:
    return (
        'version: "1.0"\nworkspace: { id: ws, name: Test }\n'
        "signals:\n  go: { provider: http, config: { path: /go } }\n" + extra_signal
    )


@pytest.mark.parametrize("case", list(CASES))
def test_job_mistakes_are_positioned(tmp_path: Path, case: str) -> None:
    text, expected = CASES[case]
    path = write(tmp_path, text)
    loaded = load_workspace(path)
    assert positions(loaded) == [expected]
    assert loaded.errors[0].file == str(path)
    assert loaded.config is None
    assert not loaded.ok


@pytest.mark.parametrize("case", list(SIGNAL_CASES))
def test_signal_mistakes_are_positioned(tmp_path: Path, case: str) -> None:
    text, expected = SIGNAL_CASES[case]
    path = write(tmp_path, _signal_file(text), header=False)
    loaded = load_workspace(path)
    assert positions(loaded) == [expected]
    assert loaded.errors[0].file == str(path)


def test_yes_is_not_a_boolean(tmp_path: Path) -> None:
    """YAML 1.2 reads `yes` as a string; it must not slip through pydantic's lax bool parsing."""
    path = write(
        tmp_path,
        JOB_WITH_AGENT.replace("{target}", "done").replace(
            "{ type: agent, agentId: {agent} }", "{ type: signal, signal: go, wait: yes }"
        ),
    )
    assert positions(load_workspace(path)) == [
        (14, 48, "jobs.build.fsm.states.run.entry[0].wait", "expected a boolean, got the string 'yes'")
    ]


def test_non_string_keys_are_shown_as_keys(tmp_path: Path) -> None:
    path = write(tmp_path, "1: one\njobs:\n  2: {}\n")
    assert positions(load_workspace(path)) == [
        (7, 1, "1", "invalid key the integer 1: keys must be strings (quote it)"),
        (9, 3, "jobs.2", "invalid key the integer 2: keys must be strings (quote it)"),
    ]


def test_version_must_be_a_quoted_string(tmp_path: Path) -> None:
    path = write(tmp_path, "version: 1.0\nworkspace: { name: x }\n", header=False)
    assert positions(load_workspace(path)) == [
        (1, 1, "version", 'expected the string "1.0", got the number 1.0 (quote it: version: "1.0")')
    ]


def test_invalid_workspace_id(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: "1.0"\nworkspace:\n  name: x\n  id: My_WS\n', header=False)
    assert positions(load_workspace(path)) == [
        (
            4,
            3,
            "workspace.id",
            "invalid workspace id 'My_WS': use at most 63 lower-case letters, digits, '_' or '-',"
            " starting with a letter or digit",
        )
    ]


def test_name_without_usable_characters_needs_an_id(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: "1.0"\nworkspace: { name: "!!!" }\n', header=False)
    assert positions(load_workspace(path)) == [
        (2, 14, "workspace.name", "cannot derive a workspace id from this name; set workspace.id")
    ]


# ---------------------------------------------------------------- parsing safety


def test_duplicate_keys_are_errors_with_positions(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: "1.0"\nworkspace:\n  name: a\n  name: b\n', header=False)
    loaded = load_workspace(path)
    assert positions(loaded) == [(4, 3, "workspace.name", "duplicate key 'name' (first defined on line 3)")]
    assert loaded.config is None


def test_yaml_syntax_error_has_the_parser_position(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: "1.0"\nworkspace: { name: x\n', header=False)
    loaded = load_workspace(path)
    assert positions(loaded) == [
        (
            3,
            1,
            "",
            "YAML syntax error: the '{' at line 2, column 12 is never closed: add '}'",
        )
    ]


def test_custom_tags_are_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, 'version: "1.0"\nworkspace: { name: !!python/object:os.system x }\n', header=False)
    assert positions(load_workspace(path)) == [
        (
            2,
            20,
            "workspace.name",
            "unsupported tag '!!python/object:os.system': only plain YAML values are allowed",
        )
    ]


def test_alias_bomb_is_bounded(tmp_path: Path) -> None:
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdef", "bcdefg", strict=True):
        lines.append(f"{name}: &{name} [" + ", ".join([f"*{prev}"] * 10) + "]")
    path = write(tmp_path, "\n".join(lines) + "\n", header=False)
    assert positions(load_workspace(path)) == [
        (1, 1, "", "aliases expand to too many nodes (more than 100000 extra)")
    ]


def test_recursive_alias_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "a: &x [1, *x]\n", header=False)
    assert positions(load_workspace(path)) == [
        (1, 4, "", "recursive alias '&x': a node cannot contain itself")
    ]


def test_nesting_depth_is_bounded(tmp_path: Path) -> None:
    """Deep documents are refused at parse time, before recursive validators could hit Python's limit."""
    path = write(tmp_path, "a: " + "[" * 70 + "]" * 70 + "\n", header=False)
    assert positions(load_workspace(path)) == [
        (1, 68, "a" + "[0]" * 64, f"nested deeper than {MAX_DEPTH} levels")
    ]


def test_yaml_1_1_directive_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, '%YAML 1.1\n---\nversion: "1.0"\n', header=False)
    assert positions(load_workspace(path)) == [
        (1, 1, "", "%YAML 1.1 is not supported: workspace files are YAML 1.2")
    ]


def test_file_over_one_mebibyte_is_rejected(tmp_path: Path) -> None:
    path = write(tmp_path, "#" * (1024 * 1024 + 1) + "\n", header=False)
    assert positions(load_workspace(path)) == [(1, 1, "", "file is larger than 1048576 bytes (1 MiB)")]


def test_missing_file(tmp_path: Path) -> None:
    loaded = load_workspace(tmp_path)
    assert [e.to_dict() for e in loaded.errors] == [
        {
            "file": str(tmp_path / "workspace.yml"),
            "line": 1,
            "column": 1,
            "path": "",
            "message": "file not found",
        }
    ]
    assert loaded.config is None
    assert loaded.digest == ""


def test_empty_file_and_non_mapping_document(tmp_path: Path) -> None:
    empty = write(tmp_path, "# nothing here\n", header=False)
    assert positions(load_workspace(empty)) == [
        (1, 1, "", "expected a mapping with 'version' and 'workspace', got an empty file")
    ]
    listed = write(tmp_path, "- version\n", header=False)
    assert positions(load_workspace(listed)) == [
        (1, 1, "", "expected a mapping with 'version' and 'workspace', got a list")
    ]


# ---------------------------------------------------------------- reporting


def test_all_errors_are_reported_in_file_order(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """\
        version: "1.0"
        workspace: { name: x, colour: blue }
        signals:
          go: { provider: http, config: { path: /go, verb: POST } }
        flavour: vanilla
        """,
        header=False,
    )
    assert positions(load_workspace(path)) == [
        (2, 23, "workspace.colour", "unknown key 'colour'"),
        (4, 46, "signals.go.config.verb", "unknown key 'verb'"),
        (5, 1, "flavour", "unknown key 'flavour'"),
    ]


def test_errors_are_capped(tmp_path: Path) -> None:
    extra = "".join(f"k{i}: 1\n" for i in range(MAX_ERRORS + 10))
    path = write(tmp_path, 'version: "1.0"\nworkspace: { name: x }\n' + extra, header=False)
    loaded = load_workspace(path)
    assert len(loaded.errors) == MAX_ERRORS
    assert loaded.errors[0].path == "k0"


def test_catchup_with_skip_is_a_warning(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        _signal_file(
            "  nightly: { provider: schedule, config: { schedule: '@daily', onMissed: catchup } }\n"
        ),
        header=False,
    )
    loaded = load_workspace(path)
    assert loaded.ok
    assert [(w.line, w.column, w.path) for w in loaded.warnings] == [
        (5, 64, "signals.nightly.config.onMissed")
    ]
    assert "concurrency 'skip'" in loaded.warnings[0].message


def test_error_format_and_dict() -> None:
    error = ConfigProblem(
        "examples/x/workspace.yml", 14, 11, "jobs.build.fsm.states.run.entry[0].agentId", "oops"
    )
    assert (
        error.format() == "examples/x/workspace.yml:14:11: jobs.build.fsm.states.run.entry[0].agentId: oops"
    )
    assert error.to_dict() == {
        "file": "examples/x/workspace.yml",
        "line": 14,
        "column": 11,
        "path": "jobs.build.fsm.states.run.entry[0].agentId",
        "message": "oops",
    }
    assert ConfigProblem("w.yml", 1, 1, "", "file not found").format() == "w.yml:1:1: file not found"


def test_file_is_shown_as_the_caller_named_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "workspace.yml").write_text(
        HEADER + JOB_WITH_AGENT.replace("{agent}", "buidler").replace("{target}", "done"), encoding="utf-8"
    )
    monkeypatch.chdir(tmp_path)
    loaded = load_workspace("x")
    assert [e.format() for e in loaded.errors] == [
        "x/workspace.yml:14:35: jobs.build.fsm.states.run.entry[0].agentId: unknown agent 'buidler':"
        " did you mean 'builder'? (known agents: builder, atlas/sleep, atlas/echo, atlas/count)"
    ]


# ---------------------------------------------------------------- `atlas workspace validate`


def test_validate_command_reports_errors_with_exit_5(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = write(tmp_path, "toolz: {}\nmemoryz: {}\n")
    assert validate_command(str(path)) == 5
    assert capsys.readouterr().out.splitlines() == [
        f"{path}:7:1: toolz: unknown key 'toolz': did you mean 'tools'?",
        f"{path}:8:1: memoryz: unknown key 'memoryz': did you mean 'memory'?",
    ]


def test_validate_command_ok_with_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    directory = EXAMPLES / "demo"
    assert validate_command(str(directory)) == 0
    assert capsys.readouterr().out.splitlines() == [f"ok: {directory / 'workspace.yml'} (workspace 'demo')"]


def test_validate_command_prints_warnings(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(
        tmp_path,
        _signal_file(
            "  nightly: { provider: schedule, config: { schedule: '@daily', onMissed: catchup } }\n"
        ),
        header=False,
    )
    assert validate_command(str(path)) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"warning: {path}:5:64: signals.nightly.config.onMissed: ")
    assert lines[1] == f"ok: {path} (workspace 'ws')"
