"""The entries of the workspaces' memory corpora, durable in the `MEMORY` KV bucket (issue #17).

Why a KV bucket and one key per entry (`<workspaceId>.<corpus>.<entryId>`): a bucket is a JetStream stream, so it
is replicated like the others (`ATLAS_NATS_REPLICAS`) and any daemon of a cluster reads and writes the same
entries; a key per entry makes a save one acknowledged publish and a delete one purge, with no read-modify-write
of a shared document that two daemons could race on. A corpus is listed by reading the last message of each of its
subjects (an ordered consumer filtered on `<ws>.<corpus>.*`); the bucket's TTL is `ATLAS_MEMORY_RETENTION`
(default 0: kept until deleted). A delete purges the key (no tombstone left behind, like `Bus.kv_delete`).

Nothing here knows which corpora a workspace declares: callers check that first (`find_corpus`), so an undeclared
name is refused with the declared ones before the bus is asked.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any, Literal, NotRequired, TypedDict, TypeVar

from nats.errors import Error as NatsError
from nats.js.api import DeliverPolicy
from nats.js.errors import NotFoundError

from atlas.bus.client import KV_MEMORY, Bus
from atlas.config.model import WorkspaceConfig
from atlas.errors import AtlasError
from atlas.jsoncodec import dumps, loads
from atlas.sessions.events import now_iso

__all__ = ["Corpus", "MemoryEntry", "MemorySource", "MemoryStore", "corpora_of", "find_corpus"]

T = TypeVar("T")
_STREAM = f"KV_{KV_MEMORY}"
_PREFIX = f"$KV.{KV_MEMORY}."
#: Names that go into a subject: no `.`, `*` or `>` may reach one (a wildcard in a purge would empty a corpus).
_TOKEN = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
#: How long a listing waits for the next message of a corpus it was told is not empty (a cluster route is slow).
_READ_TIMEOUT = 5.0


class MemorySource(TypedDict, total=False):
    """Where an entry came from: the session of an llm step, or the chat of a chat turn."""

    sessionId: str
    chatId: str


class MemoryEntry(TypedDict):
    """One remembered text, as stored and as the API answers it."""

    id: str
    text: str
    createdAt: str
    source: MemorySource
    metadata: NotRequired[dict[str, Any]]


CorpusType = Literal["long_term", "short_term", "scratchpad"]


@dataclass(frozen=True)
class Corpus:
    name: str
    type: CorpusType
    strategy: str = "narrative"


def corpora_of(config: WorkspaceConfig) -> list[Corpus]:
    """The corpora a workspace declares (`memory.own`), in file order."""
    return [Corpus(c.name, c.type, c.strategy) for c in config.memory.own]


def find_corpus(corpora: list[Corpus], name: str, workspace_id: str) -> Corpus:
    """The declared corpus `name`; AtlasError `memory_not_found` (with the declared names) otherwise."""
    for corpus in corpora:
        if corpus.name == name:
            return corpus
    declared = [c.name for c in corpora]
    listed = ", ".join(declared) if declared else "none (declare one under memory.own)"
    raise AtlasError("memory_not_found", f"workspace {workspace_id!r} declares no memory corpus {name!r}; declared: "
                     f"{listed}", {"declared": declared})


def _token(kind: str, value: str) -> str:
    if not isinstance(value, str) or not _TOKEN.match(value):
        raise AtlasError("memory_entry_not_found" if kind == "entry id" else "memory_not_found",
                         f"invalid memory {kind} {value!r}")
    return value


async def _on_bus(call: Awaitable[T]) -> T:
    """The bus's failures as AtlasError `bus_unavailable` (503 on the API; an error result for a tool)."""
    try:
        return await call
    except AtlasError:
        raise
    except (NatsError, TimeoutError, ConnectionError) as exc:
        raise AtlasError("bus_unavailable", f"memory is unavailable: {type(exc).__name__}: {exc}") from exc


def _subject(workspace_id: str, corpus: str, entry_id: str | None = None) -> str:
    base = f"{_PREFIX}{_token('workspace', workspace_id)}.{_token('corpus', corpus)}."
    return base + (_token("entry id", entry_id) if entry_id is not None else "*")


