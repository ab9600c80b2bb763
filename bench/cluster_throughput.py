"""Nowait trigger throughput with 1, 2 and 3 daemons on one 3-node JetStream cluster (issue 7), as ratios to the
single daemon measured in the same run.

Usage: python bench/cluster_throughput.py [--duration 10] [--rounds 2] [--connections 32] [--drain-timeout 180]

1. Starts a 3-node nats-server cluster on 127.0.0.1 (``tests/cluster/harness.NatsCluster``; streams and buckets
   with 3 replicas) and real atlasd processes on it (``ClusterDaemon``, workspace ``tests/fixtures/cluster``,
   ``ATLAS_MAX_CONCURRENT_SESSIONS=64``, default timeouts).
2. Each round measures n = 1, 2, 3 daemons: only n daemons run (the others are started as n grows and stopped at
   the end of the round; a daemon that starts first catches up with the sessions of earlier runs, which is not
   measured), and ``--connections`` wrk connections are split over them — one
   ``wrk -t1 -c<connections/n> --latency`` per daemon, all at once, against
   ``POST /api/workspaces/cluster/signals/echo?nowait=true``. Requests per second are summed over the n wrk
   processes. After each run the backlog is awaited (every accepted session completed, as seen by daemon 1's
   read model, which materialises all of them) and sessions completed per second are reported, first trigger to
   last completion. A last run per round keeps all 3 daemons up but sends every trigger to daemon 1: what two
   extra daemons cost when they accept nothing (they still run sessions and materialise every event).
3. A baseline in the same run: one ``js.publish`` and a 202 in the daemon's own process (``ATLAS_BENCH_BASELINE=1``,
   ``POST /__bench/publish``, an R1 memory stream), so the 1-daemon number can be compared with the single-daemon
   benchmark's ratio. It is measured on 1 daemon and on 3 daemons (the connections split the same way), and its
   daemon CPU per 202 gives the machine's own price of splitting an event-loop workload over three processes: the
   floor under issue #15's ratio on this machine, whatever the daemon does per trigger.
4. CPU seconds of the daemons and of the three nats-servers during each wrk run (``/proc/<pid>/stat``) show where
   the machine's cores went: on a 2-core machine, 3 nats-servers, n daemons and wrk share the same two cores,
   so adding daemons can only help as far as one daemon leaves CPU idle.

5. With `--equal-load R` (issue #15), each round also measures daemon CPU per trigger at the *same load per
   daemon*: one daemon offered R triggers/s, then three daemons offered R triggers/s each (``hey -q``, rate
   limited, 4 connections per daemon). On a machine with fewer cores than the cluster needs, the saturating runs
   above give each of three daemons a third of the rate a lone daemon gets, so each amortises its per-wake-up costs
   (event-loop turns, socket writes, transactions) over fewer triggers; this pair compares like with like, so its
   ratio is the work per event that more daemons add.

6. With `--postgres` (issue #15), the daemons share a PostgreSQL read model (a private PostgreSQL 15 server,
   ``tests/pg.py``; ``ATLAS_DATABASE_URL``): each session's rows are written once, by the daemon that writes its
   events (nobody follows the log), completions are counted in the database, no daemon needs to catch up on start,
   and the CPU of the PostgreSQL processes is reported as well. The issue's measure is the median of the rounds.

7. The work per trigger, next to its CPU (issue #15: it must not grow with the daemons): the messages the daemons
   exchanged with the nats-servers (each node's `/connz`, client connections only) and, with `--postgres`, the
   database's write transactions (the growth of its next transaction id), per 202, counted until every session of
   the run completed. Without `--postgres` every daemon follows the log, so its messages grow with the daemons.

Markdown goes to stdout, progress to stderr. Nothing asserts a number: the ratios are the result.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psycopg

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.trigger_throughput import cpu_seconds  # noqa: E402
from tests.cluster.harness import ClusterDaemon, NatsCluster  # noqa: E402
from tests.daemon_proc import FIXTURES, child_pids  # noqa: E402
from tests.pg import PgServer, start_pg_server  # noqa: E402

BODY = '{"payload":{"n":1}}'
PATH = "/api/workspaces/cluster/signals/echo?nowait=true"
BASELINE_PATH = "/__bench/publish"
LUA = f"""wrk.method = "POST"
wrk.body = '{BODY}'
wrk.headers["Content-Type"] = "application/json"
response = function(status, headers, body)
  if status ~= 202 then io.write("NON2XX ", status, " ", string.sub(body, 1, 160), "\\n") end
