"""`SessionLog`, the session-log port, against a real daemon and nats-server: paged reads resume exactly where the
last page ended and agree with the log, `last` is the final event, chunks reach a follower, and the API layer
reaches the bus only through it (`atlas.api` imports no `atlas.bus`)."""

from __future__ import annotations

import ast
import asyncio
from pathlib import Path

import pytest

from atlas.bus.client import Bus, ephemeral_subject
from atlas.bus.sessionlog import SessionLog
from atlas.errors import AtlasError
from atlas.jsoncodec import loads
from atlas.runtime.accept import TriggerRequest
from tests.inproc import running

FIXTURES = Path(__file__).parent / "fixtures"
API = Path(__file__).resolve().parents[1] / "src" / "atlas" / "api"


async def test_pages_cover_the_log_once_and_in_order(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        accepted = await d.accept.accept(TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1},
                                                        trigger="http"))
        sid = accepted.session_id
        assert (await d.store.wait_terminal(sid, 20))["status"] == "completed"
        expected = await d.bus.read_events(sid)
        assert len(expected) >= 3

        pages, after, at_end = [], 0, False
        while not at_end:
            page, at_end = await d.session_log.read_page(sid, after, 2, 1024 * 1024)
            assert len(page) <= 2
            pages.extend(page)
            if page:
                after = page[-1][0]
        assert [(event, seq) for seq, _, event in pages] == expected
        assert all(loads(data) == event and b"\n" not in data for _, data, event in pages)
        assert pages[-1][2]["type"] == "session:complete"

        nothing, at_end = await d.session_log.read_page(sid, after, 10, 1024)
        assert nothing == [] and at_end
        last = await d.session_log.last(sid)
        assert last == expected[-1]
        assert await d.session_log.last("no-such-session") is None
        assert await d.session_log.read_page("no-such-session", 0, 10, 1024) == ([], True)


async def test_chunks_reach_a_follower_and_bus_failures_are_domain_errors(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",)) as d:
        got: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()

        async def on_chunk(session_id: str, data: bytes) -> None:
            await got.put((session_id, data))

        one = await d.session_log.follow_chunks("s-1", on_chunk, backlog=16, confirm=True)
        every = await d.session_log.follow_chunks(None, on_chunk, backlog=16, confirm=True)
        assert d.bus.nc is not None
        await d.bus.nc.publish(ephemeral_subject("s-1"), b'{"chunk":1}')
        await d.bus.nc.publish(ephemeral_subject("s-2"), b'{"chunk":2}')
        received = [await asyncio.wait_for(got.get(), 5) for _ in range(3)]
        assert sorted(received) == [("s-1", b'{"chunk":1}'), ("s-1", b'{"chunk":1}'), ("s-2", b'{"chunk":2}')]
        await one.unsubscribe()
        await every.unsubscribe()

        # A connection that is gone: what a read meets when the bus goes away under it.
        closed = Bus(d.bus.settings)
        await closed.connect()
        await closed.close()
        for read in (SessionLog(closed).read_page("s-1", 0, 10, 1024), SessionLog(closed).last("s-1")):
            with pytest.raises(AtlasError) as err:
                await read
            assert err.value.code == "bus_unavailable"


def test_the_api_reaches_the_bus_only_through_the_daemon() -> None:
    for path in API.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            for name in names:
                assert not name.startswith(("atlas.bus", "fastapi")), f"{path.name} imports {name}"
