"""`atlas workspace validate` that helps (issue #16, item 8): "did you mean", the known names, one error per typo,
every reference error even next to a structural one, and YAML slips as a plain hint with the line.

Every case still pins file, line, column and field path: the hints are added to the positioned errors, they do not
replace them.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from atlas.config.loader import LoadedWorkspace, load_workspace
from tests.daemon_proc import ATLAS, ROOT

# Valid header, 6 lines: signals `go` and `deploy`, agents `builder` and `tester`.
HEADER = """\
version: "1.0"
workspace: { id: ws, name: Test }
signals: { go: { provider: http, config: { path: /go } }, deploy: { provider: http, config: { path: /d } } }
agents:
  builder: { type: atlas, agent: atlas/echo }
  tester: { type: atlas, agent: atlas/echo }
"""
KNOWN_AGENTS = "builder, tester, atlas/sleep, atlas/echo, atlas/count"


def load(tmp_path: Path, text: str) -> tuple[Path, LoadedWorkspace]:
    path = tmp_path / "workspace.yml"
    path.write_text(text, encoding="utf-8")
    return path, load_workspace(path)


def problems(loaded: LoadedWorkspace) -> list[tuple[int, int, str, str]]:
    return [(e.line, e.column, e.path, e.message) for e in loaded.errors]


# ---------------------------------------------------------------- did you mean


def test_a_misspelt_key_suggests_the_closest_key_of_its_mapping(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, HEADER + "jobs:\n  build:\n    triggers: [ { signal: go } ]\n"
                     "    excution: { agents: [ builder ] }\n")
    assert problems(loaded) == [
        (10, 5, "jobs.build.excution", "unknown key 'excution': did you mean 'execution'?")]


def test_suggestions_follow_tagged_and_plain_unions(tmp_path: Path) -> None:
    """The allowed keys come from the model at that place: a python agent's config, a transition inside `on`."""
    text = HEADER.replace("tester: { type: atlas, agent: atlas/echo }",
                          "tester: { type: python, config: { entrypoint: 'm:f', parms: {} } }")
    text += ("jobs:\n  build:\n    triggers: [ { signal: go } ]\n    fsm:\n      initial: a\n      states:\n"
             "        a: { on: { GO: { target: b, actoins: [] } } }\n        b: { type: final }\n")
    _, loaded = load(tmp_path, text)
    assert problems(loaded) == [
        (6, 56, "agents.tester.config.parms", "unknown key 'parms': did you mean 'params'?"),
        (13, 37, "jobs.build.fsm.states.a.on.GO.actoins", "unknown key 'actoins': did you mean 'actions'?"),
    ]


def test_no_suggestion_when_nothing_is_close_or_the_close_key_is_already_there(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, 'version: "1.0"\nworkspace: { name: x, names: y }\nflavour: vanilla\n')
    assert problems(loaded) == [(2, 23, "workspace.names", "unknown key 'names'"),
                                (3, 1, "flavour", "unknown key 'flavour'")]


# ---------------------------------------------------------------- one typo, one error


def test_a_misspelt_required_key_is_one_error_at_the_typo(tmp_path: Path) -> None:
    """Before: "missing required key 'initial'" at the fsm mapping and "unknown key 'initail'" at the typo."""
    _, loaded = load(tmp_path, HEADER + "jobs:\n  build:\n    triggers: [ { signal: go } ]\n    fsm:\n"
                     "      initail: a\n      states: { a: { type: final } }\n")
    assert problems(loaded) == [(11, 7, "jobs.build.fsm.initail",
                                 "unknown key 'initail': did you mean 'initial'? ('initial' is required)")]


def test_a_missing_key_unrelated_to_the_unknown_one_stays_its_own_error(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, HEADER + "jobs:\n  build:\n    triggers: [ { signal: go } ]\n    fsm:\n"
                     "      colour: red\n      states: { a: { type: final } }\n")
    assert problems(loaded) == [(11, 7, "jobs.build.fsm.initial", "missing required key 'initial'"),
                                (11, 7, "jobs.build.fsm.colour", "unknown key 'colour'")]


# ---------------------------------------------------------------- known names


def test_an_unknown_agent_gets_the_closest_and_the_known_names(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, HEADER + "jobs:\n  build:\n    triggers: [ { signal: go } ]\n"
                     "    execution: { agents: [ buidler, nobody ] }\n")
    assert problems(loaded) == [
        (10, 28, "jobs.build.execution.agents[0]",
         f"unknown agent 'buidler': did you mean 'builder'? (known agents: {KNOWN_AGENTS})"),
        (10, 37, "jobs.build.execution.agents[1]", f"unknown agent 'nobody' (known agents: {KNOWN_AGENTS})"),
    ]


def test_an_unknown_signal_gets_the_closest_and_the_known_names(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, HEADER + "jobs:\n  build:\n    triggers: [ { signal: deplyo } ]\n    fsm:\n"
                     "      initial: a\n      states:\n"
                     "        a: { entry: [ { type: signal, signal: og } ], on: { X: { target: b } } }\n"
                     "        b: { type: final }\n")
    assert problems(loaded) == [
        (9, 19, "jobs.build.triggers[0].signal",
         "unknown signal 'deplyo': did you mean 'deploy'? (known signals: go, deploy)"),
        (13, 39, "jobs.build.fsm.states.a.entry[0].signal", "unknown signal 'og' (known signals: go, deploy)"),
    ]


def test_a_workspace_without_signals_says_so(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, 'version: "1.0"\nworkspace: { name: x }\njobs:\n  j:\n'
                     "    triggers: [ { signal: go } ]\n    execution: { agents: [ atlas/echo ] }\n")
    assert problems(loaded) == [
        (5, 19, "jobs.j.triggers[0].signal", "unknown signal 'go' (this workspace declares no signals)")]


