"""Acknowledged JetStream publishes through one reply subscription, retried through leader elections.

Why not `js.publish`: it is a NATS request per message (a fresh inbox token, `asyncio.wait_for`, a PubAck
dataclass), about 60 µs of Python per publish, and atlas publishes every event of every session. Here each publish
registers a future under a counter token, sends the message with a reply subject under one wildcard inbox, and
the ack resolves the future; a timer handle gives the timeout. That is ~35 µs, measured in the same process
(bench/trigger_throughput.py). Errors keep nats-py's types (`APIError` and its subclasses, `NoStreamResponseError`),
so callers handle them as before.

Riding through (issue 19, bug 14): on a 3-node cluster that lost one node, a stream whose leader was there has no
leader until the others elect one — nats-server waits 4–9 s for a lost leader before it campaigns — and every
publish to it meanwhile is answered "no responders" at once, or never answered when the leader died holding it.
`publish(..., retry_for=s)` sends the same message again (same headers, so the same `Nats-Msg-Id`: the broker drops
a copy of one that did land and answers `duplicate`) until JetStream answers or `s` seconds have passed. A publish
never waits on a connection that is gone: `connection_lost` (the client's disconnect callback) fails every waiting
ack at once, and the retry goes out on the new connection.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import ConnectionReconnectingError, OutboundBufferLimitError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.errors import APIError, NoStreamResponseError, ServiceUnavailableError

from atlas.jsoncodec import loads

# JetStream answers that mean "not now" rather than "no": 10158, the same Nats-Msg-Id is still being proposed (an
# earlier attempt of this very publish, usually: the retry learns its fate from the next answer); 10008, JetStream
# temporarily unavailable (no quorum yet).
RETRY_CODES = frozenset({10158, 10008})
ATTEMPT_TIMEOUT_S = 2.0  # first wait for an ack before the same message goes out again (doubles on each timeout)
BACKOFF_S = (0.05, 0.1, 0.2, 0.25)  # between answers of "no leader right now" (the last one repeats)


class AckLost(NatsTimeoutError):
    """The connection a publish went out on is gone: its ack will never come (it may or may not have landed)."""

    def __str__(self) -> str:
        return "nats: connection lost before the ack"


@dataclass(frozen=True)
class Ack:
    stream: str
    seq: int
    duplicate: bool
    attempts: int = 1  # how many times the message went out: a `duplicate` after a retry may be our own copy


def transient(exc: BaseException) -> bool:
    """An error a retry of the same message can outlive: no answer, no stream leader, no quorum, a reconnect."""
    if isinstance(exc, (NatsTimeoutError, NoStreamResponseError, ServiceUnavailableError,
                        ConnectionReconnectingError, OutboundBufferLimitError)):
        return True
    return isinstance(exc, APIError) and exc.err_code in RETRY_CODES


class AckedPublisher:
    def __init__(self, nc: Client, timeout: float, attempt_timeout: float = ATTEMPT_TIMEOUT_S) -> None:
        self._nc = nc
        self._timeout = timeout
        self._attempt_timeout = attempt_timeout
        self._prefix = ""
        self._waiting: dict[str, asyncio.Future[Msg]] = {}
        self._counter = 0

    async def start(self) -> None:
        self._prefix = self._nc.new_inbox() + "."
        await self._nc.subscribe(self._prefix + "*", cb=self._on_reply)

    async def _on_reply(self, msg: Msg) -> None:
        fut = self._waiting.pop(msg.subject[len(self._prefix):], None)
        if fut is not None and not fut.done():
            fut.set_result(msg)

    def connection_lost(self) -> None:
        """The connection dropped: no ack for anything sent on it will come, so stop waiting for them now (a
        retrying publish resends on the next connection instead of sitting out its timeout)."""
        waiting, self._waiting = self._waiting, {}
        for fut in waiting.values():
            if not fut.done():
                fut.set_exception(AckLost())

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None,
                      retry_for: float | None = None) -> Ack:
        """One acknowledged publish. Without `retry_for`: one attempt, waiting up to the publisher's timeout. With
        it: the same message again after each transient failure (see `transient`), until an answer or `retry_for`
        seconds; then the last error is raised."""
        if not retry_for:
            return await self._attempt(subject, data, headers, self._timeout)
        deadline = time.monotonic() + retry_for
        wait, attempts, backoff = self._attempt_timeout, 0, 0
        while True:
            attempts += 1
            left = deadline - time.monotonic()
            try:
                ack = await self._attempt(subject, data, headers, max(0.05, min(wait, left)))
            except Exception as exc:
                left = deadline - time.monotonic()
                if not transient(exc) or left <= 0:
                    raise
                if isinstance(exc, AckLost):
                    continue  # resend at once: nats-py buffers it until the reconnect
                if isinstance(exc, NatsTimeoutError):
                    wait *= 2  # nobody answered: a slow leader gets longer next time
                    continue
                pause = BACKOFF_S[min(backoff, len(BACKOFF_S) - 1)]
                backoff += 1
                await asyncio.sleep(min(pause, left))  # a backoff while a leader is elected (not a synchronisation)
                continue
            return Ack(ack.stream, ack.seq, ack.duplicate, attempts) if attempts > 1 else ack

    async def _attempt(self, subject: str, data: bytes, headers: dict[str, str] | None, timeout: float) -> Ack:
        self._counter += 1
        token = str(self._counter)
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Msg] = loop.create_future()
        self._waiting[token] = fut
        timer = loop.call_later(timeout, _expire, fut)
        try:
            await self._nc.publish(subject, data, reply=self._prefix + token, headers=headers)
            msg = await fut
        finally:
            timer.cancel()
            self._waiting.pop(token, None)
        if not msg.data:
            if msg.headers and msg.headers.get("Status") == "503":
                raise NoStreamResponseError
            raise APIError(description=f"empty JetStream answer for {subject}")
        resp: dict[str, Any] = loads(msg.data)
        error = resp.get("error")
        if error is not None:
            APIError.from_error(error)  # raises the matching subclass
        return Ack(str(resp.get("stream", "")), int(resp.get("seq", 0)), bool(resp.get("duplicate", False)))


def _expire(fut: asyncio.Future[Msg]) -> None:
    if not fut.done():
        fut.set_exception(NatsTimeoutError())
