"""Read-model correlationId lookup latency: 1 000 stored sessions against N (default 1 000 000).

Spec §7.4 wants the lookup with 1 000 000 stored sessions within 2x of the lookup with 1 000, and p99 <= 5 ms.
The lookup is an index search, so its cost should not grow with the store; this script measures that claim
rather than asserting it (timings are never asserted in unit tests).

Usage: python bench/readmodel_lookup.py [--big 1000000] [--small 1000] [--lookups 2000]

Both stores are filled through ``ReadModel.upsert_many`` (the path the consumer uses) in large transactions,
with the same generator, so the store size is the only difference between the two measurements.
"""

from __future__ import annotations

import argparse
import functools
import random
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from atlas.sessions.readmodel import ReadModel
except ImportError:  # run from a checkout without installing
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from atlas.sessions.readmodel import ReadModel

BATCH = 50_000
WARMUP = 200
STATUSES = ("completed", "completed", "completed", "failed", "skipped", "cancelled", "active", "queued")


@dataclass
class Result:
    sessions: int
    fill_s: float
    p50_ms: float
    p99_ms: float


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


@functools.lru_cache(maxsize=4)
def _second(seconds: int) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(1_795_000_000 + seconds))


def _timestamp(ms: int) -> str:
    """The stored RFC 3339 shape; the strftime part is cached because sessions arrive many per second."""
    seconds, millis = divmod(ms, 1000)
    return f"{_second(seconds)}.{millis:03d}Z"


def _pair(rng: random.Random, index: int, correlation_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A realistic, small (view, summary): a 1-step job, sessions arriving ~every 10 ms."""
    sid = _uuid(rng)
    started = _timestamp(index * 10)
    status = STATUSES[index % len(STATUSES)]
    summary: dict[str, Any] = {
        "sessionId": sid,
        "workspaceId": f"ws-{index % 8}",
        "jobName": "echo",
        "task": "echo",
        "status": status,
        "startedAt": started,
        "stepCount": 1,
        "agentNames": ["echo"],
        "correlationId": correlation_id,
        "signalId": "go",
        "trigger": "http",
        "rootSessionId": sid,
        "depth": 0,
        "queuedAt": started,
    }
    view = {**summary, "agentBlocks": [{"agentName": "echo", "status": "completed"}], "lastSeq": 5}
    return view, summary


def fill(model: ReadModel, count: int, rng: random.Random) -> list[str]:
    """Store ``count`` sessions; return their correlationIds (one root session per correlationId)."""
    correlation_ids: list[str] = []
    batch: list[tuple[dict[str, Any], dict[str, Any]]] = []
    for index in range(count):
        cid = _uuid(rng)
        correlation_ids.append(cid)
        batch.append(_pair(rng, index, cid))
        if len(batch) >= BATCH:
            model.upsert_many(batch)
            batch.clear()
    if batch:
        model.upsert_many(batch)
    return correlation_ids


def measure(count: int, lookups: int, seed: int) -> Result:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        model = ReadModel(Path(tmp) / "atlas.db")
        try:
            started = time.perf_counter()
            correlation_ids = fill(model, count, rng)
            fill_s = time.perf_counter() - started
            for cid in rng.choices(correlation_ids, k=WARMUP):
                model.list_sessions(correlation_id=cid)
            samples: list[int] = []
            for cid in rng.choices(correlation_ids, k=lookups):
                t0 = time.perf_counter_ns()
                page, _ = model.list_sessions(correlation_id=cid)
                samples.append(time.perf_counter_ns() - t0)
                if len(page) != 1:
                    raise SystemExit(f"lookup of {cid} returned {len(page)} sessions, expected 1")
        finally:
            model.close()
    samples.sort()
    return Result(
        sessions=count,
        fill_s=fill_s,
        p50_ms=samples[len(samples) // 2] / 1e6,
        p99_ms=samples[min(len(samples) - 1, round(len(samples) * 0.99))] / 1e6,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--big", type=int, default=1_000_000, help="sessions in the big store")
    parser.add_argument("--small", type=int, default=1_000, help="sessions in the baseline store")
    parser.add_argument("--lookups", type=int, default=2_000, help="timed lookups per store")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    small = measure(args.small, args.lookups, args.seed)
    print(
        f"small: {small.sessions:>10,} sessions  fill {small.fill_s:6.1f} s  "
        f"p50 {small.p50_ms:.3f} ms  p99 {small.p99_ms:.3f} ms",
        flush=True,
    )
    big = measure(args.big, args.lookups, args.seed + 1)
    print(
        f"big:   {big.sessions:>10,} sessions  fill {big.fill_s:6.1f} s  "
        f"p50 {big.p50_ms:.3f} ms  p99 {big.p99_ms:.3f} ms",
        flush=True,
    )
    ratio_p50 = big.p50_ms / small.p50_ms
    ratio_p99 = big.p99_ms / small.p99_ms
    print(f"ratio big/small: p50 {ratio_p50:.2f}x  p99 {ratio_p99:.2f}x  (goal: <= 2x, big p99 <= 5 ms)")
    print()
    print("| bench | small p50 / p99 | big p50 / p99 | big/small p50 / p99 | goal |")
    print("|---|---|---|---|---|")
    print(
        f"| correlationId lookup, {small.sessions:,} vs {big.sessions:,} sessions "
        f"| {small.p50_ms:.3f} / {small.p99_ms:.3f} ms "
        f"| {big.p50_ms:.3f} / {big.p99_ms:.3f} ms "
        f"| {ratio_p50:.2f}x / {ratio_p99:.2f}x "
        f"| <= 2x, p99 <= 5 ms |"
    )


if __name__ == "__main__":
    main()
