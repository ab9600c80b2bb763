"""The signal consumer (spec §6.5): pulls envelopes from SIGNALS and turns each into a started (or ended) session.

The message stays unacknowledged until `session:start` (or a terminal event) is durable, or the session is parked
durably in its key's queue: a crash anywhere before that leads to redelivery, never to a lost trigger (§8.2).

The consumer decides; starting, running and ending a session is the lifecycle's (`atlas.runtime.lifecycle`), and
a started session whose runner is gone is recovery's. It gets those, the concurrency control and the membership
view as explicit dependencies, never the daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg

from atlas.bus.client import CONSUMER, SIGNALS, Bus, WrongLastSequence
from atlas.bus.records import envelope_is_complete
from atlas.bus.sessionlog import SessionLog
from atlas.runtime.accept import queued_event
from atlas.runtime.concurrency import ConcurrencyControl
from atlas.runtime.lifecycle import UNSTARTED_TYPES, SessionLifecycle
from atlas.runtime.lineage import Lineage
from atlas.runtime.markers import Markers
from atlas.runtime.recovery import Recovery, age_seconds
from atlas.runtime.slots import Slots
from atlas.runtime.workspaces import Workspace, WorkspaceRegistry
from atlas.sessions import events
from atlas.sessions.reducer import is_terminal
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter

log = logging.getLogger("atlas.consumer")

BACKOFF = (1, 2, 5, 10)


class SignalConsumer:
    def __init__(self, *, bus: Bus, session_log: SessionLog, store: SessionStore, workspaces: WorkspaceRegistry,
                 slots: Slots, queued_tail: Callable[[str], Awaitable[int]], lifecycle: SessionLifecycle,
                 concurrency: ConcurrencyControl, lineage: Lineage, markers: Markers, recovery: Recovery,
                 is_daemon_alive: Callable[[str | None], Awaitable[bool]], daemon_id: str, queue_timeout_s: float,
                 replace_grace_s: float) -> None:
        """`queued_tail(sid)`: where this daemon wrote the session's `session:queued` (the accept pipeline's);
        `replace_grace_s`: how long a `replace` waits for the sessions it cancels."""
        self.bus = bus
        self.session_log = session_log
        self.store = store
        self.workspaces = workspaces
        self.slots = slots
        self.queued_tail = queued_tail
        self.lifecycle = lifecycle
        self.concurrency = concurrency
        self.lineage = lineage
        self.markers = markers
        self.recovery = recovery
        self.is_daemon_alive = is_daemon_alive
        self.daemon_id = daemon_id
        self.queue_timeout_s = queue_timeout_s
        self.replace_grace_s = replace_grace_s
        self._stop = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._held: dict[int, Msg] = {}
        self._tails: dict[str, asyncio.Future[None]] = {}

    async def run(self) -> None:
        sub = await self.bus.js.pull_subscribe_bind(durable=CONSUMER, stream=SIGNALS)
        while not self._stop.is_set():
            await self.slots.wait_free()
            if self._stop.is_set():
                break
            want = self.slots.try_take(16)
            if want == 0:
                continue
            try:
                msgs = await sub.fetch(batch=want, timeout=1)
            except TimeoutError:
                msgs = []
            except Exception as exc:
                if self._stop.is_set():
                    msgs = []
                else:
                    log.warning("fetch failed: %s", exc)
                    self.slots.give(want)
                    await asyncio.sleep(0.5)
                    continue
            if len(msgs) < want:
                self.slots.give(want - len(msgs))
            for msg in msgs:
                task = asyncio.create_task(self.handle(msg))
                self._handlers.add(task)
                task.add_done_callback(self._handlers.discard)

    async def stop(self) -> None:
        """Stop fetching; envelopes held but not started are nak-ed so they stay queued (spec §8.4)."""
        self._stop.set()
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=5)
        for msg in list(self._held.values()):
            with contextlib.suppress(Exception):
                await msg.nak()

    # ------------------------------------------------------------ per message

    async def handle(self, msg: Msg) -> None:
        """Decide one fetched envelope; its slot (taken by the fetch) is given back unless a session started."""
        deliveries = msg.metadata.num_delivered or 1
        try:
            env = json.loads(msg.data)
            if not envelope_is_complete(env):
                raise ValueError("envelope misses required keys")
        except ValueError as exc:
            await self.bus.dead_letter({"raw": msg.data.decode(errors="replace")}, f"malformed: {exc}", deliveries)
            await msg.term()
            self.slots.give()
            return
        self._held[id(msg)] = msg
        # Messages of one non-concurrent key are decided one after another, in the order they were fetched
        # (= acceptance order on the stream): `queue` runs them in acceptance order, `skip` keeps the first.
        key = f"{env['workspaceId']}.{env['signalId']}" if self._ordered(env) else None
        previous = self._tails.get(key) if key else None
        mine: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if key:
            self._tails[key] = mine
        try:
            if previous is not None:
                await asyncio.shield(previous)
            started = await self._process(env, msg, deliveries)
        except Exception as exc:
            log.exception("signal %s failed (delivery %d)", env.get("sessionId"), deliveries)
            started = False
            await self._on_error(env, msg, deliveries, exc)
        finally:
            self._held.pop(id(msg), None)
            mine.set_result(None)
            if key and self._tails.get(key) is mine:
                del self._tails[key]
        if not started:
            self.slots.give()

    def _ordered(self, env: dict[str, Any]) -> bool:
        ws = self.workspaces.get(env["workspaceId"])
        signal = ws.config.signals.get(env["signalId"]) if ws is not None else None
        return signal is not None and signal.concurrency != "concurrent"

    async def _on_error(self, env: dict[str, Any], msg: Msg, deliveries: int, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            if deliveries >= self.bus.settings.max_deliver:
                await self.bus.dead_letter(env, f"{type(exc).__name__}: {exc}", deliveries)
                writer = await SessionWriter.resume(self.session_log, self.store, env["sessionId"])
                await self.lifecycle.finalize_unstarted(writer, "failed", "dead_lettered",
                                                      f"Signal dead-lettered after {deliveries} deliveries", env)
                await msg.term()
            else:
                await msg.nak(delay=BACKOFF[min(deliveries - 1, len(BACKOFF) - 1)])

    async def _process(self, env: dict[str, Any], msg: Msg, deliveries: int) -> bool:
        """Returns True when a session was started (it then owns the slot)."""
        if self._stop.is_set():
            await msg.nak()  # shutting down: leave it queued for the next daemon (spec §8.4)
            return False
        sid = env["sessionId"]
        tail = await self.queued_tail(sid)
        if tail > 0 and deliveries == 1:
            writer = SessionWriter(self.session_log, self.store, sid, seq=1, stream_seq=tail)
        else:
            writer = await self._writer_after_queued(env)
            if writer.last_type not in UNSTARTED_TYPES:
                return await self._already_started(env, msg)

        accepted_at = env.get("acceptedAt")
        if accepted_at and age_seconds(accepted_at) > self.queue_timeout_s:
            await self._end(writer, env, msg, "failed", "queue_timeout", "Queued longer than ATLAS_QUEUE_TIMEOUT")
            return False
        ws = self.workspaces.get(env["workspaceId"])
        if ws is None:
            if deliveries < self.bus.settings.max_deliver:
                await msg.nak(delay=2)
                return False
            await self._end(writer, env, msg, "failed", "workspace_unavailable",
                            f"Workspace '{env['workspaceId']}' is not loaded on any daemon")
            return False
        job_id = ws.job_for_signal.get(env["signalId"])
        if job_id is None:
            await self._end(writer, env, msg, "failed", "job_not_found",
                            f"No job handles signal '{env['signalId']}' any more")
            return False
        for ancestor in self.lineage.ancestors(sid):
            view = self.store.view(ancestor)
            if view is not None and view["status"] == "cancelled":
                await self._end(writer, env, msg, "cancelled", "parent_cancelled", f"Ancestor {ancestor} was cancelled")
                return False

        policy = ws.config.signals[env["signalId"]].concurrency
        decision = await self.concurrency.admit(ws.id, env["signalId"], sid, policy)
        if decision.action == "skip":
            await self._end(writer, env, msg, "skipped", "skipped-duplicate",
                            f"Session {decision.holder} is already running for signal '{env['signalId']}'",
                            release=False, duplicate_of=decision.holder)
            return False
        if decision.action == "deadlock":
            await self._end(writer, env, msg, "failed", "cascade_deadlock",
                            f"Queued behind its own ancestor {decision.holder}")
            return False
        if decision.action == "park":
            # What it waits for goes into its log before its marker: a promotion (which needs the marker) cannot
            # start it first and see its `session:start` refused by this write.
            await self._record_waiting(writer, decision.ahead)
            await self.markers.park(env)
            await msg.ack()
            return False
        if decision.victims:
            await self.lifecycle.cancel_and_wait(decision.victims, "replaced", "Replaced by a newer trigger",
                                                 self.replace_grace_s)
        return await self._start(ws, job_id, env, writer, msg)

    async def _writer_after_queued(self, env: dict[str, Any]) -> SessionWriter:
        """A writer positioned after the session's last event; writes `session:queued` first when the accepting
        daemon never could (it died, or the bus failed, right after the envelope was durable)."""
        sid = env["sessionId"]
        for _ in range(3):
            writer = await SessionWriter.resume(self.session_log, self.store, sid)
            if writer.seq > 0:
                return writer
            ws = self.workspaces.get(env["workspaceId"])
            job_id = (ws.job_for_signal.get(env["signalId"]) if ws is not None else None) or env["signalId"]
            try:
                await writer.append(queued_event(env, ws, job_id))
                return writer
            except WrongLastSequence:
                continue  # the accepting daemon's write landed meanwhile: read it
        raise RuntimeError(f"could not position a writer on session {sid}")

    async def _start(self, ws: Workspace, job_id: str, env: dict[str, Any], writer: SessionWriter,
                     msg: Msg) -> bool:
        """Write `session:start`, then ack the envelope and run the session. A lost race (a cancel while queued, a
        duplicate delivery) acks it too: the log has moved on without us."""
        try:
            started = await self.lifecycle.begin(ws, job_id, env, writer)
        except WrongLastSequence:
            # Refused although the log did not move on (see `SessionLifecycle.begin`): not ours to ack.
            log.warning("session %s: session:start refused although its log did not move on; tried again",
                        env["sessionId"])
            await msg.nak(delay=1)
            return False
        # No marker for a running session: `session:start` names the runner, and recovery finds active sessions in
        # the read model (spec §8.1 as amended in docs/decisions.md). Launched before the ack, so a failed ack
        # cannot leave a started session unrun (its redelivery finds it started and is dropped).
        if started:
            self.lifecycle.launch(ws, job_id, env, writer)
        await msg.ack()
        return started

    async def _end(self, writer: SessionWriter, env: dict[str, Any], msg: Msg, status: str, code: str,
                   message: str, release: bool = True, duplicate_of: str | None = None) -> None:
        await self.lifecycle.finalize_unstarted(writer, status, code, message, env if release else None,
                                                duplicate_of=duplicate_of)
        await msg.ack()

    async def _record_waiting(self, writer: SessionWriter, ahead: list[str]) -> None:
        """Write `session:waiting` (issue #16) for a session being parked, once: a redelivered envelope of a
        session already parked finds it in the log. A lost race (a cancel while queued) writes nothing: the log has
        moved on, and parking goes on as before (recovery settles the marker of a session that ended)."""
        if writer.last_type == "session:waiting":
            return
        try:
            await writer.append(events.waiting(sessionId=writer.session_id, seq=writer.next_seq,
                                               reason="concurrency", sessionIds=ahead))
        except WrongLastSequence:
            log.debug("session %s moved on before its session:waiting", writer.session_id)

    async def _already_started(self, env: dict[str, Any], msg: Msg) -> bool:
        """A redelivered envelope of a started session: never run twice (spec §6.5 step 2)."""
        sid = env["sessionId"]
        view = self.store.view(sid)
        if self.lifecycle.is_running(sid) or (view is not None and is_terminal(view["status"])):
            await msg.ack()
            return False
        runner = await self.recovery.runner_of(sid)
        if runner is None or (runner != self.daemon_id and await self.is_daemon_alive(runner)):
            # A live runner's session, or one whose `session:start` this read did not see (a replica behind the
            # leader answered): only recovery, which checks the runner's heartbeat over time, ends it.
            await msg.ack()
            return False
        await self.recovery.interrupt(sid, env)
        await msg.ack()
        return False


