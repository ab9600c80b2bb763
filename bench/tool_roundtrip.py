"""Orchestration overhead of one tool round trip of an `llm` step (issue #14, "Benchmark": goal p50 ≤ 5 ms).

Usage: python bench/tool_roundtrip.py [--sessions 50] [--calls 10]

The parts, all real except the model:

- a real atlasd (``tests/daemon_proc.DaemonProcess``) with one workspace: an llm agent (``provider: openai``,
  streamed Chat Completions through the official SDK) whose only tool is ``echo`` of the stdio MCP server
  ``tests/mcp_servers/tools_server.py`` (pooled by the daemon, started by a warm-up session);
- the scripted model server (``tests/fake_models``) in this process, answering at once: ``--calls`` tool calls
  per session, then a final answer. It stamps (``time.perf_counter``) when it has read each request and when it
  has written each answer.

Measured per tool call: **gap** = the model's tool-call answer written → the next model request read. The gap
holds everything between two model turns: the SDK parsing the stream, the loop, the MCP call (the tool's own
time), the live ``tool-call``/``tool-result`` chunks, building and sending the next request. The model's own
time is outside it by construction (it is the fake's answer time, reported too).

Baselines measured in the same run:

- **tool's own time**: the same ``echo`` through a bare ``mcp.Client`` over stdio (same server, same argv);
- **bare loop**: the same gap for a minimal loop without atlas (``openai`` SDK streamed + ``mcp.Client``), run in a
  child process like the daemon, so that the fake never shares a GIL with the code it times.

Overhead per call = gap − the tool's own p50 (so its p50/p99 are the gap's minus that constant). Markdown goes to
stdout, progress to stderr; no timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.start_latency import pct  # noqa: E402
from tests.daemon_proc import DaemonProcess  # noqa: E402
from tests.fake_models import FakeModels, Recorded, Reply, ToolCall, _handler  # noqa: E402

TOOLS_SERVER = [sys.executable, str(ROOT / "tests" / "mcp_servers" / "tools_server.py"), "stdio"]
ECHO_ARGS = {"text": "ping"}
MODEL = "fake-model"
KEY = "sk-bench-dummy-key-0123456789"


def say(msg: str) -> None:
    print(f"[tool_roundtrip] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------------------------
# The scripted model server, with time stamps


@dataclass
class Stamp:
    read: float  # the request has been read (headers and body)
    tool_call: bool  # the scripted answer was a tool call
    written: float = 0.0  # the answer has been written (the handler returned)


class TimedFake(FakeModels):
    """`FakeModels` that stamps each request and answer; handlers run one per thread, so the index is thread-local."""

    def __init__(self, root_url: str) -> None:
        super().__init__(root_url)
        self.stamps: list[Stamp] = []
        self._local = threading.local()

    def _next(self, request: Recorded) -> Reply | None:
        read = time.perf_counter()
        reply = super()._next(request)
        with self._lock:
            self._local.index = len(self.stamps)
            self.stamps.append(Stamp(read, bool(reply and reply.tool_calls)))
        return reply

    def answered(self) -> None:
        now = time.perf_counter()
        index = getattr(self._local, "index", None)
        if index is not None:
            with self._lock:
                self.stamps[index].written = now
            self._local.index = None

    def take(self) -> list[Stamp]:
        """The stamps so far; the next measurement starts afresh."""
        with self._lock:
            out, self.stamps = self.stamps, []
            return out


@contextmanager
def timed_fake() -> Iterator[TimedFake]:
    """`tests.fake_models.fake_models`, with its handler wrapped so that the end of each answer is stamped."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), BaseHTTPRequestHandler)
    server.daemon_threads = True
    host, port = server.server_address[:2]
    fake = TimedFake(f"http://{host!s}:{port}")
    base = _handler(fake)

    class Timed(base):  # type: ignore[misc, valid-type]
        def do_POST(self) -> None:
            super().do_POST()
            fake.answered()

    server.RequestHandlerClass = Timed
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), name="fake-models", daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        fake.stopping.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def script(fake: FakeModels, sessions: int, calls: int) -> None:
    for _ in range(sessions):
        fake.enqueue(*[Reply(tool_calls=[ToolCall("echo", ECHO_ARGS)]) for _ in range(calls)], Reply(text=["done"]))


def gaps(stamps: list[Stamp]) -> tuple[list[float], list[float]]:
    """(gap after each tool-call answer, the fake's answer times) in ms, from stamps of strictly sequential runs."""
    between = [(b.read - a.written) * 1e3 for a, b in itertools.pairwise(stamps) if a.tool_call]
    answer = [(s.written - s.read) * 1e3 for s in stamps]
    return between, answer


# ---------------------------------------------------------------------------------------------------------------
# atlas


