"""Cascade hop latency: a parent's `signal` step starts → the child session's `session:start` (issue #7: p50 ≤ 10 ms).

Usage: python bench/cascade_hop.py [--cascades 500]

One in-process daemon with the workspaces ``tests/fixtures/core`` and ``tests/fixtures/other``. The ``fan`` job of
``core`` has one step, a ``signal`` action into ``other``/``child`` (an ``atlas/echo`` job) with ``wait: true``.
``--cascades`` sequential triggers of ``fan``, each after the previous tree completed; a store listener
(``d.store.add_listener``) stamps, as each event is applied to the local store:

- the parent's ``step:start`` of the signal step (the hop begins: the runner is about to accept the child),
- the child's ``session:queued`` (accepted: envelope and event durable) and ``session:start`` (the hop ends),
- the parent's ``session:complete`` (the child's output came back and the parent finished).

A same-run reference: trigger → ``session:start`` of a plain root session (``echo``), measured the same way, so
the hop can be read against what starting any session costs on this machine right now.

Markdown goes to stdout, progress to stderr; no timing is asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.start_latency import pct, run_async  # noqa: E402
from tests.daemon_proc import FIXTURES  # noqa: E402

WARMUP = 30


def say(msg: str) -> None:
    print(f"[cascade_hop] {msg}", file=sys.stderr, flush=True)


class Stamps:
    """perf_counter stamps of applied events, keyed by (sessionId, type) — and children by their parent."""

    def __init__(self) -> None:
        self.at: dict[tuple[str, str], float] = {}
        self.child_of: dict[str, str] = {}
        self._waiting: dict[tuple[str, str], asyncio.Future[float]] = {}

    def on_event(self, event: dict[str, Any]) -> None:
        kind, sid = str(event.get("type")), str(event.get("sessionId"))
        if kind == "step:start" and event.get("actionType") != "signal":
            return
        now = time.perf_counter()
        key = (sid, kind)
        self.at.setdefault(key, now)
        parent = event.get("parentSessionId")
        if kind == "session:queued" and isinstance(parent, str):
            self.child_of[parent] = sid
        fut = self._waiting.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(now)

    async def wait(self, sid: str, kind: str, timeout: float = 30) -> float:
        key = (sid, kind)
        if key in self.at:
            return self.at[key]
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self._waiting[key] = fut
        return await asyncio.wait_for(fut, timeout)


async def measure(cascades: int) -> tuple[dict[str, list[float]], dict[str, int]]:
    from atlas.config.settings import Settings
    from atlas.runtime.accept import TriggerRequest
    from atlas.runtime.daemon import Daemon

    out: dict[str, list[float]] = {"hop": [], "queued": [], "tree": [], "root_start": []}
    statuses: dict[str, int] = {}
    with tempfile.TemporaryDirectory(prefix="atlas-bench-") as tmp:
        settings = Settings.from_env().with_overrides(
            home=Path(tmp) / "home", workspaces=(FIXTURES / "core", FIXTURES / "other"))
        d = Daemon(settings)
        await d.start()
        stamps = Stamps()
        d.store.add_listener(stamps.on_event)
        try:
            for i in range(WARMUP + cascades):
                # The reference: a plain root session's trigger → session:start.
                t0 = time.perf_counter()
                root = await d.accept.accept(TriggerRequest("core", "echo", {"n": i}, "http"))
                t_root = await stamps.wait(root.session_id, "session:start")
                await stamps.wait(root.session_id, "session:complete")
                # The cascade.
                parent = await d.accept.accept(TriggerRequest("core", "fan", {"n": i}, "http"))
                t_step = await stamps.wait(parent.session_id, "step:start")
                t_done = await stamps.wait(parent.session_id, "session:complete")
                child = stamps.child_of.get(parent.session_id)
                view = d.store.view(parent.session_id) or {}
                statuses[view.get("status", "missing")] = statuses.get(view.get("status", "missing"), 0) + 1
                if child is None:
                    statuses["no child"] = statuses.get("no child", 0) + 1
                    continue
                t_queued = stamps.at[(child, "session:queued")]
                t_start = stamps.at[(child, "session:start")]
                if i >= WARMUP:
                    out["hop"].append((t_start - t_step) * 1e3)
                    out["queued"].append((t_queued - t_step) * 1e3)
                    out["tree"].append((t_done - t_step) * 1e3)
                    out["root_start"].append((t_root - t0) * 1e3)
                stamps.at.clear()
                stamps.child_of.clear()
        finally:
            d.store.remove_listener(stamps.on_event)
            await d.stop()
    return out, statuses


def row(name: str, samples: list[float], target: str) -> str:
    return (f"| {name} | {len(samples)} | {pct(samples, 50):.2f} | {pct(samples, 90):.2f} | {pct(samples, 99):.2f} "
            f"| {statistics.fmean(samples):.2f} | {max(samples):.2f} | {target} |")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--cascades", type=int, default=500)
    args = parser.parse_args(argv)
    say(f"{args.cascades} sequential cascades (+{WARMUP} warm-up)")
    out, statuses = run_async(measure(args.cascades))
    print("## Cascade hop\n")
    print(f"In-process daemon, workspaces `core` and `other`; {args.cascades} sequential triggers of `core`/`fan`, "
          "whose one step is a `signal` action into `other`/`child` (an `atlas/echo` job) with `wait: true`, each "
          "after the previous tree completed. Times are from the parent's `step:start` of the signal step to the "
          "child's event, as applied to the local store. The last row is a plain root trigger → `session:start`, "
          f"measured in the same loop as a reference. {WARMUP} warm-up rounds are not counted.\n")
    print("| measure | n | p50 ms | p90 ms | p99 ms | mean ms | max ms | target |")
    print("|---|---|---|---|---|---|---|---|")
    print(row("parent `step:start` → child `session:queued`", out["queued"], "—"))
    print(row("**cascade hop**: parent `step:start` → child `session:start`", out["hop"], "p50 ≤ 10"))
    print(row("parent `step:start` → parent `session:complete` (child ran, output back)", out["tree"], "—"))
    print(row("reference: root trigger → `session:start`", out["root_start"], "p50 ≤ 5, p99 ≤ 25"))
    print()
    ok = set(statuses) == {"completed"}
    print(f"Parent sessions by status: {statuses}.\n")
    return 0 if ok and out["hop"] else 1


if __name__ == "__main__":
    sys.exit(main())
