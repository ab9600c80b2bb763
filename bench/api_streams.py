"""Issue 3 benchmarks: SSE time to first byte and full replay of a 10 000-event session; idempotent replay
throughput against a plain nowait trigger. Ratios against baselines measured in the same run.

Usage: python bench/api_streams.py [--events 10000] [--duration 8]
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for  # noqa: E402

WORKSPACE = """version: "1.0"
workspace: {{ id: bench, name: Bench }}
signals:
  long: {{ provider: http, concurrency: concurrent, config: {{ path: /long }} }}
jobs:
  long:
    triggers: [ {{ signal: long }} ]
    config: {{ max_steps: {steps}, timeout: 30m }}
    fsm:
      initial: idle
      states:
        idle: {{ on: {{ long: {{ target: spin }} }} }}
        spin:
          entry: [ {{ type: agent, agentId: atlas/echo }}, {{ type: emit, event: AGAIN }} ]
          on: {{ AGAIN: {{ target: spin }} }}
"""


def ttfb_and_total(url: str, headers: dict[str, str] | None = None) -> tuple[float, float, int]:
    """(ms to the first body byte, ms to the end of the stream, frames) of one GET."""
    t0 = time.perf_counter()
    first = None
    frames = 0
    with httpx.stream("GET", url, headers=headers, timeout=120) as r:
        for chunk in r.iter_bytes():
            if first is None:
                first = time.perf_counter()
            frames += chunk.count(b"\n\n")
    end = time.perf_counter()
    return ((first or end) - t0) * 1000, (end - t0) * 1000, frames


def wrk(url: str, lua: str, duration: int) -> float:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(lua)
    out = subprocess.run(["wrk", "-t2", "-c32", f"-d{duration}s", "-s", f.name, url], capture_output=True,
                         text=True, timeout=duration + 60).stdout
    match = re.search(r"Requests/sec:\s+([\d.]+)", out)
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if non2xx:
        print(f"<!-- {non2xx.group(0)} for {url} -->")
    return float(match.group(1)) if match else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--events", type=int, default=10_000)
    parser.add_argument("--duration", type=int, default=8)
    args = parser.parse_args()
    steps = max(1, (args.events - 3) // 2)
    tmp = Path(tempfile.mkdtemp(prefix="atlas-bench-api-"))
    ws = tmp / "ws"
    ws.mkdir()
    (ws / "workspace.yml").write_text(WORKSPACE.format(steps=steps))
    d = DaemonProcess(tmp / "home", [ws, FIXTURES / "core"], {"ATLAS_LOG_LEVEL": "warning"}).start()
    try:
        r = httpx.post(f"{d.url}/api/workspaces/bench/signals/long?nowait=true", json={}, timeout=10)
        sid = r.json()["sessionId"]
        t0 = time.perf_counter()
        wait_for(lambda: httpx.get(f"{d.url}/api/sessions/{sid}", timeout=30).json()["status"] == "failed",
                 900, interval=0.5, what="the long session to end")
        run_s = time.perf_counter() - t0
        last_seq = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=30).json()["lastSeq"]
        health = [ttfb_and_total(f"{d.url}/health")[0] for _ in range(20)]
        replays = [ttfb_and_total(f"{d.url}/api/sessions/{sid}/stream") for _ in range(5)]
        tail = [ttfb_and_total(f"{d.url}/api/sessions/{sid}/stream", {"Last-Event-ID": str(last_seq - 5)})
                for _ in range(10)]
        print("## SSE session stream (issue 3)")
        print()
        print(f"A finished session with {last_seq} durable events (ran {steps} steps in {run_s:.1f} s).")
        print()
        print("| measurement | median | target |")
        print("|---|---:|---:|")
        print(f"| baseline: `GET /health` first byte | {statistics.median(health):.1f} ms | — |")
        print(f"| stream first byte (full replay) | {statistics.median(x[0] for x in replays):.1f} ms | ≤ 50 ms |")
        print(f"| stream first byte (resume near the end) | {statistics.median(x[0] for x in tail):.1f} ms | "
              "≤ 50 ms |")
        print(f"| full replay of {last_seq} events + `end` | {statistics.median(x[1] for x in replays):.0f} ms | "
              "≤ 1 000 ms |")
        print()
        lua_plain = ('wrk.method = "POST"\nwrk.body = \'{"payload":{"n":1}}\'\n'
                     'wrk.headers["Content-Type"] = "application/json"\n')
        lua_idem = lua_plain + 'wrk.headers["Idempotency-Key"] = "bench-replay-key"\n'
        url = f"{d.url}/api/workspaces/core/signals/echo?nowait=true"
        httpx.post(url, json={"payload": {"n": 1}}, headers={"Idempotency-Key": "bench-replay-key"}, timeout=10)
        plain, replay = [], []
        for _ in range(2):
            plain.append(wrk(url, lua_plain, args.duration))
            wait_for(lambda: not httpx.get(f"{d.url}/api/sessions", params={"status": "queued,active", "limit": 1},
                                           timeout=30).json()["sessions"], 300, interval=0.5, what="drain")
            replay.append(wrk(url, lua_idem, args.duration))
        print("## Idempotent replay throughput (issue 3)")
        print()
        print("| endpoint (wrk -t2 -c32, best of 2) | req/s |")
        print("|---|---:|")
        print(f"| plain nowait trigger (baseline) | {max(plain):.0f} |")
        print(f"| replay of one Idempotency-Key | {max(replay):.0f} |")
        print(f"| ratio replay / plain (target ≥ 1×) | {max(replay) / max(max(plain), 1):.2f}× |")
    finally:
        d.stop()


if __name__ == "__main__":
    main()