end
"""
# Production-like timeouts (the tests' short ones would redeliver envelopes that merely wait for a slot).
ENV = {"ATLAS_MAX_CONCURRENT_SESSIONS": "64", "ATLAS_ACK_WAIT": "30s", "ATLAS_HEARTBEAT_TTL": "30s",
       "ATLAS_SHUTDOWN_GRACE": "10s", "ATLAS_LOG_LEVEL": "warning"}


def say(msg: str) -> None:
    print(f"[cluster_throughput] {msg}", file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------ wrk

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


@dataclass
class Wrk:
    rps: float = 0.0
    requests: int = 0
    non2xx: int = 0
    socket_errors: int = 0
    timeouts: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    errors: Counter[str] = field(default_factory=Counter)  # "status error-code" of every non-202 answer


def parse_wrk(out: str) -> Wrk:
    res = Wrk()
    if m := re.search(r"Requests/sec:\s+([\d.]+)", out):
        res.rps = float(m.group(1))
    if m := re.search(r"(\d+) requests in", out):
        res.requests = int(m.group(1))
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        res.non2xx = int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        res.socket_errors = sum(int(g) for g in m.groups())
        res.timeouts = int(m.group(4))
    for m in re.finditer(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.MULTILINE):
        res.latency_ms[m.group(1)] = float(m.group(2)) * _UNITS[m.group(3)]
    for m in re.finditer(r"^NON2XX (\d+) (.*)$", out, re.MULTILINE):
        code = re.search(r'"code":"([^"]+)"', m.group(2))
        res.errors[f"{m.group(1)} {code.group(1) if code else m.group(2)[:40]}"] += 1
    return res


def run_wrk_parallel(urls: list[str], script: Path, duration: int, connections: int) -> list[Wrk]:
    """One wrk per URL, all started together; connections split evenly (at least one each)."""
    per = max(1, connections // len(urls))
    procs = [subprocess.Popen(["wrk", "-t1", f"-c{per}", f"-d{duration}s", "--latency", "-s", str(script), url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for url in urls]
    out = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=duration + 60)
        if p.returncode != 0:
            raise RuntimeError(f"wrk failed ({p.returncode}): {stderr.strip() or stdout.strip()}")
        out.append(parse_wrk(stdout))
    return out


# ------------------------------------------------------------------------------------------------ CPU, store

def completed(db: Path | str) -> int:
    """Completed sessions in a read model: daemon 1's SQLite file, or the shared PostgreSQL database (a DSN)."""
    if isinstance(db, str):
        with psycopg.connect(db, autocommit=True) as pg:
            row = pg.execute("SELECT COUNT(*) FROM sessions WHERE status = 'completed'").fetchone()
            return int(row[0]) if row else 0
    con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=10)
    try:
        row = con.execute("SELECT COUNT(*) FROM sessions WHERE status = 'completed'").fetchone()
        return int(row[0])
    finally:
        con.close()


def wait_completed(db: Path | str, target: int, timeout: float) -> float:
    """Poll daemon 1's read model until `target` sessions are completed; returns when (monotonic)."""
    deadline = time.monotonic() + timeout
    while True:
        if completed(db) >= target:
            return time.monotonic()
        if time.monotonic() > deadline:
            raise TimeoutError(f"backlog not drained after {timeout:.0f} s ({completed(db)} of {target} completed)")
        time.sleep(0.05)


