"""The daemon's composition root: builds every component with the narrow dependencies it uses, and starts and
stops them in order.

Every component is built here, eagerly, in `__init__` (nothing connects or runs yet); each gets keyword-only
dependencies — the bus or the session log, the read model, the few other components it calls — and never this
object, so each can be built alone (the runtime's unit tests do, over an in-memory bus) and the runtime has no
import circle. The roles the daemon once played itself live in their own modules: running sessions
(`lifecycle`), cluster membership (`membership`), taking work (`intake`), the workspace registry (`catalog`).

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
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atlas import __version__
from atlas.agents.llm import ToolSource
from atlas.bus.chatlog import ChatLog
from atlas.bus.client import Bus, BusSettings
from atlas.bus.health import BusHealth
from atlas.bus.server import EmbeddedNats
from atlas.bus.sessionlog import SessionLog
from atlas.bus.steplogs import StepLogStore
from atlas.chat.service import ChatService
from atlas.chat.turn import ChatSettings
from atlas.config.durations import parse_duration
from atlas.config.settings import Settings
from atlas.errors import AtlasError
from atlas.mcp.reaper import reap_leftovers
from atlas.mcp.servers import McpHub, WorkspaceTools
from atlas.memory import MemoryStore, memory_tools, with_memory
from atlas.observability.metrics import Metrics
from atlas.observability.tracing import Tracing
from atlas.runtime.accept import AcceptPipeline
from atlas.runtime.background import Background
from atlas.runtime.catalog import WorkspaceCatalog
from atlas.runtime.concurrency import ConcurrencyControl
from atlas.runtime.consumer import SignalConsumer
from atlas.runtime.engine import EngineServices, Run
from atlas.runtime.finalizer import Finalizer
from atlas.runtime.idempotency import Idempotency
from atlas.runtime.intake import Intake
from atlas.runtime.lifecycle import SessionLifecycle
from atlas.runtime.lineage import Lineage
from atlas.runtime.markers import Markers
from atlas.runtime.membership import Membership
from atlas.runtime.recovery import Recovery
from atlas.runtime.scheduler import Scheduler
from atlas.runtime.slots import Slots
from atlas.runtime.watch import SessionWatch
from atlas.runtime.workspaces import Workspace, WorkspaceRegistry
from atlas.sessions.events import format_iso, now_iso
from atlas.sessions.materializer import Materializer
from atlas.sessions.readmodel import open_read_model
from atlas.sessions.readmodel_pg import PostgresReadModel
from atlas.sessions.store import SessionStore
from atlas.templating import Templater

log = logging.getLogger("atlas.daemon")


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


def bus_settings(s: Settings) -> BusSettings:
    """The bus's settings from the daemon's (the URL and token of an embedded server are known once it runs)."""
    return BusSettings(url=s.nats_url or "", creds=s.nats_creds, replicas=s.nats_replicas,
                       retention_s=s.session_retention_s, ack_wait_s=s.ack_wait_s,
                       idempotency_ttl_s=s.idempotency_ttl_s, heartbeat_ttl_s=s.heartbeat_ttl_s,
                       chat_retention_s=s.chat_retention_s,
                       write_retry_s=s.bus_retry_s, memory_retention_s=s.memory_retention_s)


def check_retention(settings: Settings, workspaces: WorkspaceRegistry) -> None:
    """ATLAS_SESSION_RETENTION must outlive any queued or running session (spec §7.3): refuse to start if not."""
    retention = settings.session_retention_s
    if retention == 0:
        return
    longest = max(
        (parse_duration(job.config.timeout or ws.config.workspace.timeout.maxTotalTimeout)
         for ws in workspaces.all() for job in ws.config.jobs.values()),
        default=0.0,
    )
    if retention <= settings.queue_timeout_s + longest:
        raise AtlasError("invalid_settings",
                         f"ATLAS_SESSION_RETENTION ({retention:g}s) must exceed ATLAS_QUEUE_TIMEOUT "
                         f"({settings.queue_timeout_s:g}s) plus the longest job timeout ({longest:g}s)")


class Daemon:
    """One atlasd: its components (public attributes, built in `__init__`), `start()` and `stop()`, and the few
    operations the API calls by name, each a one-line hand-over to the component that owns it."""

    def __init__(self, settings: Settings, *, tracing: Tracing | None = None) -> None:
        """`tracing`: the daemon's tracer (tests pass one with an in-memory exporter); else from `OTEL_*`."""
        s = self.settings = settings
        # Traces (issue #18): off unless an OTLP endpoint or ATLAS_TRACING is set; a provider of this daemon's own.
        self.tracing = tracing if tracing is not None else Tracing.from_env()
        self.home = _secure_dir(s.home)
        self.daemon_id = _daemon_id(self.home)
        self.started_at = now_iso()
        self.status = "starting"
        self.request_shutdown: Callable[[], None] | None = None
        self.fatal = False
        self._t0 = time.monotonic()
        self._stopping = False
        self._tasks: list[asyncio.Task[None]] = []

        # The edges: built now, connected and started by `start()`.
        self.embedded = None if s.nats_url else EmbeddedNats(self.home, on_fatal=self._bus_lost)
        self.nats_url = s.nats_url or ""
        # Prometheus metrics (issue #18): a registry of this daemon's own, handed to the components that count.
        self.metrics = Metrics()
        self.bus = Bus(bus_settings(s), observer=self.metrics)
        self.bus_health = BusHealth(self.bus, self.embedded)  # degraded while the bus cannot write
        self.session_log = SessionLog(self.bus)
        self.step_logs = StepLogStore(self.bus)  # what steps wrote, beside their events (issue #16)
        self.store = SessionStore(open_read_model(self.home / "atlas.db") if not s.database_url
                                  else PostgresReadModel(s.database_url, pool_size=s.database_pool),
                                  observer=self.metrics)
        self.metrics.count_sessions(self._live_session_counts)
        self.background = Background()
        if s.database_url:  # other daemons read it: rows are written once, by each session's writer (issue #15)
            watch = SessionWatch(session_log=self.session_log, store=self.store, spawn=self.background.spawn)
            self.store.share(watch.watch)
        # An embedded bus is private to this daemon (token, loopback): nobody else writes its log (see Materializer).
        self.materializer = Materializer(bus=self.bus, store=self.store, session_log=self.session_log,
                                         follow=bool(s.nats_url))

        # The runtime, leaves first: each component gets what it uses and nothing else.
        self.workspaces = WorkspaceRegistry()
        self.catalog = WorkspaceCatalog(bus=self.bus, workspaces=self.workspaces)
        self.templater = Templater()
        self.slots = Slots(s.max_concurrent_sessions)
        self.intake = Intake(health=self.bus_health)
        self.lineage = Lineage(self.store)
        self.markers = Markers(bus=self.bus)
        self.membership = Membership(bus=self.bus, daemon_id=self.daemon_id, url=f"http://{s.host}:{s.port}",
                                     started_at=self.started_at, heartbeat_ttl_s=s.heartbeat_ttl_s,
                                     follower=self.materializer)
        self.concurrency = ConcurrencyControl(bus=self.bus, is_alive=self.lineage.is_alive,
                                              ancestors=self.lineage.ancestors)
        self.finalizer = Finalizer(bus=self.bus, session_log=self.session_log, store=self.store, markers=self.markers,
                                   rebuild_view=self.materializer.rebuild, spawn=self.background.spawn)
        self.accept = AcceptPipeline(bus=self.bus, session_log=self.session_log, store=self.store,
                                     workspaces=self.workspaces, finalizer=self.finalizer, intake=self.intake,
                                     daemon_id=self.daemon_id, max_cascade_depth=s.max_cascade_depth,
                                     max_tree_sessions=s.max_tree_sessions, tracing=self.tracing,
                                     observer=self.metrics)
        # MCP servers of the workspaces' `tools.mcp`, pooled per workspace and started on first use (issue #14)
        self.mcp = McpHub(self.home, on_secret=self.templater.add_secret)
        # Workspace memory (issue #17): entries in the MEMORY bucket, offered to llm steps and chats as tools
        self.memory = MemoryStore(bus=self.bus)
        engine = EngineServices(templater=self.templater, store=self.store, slots=self.slots,
                                trigger=self.accept.accept, publish_chunk=self.session_log.publish_chunk,
                                spawn=self.background.spawn, llm_base_url=s.llm_base_url,
                                bus_retry_s=s.bus_retry_s, tools=self.workspace_tools, metrics=self.metrics,
                                step_logs=self.step_logs.append, tracing=self.tracing,
                                memory_tools=self.step_memory_tools)
        self.lifecycle = SessionLifecycle(bus=self.bus, session_log=self.session_log, store=self.store,
                                          workspaces=self.workspaces, concurrency=self.concurrency,
                                          finalizer=self.finalizer, lineage=self.lineage, markers=self.markers,
                                          slots=self.slots, engine=engine, daemon_id=self.daemon_id)
        # Built before `start()` runs anything: start-up recovery may promote a parked session, which the
        # lifecycle starts (a half-built daemon once left such a session queued for good).
        self.recovery = Recovery(bus=self.bus, session_log=self.session_log, store=self.store,
                                 materializer=self.materializer, lifecycle=self.lifecycle,
                                 concurrency=self.concurrency, lineage=self.lineage, markers=self.markers,
                                 is_daemon_alive=self.membership.is_daemon_alive, daemon_id=self.daemon_id,
                                 started_at=self.started_at, ack_wait_s=s.ack_wait_s)
        self.consumer = SignalConsumer(bus=self.bus, session_log=self.session_log, store=self.store,
                                       workspaces=self.workspaces, slots=self.slots,
                                       queued_tail=self.accept.queued_tail, lifecycle=self.lifecycle,
                                       concurrency=self.concurrency, lineage=self.lineage, markers=self.markers,
                                       recovery=self.recovery, is_daemon_alive=self.membership.is_daemon_alive,
                                       daemon_id=self.daemon_id,
                                       queue_timeout_s=s.queue_timeout_s, replace_grace_s=s.shutdown_grace_s)
        self.scheduler = Scheduler(bus=self.bus, store=self.store, workspaces=self.workspaces,
                                   trigger=self.accept.accept, intake=self.intake, daemon_id=self.daemon_id)
        self.idempotency = Idempotency(bus=self.bus, daemon_id=self.daemon_id, started_at=self.started_at,
                                       process_of=self.membership.process_of)
        # Workspace chats (issue #17): records in CHATS, summaries in CHAT_INDEX; turns run here, jobs as tools.
        self.chat = ChatService(chat_log=ChatLog(self.bus), workspaces=self.workspaces, accept=self.accept,
                                idempotency=self.idempotency, store=self.store, templater=self.templater,
                                memory=self.memory, mcp_tools=self.workspace_tools,
                                process_of=self.membership.process_of, daemon_id=self.daemon_id,
                                started_at=self.started_at,
                                settings=ChatSettings(provider=s.chat_provider, model=s.chat_model,
                                                      llm_base_url=s.llm_base_url, job_wait_s=s.chat_job_wait_s))

    # ------------------------------------------------------------ start and stop

    async def start(self) -> None:
        s = self.settings
        reap_leftovers(self.home / "run" / "mcp")  # MCP servers (and their children) a killed daemon left
        if self.embedded is not None:
            self.nats_url = await self.embedded.start()
            self.bus.settings.url, self.bus.settings.token = self.nats_url, self.embedded.token
        await self.bus.connect()
        await self.membership.beat()
        await self.catalog.load(s.workspaces, s.workspace_roots)
        check_retention(s, self.workspaces)
        await self.membership.listen()
        await self.materializer.start()
        await self.membership.say_hello()
        await self.lifecycle.listen_for_cancels()
        await self.recovery.run_once(at_start=True)
        await self.chat.recover()  # replies a killed process left half-written end `interrupted`
        await self.scheduler.start()
        self._tasks = [
            asyncio.create_task(self.consumer.run(), name="consumer"),
            asyncio.create_task(self.membership.run(), name="heartbeat"),
            asyncio.create_task(self.recovery.loop(), name="recovery"),
            asyncio.create_task(self._prune_loop(), name="prune"),
            asyncio.create_task(self.bus_health.run(), name="bus-health"),
        ]
        self.status = "ok"
        log.info("atlasd %s ready (daemon %s, nats %s)", __version__, self.daemon_id, self.nats_mode)

    def _bus_lost(self) -> None:
        """The embedded nats-server died and could not be restarted: stop, and exit non-zero (spec §6.1)."""
        log.error("nats-server could not be restarted; shutting down")
        self.fatal = True
        if self.request_shutdown is not None:
            self.request_shutdown()

    async def stop(self) -> None:
        """Graceful shutdown (spec §8.4): stop taking work, drain, interrupt the rest, stop nats-server. Safe on a
        daemon whose start failed half-way (every component exists from `__init__` on)."""
        if self._stopping:
            return
        self._stopping = True
        self.intake.close()
        await self.chat.stop()  # the replies this daemon writes end `interrupted`, while the bus is still there
        self.status = "stopping"
        await self.scheduler.stop()
        await self.consumer.stop()
        if self._tasks:
            self._tasks[0].cancel()  # the fetch loop: no new work from here on
        await self.lifecycle.drain(self.settings.shutdown_grace_s)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        await self.materializer.stop()
        await self.mcp.aclose()
        with contextlib.suppress(Exception):
            await self.membership.leave()
        await self.bus.close()
        if self.embedded is not None:
            await self.embedded.stop()
        self.store.close()
        self.tracing.shutdown()  # flushes the spans still batched

    async def _prune_loop(self) -> None:
        """Hourly: drop read-model rows of terminal sessions past retention (JetStream ages out by max_age)."""
        while True:
            if self.settings.session_retention_s:
                cutoff = time.time() - self.settings.session_retention_s
                before = format_iso(datetime.fromtimestamp(cutoff, UTC))
                try:  # a shared database's delete runs off the loop: it may wait on the network
                    removed = (await asyncio.to_thread(self.store.rm.prune, before) if self.store.shared
                               else self.store.rm.prune(before))
                except Exception as exc:  # the database is down: the next pass prunes
                    log.warning("pruning the read model failed: %s", exc)
                    removed = 0
                if removed:
                    log.info("pruned %d sessions past retention", removed)
            await asyncio.sleep(min(3600.0, max(1.0, self.settings.session_retention_s / 10)))

    # ------------------------------------------------------------ what the API and the CLI read

    @property
    def nats_mode(self) -> str:
        return "external" if self.settings.nats_url else "embedded"

    @property
    def uptime(self) -> float:
        return round(time.monotonic() - self._t0, 3)

    def _live_session_counts(self) -> dict[tuple[str, str], int]:
        """Queued and active sessions by (status, workspace), for `atlas_sessions` at each scrape."""
        return self.store.rm.count_live()

    @property
    def runs(self) -> dict[str, Run]:
        """The sessions this process runs right now."""
        return self.lifecycle.runs

    # ------------------------------------------------------------ the API's operations, each owned by a component

    async def add_workspace(self, path: str | Path, roots: Sequence[Path] = ()) -> tuple[Workspace, bool]:
        return await self.catalog.add(path, roots)

    async def remove_workspace(self, workspace_id: str) -> None:
        await self.catalog.remove(workspace_id)
        await self.mcp.unload(workspace_id)

    def workspace_tools(self, ws: Workspace) -> WorkspaceTools | None:
        """The MCP servers of `ws` (None when it declares none); a reloaded `tools.mcp` gets fresh servers."""
        return self.mcp.for_workspace(ws.id, ws.config.tools.mcp, ws.path)

    def step_memory_tools(self, ws: Workspace, mcp: ToolSource | None, session_id: str) -> ToolSource | None:
        """An llm step's tools: the memory tools (saving with its session as source, secrets redacted) in front of
        its workspace's MCP tools."""
        redact: Callable[[str], str] = lambda text: str(self.templater.redact(text))  # noqa: E731
        return with_memory(mcp, memory_tools(self.memory, ws, {"sessionId": session_id}, redact))

    async def cluster(self) -> list[dict[str, Any]]:
        return await self.membership.members()

    async def is_daemon_alive(self, daemon_id: str | None) -> bool:
        return await self.membership.is_daemon_alive(daemon_id)

    async def cancel(self, sid: str, status: str, code: str, message: str) -> None:
        await self.lifecycle.cancel(sid, status, code, message)

    async def cancel_tree(self, sid: str, code: str, message: str) -> list[str]:
        return await self.lifecycle.cancel_tree(sid, code, message)

    async def rebuild_view(self, sid: str) -> dict[str, Any] | None:
        return await self.materializer.rebuild(sid)
