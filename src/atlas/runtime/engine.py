"""Runs one session's FSM (spec §2.4): entry actions, transitions, agents, cascades, guards and the final event.

The engine owns the session's writer once `session:start` is written, and it always ends with exactly one
`session:complete`, whatever happens (step error, timeout, cancel, shutdown): that is the "exactly one terminal
record" promise of spec §4.4 from the runner's side.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from nats.errors import Error as NatsError

from atlas.agents.base import AgentContext, LlmObserver, StepError
from atlas.agents.llm import LlmCallConfig, ToolSource, run_llm
from atlas.agents.runner import AgentResult, run_agent_full
from atlas.config.durations import parse_duration
from atlas.config.model import (
    Action,
    AgentAction,
    EmitAction,
    LlmAction,
    SignalAction,
    SummarySpec,
    Transition,
)
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps
from atlas.observability.logs import session_fields
from atlas.observability.tracing import Tracing, end_status
from atlas.runtime.accept import Accepted, TriggerRequest
from atlas.runtime.chunks import MAX_CHUNK_BYTES, ChunkCoalescer
from atlas.runtime.fsm import planned_step
from atlas.runtime.slots import Slots
from atlas.runtime.steplogs import AppendLogs, StepLogRecorder
from atlas.runtime.workspaces import Workspace
from atlas.sessions import events
from atlas.sessions.causes import cause_from_view, refused_child_cause
from atlas.sessions.events import PlannedStep
from atlas.sessions.reducer import is_terminal
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter
from atlas.templating import StreamRedactor, TemplateError, Templater

log = logging.getLogger("atlas.engine")


class SessionEnd(Exception):
    """Ends the run with a terminal status (raised by actions and guards)."""

    def __init__(self, status: str, code: str | None, message: str | None,
                 cause: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        #: The failed child behind a failed `signal` step (issue #16), recorded on `session:complete` too.
        self.cause = cause


@dataclass
class CancelRequest:
    status: str  # cancelled | interrupted
    code: str
    message: str


@dataclass
class Run:
    """State of one running session; `cancel` is set before its task is cancelled."""

    session_id: str
    task: asyncio.Task[None] | None = None
    cancel: CancelRequest | None = None
    cancelled_flag: threading.Event = field(default_factory=threading.Event)


@dataclass(frozen=True)
class EngineServices:
    """What every run uses besides its own session, built once by the composition root.

    Why a bundle of narrow pieces rather than the daemon: a run renders templates, records chunks in the live view
    and publishes them, lends its runner slot while it waits on a child, and accepts cascades — nothing else; a unit
    test can give it exactly these."""

    templater: Templater
    store: SessionStore
    slots: Slots
    trigger: Callable[[TriggerRequest], Awaitable[Accepted]]
    """Accept a cascade (the accept pipeline's `accept`)."""
    publish_chunk: Callable[[str, bytes], Awaitable[None]]
    """Publish an encoded chunk on a session's ephemeral subject (best effort: nothing while disconnected)."""
    spawn: Callable[[Coroutine[Any, Any, Any]], None]
    llm_base_url: str | None
    bus_retry_s: float
    """How long a write rides through a silent bus (for the log line of a run the bus failed under)."""
    metrics: RunObserver | None = None
    """Step durations, model and tool calls (`atlas.observability.metrics.Metrics`); None: not observed."""
    tools: Callable[[Workspace], ToolSource | None] | None = None
    """The workspace's MCP tools (`McpHub.for_workspace`), for `llm` steps with `tools:`; None: no MCP."""
    step_logs: AppendLogs | None = None
    """Store a batch of step-log lines (`StepLogStore.append`, issue #16); None: output is live only."""
    memory_tools: Callable[[Workspace, ToolSource | None, str], ToolSource | None] | None = None
    """The workspace's memory tools in front of its MCP tools, saving with the run's sessionId as source (issue #17:
    an `llm` step whose `tools:` names `save_memory_entry`…); None: MCP only."""
    tracing: Tracing = field(default_factory=Tracing.off)
    """The daemon's tracer (issue #18): a run's session span and its steps' spans; off by default."""


class Engine:
    def __init__(self, services: EngineServices, ws: Workspace, job_id: str, envelope: dict[str, Any],
                 writer: SessionWriter, run: Run) -> None:
        self.s = services
        self.ws = ws
        self.job_id = job_id
        self.job = ws.job(job_id)
        self.fsm = ws.fsms[job_id]
        self.env = envelope
        self.writer = writer
        self.run_state = run
        self.results: dict[str, Any] = {}
        #: The running step's tool calls as they end (its AgentContext's list), kept for a cancelled step's record.
        self._tool_calls: list[dict[str, Any]] = []
        #: Per step that streamed text: let out what its redactor holds back (see `_streamed_text_redacted`).
        self._held_text: dict[int, Callable[[], None]] = {}
        self.step_number = 0
        self.transitions = 0
        self.max_steps = self.job.config.max_steps
        self.session_info = {
            "id": envelope["sessionId"],
            "correlationId": envelope["correlationId"],
            "parentSessionId": envelope.get("parentSessionId"),
            "rootSessionId": envelope["rootSessionId"],
            "depth": envelope["depth"],
            "jobName": job_id,
            "workspaceId": ws.id,
        }
        signal = ws.config.signals[envelope["signalId"]]
        self.signal_info = {"id": envelope["signalId"], "provider": signal.provider, "workspaceId": ws.id}
        self.current_step: int | None = None
        # The envelope's `skipStates` (issue #14): the step actions of these states' `entry` are recorded skipped.
        self.skip_states = frozenset(envelope.get("skipStates") or ())

    # ------------------------------------------------------------ top level

    def _timeout_s(self) -> float:
        text = self.job.config.timeout or self.ws.config.workspace.timeout.maxTotalTimeout
        return parse_duration(text)

    async def execute(self) -> None:
        """Run the session to its one `session:complete`, inside its span and with its ids on every log line."""
        env = self.env
        with (self.s.tracing.session_span(env, self.job_id) as span,
              session_fields(env["sessionId"], env["correlationId"], self.ws.id)):
            status, code = await self._execute()
            end_status(span, status, code)

    async def _execute(self) -> tuple[str, str | None]:
        started = time.monotonic()
        status, code, message = "completed", None, None
        cause: dict[str, Any] | None = None
        timeout_s = self._timeout_s()
        task = asyncio.current_task()
        # The job timeout is a cancel with its own reason, so the running step records `timeout` too.
        timer = asyncio.get_running_loop().call_later(timeout_s, self._time_out, task, timeout_s)
        try:
            await self._run_fsm()
        except SessionEnd as end:
            status, code, message, cause = end.status, end.code, end.message, end.cause
        except asyncio.CancelledError:
            req = self.run_state.cancel or CancelRequest("interrupted", "daemon_shutdown", "Daemon shut down")
            status, code, message = req.status, req.code, req.message
            # Keep going: the terminal event must be written even though this task was cancelled.
            if task is not None:
                task.uncancel()
        except NatsError as exc:
            # The bus failed under the run for longer than a write rides through (ATLAS_BUS_RETRY: every append is
            # resent with its dedupe id that long, which outlasts a leader election, so losing one nats node of
            # three no longer lands here): progress could not be recorded and steps may have had effects, so the
            # run ends like one whose daemon died, never re-run (spec §8.1).
            log.warning("session %s: bus failure while running (no answer for %g s): %s", self.env["sessionId"],
                        self.s.bus_retry_s, exc)
            status, code, message = "interrupted", "interrupted", f"The message bus failed: {type(exc).__name__}"
        except Exception as exc:  # a bug in atlas itself: still end the session with one terminal record
            log.exception("session %s crashed", self.env["sessionId"])
            status, code, message = "failed", "internal_error", f"Internal error: {type(exc).__name__}"
        finally:
            timer.cancel()
        if status == "completed" and self.job.summary is not None:
            await self._write_summary()
        await self.writer.append(events.complete(
            sessionId=self.writer.session_id,
            seq=self.writer.next_seq,
            status=status,
            durationMs=int((time.monotonic() - started) * 1000),
            error=message,
            errorCode=code,
            cause=cause,
        ))
        return status, code

    def _time_out(self, task: asyncio.Task[Any] | None, timeout_s: float) -> None:
        if task is None or task.done() or self.run_state.cancel is not None:
            return
        limit = self.job.config.timeout or self.ws.config.workspace.timeout.maxTotalTimeout
        self.run_state.cancel = CancelRequest("failed", "timeout", f"Job timed out after {limit}")
        self.run_state.cancelled_flag.set()
        task.cancel()

    async def _write_summary(self) -> None:
        spec = self.job.summary
        text = spec.text if isinstance(spec, SummarySpec) else spec
        details = spec.keyDetails if isinstance(spec, SummarySpec) else []
        try:
            summary = str(await self.s.templater.render_async(text, self._vars()))
            key_details = [
                {k: v for k, v in {"label": kd.label,
                                   "value": str(await self.s.templater.render_async(kd.value, self._vars())),
                                   "url": kd.url}.items() if v is not None}
                for kd in details
            ]
        except TemplateError as exc:
            log.warning("summary template failed for %s: %s", self.env["sessionId"], exc)
            return
        # The summary is recorded, so a secret() it rendered must show as *** (spec §10.7).
        redacted = self.s.templater.redact({"summary": summary, "keyDetails": key_details})
        await self.writer.append(events.summary(
            sessionId=self.writer.session_id,
            seq=self.writer.next_seq,
            summary=redacted["summary"],
            keyDetails=redacted["keyDetails"],
        ))

    # ------------------------------------------------------------ FSM

    def _vars(self, **extra: Any) -> dict[str, Any]:
        base = {
            "signal": self.signal_info,
            "payload": self.env.get("payload"),
            "results": self.results,
            "session": self.session_info,
        }
        base.update(extra)
        return base

    async def _run_fsm(self) -> None:
        queue: deque[tuple[str, Any]] = deque([(self.env["signalId"], self.env.get("payload"))])
        state_id = self.fsm.initial
        trigger_pending = True
        if self.fsm.states[state_id].type == "final":
            # Nothing can happen in a machine that starts finished: `skipped`, as in the reference (spec Revision 2).
            raise SessionEnd("skipped", "no_transition",
                             f'Signal "{self.env["signalId"]}" had no matching transition in state "{state_id}"'
                             " (the initial state is final)")
        await self._enter(state_id, queue)
        while True:
            state = self.fsm.states[state_id]
            if state.type == "final":
                return
            if not queue:
                raise SessionEnd("failed", "fsm_stalled", f"No events left in state \"{state_id}\"")
            name, data = queue.popleft()
            is_trigger, trigger_pending = trigger_pending, False
            transition = await self._match(state.on.get(name), name, data)
            if transition is None:
                if is_trigger and state_id == self.fsm.initial:
                    raise SessionEnd(
                        "skipped", "no_transition",
                        f'Signal "{name}" had no matching transition in state "{state_id}"',
                    )
                continue
            self.transitions += 1
            if self.transitions > 10 * self.max_steps:
                raise SessionEnd("failed", "step_limit", f"More than {10 * self.max_steps} transitions")
            await self._actions(transition.actions, state_id, queue)
            state_id = transition.target
            await self._enter(state_id, queue)

    async def _match(self, spec: Transition | list[Transition] | None, name: str, data: Any) -> Transition | None:
        """The first transition whose `cond` holds; conditions render off the loop (they may be expensive)."""
        if spec is None:
            return None
        for tr in spec if isinstance(spec, list) else [spec]:
            if tr.cond is None:
                return tr
            try:
                if await self.s.templater.truthy_async(tr.cond, self._vars(event={"name": name, "data": data})):
                    return tr
            except TemplateError as exc:
                raise SessionEnd("failed", "template_error", str(exc)) from exc
        return None

    async def _enter(self, state_id: str, queue: deque[tuple[str, Any]]) -> None:
        await self._actions(self.fsm.states[state_id].entry, state_id, queue, skip=state_id in self.skip_states)

    async def _actions(self, actions: list[Action], state_id: str, queue: deque[tuple[str, Any]],
                       skip: bool = False) -> None:
        """Run `actions` in order; with `skip` (a `skipStates` entry) step actions are recorded `step:skipped`
        instead of run, while `emit` still queues its event so the machine moves on."""
        for action in actions:
            if isinstance(action, EmitAction):
                queue.append((action.event, action.data))
                continue
            if skip:
                await self._skipped(state_id, action)
                continue
            if action.if_ is not None:
                try:
                    runs = await self.s.templater.truthy_async(action.if_, self._vars())
                except TemplateError as exc:
                    raise SessionEnd("failed", "template_error", str(exc)) from exc
                if not runs:
                    await self._skipped(state_id, action)
                    continue
            if self.s.tracing.enabled:
                await self._traced_step(action, state_id)
            else:
                await self._step(action, state_id)

    async def _traced_step(self, action: AgentAction | LlmAction | SignalAction, state_id: str) -> None:
        """`_step` inside its span: the agent's model and tool calls, and a cascade's child session, nest in it."""
        agent = self._plan(state_id, action)["agentName"]
        with self.s.tracing.step_span(self.step_number + 1, state_id, action.type, agent) as span:
            try:
                await self._step(action, state_id)
            except SessionEnd as end:
                end_status(span, end.status, end.code)
                raise

    async def _skipped(self, state_id: str, action: AgentAction | LlmAction | SignalAction) -> None:
        name = self._plan(state_id, action)["agentName"]
        await self.writer.append(events.step_skipped(
            sessionId=self.writer.session_id, seq=self.writer.next_seq, stateId=state_id, agentName=name,
        ))

    # ------------------------------------------------------------ steps

    def _input(self, action: AgentAction | LlmAction | SignalAction) -> Any:
        source = getattr(action, "inputFrom", None)
        if source is None:
            return self.env.get("payload")
        if isinstance(source, str):
            if source not in self.results:
                raise StepError("input_missing", f"No result named '{source}' for inputFrom")
            return self.results[source]
        missing = [s for s in source if s not in self.results]
        if missing:
            raise StepError("input_missing", f"No results named {missing} for inputFrom")
        return {s: self.results[s] for s in source}

    def _plan(self, state_id: str, action: AgentAction | LlmAction | SignalAction) -> PlannedStep:
        """The planned-step record of an action (agentName, task, outputKey): one rule for plan and run."""
        step = planned_step(state_id, action, self.ws.config.agents, self.ws.id)
        assert step is not None  # step actions always have one
        return step

    async def _step(self, action: AgentAction | LlmAction | SignalAction, state_id: str) -> None:
        self.step_number += 1
        if self.step_number > self.max_steps:
            raise SessionEnd("failed", "step_limit", f"More than {self.max_steps} steps (config.max_steps)")
        number = self.step_number
        plan = self._plan(state_id, action)
        self._agent_type = agent_type(self.ws, action)
        output_key = plan["outputKey"]
        started = time.monotonic()
        input_value: Any = None
        prompt: str | None = None
        try:
            input_value = self._input(action)
            raw_prompt = getattr(action, "prompt", None)
            if raw_prompt is not None and not isinstance(action, SignalAction):
                prompt = str(await self.s.templater.render_async(raw_prompt, self._vars(input=input_value)))
        except TemplateError as exc:
            await self._step_start(number, plan, action, None, None)
            await self._step_failed(number, started, "template_error", str(exc), None)
        except StepError as exc:
            await self._step_start(number, plan, action, None, None)
            await self._step_failed(number, started, exc.code, exc.message, exc.output)
        await self._step_start(number, plan, action, input_value, prompt)
        self.current_step = number
        self._tool_calls = []
        child_id: str | None = None
        result = AgentResult(None)
        try:
            if isinstance(action, SignalAction):
                result.output, child_id = await self._cascade(action)
            else:
                result = await self._agent(action, input_value, prompt)
        except TemplateError as exc:
            await self._step_failed(number, started, "template_error", str(exc), None)
        except StepError as exc:
            failed = AgentResult(exc.output, exc.usage if isinstance(exc.usage, dict) else None,
                                 exc.tool_calls or [])
            await self._step_failed(number, started, exc.code, exc.message, exc.output, exc_child(exc), failed,
                                    details=exc.details, cause=exc.cause)
        except asyncio.CancelledError:
            req = self.run_state.cancel
            message = req.message if req else "Daemon shut down"
            code = req.code if req else "daemon_shutdown"
            cut_short = AgentResult(None, tool_calls=self._tool_calls)  # the calls it made before the cancel
            await asyncio.shield(self._write_step_complete(number, started, "failed", None, message, code,
                                                           result=cut_short))
            raise
        finally:
            self.current_step = None
        self.results[output_key] = result.output
        await self._write_step_complete(number, started, "completed", result.output, None, None, child_id, result)

    async def _step_start(self, number: int, plan: PlannedStep, action: Any, input_value: Any,
                          prompt: str | None) -> None:
        await self.writer.append(events.step_start(
            sessionId=self.writer.session_id,
            seq=self.writer.next_seq,
            stepNumber=number,
            agentName=plan["agentName"],
            stateId=plan["stateId"],
            actionType=action.type,
            task=str(self.s.templater.redact(prompt)) if prompt else plan["task"],  # may hold a secret()
            outputKey=plan["outputKey"],
            input=self.s.templater.redact(input_value),  # recorded subject to the 256 KiB cap
        ))

    async def _write_step_complete(self, number: int, started: float, status: str, output: Any,
                                   error: str | None, code: str | None, child_id: str | None = None,
                                   result: AgentResult | None = None, details: dict[str, Any] | None = None,
                                   cause: dict[str, Any] | None = None) -> None:
        if details and isinstance(details.get("traceback"), str) and self._logs is not None:
            # A python step's traceback ends its log too (stderr, as Python prints one): the log tells it all.
            self._logs.add(number, {"type": "log", "stream": "stderr", "line": details["traceback"]})
        await self._end_chunks(number)
        redact = self.s.templater.redact
        await self.writer.append(events.step_complete(
            sessionId=self.writer.session_id,
            seq=self.writer.next_seq,
            stepNumber=number,
            status=status,
            durationMs=int((time.monotonic() - started) * 1000),
            output=self.s.templater.redact(output),  # recorded subject to the 256 KiB cap
            error=error,
            errorCode=code,
            childSessionId=child_id,
            usage=result.usage if result is not None else None,
            toolCalls=redact(result.tool_calls) if result is not None else None,  # arguments may echo a secret()
            reasoning=redact(result.reasoning) if result is not None and result.reasoning else None,
            errorDetails=redact(details) if details else None,  # a traceback or stderr may show a secret()
            cause=cause,  # redacted by _step_failed
        ))
        if self.s.metrics is not None:
            self.s.metrics.step_ended(self._agent_type, time.monotonic() - started)

    async def _step_failed(self, number: int, started: float, code: str, message: str, output: Any,
                           child_id: str | None = None, result: AgentResult | None = None, *,
                           details: dict[str, Any] | None = None, cause: dict[str, Any] | None = None) -> None:
        message = str(self.s.templater.redact(message))
        cause = self.s.templater.redact(cause) if cause else None  # its child may have run where ours were unknown
        await self._write_step_complete(number, started, "failed", output, message, code, child_id, result,
                                        details, cause)
        raise SessionEnd("failed", code, message, cause)

    async def _agent(self, action: AgentAction | LlmAction, input_value: Any, prompt: str | None) -> AgentResult:
        """Run an agent (or an inline llm action): its output, and for llm steps usage and tool calls."""
        agent = self.ws.config.agents.get(action.agentId) if isinstance(action, AgentAction) else None
        params = getattr(getattr(agent, "config", None), "params", None) or {}
        ctx = AgentContext(
            tool_calls=self._tool_calls,
            input=input_value,
            prompt=prompt,
            payload=self.env.get("payload"),
            signal=self.signal_info,
            webhook=self.env.get("webhook"),
            session=self.session_info,
            results=self.results,
            params=dict(params),
            cancelled=self.run_state.cancelled_flag,
            workspace_dir=self.ws.path,
            _progress_sink=self._chunk_sink(),
            _llm_observer=self.s.metrics,
        )
        variables = self._vars(input=input_value)
        base_url = self.s.llm_base_url
        tools = self.s.tools(self.ws) if self.s.tools is not None else None
        if self.s.memory_tools is not None and self._agent_type == "llm":  # only llm steps call tools
            tools = self.s.memory_tools(self.ws, tools, self.env["sessionId"])
        if isinstance(action, LlmAction):
            result = await run_llm(LlmCallConfig.from_action(action), ctx, self.s.templater, variables,
                                   default_base_url=base_url, tools=tools)
            return AgentResult(result.output, result.usage, result.tool_calls, result.reasoning)
        target: Any = agent if agent is not None else action.agentId
        return await run_agent_full(target, ctx, self.s.templater, variables, default_base_url=base_url,
                                    tools=tools)

    #: The running step's agent type (a metric label, see `agent_type`).
    _agent_type = "unknown"
    #: The run's chunk buffer, made by the first step that emits (see `atlas.runtime.chunks`).
    _chunks: ChunkCoalescer | None = None
    #: The run's durable step log, made with it (see `atlas.runtime.steplogs`, issue #16).
    _logs: StepLogRecorder | None = None

    def _chunk_sink(self) -> Callable[[dict[str, Any]], None]:
        """The current step's thread-safe, never-blocking chunk sink (spec §3.3).

        Chunks are coalesced per run (bug #19.1): a line costs an append to a bounded buffer, and the live view
        is copied and the bus published to once per flush, never once per line.
        """
        if self._chunks is None:
            self._chunks = ChunkCoalescer(self._deliver_chunk, self.s.spawn)
        live = self._streamed_text_redacted(self.step_number, self._chunks.sink(self.step_number))
        if self.s.step_logs is None:
            return live
        if self._logs is None:
            self._logs = StepLogRecorder(self.env["sessionId"], self.s.step_logs, self.s.templater.redact,
                                         self.s.spawn)
        keep, number = self._logs.add, self.step_number

        def sink(chunk: dict[str, Any]) -> None:  # kept first: the live side may drop lines under load
            keep(number, chunk)
            live(chunk)

        return sink

    def _streamed_text_redacted(self, number: int,
                                live: Callable[[dict[str, Any]], None]) -> Callable[[dict[str, Any]], None]:
        """`live`, with an llm step's streamed text redacted as one text (`StreamRedactor`): chunks are redacted one
        by one when delivered, and a secret the model streamed in two pieces would reach live viewers in two
        halves. Held-back text goes out before the step's next other chunk, or at its end (`_end_chunks`). The
        redactor is made by the first text piece: most steps stream none."""
        text: StreamRedactor | None = None

        def release() -> None:
            held = text.flush() if text is not None else ""
            if held:
                live({"type": "text-delta", "delta": held})

        def sink(chunk: dict[str, Any]) -> None:
            nonlocal text
            if chunk.get("type") != "text-delta":
                if text is not None:
                    release()
                live(chunk)
                return
            if text is None:
                text = StreamRedactor(self.s.templater)
                self._held_text[number] = release
            released = text.feed(str(chunk.get("delta") or ""))
            if released:
                live({**chunk, "delta": released})

        return sink

    async def _deliver_chunk(self, number: int, body: dict[str, Any]) -> None:
        """Fold one coalesced chunk into the live view and publish it on the session's ephemeral subject."""
        sid = self.env["sessionId"]
        message = {"sessionId": sid, "stepNumber": number, "chunk": self.s.templater.redact(body)}
        self.s.store.apply_chunk(message)
        data = dumps(message)
        if len(data) <= MAX_CHUNK_BYTES:
            await self.s.publish_chunk(sid, data)

    async def _end_chunks(self, number: int) -> None:
        """Send step `number`'s pending chunks before its `step:complete` (which clears them from the view)."""
        release = self._held_text.pop(number, None)
        if release is not None:
            release()
        if self._logs is not None:  # stored before step:complete: an ended run's log is whole
            await self._logs.close_step(number)
        if self._chunks is not None:
            await self._chunks.close_step(number)

    async def _cascade(self, action: SignalAction) -> tuple[Any, str | None]:
        try:
            payload = await self.s.templater.render_async(action.payload or {}, self._vars())
        except TemplateError as exc:
            raise StepError("template_error", str(exc)) from exc
        req = TriggerRequest(
            workspace_id=action.workspace or self.ws.id,
            signal_id=action.signal,
            payload=payload,
            trigger="cascade",
            parent_session_id=self.env["sessionId"],
        )
        try:
            accepted = await self.s.trigger(req)
        except AtlasError as exc:
            raise StepError(exc.code, exc.message) from exc
        info: dict[str, Any] = {"sessionId": accepted.session_id, "correlationId": accepted.correlation_id,
                                "status": accepted.status}
        if accepted.status == "failed":
            err = StepError(accepted.error_code or "child_failed", f"Child session {accepted.session_id} "
                            f"failed: {accepted.error_code}", info)
            err.child_session_id = accepted.session_id  # type: ignore[attr-defined]
            err.cause = refused_child_cause(accepted.session_id, accepted.workspace_id, accepted.job_id,
                                            accepted.error_code)
            raise err
        if not action.wait:
            return info, accepted.session_id
        self.s.slots.give()
        try:
            view = await self.s.store.wait_terminal(accepted.session_id)
        finally:
            await self.s.slots.take()
        info["status"] = view["status"]
        if view.get("results") is not None:
            info["results"] = view["results"]
        if view["status"] != "completed":
            err = StepError("child_failed", f"Child session {accepted.session_id} ended {view['status']}"
                            + (f": {view.get('error')}" if view.get("error") else ""), info)
            err.child_session_id = accepted.session_id  # type: ignore[attr-defined]
            err.cause = cause_from_view(view)  # the child's error and its own cause, down to the root cause
            raise err
        return info, accepted.session_id


class RunObserver(LlmObserver, Protocol):
    """What a run reports to metrics: its steps' durations, and (through each step's context) model and tool
    calls."""

    def step_ended(self, agent_type: str, seconds: float) -> None: ...


def agent_type(ws: Workspace, action: AgentAction | LlmAction | SignalAction) -> str:
    """A step's agent type, a metric label bounded by the config: the agent's `type` (python, shell, http, llm,
    atlas), `llm` for an inline llm action, `signal` for a cascade, `builtin` for a built-in agent."""
    if isinstance(action, LlmAction):
        return "llm"
    if isinstance(action, SignalAction):
        return "signal"
    agent = ws.config.agents.get(action.agentId)
    return str(agent.type) if agent is not None else "builtin"


def exc_child(exc: StepError) -> str | None:
    return getattr(exc, "child_session_id", None)


__all__ = ["CancelRequest", "Engine", "Run", "SessionEnd", "is_terminal"]