def bus_messages(cluster: NatsCluster) -> dict[tuple[int, int], int]:
    """Messages each client connection of the three nats-servers (the daemons, this bench) has sent and received so
    far, from their monitoring endpoint (`/connz`): the bus work per trigger, which must not grow with the number of
    daemons (issue #15)."""
    out: dict[tuple[int, int], int] = {}
    for node in cluster.nodes:
        data = httpx.get(f"http://127.0.0.1:{node.monitor_port}/connz?limit=4096", timeout=10).json()
        for conn in data.get("connections") or []:
            out[(node.port, int(conn["cid"]))] = int(conn.get("in_msgs", 0)) + int(conn.get("out_msgs", 0))
    return out


def pg_write_transactions(db: Path | str) -> int:
    """The next transaction id PostgreSQL will assign: its growth counts the write transactions committed or
    attempted (reads take none, so this bench's polling does not count), exactly and at once (the statistics views
    lag by up to seconds)."""
    if not isinstance(db, str):
        return 0
    with psycopg.connect(db, autocommit=True) as pg:
        row = pg.execute("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint").fetchone()
        return int(row[0]) if row else 0


def wait_caught_up(d: ClusterDaemon, db: Path | str, timeout: float) -> None:
    """Poll until daemon `d`'s read model has as many completed sessions as daemon 1's (nothing to wait for when
    they share PostgreSQL)."""
    if isinstance(db, str):
        return
    target = completed(db)
    mine = d.home / "atlas.db"
    deadline = time.monotonic() + timeout
    while not (mine.exists() and completed(mine) >= target):
        if time.monotonic() > deadline:
            raise TimeoutError(f"{d.name} did not catch up with {target} sessions in {timeout:.0f} s")
        time.sleep(0.1)


@dataclass
class Run:
    n: int  # daemons running
    targets: int  # daemons wrk sent triggers to
    wrks: list[Wrk]
    seconds: float
    drained_s: float
    sessions: int
    cpu_daemons: float
    cpu_nats: float
    cpu_pg: float = 0.0
    bus_messages: int = 0  # sent and received by the clients of the nats-servers, until every session completed
    pg_transactions: int = 0  # PostgreSQL write transactions, until every session completed

    @property
    def rps(self) -> float:
        return sum(w.rps for w in self.wrks)

    @property
    def session_rate(self) -> float:
        return self.sessions / self.drained_s if self.drained_s else 0.0

    def latency(self, key: str) -> float:
        return max((w.latency_ms.get(key, 0.0) for w in self.wrks), default=0.0)

    @property
    def non2xx(self) -> int:
        return sum(w.non2xx for w in self.wrks)

    @property
    def socket_errors(self) -> str:
        errors, timeouts = sum(w.socket_errors for w in self.wrks), sum(w.timeouts for w in self.wrks)
        return f"{errors} ({timeouts} timeouts)" if timeouts else str(errors)


