"""Connection to NATS JetStream and the streams and buckets atlas relies on (spec §6.2).

One `Bus` per daemon. It owns the nats-py connection, declares the streams and KV buckets idempotently (a second
daemon on the same cluster finds them and reuses them), and offers the few typed operations the runtime needs, so
the rest of the code never builds subjects or headers by hand.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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

from atlas.bus.acks import Ack, AckedPublisher
from atlas.jsoncodec import dumps, loads

log = logging.getLogger("atlas.bus")

SIGNALS = "SIGNALS"
SESSION_EVENTS = "SESSION_EVENTS"
DEAD_LETTERS = "DEAD_LETTERS"
KV_METADATA = "SESSION_METADATA"
KV_INFLIGHT = "SESSION_INFLIGHT"
KV_CONCURRENCY = "CONCURRENCY"
KV_DAEMONS = "DAEMONS"
KV_WORKSPACES = "WORKSPACES"
KV_IDEMPOTENCY = "IDEMPOTENCY"
KV_CRON_STATE = "CRON_STATE"
KV_CRON_CLAIMS = "CRON_CLAIMS"
CONSUMER = "atlas-signals"

DAY = 86_400.0


def signal_subject(workspace_id: str, signal_id: str) -> str:
    return f"workspaces.{workspace_id}.signals.{signal_id}"


def events_subject(session_id: str) -> str:
    return f"sessions.{session_id}.events"


def ephemeral_subject(session_id: str) -> str:
    return f"ephemeral.sessions.{session_id}"


def cancel_subject(session_id: str) -> str:
    return f"atlas.cancel.sessions.{session_id}"


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


class Bus:
    """The daemon's handle on JetStream: streams, KV buckets and typed publish helpers."""

    def __init__(self, settings: BusSettings) -> None:
        self.settings = settings
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
        if on_disconnect:
            opts["disconnected_cb"] = on_disconnect
        if on_reconnect:
            opts["reconnected_cb"] = on_reconnect
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
        await self._stream(
            StreamConfig(
                name=SESSION_EVENTS,
                subjects=["sessions.*.events"],
                retention=RetentionPolicy.LIMITS,
                storage=StorageType.FILE,
                max_age=self.settings.retention_s or None,
                duplicate_window=min(120, self.settings.retention_s or 120),
                allow_direct=True,
                num_replicas=r,
            )
        )
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

    async def append_event(self, event: dict[str, Any], expected_last_subject_seq: int | None) -> int:
        """Append one durable event; returns its stream sequence.

        `expected_last_subject_seq` is the stream sequence of the session's previous event (0 for the first), so a
        session has one writer at a time (spec §6.3). A lost race raises WrongLastSequence.
        """
        sid = event["sessionId"]
        headers = {"Nats-Msg-Id": f"{sid}:{event['seq']}"}
        if expected_last_subject_seq is not None:
            headers["Nats-Expected-Last-Subject-Sequence"] = str(expected_last_subject_seq)
        try:
            ack = await self.publish(events_subject(sid), dumps(event), headers)
        except APIError as exc:
            # 10071: wrong last sequence; on a cluster a *concurrent* loser gets 10164 (wrong last sequence, no
            # number) or 10158 (the same Nats-Msg-Id is still being proposed). All mean: someone else wrote first.
            if getattr(exc, "err_code", None) in (10071, 10158, 10164):
                raise WrongLastSequence(str(exc)) from exc
            raise
        if ack.duplicate:
            # The broker deduplicates by Nats-Msg-Id *before* checking the expected sequence: `sid:seq` was
            # already written, by another writer unless this is our own retry. Either way: re-read and obey.
            raise WrongLastSequence(f"event {sid}:{event['seq']} was already written")
        return int(ack.seq)

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

    async def publish(self, subject: str, data: bytes, headers: dict[str, str] | None = None) -> Ack:
        """One JetStream publish, acknowledged (see `atlas.bus.acks` for why not `js.publish`)."""
        assert self._acks is not None, "bus not connected"
        return await self._acks.publish(subject, data, headers)

    async def publish_envelope(self, envelope: dict[str, Any], data: bytes | None = None) -> None:
        """Publish to SIGNALS, deduplicated by sessionId (`data`: the envelope already encoded)."""
        await self.publish(
            signal_subject(envelope["workspaceId"], envelope["signalId"]),
            data if data is not None else dumps(envelope),
            headers={"Nats-Msg-Id": envelope["sessionId"], "Atlas-Schema-Version": "1"},
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
