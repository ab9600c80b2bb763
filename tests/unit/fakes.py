"""An in-memory bus and session log for the runtime's unit tests (issue #13, item 6).

Why a fake here, against the project's "no mocks of our own code": it implements the two ports the runtime talks
to — the session log (`atlas.bus.sessionlog.SessionLog`: append with the expected-last-sequence condition, last
event, reads) and the bus's KV buckets and SIGNALS publishes (`atlas.bus.client.Bus`) — with the semantics the
runtime relies on (a conditional append loses to another writer, a KV create loses to an existing key, an update to
a newer revision, values come back as fresh copies). Everything above the ports is the real code. The same
behaviour stays covered against a real nats-server by the integration tests; these run in milliseconds.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

from atlas.bus.client import BusSettings, WrongLastSequence
from atlas.jsoncodec import dumps, loads


class FakeNats:
    """Core NATS publish/subscribe within one process (the hello and cancel broadcasts)."""

    def __init__(self) -> None:
        self.subs: list[tuple[str, Callable[[Any], Awaitable[None]]]] = []
        self.is_connected = True

    async def subscribe(self, subject: str, cb: Callable[[Any], Awaitable[None]], **_: Any) -> None:
        self.subs.append((subject, cb))

    async def publish(self, subject: str, data: bytes, **_: Any) -> None:
        for pattern, cb in self.subs:
            if _matches(pattern, subject):
                await cb(_Msg(subject, data))


class _Msg:
    def __init__(self, subject: str, data: bytes) -> None:
        self.subject = subject
        self.data = data


def _matches(pattern: str, subject: str) -> bool:
    p, s = pattern.split("."), subject.split(".")
    return len(p) == len(s) and all(a in ("*", b) for a, b in zip(p, s, strict=True))


class FakeBus:
    """KV buckets, SIGNALS and dead letters in memory (what the runtime uses of `Bus`)."""

    def __init__(self) -> None:
        self.settings = BusSettings(url="memory://", write_retry_s=0.0)
        self.nc = FakeNats()
        self.connected = True
        self._kv: dict[str, dict[str, tuple[bytes, int]]] = defaultdict(dict)
        self._revision = 0
        self.signals: list[dict[str, Any]] = []
        self._signal_ids: set[str] = set()
        self.dead_letters: list[dict[str, Any]] = []

    # ---------------------------------------------------------------- KV

    def _put(self, bucket: str, key: str, value: Any) -> int:
        self._revision += 1
        self._kv[bucket][key] = (dumps(value), self._revision)
        return self._revision

    async def kv_get(self, bucket: str, key: str) -> tuple[Any, int] | None:
        found = self._kv[bucket].get(key)
        return (loads(found[0]), found[1]) if found is not None else None

    async def kv_get_from_leader(self, bucket: str, key: str) -> Any | None:
        found = self._kv[bucket].get(key)
        return loads(found[0]) if found is not None else None

    async def kv_put(self, bucket: str, key: str, value: Any) -> int:
        return self._put(bucket, key, value)

    async def kv_create(self, bucket: str, key: str, value: Any) -> int:
        if key in self._kv[bucket]:
            raise WrongLastSequence(f"{bucket}.{key} exists")
        return self._put(bucket, key, value)

    async def kv_update(self, bucket: str, key: str, value: Any, revision: int) -> int:
        found = self._kv[bucket].get(key)
        if found is None or found[1] != revision:
            raise WrongLastSequence(f"{bucket}.{key} changed")
        return self._put(bucket, key, value)

    async def kv_delete(self, bucket: str, key: str) -> None:
        self._kv[bucket].pop(key, None)

    async def kv_keys(self, bucket: str) -> list[str]:
        return list(self._kv[bucket])

    # ---------------------------------------------------------------- SIGNALS

    async def publish_envelope(self, envelope: dict[str, Any], data: bytes | None = None,
                               retry_for: float | None = None) -> None:
        """Deduplicated by sessionId, as `Nats-Msg-Id` does on SIGNALS."""
        if envelope["sessionId"] in self._signal_ids:
            return
        self._signal_ids.add(envelope["sessionId"])
        self.signals.append(loads(data if data is not None else dumps(envelope)))

    async def dead_letter(self, envelope: dict[str, Any], error: str, deliveries: int) -> None:
        self.dead_letters.append({"envelope": envelope, "error": error, "deliveries": deliveries})


class FakeSessionLog:
    """Sessions' logs in memory, with the one-writer condition of spec §6.3 (what the runtime uses of
    `SessionLog`)."""

    def __init__(self) -> None:
        self._stream_seq = 0
        self._logs: dict[str, list[tuple[bytes, int]]] = defaultdict(list)
        self.chunks: list[tuple[str, bytes]] = []

    async def append(self, event: dict[str, Any], expected_last_subject_seq: int | None,
                     retry_for: float | None = None) -> int:
        log = self._logs[event["sessionId"]]
        data = dumps(event)
        for stored, seq in log:  # Nats-Msg-Id `sid:seq` already written: ours (same bytes) or another writer's
            if loads(stored)["seq"] == event["seq"]:
                if stored == data:
                    return seq
                raise WrongLastSequence(f"event {event['sessionId']}:{event['seq']} was already written")
        last = log[-1][1] if log else 0
        if expected_last_subject_seq is not None and expected_last_subject_seq != last:
            raise WrongLastSequence(f"expected {expected_last_subject_seq}, log is at {last}")
        self._stream_seq += 1
        log.append((data, self._stream_seq))
        return self._stream_seq

    async def last(self, session_id: str) -> tuple[dict[str, Any], int] | None:
        log = self._logs.get(session_id)
        return (loads(log[-1][0]), log[-1][1]) if log else None

    async def read_all(self, session_id: str, limit: int | None = None) -> list[tuple[dict[str, Any], int]]:
        log = self._logs.get(session_id, [])
        return [(loads(data), seq) for data, seq in log[:limit]]

    async def publish_chunk(self, session_id: str, data: bytes) -> None:
        self.chunks.append((session_id, data))

    def events(self, session_id: str) -> list[dict[str, Any]]:
        """The session's events as written (for assertions)."""
        return [loads(data) for data, _ in self._logs.get(session_id, [])]


class FakeDelivery:
    """One SIGNALS message handed to the consumer: its envelope and how it was settled."""

    def __init__(self, envelope: dict[str, Any], delivered: int = 1) -> None:
        self.data = dumps(envelope)
        self.metadata = _Metadata(delivered)
        self.settled: str | None = None
        self.done = asyncio.Event()

    async def ack(self) -> None:
        self._settle("ack")

    async def nak(self, delay: float | None = None) -> None:
        self._settle("nak")

    async def term(self) -> None:
        self._settle("term")

    def _settle(self, how: str) -> None:
        self.settled = self.settled or how
        self.done.set()


class _Metadata:
    def __init__(self, delivered: int) -> None:
        self.num_delivered = delivered
