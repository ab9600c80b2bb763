"""The runtime wired over the in-memory bus and session log (`tests.unit.fakes`), for fast unit tests.

The same components as `atlas.runtime.daemon.Daemon` builds, given the same narrow dependencies, only the two
ports are fakes; the read model is a real `SessionStore` on a SQLite file. No nats-server, no HTTP.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from atlas.bus.client import Bus
from atlas.bus.sessionlog import SessionLog
from atlas.runtime.accept import Accepted, AcceptPipeline, TriggerRequest
from atlas.runtime.background import Background
from atlas.runtime.concurrency import ConcurrencyControl
from atlas.runtime.consumer import SignalConsumer
from atlas.runtime.engine import EngineServices
from atlas.runtime.finalizer import Finalizer
from atlas.runtime.intake import Intake
from atlas.runtime.lifecycle import SessionLifecycle
from atlas.runtime.lineage import Lineage
from atlas.runtime.markers import Markers
from atlas.runtime.membership import Membership
from atlas.runtime.recovery import Recovery
from atlas.runtime.slots import Slots
from atlas.runtime.workspaces import WorkspaceRegistry
from atlas.sessions.materializer import Materializer
from atlas.sessions.readmodel import open_read_model
from atlas.sessions.store import SessionStore
from atlas.templating import Templater
from tests.unit.fakes import FakeBus, FakeDelivery, FakeSessionLog

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
DAEMON_ID = "unit-daemon"


class _Writable:
    writable = True


@dataclass
class Runtime:
    bus: FakeBus
    log: FakeSessionLog
    store: SessionStore
    workspaces: WorkspaceRegistry
    slots: Slots
    lineage: Lineage
    accept: AcceptPipeline
    lifecycle: SessionLifecycle
    recovery: Recovery
    consumer: SignalConsumer
    membership: Membership

    async def trigger(self, signal_id: str, payload: Any = None, workspace_id: str = "core") -> Accepted:
        return await self.accept.accept(TriggerRequest(workspace_id, signal_id, payload, "http"))

    async def deliver(self) -> list[FakeDelivery]:
        """Hand every envelope published so far to the consumer, as its fetch loop would (a slot each)."""
        out = []
        while self.bus.signals:
            delivery = FakeDelivery(self.bus.signals.pop(0))
            assert self.slots.try_take(1) == 1, "no free runner slot"
            await self.consumer.handle(delivery)  # type: ignore[arg-type]
            out.append(delivery)
        return out

    async def settle(self) -> None:
        """Wait until every run task (named `run-<sid>` by the lifecycle) is done, finalisation included: a run
        leaves `lifecycle.runs` before it finalises, and the session a finalisation promotes runs in a new task."""
        while pending := [t for t in asyncio.all_tasks() if t.get_name().startswith("run-") and not t.done()]:
            await asyncio.gather(*pending)

    def types(self, sid: str) -> list[str]:
        return [e["type"] for e in self.log.events(sid)]


@contextlib.asynccontextmanager
async def runtime(tmp_path: Path, *, slots: int = 8) -> AsyncIterator[Runtime]:
    """The runtime of one daemon over fakes, with the `core` test workspace loaded."""
    bus = FakeBus()
    log = FakeSessionLog()
    # The components are typed against the real ports; the fakes implement what they use of them.
    real_bus, real_log = cast(Bus, bus), cast(SessionLog, log)
    store = SessionStore(open_read_model(tmp_path / "atlas.db"))
    background = Background()
    workspaces = WorkspaceRegistry()
    await workspaces.add(FIXTURES / "core")
    runner_slots = Slots(slots)
    lineage = Lineage(store)
    markers = Markers(bus=real_bus)
    materializer = Materializer(bus=real_bus, store=store, session_log=real_log, follow=True)
    membership = Membership(bus=real_bus, daemon_id=DAEMON_ID, url="http://127.0.0.1:0", started_at="2000-01-01",
                            heartbeat_ttl_s=30, follower=materializer)
    concurrency = ConcurrencyControl(bus=real_bus, is_alive=lineage.is_alive, ancestors=lineage.ancestors)
    finalizer = Finalizer(bus=real_bus, session_log=real_log, store=store, markers=markers,
                          rebuild_view=materializer.rebuild, spawn=background.spawn)
    accept = AcceptPipeline(bus=real_bus, session_log=real_log, store=store, workspaces=workspaces,
                            finalizer=finalizer, intake=Intake(health=_Writable()), daemon_id=DAEMON_ID,
                            max_cascade_depth=10, max_tree_sessions=1000)
    engine = EngineServices(templater=Templater(), store=store, slots=runner_slots, trigger=accept.accept,
                            publish_chunk=log.publish_chunk, spawn=background.spawn, llm_base_url=None,
                            bus_retry_s=0.0)
    lifecycle = SessionLifecycle(bus=real_bus, session_log=real_log, store=store, workspaces=workspaces,
                                 concurrency=concurrency, finalizer=finalizer, lineage=lineage, markers=markers,
                                 slots=runner_slots, engine=engine, daemon_id=DAEMON_ID)
    recovery = Recovery(bus=real_bus, session_log=real_log, store=store, materializer=materializer,
                        lifecycle=lifecycle, concurrency=concurrency, lineage=lineage, markers=markers,
                        is_daemon_alive=membership.is_daemon_alive,
                        daemon_id=DAEMON_ID, started_at="2000-01-01T00:00:00.000Z", ack_wait_s=30)
    consumer = SignalConsumer(bus=real_bus, session_log=real_log, store=store, workspaces=workspaces,
                              slots=runner_slots, queued_tail=accept.queued_tail, lifecycle=lifecycle,
                              concurrency=concurrency, lineage=lineage, markers=markers, recovery=recovery,
                              is_daemon_alive=membership.is_daemon_alive, daemon_id=DAEMON_ID, queue_timeout_s=3600,
                              replace_grace_s=5)
    await lifecycle.listen_for_cancels()
    rt = Runtime(bus, log, store, workspaces, runner_slots, lineage, accept, lifecycle, recovery, consumer,
                 membership)
    try:
        yield rt
    finally:
        await lifecycle.drain(0)
        store.close()
