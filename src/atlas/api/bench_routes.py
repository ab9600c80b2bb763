"""The §7.4 throughput baseline: a bare endpoint in the daemon's own process that does one `js.publish` and
answers 202.

Only in the route table when `ATLAS_BENCH_BASELINE=1` (bench/trigger_throughput.py sets it), so a normal daemon never
has it. It goes through the same app, middleware, event loop and NATS connection as a real trigger, which makes the
ratio "atlas trigger / baseline" a measure of what the accept pipeline adds on top of one acknowledged publish; so
it uses the daemon's raw JetStream context on purpose, not the session-log port.
"""

from __future__ import annotations

import asyncio
import os

from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from atlas.api.state import daemon_of

BENCH_STREAM = "BENCH"
BENCH_SUBJECT = "bench.baseline"
_ACCEPTED = b'{"status":"accepted"}'


class _BenchStream:
    """The in-memory BENCH stream of one app, declared on first use."""

    def __init__(self) -> None:
        self.ready = False
        self._lock = asyncio.Lock()

    async def ensure(self, js: JetStreamContext) -> None:
        async with self._lock:
            if self.ready:
                return
            cfg = StreamConfig(
                name=BENCH_STREAM,
                subjects=["bench.>"],
                storage=StorageType.MEMORY,
                max_msgs=200_000,
                discard=DiscardPolicy.OLD,
            )
            try:
                await js.add_stream(cfg)
            except BadRequestError:
                await js.update_stream(cfg)
            self.ready = True


async def bench_publish(request: Request) -> Response:
    state = request.app.state
    bench: _BenchStream | None = getattr(state, "bench", None)
    if bench is None:
        bench = state.bench = _BenchStream()
    js = daemon_of(request).bus.js
    body = await request.body()
    if not bench.ready:
        await bench.ensure(js)
    await js.publish(BENCH_SUBJECT, body)
    return Response(_ACCEPTED, status_code=202, media_type="application/json")


def bench_routes() -> list[Route]:
    """The baseline route when `ATLAS_BENCH_BASELINE=1`, else none."""
    if os.environ.get("ATLAS_BENCH_BASELINE") != "1":
        return []
    return [Route("/__bench/publish", bench_publish, methods=["POST"], include_in_schema=False)]
