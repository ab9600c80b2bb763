"""Compiling `execution` into an FSM and computing planned steps (spec §2.3, §2.4, §13 item 3)."""

from __future__ import annotations

import textwrap
from pathlib import Path

from atlas.config.loader import load_workspace
from atlas.config.model import AgentAction, EmitAction, Job, WorkspaceConfig
from atlas.runtime.fsm import job_display_name, job_fsm, planned_steps

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

HEADER = """\
version: "1.0"
workspace: { id: ws, name: Test }
signals:
  go: { provider: http, config: { path: /go } }
  again: { provider: system }
agents:
  fetch: { type: python, description: Fetches the data, config: { entrypoint: "steps:fetch" } }
  render: { type: atlas, agent: atlas/echo }
"""


def load(tmp_path: Path, jobs: str) -> WorkspaceConfig:
    path = tmp_path / "workspace.yml"
    path.write_text(HEADER + textwrap.dedent(jobs), encoding="utf-8")
    loaded = load_workspace(path)
    assert loaded.errors == []
    assert loaded.config is not None
    return loaded.config


SEQUENTIAL = """\
jobs:
  pipeline:
    triggers: [ { signal: go }, { signal: again } ]
    execution:
      strategy: sequential
      agents: [ fetch, { id: render, prompt: "Render {{ input }}" }, atlas/count ]
"""

# What `SEQUENTIAL` compiles to, written by hand (spec §2.4 "execution").
HAND_WRITTEN = """\
jobs:
  pipeline:
    triggers: [ { signal: go }, { signal: again } ]
    fsm:
      id: pipeline
      initial: idle
      states:
        idle:
          on:
            go: { target: step_0_fetch }
            again: { target: step_0_fetch }
        step_0_fetch:
          entry:
            - { type: agent, agentId: fetch, outputTo: fetch }
            - { type: emit, event: ADVANCE }
          on: { ADVANCE: { target: step_1_render } }
        step_1_render:
          entry:
            - type: agent
              agentId: render
              prompt: "Render {{ input }}"
              inputFrom: fetch
              outputTo: render
            - { type: emit, event: ADVANCE }
          on: { ADVANCE: { target: step_2_atlas/count } }
        step_2_atlas/count:
          entry:
            - { type: agent, agentId: atlas/count, inputFrom: render, outputTo: atlas/count }
            - { type: emit, event: ADVANCE }
          on: { ADVANCE: { target: completed } }
        completed: { type: final }
"""


def test_sequential_execution_plans_like_the_hand_written_fsm(tmp_path: Path) -> None:
    """§13.3: the compiled `execution` and the equivalent FSM give identical `plannedSteps`."""
    compiled = load(tmp_path, SEQUENTIAL)
    written = load(tmp_path, HAND_WRITTEN)
    compiled_steps = planned_steps("pipeline", compiled.jobs["pipeline"], compiled.agents, "ws")
    written_steps = planned_steps("pipeline", written.jobs["pipeline"], written.agents, "ws")
    assert compiled_steps == written_steps
    assert compiled_steps == [
        {
            "agentName": "fetch",
            "stateId": "step_0_fetch",
            "task": "Fetches the data",
            "actionType": "agent",
            "outputKey": "fetch",
        },
        {
            "agentName": "render",
            "stateId": "step_1_render",
            "task": "render",
            "actionType": "agent",
            "outputKey": "render",
        },
        {
            "agentName": "atlas/count",
            "stateId": "step_2_atlas/count",
            "task": "atlas/count",
            "actionType": "agent",
            "outputKey": "atlas/count",
        },
    ]


def test_sequential_execution_compiles_to_the_hand_written_fsm(tmp_path: Path) -> None:
    compiled = job_fsm("pipeline", load(tmp_path, SEQUENTIAL).jobs["pipeline"])
    written = load(tmp_path, HAND_WRITTEN).jobs["pipeline"].fsm
    assert compiled == written


