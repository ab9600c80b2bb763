"""End-to-end sessions per second for a no-op job on one daemon, sustained (issue #7: ≥ 500 sessions/s on 2 cores).

Usage: python bench/end_to_end.py [--rates 400,500,600,700] [--seconds 15]

A real atlasd (``tests/daemon_proc.DaemonProcess``, workspace ``tests/fixtures/core``) gets nowait triggers of the
no-op ``echo`` job from ``hey`` at a fixed offered rate (``-c 10 -q rate/10``) for ``--seconds``, one rate after the
other. For each rate the read model is read at the start and at the end of the window: sessions completed per second
*during* the window, and how many were still queued or active at its end (the backlog). A rate is sustained when
completions keep up with it and the backlog stays under one second's worth; the backlog is drained before the next
rate. Throughput bursts (wrk, as fast as possible) are measured by bench/trigger_throughput.py; this is the steady
state a user would run at.

Markdown goes to stdout, progress to stderr; no timing is asserted.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.trigger_throughput import status_counts, wait_drained  # noqa: E402
from tests.daemon_proc import FIXTURES, DaemonProcess  # noqa: E402

BODY = '{"payload":{"n":1}}'
PATH = "/api/workspaces/core/signals/echo?nowait=true"


def say(msg: str) -> None:
    print(f"[end_to_end] {msg}", file=sys.stderr, flush=True)


def run_hey(url: str, rate: int, seconds: int) -> tuple[float, int]:
    """Offered load with hey; returns (achieved requests/s, non-202 answers)."""
    workers = 10
    cmd = ["hey", "-z", f"{seconds}s", "-c", str(workers), "-q", str(max(1, rate // workers)), "-m", "POST",
           "-T", "application/json", "-d", BODY, url]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60, check=False).stdout
    rps = float(m.group(1)) if (m := re.search(r"Requests/sec:\s+([\d.]+)", out)) else 0.0
    codes = {int(c): int(n) for c, n in re.findall(r"\[(\d{3})\]\s+(\d+) responses", out)}
    return rps, sum(n for c, n in codes.items() if c != 202)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rates", default="400,500,600,700")
    parser.add_argument("--seconds", type=int, default=15)
    args = parser.parse_args(argv)
    if shutil.which("hey") is None:
        print("hey is not installed (apt-get install hey): end-to-end part skipped.\n")
        return 1
    rates = [int(r) for r in args.rates.split(",")]
    rows: list[tuple[int, float, float, int, int, int]] = []
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        daemon = DaemonProcess(Path(tmp) / "home", [FIXTURES / "core"],
                               env={"ATLAS_MAX_CONCURRENT_SESSIONS": "64"}).start(timeout=60)
        db = daemon.home / "atlas.db"
        try:
            client = httpx.Client(base_url=daemon.url)
            say("warm-up")
            run_hey(daemon.url + PATH, 200, 3)
            wait_drained(client, 120)
            for rate in rates:
                before = status_counts(db)
                t0 = time.monotonic()
                achieved, bad = run_hey(daemon.url + PATH, rate, args.seconds)
                elapsed = time.monotonic() - t0
                after = status_counts(db)
                done = after.get("completed", 0) - before.get("completed", 0)
                backlog = after.get("queued", 0) + after.get("active", 0)
                rows.append((rate, achieved, done / elapsed, backlog, bad, sum(after.values()) - sum(before.values())))
                say(f"offered {rate}/s: accepted {achieved:,.0f}/s, completed {done / elapsed:,.0f}/s, "
                    f"backlog {backlog}, non-202 {bad}")
                wait_drained(client, 300)
            final = status_counts(db)
        finally:
            daemon.stop()
    print("## End-to-end sessions per second (sustained)\n")
    print(f"One atlasd, no-op `echo` job, `hey -c 10 -q rate/10 -z {args.seconds}s` nowait triggers at each offered "
          "rate; completions counted in the read model during the window; backlog = sessions still queued or active "
          "when the window closed (drained before the next rate).\n")
    print("| offered rate | accepted/s | completed/s during the window | backlog at the end | non-202 | sustained |")
    print("|---|---|---|---|---|---|")
    best = 0
    for rate, achieved, completed, backlog, bad, _ in rows:
        sustained = bad == 0 and backlog < max(achieved, 1) and completed >= 0.9 * achieved
        if sustained:
            best = max(best, rate)
        verdict = "yes" if sustained else "no"
        print(f"| {rate}/s | {achieved:,.0f} | {completed:,.0f} | {backlog:,} | {bad} | {verdict} |")
    others = {k: v for k, v in final.items() if k != "completed"}
    print(f"\nHighest sustained offered rate: **{best}/s** (issue #7 goal: ≥ 500 sessions/s). All sessions: "
          f"{final.get('completed', 0):,} completed, other statuses: {others or 'none'}.\n")
    return 0 if not others else 1


if __name__ == "__main__":
    sys.exit(main())