# ------------------------------------------------------------------------------------------------ main

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    parser.add_argument("--rounds", type=int, default=2, help="how many times to measure 1, 2 and 3 daemons")
    parser.add_argument("--connections", type=int, default=32, help="wrk connections in total")
    parser.add_argument("--drain-timeout", type=float, default=180.0)
    parser.add_argument("--postgres", action="store_true", help="share a PostgreSQL read model (issue #15)")
    parser.add_argument("--equal-load", type=int, default=0, metavar="R",
                        help="also measure 1 and 3 daemons offered R triggers/s each (hey, rate limited)")
    args = parser.parse_args(argv)

    print("## Multi-daemon: nowait trigger throughput with 1, 2 and 3 daemons on a 3-node cluster\n")
    print(f"Run {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}; load average at start "
          f"{' '.join(Path('/proc/loadavg').read_text().split()[:3])}.\n")
    if shutil.which("wrk") is None:
        print("wrk is not installed: skipped (`make bench-cluster` installs it with apt-get).\n")
        return 1
    if args.equal_load and shutil.which("hey") is None:
        print("hey is not installed: skipped (`make bench-cluster` installs it with apt-get).\n")
        return 1
    with tempfile.TemporaryDirectory(prefix="atlas-bench-cluster-") as tmp:
        root = Path(tmp)
        script = root / "post.lua"
        script.write_text(LUA)
        say("starting the 3-node nats cluster")
        cluster = NatsCluster(root / "nats").start()
        pg = start_pg_server() if args.postgres else None
        env = {**ENV, "ATLAS_DATABASE_URL": pg.create_database("atlas")} if pg is not None else ENV
        daemons = [ClusterDaemon(root / f"d{i + 1}", [FIXTURES / "cluster"], cluster,
                                 {**env, "ATLAS_BENCH_BASELINE": "1"}) for i in range(3)]
        runs: list[Run] = []
        equal: list[EqualLoad] = []
        baselines: list[Baseline] = []
        try:
            say("starting daemon 1")
            daemons[0].start(timeout=60)
            db: Path | str = env["ATLAS_DATABASE_URL"] if pg is not None else daemons[0].home / "atlas.db"
            with httpx.Client() as client:
                for url in (daemons[0].url + PATH, daemons[0].url + BASELINE_PATH):
                    r = client.post(url, content=BODY, headers={"Content-Type": "application/json"})
                    if r.status_code != 202:
                        raise RuntimeError(f"{url} answered {r.status_code}: {r.text[:200]}")
            say("warm-up")
            before = completed(db)
            warm = run_wrk_parallel([daemons[0].url + PATH], script, 3, args.connections)
            wait_completed(db, before + sum(w.requests - w.non2xx for w in warm), args.drain_timeout)
            for rnd in range(args.rounds):
                baselines.append(measure_baseline(daemons[:1], db, script, args))
                say(f"round {rnd + 1}: baseline {baselines[-1].rps:,.0f} req/s")
                for n in (1, 2, 3):
                    for d in daemons[:n]:
                        if not d.running:
                            say(f"starting {d.name}")
                            d.start(timeout=60)
                            # A new daemon first materialises every session of the earlier runs: let it catch
                            # up before measuring, or its replay would be counted against n daemons.
                            wait_caught_up(d, db, args.drain_timeout)
                    runs.append(measure(daemons[:n], daemons[:n], cluster, db, script, args, pg))
                    say(f"round {rnd + 1}, {n} daemon(s): {runs[-1].rps:,.0f} req/s, "
                        f"{runs[-1].session_rate:,.0f} sessions/s")
                    if n == 3:
                        baselines.append(measure_baseline(daemons[:3], db, script, args))
                        say(f"round {rnd + 1}: baseline on 3 daemons {baselines[-1].rps:,.0f} req/s, "
                            f"{baselines[-1].cpu_per_202_ms:.3f} ms daemon CPU per 202")
                    if args.equal_load and n in (1, 3):
                        equal.append(measure_equal_load(daemons[:n], db, args))
                        say(f"round {rnd + 1}, {n} daemon(s) at {args.equal_load}/s each: "
                            f"{equal[-1].cpu_per_trigger_ms:.2f} ms daemon CPU per 202")
                # What the extra daemons cost without taking any triggers: they still run sessions and
                # materialise every event.
                runs.append(measure(daemons, daemons[:1], cluster, db, script, args, pg))
                say(f"round {rnd + 1}, 3 daemons, triggers to daemon 1 only: {runs[-1].rps:,.0f} req/s, "
                    f"{runs[-1].session_rate:,.0f} sessions/s")
                for d in daemons[1:]:
                    d.stop()
        except Exception as exc:
            say(f"failed: {type(exc).__name__}: {exc}")
            for d in daemons:
                say(f"{d.name} log:\n{d.log()}")
            print(f"**Failed:** `{type(exc).__name__}: {exc}`\n")
            return 1
        finally:
            for d in daemons:
                d.terminate()
            for d in daemons:
                d.stop()
            cluster.stop()
            if pg is not None:
                pg.close()
    report(runs, baselines, args)
    if equal:
        report_equal_load(equal, args)
    return 0