def test_compiled_step_shape(tmp_path: Path) -> None:
    fsm = job_fsm("pipeline", load(tmp_path, SEQUENTIAL).jobs["pipeline"])
    assert fsm.id == "pipeline"
    assert fsm.initial == "idle"
    assert list(fsm.states) == ["idle", "step_0_fetch", "step_1_render", "step_2_atlas/count", "completed"]
    first, advance = fsm.states["step_0_fetch"].entry
    assert isinstance(first, AgentAction) and first.inputFrom is None and first.outputTo == "fetch"
    assert isinstance(advance, EmitAction) and advance.event == "ADVANCE"
    assert fsm.states["completed"].type == "final"


def test_hand_written_fsm_id_defaults_to_job_id(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        jobs:
          solo:
            triggers: [ { signal: go } ]
            fsm: { initial: done, states: { done: { type: final } } }
        """,
    )
    assert job_fsm("solo", config.jobs["solo"]).id == "solo"


def test_demo_plans() -> None:
    loaded = load_workspace(EXAMPLES / "demo")
    assert loaded.config is not None
    config = loaded.config
    nightly = planned_steps("nightly-report", config.jobs["nightly-report"], config.agents, loaded.id)
    assert nightly == [
        {
            "agentName": "counter",
            "stateId": "count",
            "task": "Counts with a pause",
            "actionType": "agent",
            "outputKey": "counted",
        },
        {
            "agentName": "report",
            "stateId": "publish",
            "task": "signal reports/file-report",
            "actionType": "signal",
            "outputKey": "report",
        },
    ]
    count = planned_steps("count-and-sleep", config.jobs["count-and-sleep"], config.agents, loaded.id)
    assert [(s["agentName"], s["stateId"]) for s in count] == [
        ("counter", "step_0_counter"),
        ("stamp", "step_1_stamp"),
    ]


def test_llm_and_signal_steps_and_walk_rules(tmp_path: Path) -> None:
    """First `on` key without ADVANCE, first element of a list, emit is no step, stop at a visited state."""
    config = load(
        tmp_path,
        """\
        jobs:
          mixed:
            triggers: [ { signal: go } ]
            fsm:
              initial: start
              states:
                start:
                  entry:
                    - { type: llm, model: small, prompt: "Summarise", outputTo: summary }
                    - { type: emit, event: NEXT }
                  on:
                    NEXT: [ { target: notify, cond: "{{ true }}" }, { target: start } ]
                    OTHER: { target: start }
                notify:
                  entry:
                    - { type: signal, signal: again }
                    - { type: emit, event: ADVANCE }
                  on: { ADVANCE: { target: start } }
        """,
    )
    steps = planned_steps("mixed", config.jobs["mixed"], config.agents, "ws")
    assert steps == [
        {
            "agentName": "summary",
            "stateId": "start",
            "task": "llm:small",
            "actionType": "llm",
            "outputKey": "summary",
        },
        {
            "agentName": "signal:again",
            "stateId": "notify",
            "task": "signal ws/again",
            "actionType": "signal",
            "outputKey": "signal:again",
        },
    ]


def test_walk_stops_at_a_dead_end(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        """\
        jobs:
          short:
            triggers: [ { signal: go } ]
            fsm:
              initial: a
              states:
                a: { entry: [ { type: agent, agentId: render } ] }
                b: { entry: [ { type: agent, agentId: fetch } ], type: final }
        """,
    )
    steps = planned_steps("short", config.jobs["short"], config.agents, "ws")
    assert [s["stateId"] for s in steps] == ["a"]


def test_job_display_name() -> None:
    job = Job.model_validate(
        {"triggers": [{"signal": "go"}], "execution": {"strategy": "sequential", "agents": ["a"]}}
    )
    assert job_display_name("nightly-report_v2", job) == "Nightly report v2"
    assert job_display_name("x", job.model_copy(update={"title": "Custom"})) == "Custom"
    assert job_display_name("", job) == ""
