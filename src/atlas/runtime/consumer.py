"""The signal consumer (spec §6.5): pulls envelopes from SIGNALS and turns each into a started (or ended) session.

The message stays unacknowledged until `session:start` (or a terminal event) is durable, or the session is parked
durably in its key's queue: a crash anywhere before that leads to redelivery, never to a lost trigger (§8.2).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from atlas.bus.client import CONSUMER, KV_INFLIGHT, SIGNALS, WrongLastSequence
from atlas.runtime.accept import queued_event
from atlas.runtime.workspaces import Workspace
from atlas.sessions import events
from atlas.sessions.events import parse_iso
from atlas.sessions.reducer import is_terminal
from atlas.sessions.writer import SessionWriter

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

log = logging.getLogger("atlas.consumer")

BACKOFF = (1, 2, 5, 10)
REQUIRED = ("workspaceId", "signalId", "sessionId", "correlationId", "rootSessionId", "depth", "trigger")


class SignalConsumer:
    def __init__(self, daemon: Daemon) -> None:
        self.d = daemon
        self._stop = asyncio.Event()
        self._handlers: set[asyncio.Task[None]] = set()
        self._held: dict[int, Msg] = {}
        self._tails: dict[str, asyncio.Future[None]] = {}

    async def run(self) -> None:
        sub = await self.d.bus.js.pull_subscribe_bind(durable=CONSUMER, stream=SIGNALS)
        while not self._stop.is_set():
            await self.d.slots.wait_free()
            if self._stop.is_set():
                break
            want = self.d.slots.try_take(16)
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
                    self.d.slots.give(want)
                    await asyncio.sleep(0.5)
                    continue
            if len(msgs) < want:
                self.d.slots.give(want - len(msgs))
            for msg in msgs:
                task = asyncio.create_task(self._handle(msg))
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

    async def _handle(self, msg: Msg) -> None:
        deliveries = msg.metadata.num_delivered or 1
        try:
            env = json.loads(msg.data)
            if not isinstance(env, dict) or any(k not in env for k in REQUIRED):
                raise ValueError("envelope misses required keys")
        except ValueError as exc:
            await self.d.bus.dead_letter({"raw": msg.data.decode(errors="replace")}, f"malformed: {exc}", deliveries)
            await msg.term()
            self.d.slots.give()
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
            self.d.slots.give()

    def _ordered(self, env: dict[str, Any]) -> bool:
        ws = self.d.workspaces.get(env["workspaceId"])
        signal = ws.config.signals.get(env["signalId"]) if ws is not None else None
        return signal is not None and signal.concurrency != "concurrent"

    async def _on_error(self, env: dict[str, Any], msg: Msg, deliveries: int, exc: Exception) -> None:
        with contextlib.suppress(Exception):
            if deliveries >= self.d.bus.settings.max_deliver:
                await self.d.bus.dead_letter(env, f"{type(exc).__name__}: {exc}", deliveries)
                writer = await SessionWriter.resume(self.d.bus, self.d.store, env["sessionId"])
                await self.d.finalize_unstarted(writer, "failed", "dead_lettered",
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
        tail = await self.d.accept.queued_tail(sid)
        if tail > 0 and deliveries == 1:
            writer = SessionWriter(self.d.bus, self.d.store, sid, seq=1, stream_seq=tail)
        else:
            writer = await self._writer_after_queued(env)
            if writer.seq > 1:
                return await self._already_started(env, msg)

        d = self.d
        accepted_at = env.get("acceptedAt")
        if accepted_at and age_seconds(accepted_at) > d.settings.queue_timeout_s:
            await self._end(writer, env, msg, "failed", "queue_timeout", "Queued longer than ATLAS_QUEUE_TIMEOUT")
            return False
        ws = d.workspaces.get(env["workspaceId"])
        if ws is None:
            if deliveries < d.bus.settings.max_deliver:
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
        for ancestor in d._ancestors(sid):
            view = d.store.view(ancestor)
            if view is not None and view["status"] == "cancelled":
                await self._end(writer, env, msg, "cancelled", "parent_cancelled", f"Ancestor {ancestor} was cancelled")
                return False

        policy = ws.config.signals[env["signalId"]].concurrency
        decision = await d.concurrency.admit(ws.id, env["signalId"], sid, policy)
        if decision.action == "skip":
            await self._end(writer, env, msg, "skipped", "skipped-duplicate",
                            f"Session {decision.holder} is already running for signal '{env['signalId']}'",
                            release=False)
            return False
        if decision.action == "deadlock":
            await self._end(writer, env, msg, "failed", "cascade_deadlock",
                            f"Queued behind its own ancestor {decision.holder}")
            return False
        if decision.action == "park":
            await d.bus.kv_put(KV_INFLIGHT, sid, _parked_marker(env))
            await msg.ack()
            return False
        if decision.victims:
            await d.cancel_and_wait(decision.victims, "replaced", "Replaced by a newer trigger",
                                    d.settings.shutdown_grace_s)
        return await self._start(ws, job_id, env, writer, msg)

    async def _writer_after_queued(self, env: dict[str, Any]) -> SessionWriter:
        """A writer positioned after the session's last event; writes `session:queued` first when the accepting
        daemon never could (it died, or the bus failed, right after the envelope was durable)."""
        sid = env["sessionId"]
        for _ in range(3):
            writer = await SessionWriter.resume(self.d.bus, self.d.store, sid)
            if writer.seq > 0:
                return writer
            ws = self.d.workspaces.get(env["workspaceId"])
            job_id = (ws.job_for_signal.get(env["signalId"]) if ws is not None else None) or env["signalId"]
            try:
                await writer.append(queued_event(env, ws, job_id))
                return writer
            except WrongLastSequence:
                continue  # the accepting daemon's write landed meanwhile: read it
        raise RuntimeError(f"could not position a writer on session {sid}")

    async def _start(self, ws: Workspace, job_id: str, env: dict[str, Any], writer: SessionWriter,
                     msg: Msg | None) -> bool:
        start = events.start(
            sessionId=env["sessionId"],
            seq=writer.next_seq,
            workspaceId=ws.id,
            jobName=job_id,
            task=_task(env, job_id),
            signalId=env["signalId"],
            correlationId=env["correlationId"],
            parentSessionId=env.get("parentSessionId"),
            rootSessionId=env["rootSessionId"],
            depth=env["depth"],
            plannedSteps=ws.plans[job_id],
            runner=self.d.daemon_id,  # recovery needs it: a running session has no marker
        )
        try:
            await writer.append(start)
        except WrongLastSequence:
            # Someone else wrote first (a cancel while queued, a duplicate delivery): re-read and obey.
            last = await self.d.bus.last_event(env["sessionId"])
            if msg is not None:
                await msg.ack()
            if last is not None and last[0].get("type") == "session:complete":
                policy = ws.config.signals[env["signalId"]].concurrency
                await self.d.concurrency.release(ws.id, env["signalId"], env["sessionId"], policy)
            return False
        # No marker for a running session: `session:start` names the runner, and recovery finds active sessions in
        # the read model (spec §8.1 as amended in docs/decisions.md). A parked session's marker has done its job.
        if msg is not None:
            await msg.ack()
        else:
            try:
                await self.d.bus.kv_delete(KV_INFLIGHT, env["sessionId"])
            except Exception:  # recovery drops the marker of a started session
                log.debug("marker of %s not removed", env["sessionId"], exc_info=True)
        self.d.launch(ws, job_id, env, writer)
        return True

    async def _end(self, writer: SessionWriter, env: dict[str, Any], msg: Msg, status: str, code: str,
                   message: str, release: bool = True) -> None:
        await self.d.finalize_unstarted(writer, status, code, message, env if release else None)
        await msg.ack()

    async def _already_started(self, env: dict[str, Any], msg: Msg) -> bool:
        """A redelivered envelope of a started session: never run twice (spec §6.5 step 2)."""
        sid = env["sessionId"]
        view = self.d.store.view(sid)
        if sid in self.d.runs or (view is not None and is_terminal(view["status"])):
            await msg.ack()
            return False
        runner = await self.d.recovery.runner_of(sid)
        if runner is None or (runner != self.d.daemon_id and await self.d.is_daemon_alive(runner)):
            # A live runner's session, or one whose `session:start` this read did not see (a replica behind the
            # leader answered): only recovery, which checks the runner's heartbeat over time, ends it.
            await msg.ack()
            return False
        await self.d.recovery.interrupt(sid, env)
        await msg.ack()
        return False

    async def start_parked(self, sid: str) -> None:
        """Start a session promoted from its key's queue (by a finishing holder or by recovery)."""
        marker = await self.d.bus.kv_get(KV_INFLIGHT, sid)
        if marker is None:
            return
        env = marker[0]["envelope"]
        ws = self.d.workspaces.get(env["workspaceId"])
        job_id = ws.job_for_signal.get(env["signalId"]) if ws is not None else None
        writer = await SessionWriter.resume(self.d.bus, self.d.store, sid)
        if ws is None or job_id is None or writer.seq != 1:
            if writer.seq == 1:
                await self.d.finalize_unstarted(writer, "failed", "workspace_unavailable",
                                                "Workspace or job no longer available", env, drop_marker=True)
            return
        await self.d.slots.take()
        if not await self._start(ws, job_id, env, writer, None):
            self.d.slots.give()


def _parked_marker(env: dict[str, Any]) -> dict[str, Any]:
    """The SESSION_INFLIGHT record of a session parked in its key's queue (the only sessions that have one)."""
    return {
        "sessionId": env["sessionId"],
        "workspaceId": env["workspaceId"],
        "signalId": env["signalId"],
        "correlationId": env["correlationId"],
        "state": "queued",
        "acceptedBy": env.get("acceptedBy"),
        "acceptedAt": env.get("acceptedAt"),
        "envelope": env,
        "parked": True,
    }


def _task(env: dict[str, Any], job_id: str) -> str:
    payload = env.get("payload")
    if isinstance(payload, dict) and isinstance(payload.get("task"), str):
        return str(payload["task"])
    return job_id


def age_seconds(iso: str) -> float:
    try:
        return (datetime.now(UTC) - parse_iso(iso)).total_seconds()
    except ValueError:
        return 0.0
