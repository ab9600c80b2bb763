"""The daemon: wires bus, store, workspaces, accept pipeline, consumer, engine and recovery, and runs their lifecycle.

Start order matters (spec §8.1): bus and read model first, then recovery's first pass, then the consumer, so a
restarted daemon settles what the previous one left before it takes new work.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
import uuid
from collections.abc import Callable, Coroutine, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atlas import __version__
from atlas.bus.client import (
    KV_DAEMONS,
    KV_INFLIGHT,
    KV_METADATA,
    KV_WORKSPACES,
    Bus,
    BusSettings,
    WrongLastSequence,
    cancel_subject,
    dumps,
)
from atlas.bus.health import BusHealth
from atlas.bus.server import EmbeddedNats
from atlas.bus.sessionlog import SessionLog
from atlas.config.durations import parse_duration
from atlas.config.settings import Settings
from atlas.errors import AtlasError
from atlas.runtime.accept import AcceptPipeline
from atlas.runtime.concurrency import ConcurrencyControl
from atlas.runtime.consumer import SignalConsumer
from atlas.runtime.engine import CancelRequest, Engine, Run
from atlas.runtime.recovery import Recovery
from atlas.runtime.scheduler import Scheduler
from atlas.runtime.workspaces import Workspace, WorkspaceRegistry
from atlas.sessions import events
from atlas.sessions.events import format_iso, now_iso
from atlas.sessions.materializer import Materializer
from atlas.sessions.readmodel import open_read_model
from atlas.sessions.reducer import is_terminal, summarize
from atlas.sessions.store import SessionStore
from atlas.sessions.writer import SessionWriter
from atlas.templating import Templater

HELLO_SUBJECT = "atlas.daemons.hello"

log = logging.getLogger("atlas.daemon")


class Slots:
    """Runner slots (ATLAS_MAX_CONCURRENT_SESSIONS): the consumer fetches only as many messages as are free."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._changed = asyncio.Event()

    def try_take(self, k: int) -> int:
        got = min(k, self.free)
        self.free -= got
        return got

    async def take(self) -> None:
        while self.free <= 0:
            self._changed.clear()
            await self._changed.wait()
        self.free -= 1

    def give(self, k: int = 1) -> None:
        self.free += k
        self._changed.set()

    async def wait_free(self) -> None:
        while self.free <= 0:
            self._changed.clear()
            await self._changed.wait()


def _secure_dir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _daemon_id(home: Path) -> str:
    f = home / "daemon-id"
    if f.exists():
        return f.read_text().strip()
    value = str(uuid.uuid4())
    f.write_text(value)
    os.chmod(f, 0o600)
    return value