class MemoryStore:
    """Save, list and delete entries; each call is one or two JetStream requests, safe from any daemon."""

    def __init__(self, *, bus: Bus) -> None:
        self._bus = bus

    async def save(self, workspace_id: str, corpus: str, text: str, *, source: MemorySource,
                   metadata: dict[str, Any] | None = None) -> MemoryEntry:
        """Store a new entry (already redacted by the caller) and return it."""
        return await _on_bus(self._save(workspace_id, corpus, text, source=source, metadata=metadata))

    async def get(self, workspace_id: str, corpus: str, entry_id: str) -> MemoryEntry | None:
        return await _on_bus(self._get(workspace_id, corpus, entry_id))

    async def list_entries(self, workspace_id: str, corpus: str, *, query: str | None = None,
                           limit: int | None = None) -> list[MemoryEntry]:
        """The corpus's entries, newest first; `query` keeps those whose text contains it (case-insensitive);
        `limit` keeps the first ones after that."""
        return await _on_bus(self._list_entries(workspace_id, corpus, query=query, limit=limit))

    async def counts(self, workspace_id: str) -> dict[str, int]:
        """How many entries each corpus of the workspace holds (corpora without any are absent)."""
        return await _on_bus(self._counts(workspace_id))

    async def delete(self, workspace_id: str, corpus: str, entry_id: str) -> None:
        """Remove one entry for good; AtlasError `memory_entry_not_found` when there is none."""
        await _on_bus(self._delete(workspace_id, corpus, entry_id))

    async def _save(self, workspace_id: str, corpus: str, text: str, *, source: MemorySource,
                   metadata: dict[str, Any] | None = None) -> MemoryEntry:
        """Store a new entry (already redacted by the caller) and return it."""
        entry: MemoryEntry = {"id": str(uuid.uuid4()), "text": text, "createdAt": now_iso(),
                              "source": MemorySource(**source)}
        if metadata:
            entry["metadata"] = metadata
        await self._bus.publish(_subject(workspace_id, corpus, entry["id"]), dumps(entry))
        return entry

    async def _get(self, workspace_id: str, corpus: str, entry_id: str) -> MemoryEntry | None:
        found = await self._bus.kv_get(KV_MEMORY, _subject(workspace_id, corpus, entry_id)[len(_PREFIX):])
        if found is None:
            return None
        entry: MemoryEntry = found[0]
        return entry

    async def _list_entries(self, workspace_id: str, corpus: str, *, query: str | None = None,
                   limit: int | None = None) -> list[MemoryEntry]:
        """The corpus's entries, newest first; `query` keeps those whose text contains it (case-insensitive);
        `limit` keeps the first ones after that."""
        found = await self._read(_subject(workspace_id, corpus))
        found.sort(key=lambda item: (item[0]["createdAt"], item[1]), reverse=True)
        entries = [entry for entry, _ in found]
        if query:
            needle = query.casefold()
            entries = [entry for entry in entries if needle in entry["text"].casefold()]
        return entries[:limit] if limit is not None else entries

    async def _counts(self, workspace_id: str) -> dict[str, int]:
        """How many entries each corpus of the workspace holds (corpora without any are absent)."""
        every = f"{_PREFIX}{_token('workspace', workspace_id)}.>"
        info = await self._bus.js.stream_info(_STREAM, subjects_filter=every)
        out: dict[str, int] = {}
        for subject in info.state.subjects or {}:
            corpus = subject[len(_PREFIX):].split(".")[1]
            out[corpus] = out.get(corpus, 0) + 1
        return out

    async def _delete(self, workspace_id: str, corpus: str, entry_id: str) -> None:
        """Remove one entry for good; AtlasError `memory_entry_not_found` when there is none."""
        subject = _subject(workspace_id, corpus, entry_id)
        if await self.get(workspace_id, corpus, entry_id) is None:
            raise AtlasError("memory_entry_not_found", f"memory corpus {corpus!r} of workspace {workspace_id!r} has "
                             f"no entry {entry_id!r}")
        try:
            await self._bus.js.purge_stream(_STREAM, subject=subject)
        except NotFoundError:
            pass

    async def _read(self, subjects: str) -> list[tuple[MemoryEntry, int]]:
        """The last message of every subject matching `subjects`, with its stream sequence (the order of saves
        made within one millisecond)."""
        info = await self._bus.js.stream_info(_STREAM, subjects_filter=subjects)
        if not info.state.subjects:
            return []
        sub = await self._bus.js.subscribe(subjects, stream=_STREAM, ordered_consumer=True,
                                           deliver_policy=DeliverPolicy.LAST_PER_SUBJECT)
        out: list[tuple[MemoryEntry, int]] = []
        try:
            while True:
                try:
                    msg = await sub.next_msg(timeout=_READ_TIMEOUT)
                except TimeoutError:
                    return out  # everything was deleted between the count and the read
                if msg.data and (msg.headers or {}).get("KV-Operation") not in ("DEL", "PURGE"):
                    out.append((loads(msg.data), int(msg.metadata.sequence.stream)))
                if not msg.metadata.num_pending:
                    return out
        finally:
            await sub.unsubscribe()
