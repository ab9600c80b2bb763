"""The §7.4 throughput baseline: a bare endpoint in the daemon's own process that does one `js.publish` and
answers 202.

Only mounted when `ATLAS_BENCH_BASELINE=1` (bench/trigger_throughput.py sets it), so a normal daemon never has it.
It goes through the same app, middleware, event loop and NATS connection as a real trigger, which makes the ratio
"atlas trigger / baseline" a measure of what the accept pipeline adds on top of one acknowledged publish.
"""

from __future__ import annotations

import asyncio
import os
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from starlette.responses import Response

if TYPE_CHECKING:
    from atlas.runtime.daemon import Daemon

BENCH_STREAM = "BENCH"
BENCH_SUBJECT = "bench.baseline"
_ACCEPTED = b'{"status":"accepted"}'


def add_bench_routes(app: FastAPI, daemon: Daemon) -> None:
    if os.environ.get("ATLAS_BENCH_BASELINE") != "1":
        return
    ready = False
    lock = asyncio.Lock()

    async def ensure_stream() -> None:
        nonlocal ready
        async with lock:
            if ready:
                return
            cfg = StreamConfig(
                name=BENCH_STREAM,
                subjects=["bench.>"],
                storage=StorageType.MEMORY,
                max_msgs=200_000,
                discard=DiscardPolicy.OLD,
            )
            try:
                await daemon.bus.js.add_stream(cfg)
            except BadRequestError:
                await daemon.bus.js.update_stream(cfg)
            ready = True

    @app.post("/__bench/publish", include_in_schema=False)
    async def bench_publish(request: Request) -> Response:
        body = await request.body()
        if not ready:
            await ensure_stream()
        await daemon.bus.js.publish(BENCH_SUBJECT, body)
        return Response(_ACCEPTED, status_code=202, media_type="application/json")
