"""What tracing costs (issue #18): nowait throughput and trigger → `session:start`, tracing off and on.

Usage: python bench/tracing_overhead.py [--duration 10] [--rounds 3] [--triggers 300] [--pin]

Two real atlasd processes (``tests/daemon_proc.DaemonProcess``, workspace ``tests/fixtures/core``), started and
measured alternately in the same run so that both see the same machine:

- **off**: no tracing variables (today's default; metrics are always on);
- **on**: ``OTEL_EXPORTER_OTLP_ENDPOINT`` pointing at a local OTLP/HTTP receiver in this process (a thread that
  answers 200 and keeps the bodies), with a batch queue big enough that no span is dropped
  (``OTEL_BSP_MAX_QUEUE_SIZE``) and a short schedule delay, so every span of every trigger is really exported.

Each round drives ``wrk -t2 -c32`` at ``POST /api/workspaces/core/signals/echo?nowait=true`` for ``--duration``
seconds, waits for the backlog to drain and reads the daemon's CPU. Then trigger → `session:start`, as
``bench/start_latency.py`` measures it: an in-process daemon per mode (tracing off, or exporting to the same
receiver), ``--triggers`` sequential triggers each, alternately. After the last round the receiver's bodies are
decoded (``opentelemetry-proto``) to count the spans exported. Markdown goes to stdout, progress to stderr; nothing
is asserted: the numbers are ratios measured in the same run.

With tracing on, spans are encoded and sent by the daemon's exporter process (``atlas.observability.span_export``),
whose CPU is reported apart. On a two-core machine that process competes with the daemon for the second core, which
the load generator and nats-server already share; ``--pin`` gives the daemon's threads core 0 and everything else
(nats-server, the exporter process, wrk, the receiver) core 1, as a machine with cores to spare would, so that the
daemon's own loop is what the throughput measures, in both modes alike.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.start_latency import in_process  # noqa: E402
from bench.trigger_throughput import (  # noqa: E402
    ATLAS_PATH,
    LUA,
    Cpu,
    cpu_of,
    cpu_seconds,
    pct,
    run_wrk,
    start_daemon,
    status_counts,
    wait_drained,
)
from tests.daemon_proc import FIXTURES, DaemonProcess, child_pids, exporter_pid  # noqa: E402


def say(msg: str) -> None:
    print(f"[tracing_overhead] {msg}", file=sys.stderr, flush=True)


class Receiver:
    """A local OTLP/HTTP trace receiver: 200 to every POST, bodies kept for counting afterwards."""

    def __init__(self) -> None:
        bodies: list[bytes] = []
        self.bodies = bodies

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(self.rfile.read(int(self.headers.get("content-length") or 0)))
                self.send_response(200)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def spans(self) -> int:
        count = 0
        for body in self.bodies:
            request = ExportTraceServiceRequest()
            request.ParseFromString(body)
            count += sum(len(scope.spans) for rs in request.resource_spans for scope in rs.scope_spans)
        return count

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Mode:
    name: str
    env: dict[str, str]
    rps: list[float] = field(default_factory=list)
    completed: int = 0
    cpu: Cpu = field(default_factory=lambda: Cpu(0.0, 0.0))
    start_ms: list[float] = field(default_factory=list)
    daemon: DaemonProcess | None = None
    sessions: int = 0  # every session the daemon had, warm-up included
    exporter_cpu: float = 0.0  # seconds of the exporter process during the measured rounds


def pin(daemon_pid: int) -> None:
    """Every thread of the daemon on core 0; its other processes (nats-server, the exporter) and this one (wrk,
    the receiver) on core 1."""
    for task in Path(f"/proc/{daemon_pid}/task").iterdir():
        os.sched_setaffinity(int(task.name), {0})
    for child in child_pids(daemon_pid):
        for task in Path(f"/proc/{child}/task").iterdir():
            os.sched_setaffinity(int(task.name), {1})
    os.sched_setaffinity(0, {1})


def traced_start_ms(triggers: int, env: dict[str, str]) -> list[float]:
    """Trigger → `session:start` (ms) of `triggers` sequential in-process triggers, tracing as `env` says."""
    from atlas.observability.tracing import Tracing

    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)  # the OTLP exporter and the batch processor read the standard variables themselves
    try:
        tracing = Tracing.from_env()
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return asyncio.run(in_process(triggers, tracing=tracing))["start"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--triggers", type=int, default=300)
    parser.add_argument("--pin", action="store_true", help="daemon on core 0, everything else on core 1")
    args = parser.parse_args(argv)
    if args.pin and len(os.sched_getaffinity(0)) < 2:
        parser.error("--pin needs two cores")
    receiver = Receiver()
    modes = [
        Mode("off", {}),
        Mode("on", {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver.url, "OTEL_BSP_MAX_QUEUE_SIZE": "200000",
                    "OTEL_BSP_SCHEDULE_DELAY": "200", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "2048"}),
    ]
    with tempfile.TemporaryDirectory(prefix="atlas-bench-tracing-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(LUA)
        try:
            for mode in modes:
                env = {"ATLAS_MAX_CONCURRENT_SESSIONS": "64", **mode.env}
                say(f"starting atlasd, tracing {mode.name}")
                mode.daemon = start_daemon(DaemonProcess(Path(tmp) / f"home-{mode.name}", [FIXTURES / "core"],
                                                         env=env))
                run_wrk(f"warm-up {mode.name}", mode.daemon.url + ATLAS_PATH, script, 3)
                wait_drained(httpx.Client(base_url=mode.daemon.url), 120)
                if args.pin:
                    assert mode.daemon.proc is not None
                    pin(mode.daemon.proc.pid)
            for rnd in range(args.rounds):
                for mode in modes if rnd % 2 == 0 else reversed(modes):
                    daemon = mode.daemon
                    assert daemon is not None and daemon.proc is not None
                    client = httpx.Client(base_url=daemon.url, timeout=30)
                    pids = (daemon.proc.pid, daemon.nats_pid() or 0)
                    db = daemon.home / "atlas.db"
                    exporter = exporter_pid(daemon.proc.pid)
                    before, cpu0, exp0 = status_counts(db), cpu_of(pids), cpu_seconds(exporter or 0)
                    mode.rps.append(run_wrk(f"{mode.name} #{rnd + 1}", daemon.url + ATLAS_PATH, script,
                                            args.duration).rps)
                    wait_drained(client, 120)
                    used = cpu_of(pids) - cpu0
                    mode.cpu = Cpu(mode.cpu.daemon + used.daemon, mode.cpu.nats + used.nats)
                    mode.exporter_cpu += cpu_seconds(exporter or 0) - exp0
                    mode.completed += (status_counts(db) - before).get("completed", 0)
        finally:
            for mode in modes:
                if mode.daemon is not None:
                    mode.sessions = sum(status_counts(mode.daemon.home / "atlas.db").values())
                    mode.daemon.stop()
    for rnd in range(args.rounds):
        for mode in modes if rnd % 2 == 0 else reversed(modes):
            say(f"trigger → start, tracing {mode.name} #{rnd + 1}")
            mode.start_ms += traced_start_ms(args.triggers, mode.env)
    time.sleep(1.0)  # the last export batch is sent at shutdown; let the receiver take it (not a synchronisation)
    spans = receiver.spans()
    receiver.close()
    off, on = modes
    print("## Tracing overhead (issue #18)\n")
    print(f"{args.rounds} alternating rounds per mode: `wrk -t2 -c32 -d{args.duration}s` nowait, drained; then "
          f"{args.rounds} × {args.triggers} sequential in-process triggers per mode (trigger → `session:start`, as "
          f"bench/start_latency.py).{' Pinned: the daemon on core 0, the rest on core 1.' if args.pin else ''}\n")
    print("| tracing | nowait accepted/s (median) | daemon CPU per completed session | exporter process CPU per "
          "session | trigger → start p50 | p99 |")
    print("|---|---|---|---|---|---|")
    for mode in modes:
        per = mode.cpu.daemon / mode.completed * 1000 if mode.completed else float("nan")
        exp = mode.exporter_cpu / mode.completed * 1000 if mode.completed else float("nan")
        print(f"| {mode.name} | {statistics.median(mode.rps):,.0f} | {per:.3f} ms | {exp:.3f} ms "
              f"| {pct(mode.start_ms, 50):.2f} ms | {pct(mode.start_ms, 99):.2f} ms |")
    ratio = statistics.median(on.rps) / statistics.median(off.rps)
    cpu_ratio = (on.cpu.daemon / on.completed) / (off.cpu.daemon / off.completed)
    print(f"\nOn vs off: throughput {ratio:.2f}×, daemon CPU per session {cpu_ratio:.2f}×, trigger → start p50 "
          f"{pct(on.start_ms, 50) / pct(off.start_ms, 50):.2f}×. Spans received by the local receiver: {spans:,} "
          f"for {on.sessions:,} sessions traced over HTTP (warm-up included) and "
          f"{args.rounds * (args.triggers + 50):,} in process.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
