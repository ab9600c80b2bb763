"""Shell steps that flood their output (issue #19, bug 1): memory stays flat and the daemon keeps answering.

Every output line used to become its own ephemeral chunk, with its own copy of the live view and its own publish
task: 300,000 empty lines (300 KB) grew the daemon from 69 MiB to 1.8 GiB and stalled `/health` for seconds. The
soak test runs such steps on a real daemon (uvloop, real NATS) while it samples the daemon's RSS and how long
`/health` takes to answer; the bounds are generous liveness bounds, not timings. The in-process tests check the
coalescing itself: few messages on the bus, every line accounted for, recent output visible while a step runs.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from atlas.jsoncodec import dumps, loads
from atlas.runtime.accept import TriggerRequest
from atlas.runtime.chunks import MAX_PENDING_CHARS, ChunkCoalescer
from atlas.runtime.daemon import Daemon
from tests.daemon_proc import FIXTURES, DaemonProcess
from tests.inproc import running
from tests.test_api_core import post

FLOOD = FIXTURES / "flood"
MIB = 1024 * 1024
#: Liveness bounds (spec'd by the issue): RSS growth while one step floods, and the slowest `/health` answer.
MAX_RSS_GROWTH = 300 * MIB
MAX_HEALTH_S = 2.0
#: A chunk message on the bus is at most 64 KiB (spec §3.3, §10.6).
MAX_CHUNK_BYTES = 64 * 1024
DROPPED = re.compile(r"^\[atlas: (\d+) lines? dropped\]$")


def rss(pid: int) -> int:
    """The resident set size of `pid` in bytes, from /proc (VmRSS is in kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no VmRSS for {pid}")


@pytest.fixture(scope="module")
def flood(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    d = DaemonProcess(tmp_path_factory.mktemp("flood-home"), [FLOOD]).start()
    yield d
    d.stop()


@pytest.mark.parametrize("job", ["lines", "many", "long", "binary", "progress"])
def test_a_flooding_step_keeps_memory_flat_and_health_answering(flood: DaemonProcess, job: str) -> None:
    assert flood.proc is not None
    pid = flood.proc.pid
    before = rss(pid)
    sid = post(flood, "flood", job, {"payload": {}}).json()["sessionId"]
    peak, slowest, status = before, 0.0, None
    deadline = time.monotonic() + 240
    with httpx.Client(base_url=flood.url, timeout=30) as client:
        while status not in {"completed", "failed", "cancelled", "interrupted", "skipped"}:
            assert time.monotonic() < deadline, f"session {sid} did not end; last status {status}"
            started = time.monotonic()
            assert client.get("/health").status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            peak = max(peak, rss(pid))
            status = client.get(f"/api/sessions/{sid}").json()["status"]
        view = client.get(f"/api/sessions/{sid}").json()
    assert status == "completed", view
    growth = peak - before
    assert growth < MAX_RSS_GROWTH, f"RSS grew by {growth / MIB:.0f} MiB ({before / MIB:.0f} → {peak / MIB:.0f})"
    assert slowest < MAX_HEALTH_S, f"/health took {slowest:.2f} s"
    block = view["agentBlocks"][0]
    assert block["status"] == "completed" and "ephemeral" not in block


async def collect_chunks(d: Daemon) -> tuple[list[dict[str, Any]], list[int]]:
    """Every chunk message published on the bus from now on, and the size of each on the wire."""
    messages: list[dict[str, Any]] = []
    sizes: list[int] = []

    async def on_message(msg: Any) -> None:
        sizes.append(len(msg.data))
        messages.append(loads(msg.data))

    assert d.bus.nc is not None
    await d.bus.nc.subscribe("ephemeral.sessions.*", cb=on_message)
    await d.bus.nc.flush()
    return messages, sizes


def log_lines(messages: list[dict[str, Any]], sid: str, stream: str) -> tuple[list[str], int]:
    """The lines the `log` chunks of `sid` carried for `stream`, and how many they reported dropped."""
    lines: list[str] = []
    dropped = 0
    for message in messages:
        chunk = message["chunk"]
        if message["sessionId"] != sid or chunk["type"] != "log" or chunk["stream"] != stream:
            continue
        for line in chunk["line"].split("\n"):
            marker = DROPPED.match(line)
            if marker:
                dropped += int(marker.group(1))
            else:
                lines.append(line)
    return lines, dropped


async def received(messages: list[dict[str, Any]], sid: str, last: str, timeout: float = 30) -> None:
    """Wait until the stdout line `last` of `sid` has come in (the subscription handles messages in order)."""
    deadline = time.monotonic() + timeout
    while last not in log_lines(messages[-5:], sid, "stdout")[0]:
        assert time.monotonic() < deadline, f"{last!r} never arrived on the bus"
        await asyncio.sleep(0.02)


async def test_many_lines_go_out_as_few_chunks_and_recent_output_stays_visible(tmp_path: Path) -> None:
    release = tmp_path / "release"
    async with running(tmp_path / "home", (FLOOD,)) as d:
        messages, sizes = await collect_chunks(d)
        accepted = await d.accept.accept(
            TriggerRequest(workspace_id="flood", signal_id="live", payload={"release": str(release)}, trigger="http")
        )
        sid = accepted.session_id

        def latest_line() -> str | None:
            view = d.store.view(sid)
            blocks = (view or {}).get("agentBlocks") or [{}]
            logs = [c for c in blocks[0].get("ephemeral") or [] if c.get("type") == "log"]
            return logs[-1]["line"].rsplit("\n", 1)[-1] if logs else None

        deadline = time.monotonic() + 60
        while latest_line() != "last line":  # the step is still running: it waits for `release`
            assert time.monotonic() < deadline, f"live view never showed the last line: {latest_line()!r}"
            await asyncio.sleep(0.02)
        release.touch()
        view = await d.store.wait_terminal(sid, 60)
        assert view["status"] == "completed"
        assert "ephemeral" not in view["agentBlocks"][0]  # cleared by step:complete, and nothing came after it
        await received(messages, sid, "last line")

    lines, dropped = log_lines(messages, sid, "stdout")
    assert lines[-1] == "last line"
    assert len(lines) + dropped == 300_001  # every line printed was either sent or counted as dropped
    assert len(messages) <= 1_000, f"{len(messages)} chunk messages for 300,001 lines"
    assert max(sizes) <= MAX_CHUNK_BYTES
    assert all(message["stepNumber"] == 1 for message in messages)


async def test_the_last_lines_of_a_short_step_are_published_before_it_completes(tmp_path: Path) -> None:
    """Coalescing must not hold back the end of a step's output: it is flushed before `step:complete`."""
    async with running(tmp_path / "home", (FIXTURES / "quick",)) as d:
        messages, _ = await collect_chunks(d)
        accepted = await d.accept.accept(
            TriggerRequest(workspace_id="quick", signal_id="tmpl", payload={"s": "hello"}, trigger="http")
        )
        await d.store.wait_terminal(accepted.session_id, 30)
        await received(messages, accepted.session_id, '["hello"]')
        assert log_lines(messages, accepted.session_id, "stdout")[0] == ['["hello"]']


async def test_a_python_step_flooding_progress_goes_out_as_few_chunks_ending_with_the_latest(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FLOOD,)) as d:
        messages, _ = await collect_chunks(d)
        accepted = await d.accept.accept(
            TriggerRequest(workspace_id="flood", signal_id="progress", payload={}, trigger="http")
        )
        view = await d.store.wait_terminal(accepted.session_id, 120)
        assert view["status"] == "completed" and view["results"] == {"progress": {"emitted": 500_000}}
        deadline = time.monotonic() + 30
        while not messages or messages[-1]["chunk"].get("current") != 500_000:
            assert time.monotonic() < deadline, "the last progress chunk never arrived"
            await asyncio.sleep(0.02)
    assert messages[-1]["chunk"] == {"type": "progress", "message": "item 500000", "current": 500_000,
                                     "total": 500_000}
    assert len(messages) <= 1_000, f"{len(messages)} chunk messages for 500,000 progress calls"


# ---------------------------------------------------------------- the coalescer itself


class Bus:
    """Where a coalescer delivers: records chunk bodies, and can be held shut like a bus that does not keep up."""

    def __init__(self) -> None:
        self.bodies: list[tuple[int, dict[str, Any]]] = []
        self.open = asyncio.Event()
        self.open.set()
        self.tasks: set[asyncio.Task[Any]] = set()

    async def deliver(self, step: int, body: dict[str, Any]) -> None:
        await self.open.wait()
        self.bodies.append((step, body))

    def spawn(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)


def delivered_lines(bus: Bus) -> tuple[list[str], int]:
    return log_lines([{"sessionId": "s", "stepNumber": step, "chunk": body} for step, body in bus.bodies], "s",
                     "stdout")


async def test_a_bus_that_does_not_keep_up_costs_dropped_lines_not_memory() -> None:
    bus = Bus()
    bus.open.clear()
    coalescer = ChunkCoalescer(bus.deliver, bus.spawn)
    sink = coalescer.sink(1)

    def produce() -> None:  # from a worker thread, as a sync python agent would
        for i in range(200_000):
            sink({"type": "log", "stream": "stdout", "line": f"line {i}"})

    await asyncio.to_thread(produce)
    bus.open.set()
    await coalescer.close_step(1)
    lines, dropped = delivered_lines(bus)
    assert len(lines) + dropped == 200_000 and dropped > 0
    assert lines[-1] == "line 199999"
    assert sum(len(line) + 1 for line in lines) <= 3 * MAX_PENDING_CHARS  # what waited stayed bounded
    assert len(bus.bodies) <= 10


async def test_chunks_fit_the_bus_limit_and_keep_their_kind() -> None:
    bus = Bus()
    coalescer = ChunkCoalescer(bus.deliver, bus.spawn)
    sink = coalescer.sink(1)
    for _ in range(20):  # control characters weigh six bytes each once encoded
        sink({"type": "log", "stream": "stderr", "line": "\x01" * 8000})
    for word in ("Hello", ", ", "world"):
        sink({"type": "text-delta", "delta": word})
    sink({"type": "progress", "current": 1, "total": 3})
    sink({"type": "progress", "current": 2, "total": 3})
    sink({"type": "custom", "n": 1})
    await coalescer.close_step(1)
    kinds = {body["type"]: body for _, body in bus.bodies}
    assert kinds["text-delta"] == {"type": "text-delta", "delta": "Hello, world"}
    assert kinds["progress"] == {"type": "progress", "current": 2, "total": 3}
    assert kinds["custom"] == {"type": "custom", "n": 1}
    assert all(len(dumps({"sessionId": "x" * 36, "stepNumber": 1, "chunk": body})) <= MAX_CHUNK_BYTES
               for _, body in bus.bodies)
    log = kinds["log"]["line"].split("\n")
    assert DROPPED.match(log[0]) and log[-1] == "\x01" * 8000


async def test_chunks_a_step_emits_after_its_end_are_dropped() -> None:
    bus = Bus()
    coalescer = ChunkCoalescer(bus.deliver, bus.spawn)
    coalescer.sink(1)({"type": "log", "stream": "stdout", "line": "during"})
    await coalescer.close_step(1)
    coalescer.sink(1)({"type": "log", "stream": "stdout", "line": "after"})  # a worker thread still running
    coalescer.sink(2)({"type": "log", "stream": "stdout", "line": "next step"})
    await coalescer.close_step(2)
    assert [(step, body["line"]) for step, body in bus.bodies] == [(1, "during"), (2, "next step")]
