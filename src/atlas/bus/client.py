"""Connection to NATS JetStream and the streams and buckets atlas relies on (spec §6.2).

One `Bus` per daemon. It owns the nats-py connection, declares the streams and KV buckets idempotently (a second
daemon on the same cluster finds them and reuses them), and offers the few typed operations the runtime needs, so
the rest of the code never builds subjects or headers by hand.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import nats
from nats.aio.client import Client
from nats.js import JetStreamContext
from nats.js.api import (
    ConsumerConfig,
    DeliverPolicy,
    DiscardPolicy,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.errors import APIError, BadRequestError, KeyNotFoundError, KeyWrongLastSequenceError, NotFoundError
from nats.js.kv import KeyValue

from atlas.bus.acks import Ack, AckedPublisher, AckLost, transient
from atlas.jsoncodec import dumps, loads

log = logging.getLogger("atlas.bus")
T = TypeVar("T")

SIGNALS = "SIGNALS"
SESSION_EVENTS = "SESSION_EVENTS"
#: Durable step logs (issue #16): batches of a session's step output lines, kept as long as its events.
SESSION_LOGS = "SESSION_LOGS"
DEAD_LETTERS = "DEAD_LETTERS"
KV_METADATA = "SESSION_METADATA"
KV_INFLIGHT = "SESSION_INFLIGHT"
KV_CONCURRENCY = "CONCURRENCY"
KV_DAEMONS = "DAEMONS"
KV_WORKSPACES = "WORKSPACES"
KV_IDEMPOTENCY = "IDEMPOTENCY"
KV_CRON_STATE = "CRON_STATE"
KV_CRON_CLAIMS = "CRON_CLAIMS"
#: Workspace memory (issue #17): `<ws>.<corpus>.<entryId>` → entry; TTL ATLAS_MEMORY_RETENTION (0: kept for good).
KV_MEMORY = "MEMORY"
#: Chats (issue #17): one subject per chat (`chats.<ws>.<chatId>`) holding its records; `atlas.bus.chatlog`.
CHATS = "CHATS"
#: Chat summaries, `<ws>.<chatId>` → {title, createdAt, updatedAt, messageCount, turn?}: a listing reads no records.
KV_CHAT_INDEX = "CHAT_INDEX"
CONSUMER = "atlas-signals"

DAY = 86_400.0


def signal_subject(workspace_id: str, signal_id: str) -> str:
    return f"workspaces.{workspace_id}.signals.{signal_id}"


def events_subject(session_id: str) -> str:
    return f"sessions.{session_id}.events"


def ephemeral_subject(session_id: str) -> str:
    return f"ephemeral.sessions.{session_id}"


def logs_subject(session_id: str) -> str:
    return f"logs.sessions.{session_id}"


def cancel_subject(session_id: str) -> str:
    return f"atlas.cancel.sessions.{session_id}"


#: JetStream error codes of a conditional write that lost its race (see `Bus.append_event`).
_LOST_RACE = (10071, 10158, 10164)


class WrongLastSequence(Exception):
    """A conditional write lost: someone else wrote the subject (or key) first."""


@dataclass
class BusSettings:
    url: str
    token: str | None = None
    creds: str | None = None
    replicas: int = 1
    retention_s: float = 90 * DAY
    ack_wait_s: float = 30.0
    max_deliver: int = 5
    heartbeat_ttl_s: float = 30.0
    idempotency_ttl_s: float = DAY
    chat_retention_s: float = 90 * DAY  # 0: chats are kept until deleted
    memory_retention_s: float = 0.0  # 0: memory entries are kept until deleted
    # How long a write is retried while JetStream does not answer (a leader election takes 4–9 s) before the
    # caller gets the error; 0 = one attempt. See `atlas.bus.acks`.
    write_retry_s: float = 30.0


class BusObserver(Protocol):
    """What the bus reports to metrics (`atlas.observability.metrics.Metrics`): writes that failed, reconnections."""

    def publish_failed(self, error: str) -> None: ...

    def reconnected(self) -> None: ...


class Bus:
    """The daemon's handle on JetStream: streams, KV buckets and typed publish helpers."""

    def __init__(self, settings: BusSettings, observer: BusObserver | None = None) -> None:
        self.settings = settings
        self.observer = observer
        self.nc: Client | None = None
        self._js: JetStreamContext | None = None
        self._acks: AckedPublisher | None = None
        self.kv: dict[str, KeyValue] = {}

    @property
    def js(self) -> JetStreamContext:
        assert self._js is not None, "bus not connected"
        return self._js

    async def connect(
        self,
        on_disconnect: Callable[[], Awaitable[None]] | None = None,
        on_reconnect: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        opts: dict[str, Any] = {
            "servers": [u.strip() for u in self.settings.url.split(",") if u.strip()],
            "max_reconnect_attempts": -1,
            "reconnect_time_wait": 0.5,
            "connect_timeout": 5,
            "allow_reconnect": True,
        }
        if self.settings.token:
            opts["token"] = self.settings.token
        if self.settings.creds:
            opts["user_credentials"] = self.settings.creds
        opts["disconnected_cb"] = self._disconnected(on_disconnect)
        if on_reconnect or self.observer is not None:
            opts["reconnected_cb"] = self._reconnected(on_reconnect)
        self.nc = await nats.connect(**opts)
        self._js = self.nc.jetstream(timeout=10)
        self._acks = AckedPublisher(self.nc, timeout=10)
        await self._acks.start()
        await self._declare()

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.flush(timeout=2)
            except Exception:
                pass
            await self.nc.close()

    @property
    def connected(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    def _disconnected(self, then: Callable[[], Awaitable[None]] | None) -> Callable[[], Awaitable[None]]:
        """The client's disconnect callback: nothing sent on the lost connection will be answered, so nothing
        keeps waiting for it (issue 19, bug 14: a request pinned to a dead node sat out its whole timeout)."""

        async def on_disconnect() -> None:
            if self._acks is not None:
                self._acks.connection_lost()
            self._unpin_requests()
            if then is not None:
                await then()

        return on_disconnect

    def _reconnected(self, then: Callable[[], Awaitable[None]] | None) -> Callable[[], Awaitable[None]]:
        """The client's reconnect callback: counted (`atlas_bus_reconnects_total`), then the caller's."""

        async def on_reconnect() -> None:
            if self.observer is not None:
                self.observer.reconnected()
            if then is not None:
                await then()

        return on_reconnect

    def _unpin_requests(self) -> None:
        """Fail nats-py's pending requests (JetStream API calls: reads, KV creates) with `AckLost`, a timeout, at
        once rather than after theirs. nats-py keeps them in `_resp_map` (nats-py is pinned; a version without it
        just keeps its timeouts)."""
        pending = getattr(self.nc, "_resp_map", None)
        if not isinstance(pending, dict):
            return
        for fut in list(pending.values()):
            if isinstance(fut, asyncio.Future) and not fut.done():
                fut.set_exception(AckLost())

    async def _declare(self) -> None:
        r = self.settings.replicas
        await self._stream(
            StreamConfig(
                name=SIGNALS,
                subjects=["workspaces.*.signals.*"],
                retention=RetentionPolicy.WORK_QUEUE,
                storage=StorageType.FILE,
                max_age=7 * DAY,
                duplicate_window=3600,
                max_msg_size=8 * 1024 * 1024,
                num_replicas=r,
            )
        )
        def per_session(name: str, subject: str) -> StreamConfig:
            """A stream kept as long as the sessions (ATLAS_SESSION_RETENTION), read by direct gets."""
            return StreamConfig(
                name=name,
                subjects=[subject],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=self.settings.retention_s or None,
                duplicate_window=min(120, self.settings.retention_s or 120),
                allow_direct=True,
                num_replicas=r,
            )

        await self._stream(per_session(SESSION_EVENTS, "sessions.*.events"))
        # Step logs live beside the events, with the same retention (`atlas.bus.steplogs` says why).
        await self._stream(per_session(SESSION_LOGS, "logs.sessions.*"))
        await self._stream(StreamConfig(
            name=CHATS, subjects=["chats.*.*"], retention=RetentionPolicy.LIMITS, storage=StorageType.FILE,
            max_age=self.settings.chat_retention_s or None, allow_direct=True, num_replicas=r))
        await self._stream(
            StreamConfig(
                name=DEAD_LETTERS,
                subjects=["dead.workspaces.*.signals.*"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=30 * DAY,
                num_replicas=r,
            )
        )
        buckets = {
            KV_METADATA: KeyValueConfig(bucket=KV_METADATA, history=1, ttl=self.settings.retention_s or None),
            KV_INFLIGHT: KeyValueConfig(bucket=KV_INFLIGHT, history=1),
            KV_CONCURRENCY: KeyValueConfig(bucket=KV_CONCURRENCY, history=1),
            KV_DAEMONS: KeyValueConfig(bucket=KV_DAEMONS, history=1, ttl=self.settings.heartbeat_ttl_s),
            KV_WORKSPACES: KeyValueConfig(bucket=KV_WORKSPACES, history=1),
            KV_IDEMPOTENCY: KeyValueConfig(bucket=KV_IDEMPOTENCY, history=1, ttl=self.settings.idempotency_ttl_s),
            KV_CRON_STATE: KeyValueConfig(bucket=KV_CRON_STATE, history=1),
            KV_CRON_CLAIMS: KeyValueConfig(bucket=KV_CRON_CLAIMS, history=1, ttl=2 * DAY),
            KV_CHAT_INDEX: KeyValueConfig(bucket=KV_CHAT_INDEX, history=1, ttl=self.settings.chat_retention_s or None),
            KV_MEMORY: KeyValueConfig(bucket=KV_MEMORY, history=1, ttl=self.settings.memory_retention_s or None),
        }
        for name, cfg in buckets.items():
            cfg.replicas = r
            try:
                self.kv[name] = await self.js.create_key_value(cfg)
            except BadRequestError:
                self.kv[name] = await self.js.key_value(name)
        await self._consumer()

    async def _stream(self, cfg: StreamConfig) -> None:
        try:
            await self.js.add_stream(cfg)
        except BadRequestError:
            # Exists with other settings (e.g. an older version): keep the data, update what may change.
            cfg.discard = cfg.discard or DiscardPolicy.OLD
            await self.js.update_stream(cfg)

    async def _consumer(self) -> None:
        cfg = ConsumerConfig(
            durable_name=CONSUMER,
            ack_wait=self.settings.ack_wait_s,
            max_deliver=self.settings.max_deliver,
            max_ack_pending=1024,
        )
        try:
            await self.js.add_consumer(SIGNALS, cfg)
        except BadRequestError:
            log.debug("consumer %s exists", CONSUMER)

    # ------------------------------------------------------------ events

    async def append_event(self, event: dict[str, Any], expected_last_subject_seq: int | None,
                           retry_for: float | None = None) -> int:
        """Append one durable event; returns its stream sequence.

        `expected_last_subject_seq` is the stream sequence of the session's previous event (0 for the first), so a
        session has one writer at a time (spec §6.3). A lost race raises WrongLastSequence. While JetStream does not
        answer the append is sent again, same `Nats-Msg-Id`, for up to `retry_for` seconds (default: the bus's
        `write_retry_s`); a copy of ours that landed unacknowledged is recognised by its bytes, so it counts once.
        """
        sid = event["sessionId"]
        subject = events_subject(sid)
        data = dumps(event)
        headers = {"Nats-Msg-Id": f"{sid}:{event['seq']}"}
        if expected_last_subject_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
        try:
            ack = await self.publish(subject, data, headers, retry_for=retry_for)
        except APIError as exc:
            # 10071: wrong last sequence; on a cluster a *concurrent* loser gets 10164 (wrong last sequence, no
            # number) or 10158 (the same Nats-Msg-Id is still being proposed). All mean: someone else wrote first —
            # unless that someone is an earlier copy of this very append whose ack was lost.
            if getattr(exc, "err_code", None) in _LOST_RACE:
                ours = await self._landed(subject, data, None, retry_for)
                if ours is not None:
                    return ours
                raise WrongLastSequence(str(exc)) from exc
            raise
        if ack.duplicate:
            # The broker deduplicates by Nats-Msg-Id *before* checking the expected sequence: `sid:seq` was
            # already written — by our own earlier copy (its ack lost in an election: then it is our event, the
            # same bytes), or by another writer (re-read and obey).
            ours = await self._landed(subject, data, int(ack.seq) or None, retry_for)
            if ours is not None:
                return ours
            raise WrongLastSequence(f"event {sid}:{event['seq']} was already written")
        return int(ack.seq)

    async def _landed(self, subject: str, data: bytes, seq: int | None, retry_for: float | None) -> int | None:
        """The stream sequence of `data` if it is the last event on `subject`, else None (`seq`: where the broker
        said the earlier copy is, only reported when it is not that).

        Events carry a timestamp and their writer's view, so two writers never produce the same bytes: equal bytes
        are our own copy; anything after it means another writer moved on, and the caller re-reads and obeys
        either way. Read from the stream's leader, not with a direct get: any replica answers those, and one still
        catching up (the node that just came back) may not have the message yet."""
        try:
            msg = await self._read_retrying(lambda: self.js.get_last_msg(SESSION_EVENTS, subject), retry_for)
        except NotFoundError:
            log.warning("%s: duplicate at %s but the subject is empty", subject, seq)
            return None
        if msg.data == data and msg.seq:
            return int(msg.seq)
        log.debug("%s: the last event (stream seq %s) is another writer's, not ours (duplicate at %s)", subject,
                  msg.seq, seq)
        return None

    async def _read_retrying(self, read: Callable[[], Awaitable[T]], retry_for: float | None) -> T:
        """An idempotent JetStream read, repeated while the bus does not answer (as `AckedPublisher.publish`)."""
        deadline = time.monotonic() + (self.settings.write_retry_s if retry_for is None else retry_for)
        pause = 0.05
        while True:
            try:
                return await read()
            except Exception as exc:
                if not transient(exc) or time.monotonic() >= deadline:
                    raise
            await asyncio.sleep(pause)  # a backoff while a leader is elected (not a synchronisation)
            pause = min(0.25, pause * 2)

    async def last_event(self, session_id: str) -> tuple[dict[str, Any], int] | None:
        """The session's latest durable event and its stream sequence, or None for an unknown session."""
        try:
            msg = await self.js.get_last_msg(SESSION_EVENTS, events_subject(session_id), direct=True)
        except NotFoundError:
            return None
        assert msg.data is not None
        return loads(msg.data), int(msg.seq or 0)

    async def read_events(self, session_id: str, limit: int | None = None) -> list[tuple[dict[str, Any], int]]:
        """Every durable event of one session in order (or its first `limit`), with stream sequences (used by
        recovery and rebuilds)."""
        out: list[tuple[dict[str, Any], int]] = []
        seq = 1
        subject = events_subject(session_id)
        while limit is None or len(out) < limit:
            try:
                msg = await self.js.get_msg(SESSION_EVENTS, seq=seq, subject=subject, next=True, direct=True)
            except NotFoundError:
                return out
            assert msg.data is not None and msg.seq is not None
            out.append((loads(msg.data), int(msg.seq)))
            seq = int(msg.seq) + 1
        return out

    # ------------------------------------------------------------ signals

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None,
                      retry_for: float | None = None) -> Ack:
        """One JetStream publish, acknowledged (see `atlas.bus.acks` for why not `js.publish`), sent again while
        JetStream does not answer for up to `retry_for` seconds (default: `write_retry_s`; 0: one attempt)."""
        assert self._acks is not None, "bus not connected"
        budget = self.settings.write_retry_s if retry_for is None else retry_for
        try:
            return await self._acks.publish(subject, data, headers, retry_for=budget)
        except Exception as exc:
            # A lost write race (an expected-sequence refusal) is the protocol working, not a failed publish.
            if self.observer is not None and getattr(exc, "err_code", None) not in _LOST_RACE:
                self.observer.publish_failed(type(exc).__name__)
            raise

    async def publish_envelope(self, envelope: dict[str, Any], data: bytes | None = None,
                               retry_for: float | None = None) -> None:
        """Publish to SIGNALS, deduplicated by sessionId (`data`: the envelope already encoded)."""
        await self.publish(
            signal_subject(envelope["workspaceId"], envelope["signalId"]),
            data if data is not None else dumps(envelope),
            headers={"Nats-Msg-Id": envelope["sessionId"], "Atlas-Schema-Version": "1"},
            retry_for=retry_for,
        )

    async def dead_letter(self, envelope: dict[str, Any], error: str, deliveries: int) -> None:
        subject = "dead." + signal_subject(envelope.get("workspaceId", "unknown"), envelope.get("signalId", "x"))
        await self.js.publish(subject, dumps({"envelope": envelope, "error": error, "deliveries": deliveries}))

    # ------------------------------------------------------------ KV helpers

    async def kv_get(self, bucket: str, key: str) -> tuple[Any, int] | None:
        try:
            entry = await self.kv[bucket].get(key)
        except KeyNotFoundError:
            return None
        if entry.value is None or entry.value == b"":
            return None
        return loads(entry.value), int(entry.revision or 0)

    async def kv_get_from_leader(self, bucket: str, key: str) -> Any | None:
        """A key's value read from its stream's leader, for decisions that must not trust a replica: `kv_get` may
        be answered by any replica (direct get), and one that is catching up (a node just back) can lack a key
        that exists, such as a live daemon's heartbeat. None for an absent or deleted key."""
        try:
            msg = await self._read_retrying(
                lambda: self.js.get_last_msg(f"KV_{bucket}", f"$KV.{bucket}.{key}"), None)
        except NotFoundError:
            return None
        if not msg.data or (msg.headers or {}).get("KV-Operation") in ("DEL", "PURGE"):
            return None
        return loads(msg.data)

    async def kv_put(self, bucket: str, key: str, value: Any) -> int:
        """Put a key; the revision is the stream sequence (what `KeyValue.put` does, through our publisher)."""
        return (await self.publish(f"$KV.{bucket}.{key}", dumps(value))).seq

    async def kv_create(self, bucket: str, key: str, value: Any) -> int:
        """Atomic create-if-absent; WrongLastSequence when the key exists."""
        try:
            return int(await self.kv[bucket].create(key, dumps(value)))
        except KeyWrongLastSequenceError as exc:
            raise WrongLastSequence(str(exc)) from exc

    async def kv_update(self, bucket: str, key: str, value: Any, revision: int) -> int:
        """Compare-and-set on the revision; WrongLastSequence when someone else changed the key."""
        try:
            return int(await self.kv[bucket].update(key, dumps(value), last=revision))
        except KeyWrongLastSequenceError as exc:
            raise WrongLastSequence(str(exc)) from exc

    async def kv_delete(self, bucket: str, key: str) -> None:
        """Remove a key without a trace. A KV delete or purge leaves a marker message per key, so buckets with a
        key per session (SESSION_INFLIGHT) would grow forever and every listing would walk all of them."""
        try:
            await self.js.purge_stream(f"KV_{bucket}", subject=f"$KV.{bucket}.{key}")
        except NotFoundError:
            pass

    async def kv_keys(self, bucket: str) -> list[str]:
        """Live keys of a bucket.

        Not nats-py's `KeyValue.keys()`: its watcher can decide the listing is over before the first key arrives
        over a cluster route and answer an empty list. Here the stream says how many messages exist, and the
        ordered consumer is read until a message reports nothing pending.
        """
        stream = f"KV_{bucket}"
        info = await self.js.stream_info(stream)
        if not info.state.messages:
            return []
        prefix = f"$KV.{bucket}."
        sub = await self.js.subscribe(prefix + ">", stream=stream, ordered_consumer=True,
                                      deliver_policy=DeliverPolicy.LAST_PER_SUBJECT, headers_only=True)
        keys: list[str] = []
        try:
            while True:
                msg = await sub.next_msg(timeout=5)
                if (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                    keys.append(msg.subject[len(prefix):])
                if not msg.metadata.num_pending:
                    return keys
        finally:
            await sub.unsubscribe()
