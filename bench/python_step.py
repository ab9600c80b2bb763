"""Per-step overhead of a `type: python` agent (issue #16, item 3): a no-op step, sync and `async def`.

Usage: python bench/python_step.py [--steps 2000] [--fresh-import]

Times `run_python` itself (what the agent layer adds around the user's function: loading it, handing it to a worker
thread or a per-step event loop, capturing print/logging, JSON-cleaning its result) on a uvloop loop like the
daemon's, for a module that does nothing. `--fresh-import` also times importing the step module from scratch (what
loading the code on every run would cost, against the cached function). Markdown goes to stdout; nothing is asserted.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.start_latency import pct  # noqa: E402

from atlas.agents.base import AgentContext  # noqa: E402
from atlas.agents.python_agent import run_python  # noqa: E402
from atlas.config.model import PythonAgentConfig  # noqa: E402

NOOP = "def noop(ctx):\n    return None\n\n\nasync def noop_async(ctx):\n    return None\n"


async def time_steps(workspace: Path, function: str, steps: int) -> list[float]:
    """Milliseconds per `run_python` call of `bench_noop_steps:<function>` (after a warm-up call)."""
    config = PythonAgentConfig(entrypoint=f"bench_noop_steps:{function}")
    await run_python(config, AgentContext(workspace_dir=workspace))
    samples = []
    for _ in range(steps):
        ctx = AgentContext(workspace_dir=workspace)
        started = time.perf_counter()
        await run_python(config, ctx)
        samples.append((time.perf_counter() - started) * 1000)
    return samples


def time_fresh_imports(workspace: Path, imports: int) -> list[float]:
    """Milliseconds to import the (already compiled) step module anew: drop it from sys.modules, import it."""
    sys.path.insert(0, str(workspace))
    samples = []
    for _ in range(imports):
        sys.modules.pop("bench_noop_steps", None)
        started = time.perf_counter()
        importlib.import_module("bench_noop_steps")
        samples.append((time.perf_counter() - started) * 1000)
    sys.path.remove(str(workspace))
    return samples


def row(name: str, samples: list[float]) -> str:
    return f"| {name} | {len(samples)} | {pct(samples, 50):.3f} | {pct(samples, 99):.3f} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--fresh-import", action="store_true")
    args = parser.parse_args()
    import uvloop

    with tempfile.TemporaryDirectory() as tmp:
        workspace = Path(tmp)
        (workspace / "bench_noop_steps.py").write_text(NOOP)
        sync = uvloop.run(time_steps(workspace, "noop", args.steps))
        async_ = uvloop.run(time_steps(workspace, "noop_async", args.steps))
        print("| no-op python step | n | p50 ms | p99 ms |")
        print("|---|---|---|---|")
        print(row("sync `def`", sync))
        print(row("`async def`", async_))
        if args.fresh_import:
            print(row("fresh import of the step module", time_fresh_imports(workspace, args.steps)))


if __name__ == "__main__":
    main()