class Daemon:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.home = _secure_dir(settings.home)
        self.daemon_id = _daemon_id(self.home)
        self.workspaces = WorkspaceRegistry()
        self.templater = Templater()
        self.accept = AcceptPipeline(self)
        self.slots = Slots(settings.max_concurrent_sessions)
        # Built before `start()` runs anything: start-up recovery may promote a parked session, which the consumer
        # starts, so the consumer must exist before recovery's first pass (a half-built daemon once left such a
        # session queued for good).
        self.recovery = Recovery(self)
        self.consumer = SignalConsumer(self)
        self.scheduler = Scheduler(self)
        self.status = "starting"
        self.started_at = now_iso()
        self._t0 = time.monotonic()
        self.runs: dict[str, Run] = {}
        self.embedded: EmbeddedNats | None = None
        self.nats_url = settings.nats_url or ""
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False
        self._background: set[asyncio.Task[Any]] = set()
        self.request_shutdown: Callable[[], None] | None = None
        self.fatal = False

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Fire-and-forget work (e.g. publishing a chunk) whose task must stay referenced until done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        s = self.settings
        token = None
        if s.nats_url:
            url = s.nats_url
        else:
            self.embedded = EmbeddedNats(self.home, on_fatal=self._bus_lost)
            url = await self.embedded.start()
            token = self.embedded.token
        self.nats_url = url
        self.bus = Bus(BusSettings(url=url, token=token, creds=s.nats_creds, replicas=s.nats_replicas,
                                   retention_s=s.session_retention_s, ack_wait_s=s.ack_wait_s,
                                   idempotency_ttl_s=s.idempotency_ttl_s, heartbeat_ttl_s=s.heartbeat_ttl_s,
                                   write_retry_s=s.bus_retry_s))
        await self.bus.connect()
        self.bus_health = BusHealth(self.bus, self.embedded)  # degraded while the bus cannot write
        self.session_log = SessionLog(self.bus)  # how the API reads sessions' logs
        self.store = SessionStore(open_read_model(self.home / "atlas.db"))
        self.concurrency = ConcurrencyControl(self.bus, self._is_alive, self._ancestors)
        await self._heartbeat_once()
        await self._load_workspaces()
        self.check_retention()
        # An embedded bus is private to this daemon (token, loopback): nobody else writes its log (see Materializer).
        self.materializer = Materializer(self.bus, self.store, follow=bool(s.nats_url))
        await self.bus.nc.subscribe(HELLO_SUBJECT, cb=self._on_hello)  # type: ignore[union-attr]
        await self.materializer.start()
        await self.bus.nc.publish(HELLO_SUBJECT, self.daemon_id.encode())  # type: ignore[union-attr]
        await self.bus.nc.subscribe("atlas.cancel.sessions.*", cb=self._on_cancel_msg)  # type: ignore[union-attr]
        await self.recovery.run_once(at_start=True)
        await self.scheduler.start()
        self._tasks = [
            asyncio.create_task(self.consumer.run(), name="consumer"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self.recovery.loop(), name="recovery"),
            asyncio.create_task(self._prune_loop(), name="prune"),
            asyncio.create_task(self.bus_health.run(), name="bus-health"),
        ]
        self.status = "ok"
        log.info("atlasd %s ready (daemon %s, nats %s)", __version__, self.daemon_id, self.nats_mode)

    async def _load_workspaces(self) -> None:
        """Workspaces from the WORKSPACES registry (spec §6.7) plus those named on the command line.

        Loads run off the event loop like an API add. Registered workspaces came from API clients (of this daemon
        or of another one on the cluster), so `ATLAS_WORKSPACE_ROOTS` applies to them as it does to an add; the
        operator's own `--workspace` paths are trusted as given.
        """
        registered = {}
        for key in await self.bus.kv_keys(KV_WORKSPACES):
            found = await self.bus.kv_get(KV_WORKSPACES, key)
            if found is not None:
                registered[key] = found[0]
        explicit = set(self.settings.workspaces)  # already absolute (the CLI resolves them)
        for ws_id, entry in registered.items():
            if Path(entry["path"]) in explicit:
                continue
            try:
                await self.workspaces.add(entry["path"], self.settings.workspace_roots)
            except AtlasError as exc:
                log.warning("registered workspace %s (%s) not loaded: %s", ws_id, entry["path"], exc.message)
        for path in self.settings.workspaces:
            await self.add_workspace(path)

    async def add_workspace(self, path: str | Path, roots: Sequence[Path] = ()) -> tuple[Workspace, bool]:
        """Load (or reload) the workspace at `path` and register it in WORKSPACES (spec §6.7), where every daemon
        of the cluster finds it at start; returns it and whether it is new (`roots`: see `WorkspaceRegistry.add`)."""
        ws, created = await self.workspaces.add(path, roots)
        await self.bus.kv_put(KV_WORKSPACES, ws.id, {"path": str(ws.path), "configDigest": ws.loaded.digest,
                                                     "addedAt": ws.created_at})
        return ws, created

    async def remove_workspace(self, workspace_id: str) -> None:
        """Forget a workspace here and in WORKSPACES (its sessions are the caller's business)."""
        self.workspaces.remove(workspace_id)
        await self.bus.kv_delete(KV_WORKSPACES, workspace_id)

    def _bus_lost(self) -> None:
        """The embedded nats-server died and could not be restarted: stop, and exit non-zero (spec §6.1)."""
        log.error("nats-server could not be restarted; shutting down")
        self.fatal = True
        if self.request_shutdown is not None:
            self.request_shutdown()

    async def stop(self) -> None:
        """Graceful shutdown (spec §8.4): stop taking work, drain, interrupt the rest, stop nats-server."""
        if self._stopping:
            return
        self._stopping = True
        self.status = "stopping"
        await self.scheduler.stop()
        await self.consumer.stop()
        if self._tasks:
            self._tasks[0].cancel()  # the fetch loop: no new work from here on
        pending = [r.task for r in self.runs.values() if r.task is not None]
        if pending:
            _, still = await asyncio.wait(pending, timeout=self.settings.shutdown_grace_s)
            for run in list(self.runs.values()):
                if run.task is not None and not run.task.done():
                    _request_cancel(run, CancelRequest("interrupted", "daemon_shutdown", "Daemon shut down"))
            if still:
                await asyncio.wait(still, timeout=5)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        if hasattr(self, "materializer"):
            await self.materializer.stop()
        if hasattr(self, "bus"):
            with contextlib.suppress(Exception):
                await self.bus.kv_delete(KV_DAEMONS, self.daemon_id)
            await self.bus.close()
        if self.embedded is not None:
            await self.embedded.stop()
        if hasattr(self, "store"):
            self.store.close()

    @property
    def nats_mode(self) -> str:
        return "external" if self.settings.nats_url else "embedded"

    @property
    def uptime(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def ensure_accepting(self) -> None:
        if self._stopping:
            raise AtlasError("shutting_down", "The daemon is shutting down")
        if not self.bus_health.writable:  # disconnected, or its store cannot write (disk full)
            raise AtlasError("bus_unavailable", "The message bus is unavailable")

    async def _heartbeat_once(self) -> None:
        await self.bus.kv_put(KV_DAEMONS, self.daemon_id, {
            "url": f"http://{self.settings.host}:{self.settings.port}", "pid": os.getpid(),
            "version": __version__, "startedAt": self.started_at,
        })

    def check_retention(self) -> None:
        """ATLAS_SESSION_RETENTION must outlive any queued or running session (spec §7.3): refuse to start if not."""
        retention = self.settings.session_retention_s
        if retention == 0:
            return
        longest = max(
            (parse_duration(job.config.timeout or ws.config.workspace.timeout.maxTotalTimeout)
             for ws in self.workspaces.all() for job in ws.config.jobs.values()),
            default=0.0,
        )
        if retention <= self.settings.queue_timeout_s + longest:
            raise AtlasError("invalid_settings",
                             f"ATLAS_SESSION_RETENTION ({retention:g}s) must exceed ATLAS_QUEUE_TIMEOUT "
                             f"({self.settings.queue_timeout_s:g}s) plus the longest job timeout ({longest:g}s)")

    async def _prune_loop(self) -> None:
        """Hourly: drop read-model rows of terminal sessions past retention (JetStream ages out by max_age)."""
        while True:
            if self.settings.session_retention_s:
                cutoff = time.time() - self.settings.session_retention_s
                removed = self.store.rm.prune(format_iso(datetime.fromtimestamp(cutoff, UTC)))
                if removed:
                    log.info("pruned %d sessions past retention", removed)
            await asyncio.sleep(min(3600.0, max(1.0, self.settings.session_retention_s / 10)))

    async def _heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(self.settings.heartbeat_ttl_s / 6)
            try:
                await self._heartbeat_once()
                if not self.materializer.follow and await self.live_daemons() - {self.daemon_id}:
                    await self._share_the_log("in the heartbeats")
            except Exception as exc:
                log.warning("heartbeat failed: %s", exc)

    async def _on_hello(self, msg: Any) -> None:
        if msg.data.decode(errors="replace") != self.daemon_id and not self.materializer.follow:
            await self._share_the_log("said hello")

    async def _share_the_log(self, how: str) -> None:
        log.info("another daemon shares the embedded bus (%s): following the session log", how)
        await self.materializer.follow_now()

    async def live_daemons(self) -> set[str]:
        keys = await self.bus.kv_keys(KV_DAEMONS)
        return set(keys)

    async def cluster(self) -> list[dict[str, Any]]:
        """Every live daemon's heartbeat record with its `daemonId`, by id (what `/api/daemon/status` shows)."""
        members = []
        for key in sorted(await self.live_daemons()):
            found = await self.bus.kv_get(KV_DAEMONS, key)
            if found is not None:
                members.append({"daemonId": key, **found[0]})
        return members

    async def is_daemon_alive(self, daemon_id: str | None) -> bool:
        """A daemon is alive while its heartbeat entry has not expired: one read from the leader of DAEMONS, since a
        replica catching up after a node loss can lack a live daemon's heartbeat, and a runner wrongly taken for
        dead gets its sessions interrupted."""
        if not daemon_id:
            return False
        return daemon_id == self.daemon_id or await self.bus.kv_get_from_leader(KV_DAEMONS, daemon_id) is not None

    # ------------------------------------------------------------ lineage helpers

    def _is_alive(self, sid: str) -> bool:
        """Not terminal. A session this daemon has not materialised yet (accepted elsewhere a moment ago) counts
        as alive: treating it as gone would let two daemons both admit a `skip` key."""
        view = self.store.view(sid)
        return view is None or not is_terminal(view["status"])

    def _ancestors(self, sid: str) -> set[str]:
        out: set[str] = set()
        view = self.store.view(sid)
        while view is not None and view.get("parentSessionId") and len(out) < 64:
            parent = view["parentSessionId"]
            out.add(parent)
            view = self.store.view(parent)
        return out

    # ------------------------------------------------------------ running

    def launch(self, ws: Workspace, job_id: str, envelope: dict[str, Any], writer: SessionWriter) -> None:
        """Run a started session in its own task; the slot it holds is given back at the end."""
        run = Run(envelope["sessionId"])
        self.runs[run.session_id] = run
        run.task = asyncio.create_task(self._run(ws, job_id, envelope, writer, run), name=f"run-{run.session_id}")

    async def _run(self, ws: Workspace, job_id: str, envelope: dict[str, Any], writer: SessionWriter,
                   run: Run) -> None:
        ended = False
        try:
            await Engine(self, ws, job_id, envelope, writer, run).execute()
            ended = True
        except WrongLastSequence:
            log.warning("session %s was ended by another writer", run.session_id)
            # The summary written at finalisation must come from the log, not from a local view that has not seen
            # the other writer's session:complete yet (spec §8.1).
            try:
                await self.rebuild_view(run.session_id)
                ended = True
            except Exception:
                log.warning("session %s: could not re-read its log", run.session_id)
        except Exception:
            # No terminal event (e.g. the bus is down): the session stays active in the read model, and recovery
            # ends it `interrupted` once the bus is back (spec §4.4) instead of leaving it active forever.
            log.exception("session %s: runner failed before its terminal event", run.session_id)
        finally:
            self.runs.pop(run.session_id, None)
            self.slots.give()
        if ended:
            await self.finalize(envelope, job_signal_policy(ws, envelope["signalId"]))

    async def finalize(self, envelope: dict[str, Any], policy: str, drop_marker: bool = False) -> None:
        """After `session:complete`: summary to KV, hold released, next parked session started (and the marker
        removed, for a session that has one: `drop_marker`)."""
        sid = envelope["sessionId"]
        try:
            try:
                await self._write_final(sid, drop_marker)
            except Exception:
                self.spawn(self._retry_final(sid, drop_marker))
                raise
            nxt = await self.concurrency.release(envelope["workspaceId"], envelope["signalId"], sid, policy)
            if nxt is not None:
                await self.consumer.start_parked(nxt)
        except Exception:
            log.exception("finalising %s failed; recovery will retry", sid)

    async def _write_final(self, sid: str, drop_marker: bool = False) -> None:
        """Summary to KV SESSION_METADATA (spec §3.2, finalisation), and the marker removed if asked: only parked
        sessions and leftovers found by recovery have one.

        Only a terminal summary is stored, and the log decides what it is: a local view that is not terminal yet
        (another daemon's `session:complete` not materialised here) is brought up to date from the log first."""
        view = self.store.view(sid)
        if view is None or not is_terminal(view["status"]):
            last = await self.bus.last_event(sid)
            if last is not None and last[0].get("type") == "session:complete":
                view = await self.rebuild_view(sid)  # every event in order, not just the last: no holes
        ops: list[Any] = [self.bus.kv_delete(KV_INFLIGHT, sid)] if drop_marker else []
        if view is not None and is_terminal(view["status"]):
            ops.append(self.bus.kv_put(KV_METADATA, sid, summarize(view)))
        await asyncio.gather(*ops)

    async def _retry_final(self, sid: str, drop_marker: bool) -> None:
        for delay in (0.5, 1, 2, 5, 10, 10, 10, 30, 30, 60):
            await asyncio.sleep(delay)  # backoff while the bus recovers (not a synchronisation)
            try:
                await self._write_final(sid, drop_marker)
                return
            except Exception as exc:
                log.debug("finalising %s: %s", sid, exc)
        log.error("finalising %s kept failing; recovery will retry", sid)

    async def finalize_unstarted(self, writer: SessionWriter, status: str, code: str, message: str,
                                 envelope: dict[str, Any] | None = None, drop_marker: bool = False) -> bool:
        """End a session that never started (policy skip, limits, cancel while queued). False if it lost a race."""
        try:
            await writer.append(events.complete(sessionId=writer.session_id, seq=writer.next_seq, status=status,
                                                durationMs=0, error=message, errorCode=code))
        except WrongLastSequence:
            return False
        sid = writer.session_id
        try:
            await self._write_final(sid, drop_marker)
        except Exception:  # the bus is failing: keep trying in the background, the terminal event is durable
            self.spawn(self._retry_final(sid, drop_marker))
        if envelope is not None:
            ws = self.workspaces.get(envelope["workspaceId"])
            if ws is not None and envelope["signalId"] in ws.config.signals:
                policy = job_signal_policy(ws, envelope["signalId"])
                nxt = await self.concurrency.release(envelope["workspaceId"], envelope["signalId"], sid, policy)
                if nxt is not None:
                    await self.consumer.start_parked(nxt)
        return True

    async def rebuild_view(self, sid: str) -> dict[str, Any] | None:
        """Fold a session's log from the bus into the read model (a session this daemon has not seen yet)."""
        events = await self.bus.read_events(sid)
        for event, stream_seq in events:
            self.store.apply(event, stream_seq)
        return self.store.view(sid) if events else None

    # ------------------------------------------------------------ cancellation

    async def cancel(self, sid: str, status: str, code: str, message: str) -> None:
        """Cancel one session wherever it is: queued ones are ended here, active ones by their runner."""
        view = self.store.view(sid)
        if view is None or is_terminal(view["status"]):
            return
        run = self.runs.get(sid)
        if run is not None and run.task is not None:
            _request_cancel(run, CancelRequest(status, code, message))
            return
        if view["status"] == "queued":
            writer = await SessionWriter.resume(self.bus, self.store, sid)
            marker = await self.bus.kv_get(KV_INFLIGHT, sid)
            envelope = marker[0].get("envelope") if marker else None
            if await self.finalize_unstarted(writer, status, code, message, envelope, drop_marker=marker is not None):
                return
        request = {"status": status, "errorCode": code, "reason": message, "requestedAt": now_iso()}
        await self.bus.nc.publish(cancel_subject(sid), dumps(request))  # type: ignore[union-attr]

    async def _on_cancel_msg(self, msg: Any) -> None:
        import json

        sid = msg.subject.rsplit(".", 1)[-1]
        run = self.runs.get(sid)
        if run is None or run.task is None:
            return
        data = json.loads(msg.data or b"{}")
        _request_cancel(run, CancelRequest(data.get("status", "cancelled"), data.get("errorCode", "cancelled_by_user"),
                                           data.get("reason", "Cancelled")))

    async def cancel_tree(self, sid: str, code: str, message: str) -> list[str]:
        """Cancel a session and every non-terminal descendant (`parent_cancelled`, spec §8.3)."""
        descendants = [d for d in self.store.rm.descendants(sid) if self._is_alive(d)]
        await self.cancel(sid, "cancelled", code, message)
        for child in descendants:
            await self.cancel(child, "cancelled", "parent_cancelled", f"Ancestor {sid} was cancelled")
        return descendants

    async def cancel_and_wait(self, sids: list[str], code: str, message: str, timeout: float) -> None:
        for sid in sids:
            await self.cancel(sid, "cancelled", code, message)
        waits = [self.store.wait_terminal(sid) for sid in sids]
        if waits:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.gather(*waits, return_exceptions=True), timeout)


def _request_cancel(run: Run, request: CancelRequest) -> None:
    """Cancel a run once: the first request's reason wins and later ones change nothing.

    Cancelling the task again would interrupt the runner while it records the first cancel (its shielded
    `step:complete`, then `session:complete`), and the session would lose its terminal event."""
    if run.cancel is not None or run.task is None:
        return
    run.cancel = request
    run.cancelled_flag.set()
    run.task.cancel()


def job_signal_policy(ws: Workspace, signal_id: str) -> str:
    sig = ws.config.signals.get(signal_id)
    return sig.concurrency if sig is not None else "concurrent"