def pg_pids(pg: PgServer | None) -> list[int]:
    """The postmaster and its children (backends, writer, WAL writer…): PostgreSQL's whole CPU."""
    if pg is None:
        return []
    try:
        master = int((pg.datadir / "postmaster.pid").read_text().split()[0])
        return [master, *child_pids(master)]
    except (OSError, ValueError, IndexError):
        return []


def measure(ds: list[ClusterDaemon], targets: list[ClusterDaemon], cluster: NatsCluster, db: Path | str,
            script: Path, args: argparse.Namespace, pg: PgServer | None = None) -> Run:
    """wrk against `targets` while the daemons `ds` run; CPU over all of `ds` (and of PostgreSQL, if shared)."""
    pids = [d.proc.pid for d in ds if d.proc is not None]
    nats_pids = [n.proc.pid for n in cluster.nodes if n.proc is not None]
    before = completed(db)
    msgs_before, xacts_before = bus_messages(cluster), pg_write_transactions(db)
    pg_before = {p: cpu_seconds(p) for p in pg_pids(pg)}
    c0 = (sum(cpu_seconds(p) for p in pids), sum(cpu_seconds(p) for p in nats_pids))
    t0 = time.monotonic()
    wrks = run_wrk_parallel([d.url + PATH for d in targets], script, args.duration, args.connections)
    t1 = time.monotonic()
    c1 = (sum(cpu_seconds(p) for p in pids), sum(cpu_seconds(p) for p in nats_pids))
    # Backends born during the run count whole.
    pg_cpu = sum(cpu_seconds(p) - pg_before.get(p, 0.0) for p in pg_pids(pg))
    ok = sum(w.requests - w.non2xx for w in wrks)
    t_end = wait_completed(db, before + ok, args.drain_timeout)
    msgs = sum(n - msgs_before.get(conn, 0) for conn, n in bus_messages(cluster).items())
    return Run(len(ds), len(targets), wrks, t1 - t0, t_end - t0, ok, c1[0] - c0[0], c1[1] - c0[1], pg_cpu,
               msgs, pg_write_transactions(db) - xacts_before)


@dataclass
class Baseline:
    """The bare endpoint (one publish, a 202) under wrk on n daemons."""
    n: int
    wrks: list[Wrk]
    cpu_daemons: float

    @property
    def rps(self) -> float:
        return sum(w.rps for w in self.wrks)

    @property
    def cpu_per_202_ms(self) -> float:
        return self.cpu_daemons * 1e3 / max(1, sum(w.requests - w.non2xx for w in self.wrks))


def measure_baseline(ds: list[ClusterDaemon], db: Path | str, script: Path, args: argparse.Namespace) -> Baseline:
    """wrk against the bare endpoint of every daemon in `ds` (the connections split over them); their CPU. Once
    every daemon has caught up with the sessions of earlier runs, so that only the endpoint is measured."""
    for d in ds:
        wait_caught_up(d, db, args.drain_timeout)
    pids = [d.proc.pid for d in ds if d.proc is not None]
    c0 = sum(cpu_seconds(p) for p in pids)
    wrks = run_wrk_parallel([d.url + BASELINE_PATH for d in ds], script, args.duration, args.connections)
    return Baseline(len(ds), wrks, sum(cpu_seconds(p) for p in pids) - c0)


@dataclass
class EqualLoad:
    n: int
    accepted: int
    cpu_daemons: float

    @property
    def cpu_per_trigger_ms(self) -> float:
        return self.cpu_daemons * 1e3 / max(1, self.accepted)


