"""Soak test (`make soak`): mixed load at a fixed rate on one daemon; RSS, open fds and p99 every 10 s.

It fires nowait triggers, list queries and short session streams at fixed rates (open loop: a slow daemon does not
slow the load down), samples the daemon process from /proc, and reports whether RSS is flat after warm-up and p99
does not drift. Usage: python bench/soak.py [--minutes 10] [--rate 40]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemon_proc import FIXTURES, DaemonProcess  # noqa: E402


def sample(pid: int) -> tuple[int, int]:
    """(RSS in KiB, open file descriptors) of the daemon process."""
    rss = 0
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            rss = int(line.split()[1])
    fds = len(list(Path(f"/proc/{pid}/fd").iterdir()))
    return rss, fds


def p99(values: list[float]) -> float:
    if not values:
        return 0.0
    return statistics.quantiles(values, n=100)[98] if len(values) >= 100 else max(values)


async def run(minutes: float, rate: float) -> int:
    home = Path(tempfile.mkdtemp(prefix="atlas-soak-"))
    daemon = DaemonProcess(home, [FIXTURES / "core"], {"ATLAS_LOG_LEVEL": "warning"}).start()
    assert daemon.proc is not None
    pid = daemon.proc.pid
    latencies: list[float] = []
    errors = 0
    accepted: list[str] = []
    stop = time.monotonic() + minutes * 60
    limits = httpx.Limits(max_connections=64)
    async with httpx.AsyncClient(base_url=daemon.url, limits=limits, timeout=30) as client:

        async def trigger(i: int) -> None:
            nonlocal errors
            t0 = time.perf_counter()
            r = await client.post("/api/workspaces/core/signals/echo?nowait=true", json={"payload": {"n": i}})
            latencies.append((time.perf_counter() - t0) * 1000)
            if r.status_code != 202:
                errors += 1
            else:
                accepted.append(r.json()["sessionId"])

        async def query() -> None:
            nonlocal errors
            t0 = time.perf_counter()
            r = await client.get("/api/sessions", params={"workspaceId": "core", "limit": 20})
            latencies.append((time.perf_counter() - t0) * 1000)
            errors += r.status_code != 200

        async def stream(sid: str) -> None:
            nonlocal errors
            async with client.stream("GET", f"/api/sessions/{sid}/stream") as r:
                if r.status_code != 200:
                    errors += 1
                    return
                async for _ in r.aiter_lines():
                    pass

        tasks: set[asyncio.Task[None]] = set()

        def spawn(coro: object) -> None:
            task = asyncio.ensure_future(coro)  # type: ignore[call-overload]
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        print("| t (s) | RSS (MiB) | fds | requests | p99 (ms) | errors |")
        print("|---:|---:|---:|---:|---:|---:|")
        rows: list[tuple[float, float, int, float]] = []
        start = time.monotonic()
        next_report = start + 10
        i = 0
        interval = 1.0 / rate
        next_fire = start
        while time.monotonic() < stop:
            now = time.monotonic()
            if now >= next_fire:
                i += 1
                spawn(trigger(i))
                if i % 3 == 0:
                    spawn(query())
                if i % 20 == 0 and accepted:
                    spawn(stream(accepted[-1]))
                next_fire += interval
            if now >= next_report:
                rss, fds = sample(pid)
                window, latencies[:] = list(latencies), []
                rows.append((now - start, rss / 1024, fds, p99(window)))
                print(f"| {now - start:.0f} | {rss / 1024:.1f} | {fds} | {len(window)} | {p99(window):.1f} | "
                      f"{errors} |", flush=True)
                next_report += 10
            await asyncio.sleep(max(0.0, min(next_fire, next_report) - time.monotonic()))
        await asyncio.gather(*tasks, return_exceptions=True)
    daemon.stop()
    warm = [r for r in rows if r[0] >= min(60.0, rows[-1][0] / 3)] if rows else []
    if len(warm) >= 4:
        third = max(1, len(warm) // 3)
        first_rss = statistics.mean(r[1] for r in warm[:third])
        last_rss = statistics.mean(r[1] for r in warm[-third:])
        first_p99 = statistics.median(r[3] for r in warm[:third])
        last_p99 = statistics.median(r[3] for r in warm[-third:])
        print(f"\nRSS after warm-up: first third {first_rss:.1f} MiB, last third {last_rss:.1f} MiB "
              f"(ratio {last_rss / first_rss:.2f}); p99 first third {first_p99:.1f} ms, last third "
              f"{last_p99:.1f} ms (ratio {last_p99 / max(first_p99, 0.01):.2f}); {len(accepted)} sessions accepted, "
              f"{errors} errors")
    return 0 if errors == 0 else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=40.0, help="nowait triggers per second")
    args = parser.parse_args()
    raise SystemExit(asyncio.run(run(args.minutes, args.rate)))


if __name__ == "__main__":
    main()
