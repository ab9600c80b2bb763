"""The cron scheduler (spec §5.6): turns the schedule signals of the loaded workspaces into sessions.

Each tick reads a schedule's `CRON_STATE` entry (`lastScheduled`, settled up to there), asks `atlas.runtime.cron`
which slots are due and what the missed-run policy makes of them, then for each slot to fire:

1. **claims** it with an atomic create of ``<ws>.<sig>.<epoch seconds>`` in `CRON_CLAIMS`. Only the creator goes
   on, so daemons sharing a cluster — or one daemon restarted over its own earlier ticks — fire a slot once;
2. **accepts** it through the ordinary accept pipeline with ``trigger: schedule`` (a root session, so it gets its
   own correlationId, §4.1), then records the session in the claim;
3. finally moves `lastScheduled` forward with a compare-and-set (merging with whatever another daemon wrote).

A claim comes before acceptance on purpose: a crash between the two loses that one tick rather than risking a
double run (a tick's job may have side effects; a missed one is visible in the next tick's `missedCount`).

Time comes from an injectable `Clock` (``now()`` and an async ``sleep()``), so tests drive the scheduler with a
fake clock and call `tick()` directly instead of waiting for real minutes. The loop sleeps until the next slot but
never longer than `MAX_SLEEP_S`, so plans are recomputed soon after a wall-clock jump or a resume from sleep
(asyncio's timer clock does not advance while the machine is suspended).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from atlas.bus.client import KV_CRON_CLAIMS, KV_CRON_STATE, Bus, WrongLastSequence
from atlas.bus.records import cron_claim, cron_claim_result
from atlas.config.durations import parse_duration
from atlas.config.model import ScheduleSignal
from atlas.errors import AtlasError
from atlas.runtime.accept import Accepted, TriggerRequest
from atlas.runtime.cron import Plan, next_fire, plan_ticks, tick_payload
from atlas.runtime.intake import Intake
from atlas.runtime.workspaces import WorkspaceRegistry
from atlas.sessions.events import format_iso, parse_iso
from atlas.sessions.store import SessionStore

log = logging.getLogger("atlas.scheduler")

#: Longest single sleep of the loop: bounds how late a clock jump, a resume or a new workspace is noticed.
MAX_SLEEP_S = 30.0
#: Due-slot scans over a longer gap than this (a long downtime) run in a worker thread, off the event loop.
INLINE_SCAN = timedelta(hours=1)
#: Compare-and-set attempts on a CRON_STATE entry before giving up (each loss means another writer made progress).
CAS_ATTEMPTS = 16
#: How long `stop()` lets a tick in progress finish (it may be accepting sessions) before cancelling it.
STOP_TIMEOUT_S = 10.0


class Clock(Protocol):
    """Where the scheduler gets the time from; tests pass a fake one."""

    def now(self) -> datetime:
        """The current time, aware UTC."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait `seconds` of this clock's time."""
        ...


class SystemClock:
    """The real clock: wall time for slots, asyncio's timer for waiting."""

    def now(self) -> datetime:
        return datetime.now(UTC)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


@dataclass(frozen=True)
class Schedule:
    """One schedule signal of a loaded workspace, with its config resolved."""

    workspace_id: str
    signal_id: str
    expression: str
    timezone: str
    on_missed: str
    missed_window: timedelta
    missed_window_text: str
    concurrency: str
    has_job: bool

    @property
    def key(self) -> str:
        """Its CRON_STATE key (ids are subject-safe by construction, spec §2.1)."""
        return f"{self.workspace_id}.{self.signal_id}"

    def claim_key(self, scheduled: datetime) -> str:
        return f"{self.key}.{int(scheduled.timestamp())}"


@dataclass
class Fired:
    """A tick this daemon claimed and had accepted."""

    workspace_id: str
    signal_id: str
    scheduled: datetime
    session_id: str
    correlation_id: str
    payload: dict[str, Any]


