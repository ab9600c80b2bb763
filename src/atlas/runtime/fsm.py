"""Pure FSM helpers shared by the runner, the API and the CLI (spec §2.3, §2.4).

Everything here is a function of the validated config alone (no I/O), so `workspace show`, the UI's planned
steps and the engine all agree on what a job will do.
"""

from __future__ import annotations

from collections.abc import Mapping

from atlas.config.model import (
    Action,
    Agent,
    AgentAction,
    EmitAction,
    Fsm,
    Job,
    LlmAction,
    SequentialStep,
    SignalAction,
    State,
    Transition,
)
from atlas.sessions import events
from atlas.sessions.events import PlannedStep

ADVANCE = "ADVANCE"
IDLE_STATE = "idle"
COMPLETED_STATE = "completed"


def job_display_name(job_id: str, job: Job) -> str:
    """The API's job `name`: `title`, else the id with `-`/`_` as spaces and the first letter upper-cased."""
    if job.title:
        return job.title
    text = job_id.replace("-", " ").replace("_", " ")
    return text[:1].upper() + text[1:]


def step_state_id(index: int, agent_id: str) -> str:
    """State name of the `index`-th step of a compiled `execution` (`step_0_counter`)."""
    return f"step_{index}_{agent_id}"


def job_fsm(job_id: str, job: Job) -> Fsm:
    """The job's state machine: the hand-written `fsm` (its `id` defaulted to the job id) or the compiled
    `execution`. The loader guarantees exactly one of the two is present."""
    if job.fsm is not None:
        return job.fsm if job.fsm.id else job.fsm.model_copy(update={"id": job_id})
    if job.execution is None:
        raise ValueError(f"job '{job_id}' has neither 'fsm' nor 'execution'")
    return compile_execution(job_id, job)


def agent_ids(fsm: Fsm) -> list[str]:
    """Every `agentId` the machine's actions name (entry and transition actions), in file order, once each."""
    found: dict[str, None] = {}
    for state in fsm.states.values():
        actions = list(state.entry)
        for spec in state.on.values():
            for transition in spec if isinstance(spec, list) else [spec]:
                actions.extend(transition.actions)
        found.update((a.agentId, None) for a in actions if isinstance(a, AgentAction))
    return list(found)


def compile_execution(job_id: str, job: Job) -> Fsm:
    """Compile `execution: {strategy: sequential, agents}` into the FSM of spec §2.4.

    `idle` leaves on every trigger to the first step; each step runs its agent (fed the previous agent's
    output) and then emits `ADVANCE`, which leads to the next step and finally to the final state `completed`.
    """
    assert job.execution is not None
    steps = [(s.id, s.prompt) if isinstance(s, SequentialStep) else (s, None) for s in job.execution.agents]
    names = [step_state_id(i, agent_id) for i, (agent_id, _) in enumerate(steps)]
    states: dict[str, State] = {
        IDLE_STATE: State(on={t.signal: Transition(target=names[0]) for t in job.triggers}),
    }
    for index, (agent_id, prompt) in enumerate(steps):
        agent = AgentAction(
            type="agent",
            agentId=agent_id,
            prompt=prompt,
            inputFrom=steps[index - 1][0] if index > 0 else None,
            outputTo=agent_id,
        )
        following = names[index + 1] if index + 1 < len(names) else COMPLETED_STATE
        states[names[index]] = State(
            entry=[agent, EmitAction(type="emit", event=ADVANCE)],
            on={ADVANCE: Transition(target=following)},
        )
    states[COMPLETED_STATE] = State(type="final")
    return Fsm(id=job_id, initial=IDLE_STATE, states=states)


def planned_steps(
    job_id: str, job: Job, agents: Mapping[str, Agent], workspace_id: str
) -> list[PlannedStep]:
    """The steps a run is expected to take: the "happy path" of the FSM (spec §2.4 "Planned steps").

    Each step is `{agentName, stateId, task, actionType, outputKey}`, the API's `plannedSteps` item.

    From `initial`, collect the step actions of each state's `entry`; move on along `ADVANCE` if the state has
    it, else along its first `on` entry. Stop at a final state, a state already visited or a dead end.
    """
    fsm = job_fsm(job_id, job)
    steps: list[PlannedStep] = []
    visited: set[str] = set()
    state_id: str | None = fsm.initial
    while state_id is not None and state_id not in visited and state_id in fsm.states:
        visited.add(state_id)
        state = fsm.states[state_id]
        for action in state.entry:
            step = planned_step(state_id, action, agents, workspace_id)
            if step is not None:
                steps.append(step)
        state_id = None if state.type == "final" else _next_state(state)
    return steps


def _next_state(state: State) -> str | None:
    if not state.on:
        return None
    transitions = state.on.get(ADVANCE) or next(iter(state.on.values()))
    if isinstance(transitions, Transition):
        return transitions.target
    return transitions[0].target if transitions else None


def planned_step(
    state_id: str, action: Action, agents: Mapping[str, Agent], workspace_id: str
) -> PlannedStep | None:
    """The planned-step record for a step action; `None` for `emit`, which is not a step."""
    if isinstance(action, AgentAction):
        agent = agents.get(action.agentId)
        description = agent.description if agent is not None else None
        return events.planned_step(
            agentName=action.agentId,
            stateId=state_id,
            task=description or action.agentId,
            actionType="agent",
            outputKey=action.outputTo or action.agentId,
        )
    if isinstance(action, LlmAction):
        key = action.outputTo or f"llm:{state_id}"
        return events.planned_step(
            agentName=key,
            stateId=state_id,
            task=f"llm:{action.model}",
            actionType="llm",
            outputKey=key,
        )
    if isinstance(action, SignalAction):
        name = action.outputTo or f"signal:{action.signal}"
        return events.planned_step(
            agentName=name,
            stateId=state_id,
            task=f"signal {action.workspace or workspace_id}/{action.signal}",
            actionType="signal",
            outputKey=name,
        )
    return None