# ---------------------------------------------------------------- references next to a structural error


def test_reference_errors_are_reported_next_to_a_structural_error(tmp_path: Path) -> None:
    """Job `a` is malformed (a typo); job `b` is well formed but names an unknown agent and signal: all three are
    reported at once. Before, the cross-references waited until the file was structurally valid."""
    _, loaded = load(tmp_path, HEADER + "jobs:\n"
                     "  a:\n    triggers: [ { signal: go } ]\n    excution: { agents: [ builder ] }\n"
                     "  b:\n    triggers: [ { signal: og } ]\n    execution: { agents: [ buidler ] }\n")
    assert problems(loaded) == [
        (10, 5, "jobs.a.excution", "unknown key 'excution': did you mean 'execution'?"),
        (12, 19, "jobs.b.triggers[0].signal", "unknown signal 'og' (known signals: go, deploy)"),
        (13, 28, "jobs.b.execution.agents[0]",
         f"unknown agent 'buidler': did you mean 'builder'? (known agents: {KNOWN_AGENTS})"),
    ]
    assert loaded.config is None


def test_a_malformed_agent_or_signal_still_counts_as_declared(tmp_path: Path) -> None:
    """References to an agent or a signal whose own definition is broken are not also called unknown."""
    text = HEADER.replace("tester: { type: atlas, agent: atlas/echo }", "tester: { type: atlas, agnt: atlas/echo }")
    text = text.replace("deploy: { provider: http, config: { path: /d } }", "deploy: { provider: http }")
    _, loaded = load(tmp_path, text + "jobs:\n  build:\n    triggers: [ { signal: deploy } ]\n"
                     "    execution: { agents: [ tester ] }\n")
    assert [e.path for e in loaded.errors] == ["signals.deploy.config", "agents.tester.agnt"]


def test_a_malformed_section_skips_the_reference_checks(tmp_path: Path) -> None:
    """`agents: 3` declares no names anyone can know: judging references against it would only mislead."""
    _, loaded = load(tmp_path, 'version: "1.0"\nworkspace: { name: x }\nagents: 3\njobs:\n  j:\n'
                     "    execution: { agents: [ whoever ] }\n")
    assert problems(loaded) == [(3, 1, "agents", "expected a mapping, got the integer 3")]


# ---------------------------------------------------------------- YAML slips


def test_one_space_too_few_is_a_plain_indentation_hint(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, HEADER + "jobs:\n  build:\n    triggers: [ { signal: go } ]\n"
                     "   execution: { agents: [ builder ] }\n")
    assert problems(loaded) == [(10, 4, "", "YAML syntax error: bad indentation: this line starts in column 4, but"
                                 " the lines above start in column 1, 3 or 5; line it up with the keys (or items) it"
                                 " belongs with")]


def test_a_line_indented_under_a_value_is_a_plain_hint(tmp_path: Path) -> None:
    _, loaded = load(tmp_path, 'version: "1.0"\nworkspace:\n  name: x\n   id: y\n')
    assert problems(loaded) == [(4, 6, "", "YAML syntax error: this line is indented more than line 3, so YAML reads"
                                 " it as the rest of that line's value: line it up with the key above (column 3)")]


def test_tabs_quotes_and_brackets_get_plain_hints(tmp_path: Path) -> None:
    cases = {
        'version: "1.0"\nworkspace:\n\tname: x\n':
            (3, 1, "YAML syntax error: a tab character: YAML is indented with spaces, never tabs"),
        'version: "1.0"\nworkspace:\n  name: "abc\n  id: y\n':
            (5, 1, "YAML syntax error: the quoted string that starts at line 3, column 9 is never closed:"
                   " add the closing quote"),
        'version: "1.0"\nworkspace: { name: x\n':
            (3, 1, "YAML syntax error: the '{' at line 2, column 12 is never closed: add '}'"),
        'version: "1.0"\nworkspace:\n  name: a: b\n':
            (3, 10, "YAML syntax error: a ':' inside a value: quote the value (e.g. name: \"a: b\")"),
    }
    for text, (line, column, message) in cases.items():
        _, loaded = load(tmp_path, text)
        assert problems(loaded) == [(line, column, "", message)], text


def test_validate_prints_the_hints_with_file_line_and_column(tmp_path: Path) -> None:
    """The command a user runs: every line is `file:line:column: path: message`, exit 5."""
    path, _ = load(tmp_path, HEADER + "jobs:\n"
                   "  a:\n    triggers: [ { signal: go } ]\n    fsm:\n      initail: x\n"
                   "      states: { x: { type: final } }\n"
                   "  b:\n    triggers: [ { signal: deploy } ]\n    execution: { agents: [ buidler ] }\n")
    r = subprocess.run([ATLAS, "workspace", "validate", str(path)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 5, r.stdout + r.stderr
    assert r.stdout.splitlines() == [
        f"{path}:11:7: jobs.a.fsm.initail: unknown key 'initail': did you mean 'initial'? ('initial' is required)",
        f"{path}:15:28: jobs.b.execution.agents[0]: unknown agent 'buidler': did you mean 'builder'?"
        f" (known agents: {KNOWN_AGENTS})",
    ]
    path.write_text(HEADER + "jobs:\n  build:\n    triggers: [ { signal: go } ]\n   execution: { agents: [ x ] }\n")
    r = subprocess.run([ATLAS, "workspace", "validate", str(path)], capture_output=True, text=True, timeout=60,
                       cwd=ROOT)
    assert r.returncode == 5
    assert r.stdout.startswith(f"{path}:10:4: YAML syntax error: bad indentation: this line starts in column 4")