def run_hey_rate(urls: list[str], rate: int, duration: int) -> int:
    """One rate-limited `hey` per URL (4 connections, `rate` requests/s in all per URL), all at once; returns the
    202 answers counted over them."""
    procs = [subprocess.Popen(["hey", "-z", f"{duration}s", "-c", "4", "-q", f"{rate / 4:.2f}", "-m", "POST",
                               "-T", "application/json", "-d", BODY, url],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for url in urls]
    accepted = 0
    for p in procs:
        stdout, stderr = p.communicate(timeout=duration + 60)
        if p.returncode != 0:
            raise RuntimeError(f"hey failed ({p.returncode}): {stderr.strip() or stdout.strip()}")
        if m := re.search(r"\[202\]\s+(\d+) responses", stdout):
            accepted += int(m.group(1))
    return accepted


def measure_equal_load(ds: list[ClusterDaemon], db: Path | str, args: argparse.Namespace) -> EqualLoad:
    """`args.equal_load` triggers/s offered to each daemon of `ds`; the daemons' CPU per accepted trigger."""
    pids = [d.proc.pid for d in ds if d.proc is not None]
    before = completed(db)
    c0 = sum(cpu_seconds(p) for p in pids)
    accepted = run_hey_rate([d.url + PATH for d in ds], args.equal_load, args.duration)
    c1 = sum(cpu_seconds(p) for p in pids)
    wait_completed(db, before + accepted, args.drain_timeout)
    return EqualLoad(len(ds), accepted, c1 - c0)


def report_equal_load(equal: list[EqualLoad], args: argparse.Namespace) -> None:
    one = statistics.median(e.cpu_per_trigger_ms for e in equal if e.n == 1)
    three = statistics.median(e.cpu_per_trigger_ms for e in equal if e.n == 3)
    print(f"**The same load per daemon** (`--equal-load {args.equal_load}`: `hey -c4 -q` offering "
          f"{args.equal_load} triggers/s to each daemon for {args.duration} s; daemon CPU per 202, all rounds): "
          f"1 daemon " + ", ".join(f"{e.cpu_per_trigger_ms:.2f}" for e in equal if e.n == 1)
          + " ms; 3 daemons " + ", ".join(f"{e.cpu_per_trigger_ms:.2f}" for e in equal if e.n == 3)
          + f" ms. Medians {one:.2f} ms and {three:.2f} ms: **{three / one:.2f}×**.\n")


def report(runs: list[Run], baselines: list[Baseline], args: argparse.Namespace) -> None:
    kinds = [(n, n) for n in (1, 2, 3)] + [(3, 1)]
    best = {k: max((r for r in runs if (r.n, r.targets) == k), key=lambda r: r.rps) for k in kinds}
    one = best[(1, 1)]
    cores = os.cpu_count() or 1
    print(f"{cores} cores; 3 nats-servers (R3 streams and buckets), n daemons and the wrk processes all share them. "
          f"{args.rounds} round(s); each measures n = 1, 2, 3 with `wrk -t1 -c{args.connections}/n -d{args.duration}s` "
          f"per daemon, all at once, POST `{BODY}` to `…/signals/echo?nowait=true`; best run per n shown (all runs: "
          + "; ".join(f"n={n}: " + ", ".join(f"{r.rps:,.0f}" for r in runs if (r.n, r.targets) == (n, n))
                      for n in (1, 2, 3))
          + " req/s). The last row keeps 3 daemons running but sends every trigger to daemon 1 (all "
          f"{args.connections} connections): the cost of the other two without any accepting.\n")
    shared = args.postgres
    pg_head = " | PostgreSQL CPU (cores) | PostgreSQL CPU per 202" if shared else ""
    print("| daemons | 202/s (sum) | vs 1 daemon | p50 | p99 | sessions completed/s | vs 1 daemon "
          f"| daemons CPU (cores) | nats CPU (cores) | daemon CPU per 202 | vs 1 daemon{pg_head} | non-2xx "
          "| socket errors |")
    print("|---|---|---|---|---|---|---|---|---|---|---|" + ("---|---|" if shared else "") + "---|---|")
    per_one = one.cpu_daemons / max(1, sum(w.requests for w in one.wrks))
    for k in kinds:
        r = best[k]
        requests = max(1, sum(w.requests for w in r.wrks))
        label = str(r.n) if r.n == r.targets else f"{r.n}, triggers to daemon 1 only"
        pg_cells = (f" | {r.cpu_pg / r.seconds:.2f} | {r.cpu_pg * 1e3 / requests:.2f} ms" if shared else "")
        print(f"| {label} | {r.rps:,.0f} | **{r.rps / one.rps:.2f}×** "
              f"| {r.latency('50'):.1f} ms | {r.latency('99'):.1f} ms "
              f"| {r.session_rate:,.0f} | {r.session_rate / one.session_rate:.2f}× "
              f"| {r.cpu_daemons / r.seconds:.2f} | {r.cpu_nats / r.seconds:.2f} "
              f"| {r.cpu_daemons * 1e3 / requests:.2f} ms | {r.cpu_daemons / requests / per_one:.2f}×{pg_cells} "
              f"| {r.non2xx} | {r.socket_errors} |")
    print()

    def cpu_per_202(r: Run) -> float:
        return r.cpu_daemons * 1e3 / max(1, sum(w.requests for w in r.wrks))

    medians = {k: statistics.median(cpu_per_202(r) for r in runs if (r.n, r.targets) == k) for k in kinds}
    print(f"**Median over the {args.rounds} round(s) of daemon CPU per 202** (issue #15's measure): "
          + "; ".join(f"{n} daemon(s){'' if n == t else ', triggers to daemon 1 only'}: {m:.2f} ms "
                      f"(**{m / medians[(1, 1)]:.2f}×**)" for (n, t), m in medians.items()) + ".\n")

    def per_202(k: tuple[int, int], count: Callable[[Run], int]) -> float:
        return statistics.median(count(r) / max(1, r.sessions) for r in runs if (r.n, r.targets) == k)

    def named(k: tuple[int, int]) -> str:
        return f"{k[0]} daemon(s){'' if k[0] == k[1] else ', triggers to daemon 1 only'}"

    work = "; ".join(f"{named(k)}: {per_202(k, lambda r: r.bus_messages):.1f}" for k in kinds)
    if shared:
        work += "; PostgreSQL write transactions per 202 — " + "; ".join(
            f"{named(k)}: {per_202(k, lambda r: r.pg_transactions):.2f}" for k in kinds)
    print("**The work per trigger** (medians over the rounds, counted until every session of the run completed): "
          f"messages the daemons exchanged with the nats-servers per 202 — {work}.\n")
    errors: Counter[str] = Counter()
    for r in runs:
        for w in r.wrks:
            errors.update(w.errors)
    if errors:
        print(f"Non-202 answers over all runs: {dict(errors)}.\n")
    if baselines:
        b = max(x.rps for x in baselines if x.n == 1)
        print(f"Baseline in the same run (daemon 1, `POST /__bench/publish`: one `js.publish` to an R1 memory stream "
              f"→ 202): {b:,.0f} req/s; the 1-daemon trigger rate is **{one.rps / b:.2f}×** of it.\n")
        split = {n: statistics.median(x.cpu_per_202_ms for x in baselines if x.n == n) for n in (1, 3)}
        atlas, floor = medians[(3, 3)] / medians[(1, 1)], split[3] / split[1]
        print(f"**The machine's price of three processes** (the same baseline on 1 daemon, then on 3 with the "
              f"{args.connections} connections split over them; daemon CPU per 202, all rounds): 1 daemon "
              + ", ".join(f"{x.cpu_per_202_ms:.3f}" for x in baselines if x.n == 1) + " ms; 3 daemons "
              + ", ".join(f"{x.cpu_per_202_ms:.3f}" for x in baselines if x.n == 3)
              + f" ms. Medians {split[1]:.3f} and {split[3]:.3f} ms: **{floor:.2f}×** for one publish and a 202, "
              f"against **{atlas:.2f}×** for a trigger (ratio of the two: {atlas / floor:.2f}).\n")
    print("\"sessions completed/s\" counts from the first trigger to the last completion of the run's sessions (as "
          "daemon 1's read model sees them); \"CPU (cores)\" is CPU seconds per wall second during the wrk run, summed "
          "over the daemons and over the three nats-servers; \"daemon CPU per 202\" is the daemons' CPU during the run "
          "divided by the requests wrk sent; a wrk \"timeout\" is a request still unanswered after 2 s.\n")


if __name__ == "__main__":
    sys.exit(main())