WORKSPACE = {
    "version": "1.0",
    "workspace": {"name": "Tool round trip", "id": "toolbench"},
    "tools": {"mcp": {"servers": {"tools": {
        "transport": {"type": "stdio", "command": TOOLS_SERVER[0], "args": TOOLS_SERVER[1:]},
        "tools": {"allow": ["echo"]},
    }}}},
    "signals": {"go": {"provider": "http", "config": {"path": "/go"}}},
    "agents": {"looper": {"type": "llm", "config": {
        "provider": "openai", "model": MODEL, "prompt": "Call echo until told to stop.", "tools": ["echo"],
        "max_steps": 1000,
    }}},
    "jobs": {"go": {"triggers": [{"signal": "go"}], "execution": {"strategy": "sequential", "agents": ["looper"]}}},
}


def run_atlas(fake: TimedFake, tmp: Path, sessions: int, calls: int) -> tuple[list[float], list[float], list[int]]:
    """Gaps and answer times over `sessions` × `calls` round trips, and atlas's own recorded durationMs."""
    ws = tmp / "toolbench"
    ws.mkdir()
    (ws / "workspace.yml").write_text(json.dumps(WORKSPACE))  # JSON is YAML
    env = {"OPENAI_BASE_URL": fake.openai_url, "OPENAI_API_KEY": KEY, "ATLAS_LOG_LEVEL": "warning"}
    daemon = DaemonProcess(tmp / "home", [ws], env)
    try:
        daemon.start(timeout=60)
    except BaseException:
        say(f"atlasd did not start; its log:\n{daemon.log()}")
        daemon.stop()
        raise
    durations: list[int] = []
    try:
        with httpx.Client(base_url=daemon.url, timeout=120) as client:

            def one_session() -> dict[str, Any]:
                r = client.post("/api/workspaces/toolbench/signals/go", json={"payload": {}})
                if r.status_code != 200:
                    raise RuntimeError(f"session failed: {r.status_code} {r.text}\n{daemon.log()}")
                view = client.get(f"/api/sessions/{r.json()['sessionId']}").json()
                return dict(view)

            script(fake, 1, calls)  # warm-up: starts the MCP server, warms the SDK and the loop
            one_session()
            fake.take()
            script(fake, sessions, calls)
            for i in range(sessions):
                view = one_session()
                durations += [int(c["durationMs"]) for c in view["agentBlocks"][0]["toolCalls"]]
                if (i + 1) % 10 == 0:
                    say(f"atlas: {i + 1}/{sessions} sessions")
    finally:
        daemon.stop()
    between, answer = gaps(fake.take())
    return between, answer, durations


# ---------------------------------------------------------------------------------------------------------------
# Baselines: the bare MCP call, and a bare loop without atlas (run as a child process: `--bare-loop URL`)


async def bare_mcp(calls: int) -> list[float]:
    """Round trips of `echo` through `mcp.Client` over stdio (the tool's own time as any MCP client sees it)."""
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters

    params = StdioServerParameters(command=TOOLS_SERVER[0], args=TOOLS_SERVER[1:])
    samples: list[float] = []
    async with Client(params) as client:
        for i in range(calls + 50):
            t0 = time.perf_counter()
            result = await client.call_tool("echo", ECHO_ARGS)
            dt = (time.perf_counter() - t0) * 1e3
            if result.is_error:
                raise RuntimeError(f"echo failed: {result}")
            if i >= 50:
                samples.append(dt)
    return samples


async def bare_loop(url: str, sessions: int, calls: int) -> list[float]:
    """What a minimal hand-written loop does between two model turns: stream, parse, call the tool, ask again.

    Returns each model turn's time as the client sees it (`create()` → stream exhausted), in ms.
    """
    from mcp import Client
    from mcp.client.stdio import StdioServerParameters
    from openai import AsyncOpenAI

    model = AsyncOpenAI(base_url=url, api_key=KEY, max_retries=0)
    params = StdioServerParameters(command=TOOLS_SERVER[0], args=TOOLS_SERVER[1:])
    turns: list[float] = []
    async with Client(params) as mcp:
        listed = await mcp.list_tools()
        tools: list[Any] = [{"type": "function", "function": {"name": t.name, "description": t.description or "",
                                                              "parameters": t.input_schema}}
                            for t in listed.tools if t.name == "echo"]
        for _ in range(sessions):
            messages: list[Any] = [{"role": "user", "content": "Call echo until told to stop."}]
            while True:
                t0 = time.perf_counter()
                stream = await model.chat.completions.create(model=MODEL, messages=messages, tools=tools,
                                                             stream=True)
                calls_seen: dict[int, dict[str, str]] = {}
                async for chunk in stream:
                    for choice in chunk.choices:
                        for delta in choice.delta.tool_calls or []:
                            entry = calls_seen.setdefault(delta.index, {"id": "", "name": "", "arguments": ""})
                            entry["id"] = delta.id or entry["id"]
                            if delta.function is not None:
                                entry["name"] = delta.function.name or entry["name"]
                                entry["arguments"] += delta.function.arguments or ""
                turns.append((time.perf_counter() - t0) * 1e3)
                if not calls_seen:
                    break
                messages.append({"role": "assistant", "content": None, "tool_calls": [
                    {"id": c["id"], "type": "function", "function": {"name": c["name"], "arguments": c["arguments"]}}
                    for c in calls_seen.values()]})
                for c in calls_seen.values():
                    result = await mcp.call_tool(c["name"], json.loads(c["arguments"]))
                    text = "".join(getattr(part, "text", "") for part in result.content)
                    messages.append({"role": "tool", "tool_call_id": c["id"], "content": text})
    return turns