class Scheduler:
    """Fires the schedule signals of every loaded workspace; one per daemon, safe with many daemons per cluster."""

    def __init__(self, *, bus: Bus, store: SessionStore, workspaces: WorkspaceRegistry,
                 trigger: Callable[[TriggerRequest], Awaitable[Accepted]], intake: Intake, daemon_id: str,
                 clock: Clock | None = None) -> None:
        """`trigger`: the accept pipeline's `accept`; `intake`: whether the daemon takes work (not while stopping)."""
        self.bus = bus
        self.store = store
        self.workspaces = workspaces
        self.trigger = trigger
        self.intake = intake
        self.daemon_id = daemon_id
        self.clock: Clock = clock or SystemClock()
        self.last_tick: datetime | None = None
        self._lock = asyncio.Lock()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Handle the slots missed while no daemon ran (spec §5.6), then keep firing in the background."""
        self._stop.clear()
        await self._safe_tick()
        self._task = asyncio.create_task(self._loop(), name="scheduler")

    async def stop(self) -> None:
        """Stop firing; a tick in progress may finish (it can be between a claim and its acceptance)."""
        self._stop.set()
        task, self._task = self._task, None
        if task is None:
            return
        try:
            await asyncio.wait_for(asyncio.shield(task), STOP_TIMEOUT_S)
        except TimeoutError:
            task.cancel()
            with contextlib.suppress(BaseException):
                await task

    async def _loop(self) -> None:
        while not self._stop.is_set():
            sleeper = asyncio.ensure_future(self.clock.sleep(self._delay()))
            stopper = asyncio.ensure_future(self._stop.wait())
            try:
                await asyncio.wait({sleeper, stopper}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for fut in (sleeper, stopper):
                    fut.cancel()
            if self._stop.is_set():
                return
            await self._safe_tick()

    def _delay(self) -> float:
        """Seconds until the earliest next slot after the last tick, capped at MAX_SLEEP_S."""
        now = self.clock.now()
        since = self.last_tick or now
        soonest: datetime | None = None
        for sched in self.schedules():
            try:
                at = next_fire(sched.expression, sched.timezone, since)
            except Exception:  # a schedule that cannot be evaluated is reported by its tick, not here
                continue
            soonest = at if soonest is None else min(soonest, at)
        if soonest is None:
            return MAX_SLEEP_S
        return max(0.0, min(MAX_SLEEP_S, (soonest - now).total_seconds()))

    async def _safe_tick(self) -> None:
        try:
            await self.tick()
        except Exception:
            log.exception("scheduler tick failed")

    # ------------------------------------------------------------ schedules

    def schedules(self) -> list[Schedule]:
        """The schedule signals of the workspaces loaded right now (workspaces come and go between ticks)."""
        out: list[Schedule] = []
        for ws in self.workspaces.all():
            for sig_id, sig in ws.config.signals.items():
                if not isinstance(sig, ScheduleSignal):
                    continue
                cfg = sig.config
                out.append(Schedule(
                    workspace_id=ws.id,
                    signal_id=sig_id,
                    expression=cfg.schedule,
                    timezone=cfg.timezone,
                    on_missed=cfg.onMissed,
                    missed_window=timedelta(seconds=parse_duration(cfg.missedWindow)),
                    missed_window_text=cfg.missedWindow,
                    concurrency=sig.concurrency,
                    has_job=sig_id in ws.job_for_signal,
                ))
        return out

    def find(self, workspace_id: str, signal_id: str) -> Schedule:
        for sched in self.schedules():
            if sched.workspace_id == workspace_id and sched.signal_id == signal_id:
                return sched
        raise AtlasError("schedule_not_found", f"No schedule signal '{signal_id}' in workspace '{workspace_id}'")

    # ------------------------------------------------------------ ticking

    async def tick(self, now: datetime | None = None) -> list[Fired]:
        """Fire everything due at `now` (default: the clock's now) for every schedule; returns what this daemon fired.

        Ticks are serialised, so a direct call (tests, a resume) and the loop never interleave on one daemon.
        """
        async with self._lock:
            now = now or self.clock.now()
            results = await asyncio.gather(*(self._tick_one(s, now) for s in self.schedules()),
                                           return_exceptions=True)
            self.last_tick = now
        fired: list[Fired] = []
        for result in results:
            if isinstance(result, BaseException):
                log.error("schedule tick failed: %s", result, exc_info=result)
            else:
                fired.extend(result)
        return fired

    async def _tick_one(self, sched: Schedule, now: datetime) -> list[Fired]:
        bus = self.bus
        got = await bus.kv_get(KV_CRON_STATE, sched.key)
        if got is None or not got[0].get("lastScheduled"):
            # First sight of this schedule: nothing was missed. Settle up to the previous tick of this daemon
            # (if any) rather than to now, so a slot between a workspace being added and this tick still fires.
            await self._init_state(sched, self.last_tick or now, got)
            got = await bus.kv_get(KV_CRON_STATE, sched.key)
            if got is None or not got[0].get("lastScheduled"):
                return []
        state, revision = got
        last = parse_iso(state["lastScheduled"])
        if now <= last:
            return []
        plan = await self._plan(sched, last, now)
        if plan.last_scheduled is None:
            return []
        fired: list[Fired] = []
        errors: list[dict[str, Any]] = []
        if not state.get("paused") and sched.has_job:
            next_run = next_fire(sched.expression, sched.timezone, now)
            for scheduled, extra in plan.fire:
                if not self._accepting():
                    # Shutting down: leave the unfired slots unsettled (and unclaimed), so the next daemon to
                    # tick — another one, or this one after its restart — still sees them as due.
                    if not fired:
                        return fired
                    plan = Plan(plan.fire, fired[-1].scheduled, plan.missed)
                    break
                try:
                    one = await self._fire(sched, scheduled, next_run, extra)
                except AtlasError as exc:
                    # Claimed but refused (e.g. the payload fails the signal's schema): the slot is spent, as a
                    # retry could run it twice if the refusal came after the session became durable.
                    log.warning("schedule %s: tick %s refused: %s %s", sched.key, format_iso(scheduled),
                                exc.code, exc.message)
                    errors.append({"code": exc.code, "message": exc.message, "scheduled": format_iso(scheduled)})
                    continue
                if one is not None:
                    fired.append(one)
        await self._settle(sched, plan, fired, errors, state, revision)
        return fired

    def _accepting(self) -> bool:
        return self.intake.accepting

    async def _plan(self, sched: Schedule, last: datetime, now: datetime) -> Plan:
        args = (sched.expression, sched.timezone, sched.on_missed, last, now, sched.missed_window)
        if now - last > INLINE_SCAN:
            return await asyncio.to_thread(plan_ticks, *args)
        return plan_ticks(*args)

    async def _fire(self, sched: Schedule, scheduled: datetime, next_run: datetime,
                    extra: dict[str, Any]) -> Fired | None:
        """Claim one slot and, if this daemon won it, accept its session. None when another daemon has it."""
        bus = self.bus
        claim_key = sched.claim_key(scheduled)
        try:
            await bus.kv_create(KV_CRON_CLAIMS, claim_key, cron_claim(self.daemon_id, format_iso(self.clock.now())))
        except WrongLastSequence:
            log.debug("schedule %s: %s already claimed by another daemon", sched.key, format_iso(scheduled))
            return None
        payload = tick_payload(scheduled, sched.timezone, next_run, self.clock.now(), extra)
        accepted = await self.trigger(
            TriggerRequest(sched.workspace_id, sched.signal_id, payload, trigger="schedule")
        )
        try:
            await bus.kv_put(KV_CRON_CLAIMS, claim_key,
                             cron_claim_result(self.daemon_id, accepted.session_id, accepted.correlation_id))
        except Exception as exc:  # the claim itself already holds the slot; the ids are only informative
            log.warning("schedule %s: recording the claim's session failed: %s", sched.key, exc)
        log.info("schedule %s fired %s (%s) as session %s", sched.key, format_iso(scheduled),
                 extra.get("policy"), accepted.session_id)
        return Fired(sched.workspace_id, sched.signal_id, scheduled, accepted.session_id,
                     accepted.correlation_id, payload)

    # ------------------------------------------------------------ CRON_STATE

    async def _init_state(self, sched: Schedule, at: datetime, got: tuple[Any, int] | None) -> None:
        value = {**(got[0] if got else {}), "lastScheduled": format_iso(at)}
        try:
            if got is None:
                await self.bus.kv_create(KV_CRON_STATE, sched.key, value)
            else:
                await self.bus.kv_update(KV_CRON_STATE, sched.key, value, got[1])
        except WrongLastSequence:
            pass  # another daemon initialised it first: its value is as good as ours

    async def _settle(self, sched: Schedule, plan: Plan, fired: list[Fired], errors: list[dict[str, Any]],
                      state: dict[str, Any], revision: int) -> None:
        """Move lastScheduled forward and remember the latest result, merging with concurrent writers."""
        assert plan.last_scheduled is not None
        new_last = plan.last_scheduled
        latest = max(fired, key=lambda f: f.scheduled) if fired else None

        def merge(current: dict[str, Any]) -> dict[str, Any]:
            out = dict(current)
            cur_last = current.get("lastScheduled")
            if not cur_last or parse_iso(cur_last) < new_last:
                out["lastScheduled"] = format_iso(new_last)
            if latest is not None:
                prev = current.get("lastResult") or {}
                if not prev.get("scheduled") or parse_iso(prev["scheduled"]) <= latest.scheduled:
                    out["lastResult"] = {"sessionId": latest.session_id, "correlationId": latest.correlation_id,
                                         "scheduled": format_iso(latest.scheduled)}
                    out.pop("lastError", None)
            if errors:
                out["lastError"] = errors[-1]
            return out

        await self._update_state(sched.key, merge, (state, revision))

    async def _update_state(self, key: str, mutate: Callable[[dict[str, Any]], dict[str, Any]],
                            got: tuple[Any, int] | None = None) -> dict[str, Any]:
        """Compare-and-set `mutate(current)` on a CRON_STATE entry, re-reading after each lost race."""
        bus = self.bus
        for _ in range(CAS_ATTEMPTS):
            if got is None:
                got = await bus.kv_get(KV_CRON_STATE, key)
            current, revision = (dict(got[0]), got[1]) if got is not None else ({}, 0)
            value = mutate(current)
            try:
                if got is None:
                    await bus.kv_create(KV_CRON_STATE, key, value)
                else:
                    await bus.kv_update(KV_CRON_STATE, key, value, revision)
                return value
            except WrongLastSequence:
                got = None
        raise RuntimeError(f"CRON_STATE {key}: too many concurrent writers")

    # ------------------------------------------------------------ API

    async def set_paused(self, workspace_id: str, signal_id: str, paused: bool) -> dict[str, Any]:
        """Pause or resume a schedule cluster-wide (the flag lives in CRON_STATE); returns its API entry.

        Resuming settles `lastScheduled` to now: the slots that passed while paused were deliberately not run,
        so they are not "missed" and the missed-run policy must not make them up.
        """
        sched = self.find(workspace_id, signal_id)
        now = self.clock.now()

        def mutate(current: dict[str, Any]) -> dict[str, Any]:
            out = dict(current)
            out["paused"] = paused
            last = current.get("lastScheduled")
            if not paused or not last:
                if not last or parse_iso(last) < now:
                    out["lastScheduled"] = format_iso(now)
            return out

        state = await self._update_state(sched.key, mutate)
        log.info("schedule %s %s", sched.key, "paused" if paused else "resumed")
        return self._entry(sched, state)

    async def entries(self) -> list[dict[str, Any]]:
        """Every schedule with its next fire time and last result (GET /api/schedules)."""
        scheds = self.schedules()
        states = await asyncio.gather(*(self.bus.kv_get(KV_CRON_STATE, s.key) for s in scheds))
        return [self._entry(s, got[0] if got else None) for s, got in zip(scheds, states, strict=True)]

    async def entry(self, workspace_id: str, signal_id: str) -> dict[str, Any]:
        sched = self.find(workspace_id, signal_id)
        got = await self.bus.kv_get(KV_CRON_STATE, sched.key)
        return self._entry(sched, got[0] if got else None)

    def _entry(self, sched: Schedule, state: dict[str, Any] | None) -> dict[str, Any]:
        state = state or {}
        paused = bool(state.get("paused"))
        next_run: str | None = None
        if not paused and sched.has_job:
            with contextlib.suppress(Exception):
                next_run = format_iso(next_fire(sched.expression, sched.timezone, self.clock.now()))
        entry: dict[str, Any] = {
            "workspaceId": sched.workspace_id,
            "signalId": sched.signal_id,
            "schedule": sched.expression,
            "timezone": sched.timezone,
            "onMissed": sched.on_missed,
            "missedWindow": sched.missed_window_text,
            "concurrency": sched.concurrency,
            "paused": paused,
            "nextRun": next_run,
            "lastScheduled": state.get("lastScheduled"),
        }
        result = state.get("lastResult")
        if result:
            view = self.store.view(result["sessionId"])
            entry["lastResult"] = {
                "sessionId": result["sessionId"],
                "correlationId": result["correlationId"],
                "scheduled": result.get("scheduled"),
                "status": view["status"] if view is not None else "unknown",
            }
        if state.get("lastError"):
            entry["lastError"] = state["lastError"]
        return entry