def run_bare_loop(fake: TimedFake, sessions: int, calls: int) -> tuple[list[float], list[float]]:
    """The bare loop's gaps, and the SDK's share of each model turn: the turn as the client timed it minus the
    fake's answer time (building and sending the request, parsing the stream: what the SDK adds to a gap)."""
    fake.take()
    script(fake, sessions + 1, calls)
    argv = [sys.executable, str(Path(__file__).resolve()), "--bare-loop", fake.openai_url,
            "--sessions", str(sessions + 1), "--calls", str(calls)]
    done = subprocess.run(argv, check=True, timeout=600, stdout=subprocess.PIPE, text=True)
    turns: list[float] = json.loads(done.stdout)
    stamps = fake.take()
    if len(turns) != len(stamps):
        raise RuntimeError(f"bare loop: {len(turns)} turns timed, {len(stamps)} requests stamped")
    warm = calls + 1  # the first session is the warm-up
    answer = [(s.written - s.read) * 1e3 for s in stamps]
    sdk = [turn - own for turn, own in zip(turns[warm:], answer[warm:], strict=True)]
    between, _ = gaps(stamps[warm:])
    return between, sdk


# ---------------------------------------------------------------------------------------------------------------
# Report


def row(name: str, samples: list[float], minus: float = 0.0) -> str:
    return f"| {name} | {pct(samples, 50) - minus:.2f} | {pct(samples, 99) - minus:.2f} | {len(samples)} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--calls", type=int, default=10, help="tool calls per session")
    parser.add_argument("--bare-loop", metavar="URL", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.bare_loop:
        print(json.dumps(asyncio.run(bare_loop(args.bare_loop, args.sessions, args.calls))))
        return
    with tempfile.TemporaryDirectory(prefix="atlas-bench-tools-") as tmp, timed_fake() as fake:
        say(f"atlas: {args.sessions} sessions × {args.calls} tool calls")
        atlas_gap, atlas_answer, durations = run_atlas(fake, Path(tmp), args.sessions, args.calls)
        say("bare mcp.Client calls")
        tool = asyncio.run(bare_mcp(args.sessions * args.calls))
        say("bare loop (openai SDK + mcp.Client, no atlas)")
        loop_gap, sdk = run_bare_loop(fake, args.sessions, args.calls)
    tool_p50, sdk_p50 = pct(tool, 50), pct(sdk, 50)
    overhead_p50 = pct(atlas_gap, 50) - tool_p50
    print("## Tool round trip: orchestration overhead of one MCP tool call in an llm step (issue #14)")
    print()
    print(f"{args.sessions} sessions × {args.calls} tool calls of `echo` (stdio MCP server) by a streamed "
          "`provider: openai` agent on a real atlasd; the scripted model answers at once. Gap = model's tool-call "
          "answer written → next model request read (ms); overhead = gap − the tool's own p50.")
    print()
    print("| measure | p50 ms | p99 ms | n |")
    print("|---|---:|---:|---:|")
    print(row("atlas: gap (tool call inside)", atlas_gap))
    print(row("**atlas: orchestration overhead** (gap − tool's own p50)", atlas_gap, tool_p50))
    print(row("baseline: tool's own time (bare `mcp.Client` → `echo`, stdio)", tool))
    print(row("baseline: model's own time (the fake's answer, atlas run)", atlas_answer))
    print(row("baseline: bare loop gap (openai SDK + `mcp.Client`, no atlas)", loop_gap))
    print(row("baseline: bare loop overhead (gap − tool's own p50)", loop_gap, tool_p50))
    print(row("baseline: openai SDK's share of a turn (client-side turn − the fake's answer)", sdk))
    print()
    print(f"Goal: overhead p50 ≤ 5 ms: {overhead_p50:.2f} ms ({'met' if overhead_p50 <= 5 else 'NOT met'}). "
          f"atlas over the bare loop at p50: {pct(atlas_gap, 50) - pct(loop_gap, 50):+.2f} ms; "
          f"atlas's overhead without the SDK's share (p50 − p50): {overhead_p50 - sdk_p50:.2f} ms. "
          f"atlas's recorded `durationMs` of the calls: p50 {pct([float(d) for d in durations], 50):.0f} ms "
          "(whole milliseconds).")

if __name__ == "__main__":
    main()
