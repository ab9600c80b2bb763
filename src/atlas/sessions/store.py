"""The daemon's live picture of sessions: reducer + SQLite read model + waiters, fed by every durable event.

Events this daemon writes are applied at once (so a 202 is followed by a visible session); events from other
daemons arrive through the materialiser. Both paths go through `apply`, whose `seq` guard makes a second
application a no-op. On a shared read model (PostgreSQL) there is no second path: each daemon folds and writes only
what it appends, and reads everything else from the database (see `share`).

SQLite writes are batched: an event only marks its session's row dirty, and a flush a few milliseconds later writes
every dirty row (the latest view of each session, once) in one transaction together with the materialiser's resume
point. Any read through `store.rm` flushes first, so readers never see the read model behind the store: a
session is findable by correlationId the moment `apply` has returned (spec §4.3), without a commit per trigger.
The transaction runs on a writer thread, one batch at a time: rows that turn dirty while a batch is being written
wait for the next one, so batches grow with the load instead of queueing up behind a busy thread.
The bus, not SQLite, is what makes an event durable; the read model is rebuilt from it after a crash.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import datetime
from typing import Any, Protocol

from atlas.errors import AtlasError
from atlas.sessions.readmodel import encode_rows
from atlas.sessions.readmodel_port import ReadModelPort
from atlas.sessions.reducer import apply_chunk, initial_view, is_terminal, reduce, summarize

log = logging.getLogger("atlas.store")

Listener = Callable[[dict[str, Any]], None]
Watch = Callable[[str | None], AbstractAsyncContextManager[None]]
"""`watch(sid)` (None: every session): while entered, events other daemons append reach `observe`, and a
session's end reaches `settle` (a shared read model, see `SessionStore.shared`)."""


class StoreObserver(Protocol):
    """What the store reports to metrics (`atlas.observability.metrics.Metrics`).

    The store carries it because every `SessionWriter` already holds the store: the events this daemon appends
    reach `event_written` from the writer, whichever component (accept, consumer, engine, finalizer, recovery)
    wrote them, so a session's end is seen once, by the daemon that wrote it."""

    def event_written(self, event: dict[str, Any], view: dict[str, Any]) -> None: ...

    def row_written(self, lag_s: float) -> None: ...


class SessionStore:
    """Folds events into views, persists them and wakes whoever waits for a session."""

    _RECENT = 4096

    FLUSH_DELAY_S = 0.01

    RETRY_DELAY_S = 1.0
    """After a failed read-model write (a full disk: SQLITE_FULL), the rows wait this long before the next try."""

    def __init__(self, readmodel: ReadModelPort, observer: StoreObserver | None = None) -> None:
        self._rm = readmodel
        self.observer = observer
        # With an observer: the timestamp of the oldest event not yet in each dirty row (write lag), and those of
        # the batch being written (one batch at a time).
        self._stamps: dict[str, str] = {}
        self._stamps_writing: dict[str, str] = {}
        # What a write may fail with and be retried after (SQLite: a full disk; PostgreSQL: the server is down).
        self._transient = readmodel.transient_errors
        self._dirty: dict[str, dict[str, Any]] = {}
        self._pending_stream_seq = 0
        self._flush_handle: asyncio.TimerHandle | None = None
        self._live: dict[str, dict[str, Any]] = {}
        self._recent_seq: OrderedDict[str, int] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[dict[str, Any]]]] = {}
        self._listeners: set[Listener] = set()
        # The batch on the writer thread (its views stay readable until committed); at most one at a time.
        self._batches: queue.Queue[Any] = queue.Queue()
        self._writing: dict[str, dict[str, Any]] = {}
        self._idle = threading.Event()
        self._idle.set()
        self._flush_when_written = False
        self._writer: threading.Thread | None = None
        # Monotonic time before which no write is tried again after one failed (0: none failed).
        self._retry_at = 0.0
        # Sole-writer mode (see `own_the_log`): the resume point is the highest stream sequence below which every
        # message is applied; acknowledged writes above it wait in `_ahead` until the sequences between are filled.
        self.sole_writer = False
        self._mark = 0
        self._ahead: set[int] = set()
        # Shared read model (PostgreSQL, issue #15): other daemons answer queries from it, so an accept waits for its
        # `queued` row to be committed (`committed`); the futures of those waits, by session. See `share`.
        self.shared = False
        self._commit_waiters: dict[str, list[asyncio.Future[None]]] = {}
        self._watch: Watch | None = None
        # Queued views committed and handed over (shared mode): a base for this daemon's next write of the session
        # (its runner is most often the daemon that accepted it), never an answer to a read.
        self._handed: OrderedDict[str, dict[str, Any]] = OrderedDict()
        # Sessions folded here from their log although another daemon writes their events (shared mode: a read of
        # a session the database lacks, recovery reconciling a row its writer left behind): their rows are written,
        # but their views leave memory once committed, or reads here would see them stop where the fold did.
        self._foreign: set[str] = set()

    # ------------------------------------------------------------ sole writer

    def own_the_log(self, caught_up_to: int) -> None:
        """From now on this daemon is the only writer of SESSION_EVENTS (an embedded bus): no materialiser follows
        the stream, so the resume point moves with this daemon's own acknowledged writes (`note_written`)."""
        self.sole_writer = True
        self.caught_up_to(caught_up_to)

    def share_the_log(self) -> int:
        """Leave sole-writer mode (a materialiser follows from now on); returns the resume point to follow from."""
        self.sole_writer = False
        self._ahead.clear()
        return self._mark

    def caught_up_to(self, stream_seq: int) -> None:
        """Every message up to `stream_seq` is applied (or no longer exists)."""
        if stream_seq > self._mark:
            self._mark = stream_seq
            self._ahead = {seq for seq in self._ahead if seq > stream_seq}
            self._advance(moved=True)

    def note_written(self, stream_seq: int) -> None:
        """The message at `stream_seq` is applied; only meaningful for a sole writer."""
        if self.sole_writer and stream_seq > self._mark:
            self._ahead.add(stream_seq)
            self._advance()

    def gaps(self, limit: int = 1000) -> list[int]:
        """Stream sequences below the highest written one that were never noted: writes whose acknowledgement
        was lost (the message may exist). The daemon reads them back so the resume point can move on."""
        if not self._ahead:
            return []
        top = min(max(self._ahead), self._mark + limit)
        return [seq for seq in range(self._mark + 1, top) if seq not in self._ahead]

    def _advance(self, moved: bool = False) -> None:
        ahead = self._ahead
        while ahead and self._mark + 1 in ahead:
            self._mark += 1
            ahead.discard(self._mark)
            moved = True
        if moved:
            self._pending_stream_seq = max(self._pending_stream_seq, self._mark)
            self._schedule_flush()

    # ------------------------------------------------------------ committing (a shared read model)

    def share(self, watch: Watch) -> None:
        """The read model is shared with other daemons (PostgreSQL, issue #15), and each session's rows are written
        by the daemon that writes its events, once: this store folds and writes only what this daemon appends (no
        materialiser follows the log). So memory holds only the sessions this daemon writes — a `queued` view is
        handed over once committed, since any daemon may run it — and every other read is the database's.
        Waits and listeners for sessions other daemons write go through `watch` (subscriptions on their subjects)."""
        self.shared = True
        self._watch = watch

    def writable(self) -> bool:
        """False while read-model writes fail (the store is retrying them): a shared read model's daemons refuse
        new triggers then, since another daemon could not show them (issue #15)."""
        return not self._retry_at

    def health(self) -> dict[str, Any]:
        """`/health`'s `readModel`: which adapter, and whether it can be used now (writes succeed, and a shared
        database answers reads)."""
        return {"kind": "postgresql" if self.shared else "sqlite",
                "available": self.writable() and bool(getattr(self._rm, "available", True))}

    async def committed(self, session_id: str) -> None:
        """Return once the row of `session_id`, as applied so far, is committed to the read model.

        The dirty row is flushed now rather than after `FLUSH_DELAY_S`; accepts that wait together share one
        transaction (the writer thread takes every row dirty by then). While writes fail it waits for the retry
        that succeeds: callers bound it with a timeout."""
        if session_id not in self._dirty and session_id not in self._writing:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._commit_waiters.setdefault(session_id, []).append(waiter)
        if session_id in self._dirty:
            self.flush()
        try:
            await waiter
        finally:
            waiters = self._commit_waiters.get(session_id)
            if waiters is not None and waiter in waiters:
                waiters.remove(waiter)
                if not waiters:
                    del self._commit_waiters[session_id]

    def _wake_committed(self, batch: dict[str, dict[str, Any]]) -> None:
        if not self._commit_waiters:
            return
        for sid in batch:
            for waiter in self._commit_waiters.pop(sid, ()):
                if not waiter.done():
                    waiter.set_result(None)

    # ------------------------------------------------------------ reading

    @property
    def rm(self) -> ReadModelPort:
        """The read model, with every pending write committed first: the batch on the writer thread (one
        transaction, milliseconds) is waited for, and what is still dirty is written here and now.

        Not for a shared read model: its writes may wait on the network (or on a server that is down), which must
        never hold the loop. There an accept commits its row before the 202 (`committed`), and later rows follow
        within a flush (`FLUSH_DELAY_S`)."""
        if self.shared:
            return self._rm
        if self._writing:
            self._idle.wait()
        if (self._dirty or self._pending_stream_seq) and time.monotonic() >= self._retry_at:
            batch, encoded, seq = self._take_dirty()
            try:
                self._write(encoded, seq)
            except self._transient as exc:
                # The disk is full (or the file unwritable): answer from what is stored rather than fail the read,
                # and keep the rows for the next try (issue #19, bug 9).
                self._write_failed(batch, seq, exc)
            else:
                self._write_succeeded()
                self._observe_lag()
                self._wake_committed(batch)
                # The batch the writer thread committed stays in `_writing` until the loop hears of it, and
                # `view` reads it before the database: a session written newer just now must not read as it was.
                for sid in batch.keys() & self._writing.keys():
                    self._writing[sid] = batch[sid]
        return self._rm

    def _in_memory(self, session_id: str) -> dict[str, Any] | None:
        """The newest view held in memory: running, dirty, or in the batch being written."""
        return self._live.get(session_id) or self._dirty.get(session_id) or self._writing.get(session_id)

    def _base(self, session_id: str) -> dict[str, Any] | None:
        """The newest view this daemon folded, handed-over ones included: what its next write of it folds onto."""
        return self._in_memory(session_id) or self._handed.get(session_id)

    def identity(self, session_id: str) -> dict[str, Any] | None:
        """A view to read the session's fixed fields from (its ids, parent, root, correlationId), never its status:
        a handed-over view will do, which spares a shared database a read per started session."""
        return self._base(session_id) or self.view(session_id)

    def view(self, session_id: str) -> dict[str, Any] | None:
        live = self._in_memory(session_id)
        if live is not None:
            return live
        return self._rm.get_view(session_id)

    def _stored(self, read: Callable[[str], Any], session_id: str, unknown: Any) -> Any:
        """A read of the stored row on the apply path, or `unknown` while the read model cannot be read.

        Why: applying an event must not fail because a shared database is down — the event is already in the log,
        and a writer that saw its append fail would send it again (a cluster test crashed a session that way). A
        session this daemon does not hold in memory is then folded from what it has; a fold without the session's
        head has no identity and is never stored (`_take_dirty`), and the daemons that hold the whole session (all
        of them follow the log in this version) write its row once the database is back.
        """
        try:
            return read(session_id)
        except AtlasError as exc:
            if exc.code != "read_model_unavailable":
                raise
        except self._transient:
            pass
        log.debug("read model unavailable while applying an event of %s", session_id)
        return unknown

    def live_sessions(self) -> list[dict[str, Any]]:
        return list(self._live.values())

    def _last_seq(self, session_id: str) -> int:
        live = self._base(session_id)
        if live is not None:
            return int(live["lastSeq"])
        recent = self._recent_seq.get(session_id)
        if recent is not None:
            return recent
        return self._stored(self._rm.get_last_seq, session_id, 0)

    # ------------------------------------------------------------ writing

    def apply(self, event: dict[str, Any], stream_seq: int | None = None, *,
              new: bool = False) -> dict[str, Any] | None:
        """Apply one durable event; returns the new view, or None when the event was already applied.

        `new`: the caller knows the session had no event before this one on the bus (its writer's first append
        was accepted with an expected last sequence of 0), so only memory can already hold it (the materialiser
        may have applied the same event first) and SQLite need not be asked.
        """
        sid = event.get("sessionId")
        seq = event.get("seq")
        if not isinstance(sid, str) or not isinstance(seq, int):
            return None
        if self.shared:
            self._note_writer(sid, folded=stream_seq is not None)
        if new:
            known = self._in_memory(sid)
            if known is not None and seq <= int(known["lastSeq"]):
                return None
            base = known or initial_view()
        else:
            if seq <= self._last_seq(sid) and event.get("type") != "session:summary":
                if stream_seq is not None:
                    self._note(stream_seq)
                return None
            held = self._base(sid)
            if held is None or (self.shared and seq > int(held["lastSeq"]) + 1):
                # Not folded here, or (shared) events another daemon wrote since: the stored row is newer.
                held = self._stored(self._rm.get_view, sid, None) or held
            base = held or initial_view()
        view = reduce(base, event)
        if view is base:
            return None
        self._dirty[sid] = view
        if self.observer is not None:
            stamp = event.get("timestamp")
            if isinstance(stamp, str):
                self._stamps.setdefault(sid, stamp)
        if self._handed:
            self._handed.pop(sid, None)
        if stream_seq is not None:
            self._note_applied(stream_seq)
        self._schedule_flush()
        if is_terminal(view["status"]):
            self._live.pop(sid, None)
            self._remember(sid, int(view["lastSeq"]))
            for fut in self._waiters.pop(sid, []):
                if not fut.done():
                    fut.set_result(view)
        else:
            self._live[sid] = view
        for listener in list(self._listeners):
            listener(event)
        return view

    def _note_writer(self, sid: str, folded: bool) -> None:
        """Shared mode: an event applied from the log (`folded`) to a session this daemon holds nothing of makes it
        foreign (see `_foreign`); an event this daemon's writer appended makes it its own again."""
        if not folded:
            self._foreign.discard(sid)
        elif self._base(sid) is None:
            self._foreign.add(sid)

    def seed(self, event: dict[str, Any]) -> None:
        """Shared read model: the `session:queued` a runner read from the log is the base of the runner's first
        write, so taking over a session another daemon accepted costs no database read."""
        sid = event.get("sessionId")
        if self.shared and isinstance(sid, str) and event.get("seq") == 1 and self._base(sid) is None:
            self._handed[sid] = reduce(initial_view(), event)
            if len(self._handed) > self._RECENT:
                self._handed.popitem(last=False)

    def watching(self, session_id: str | None) -> AbstractAsyncContextManager[None]:
        """While entered, events other daemons append to the session (None: to any) reach the listeners too; a
        no-op unless the read model is shared (every event is folded here then)."""
        return self._watch(session_id) if self._watch is not None else contextlib.nullcontext()

    def has_applied(self, session_id: str, seq: int) -> bool:
        """Whether event `seq` of the session is already folded in (cheap: no JSON involved)."""
        return seq <= self._last_seq(session_id)

    def note_stream_seq(self, stream_seq: int) -> None:
        self._note(stream_seq)

    def _note(self, stream_seq: int) -> None:
        """Duplicates (our own events coming back) move the resume point with the next flush, never before the
        rows they stand for are written."""
        self._note_applied(stream_seq)
        self._schedule_flush()

    def _note_applied(self, stream_seq: int) -> None:
        if self.sole_writer:
            self.note_written(stream_seq)  # out-of-order sources (recovery, rebuilds) must not skip a gap
        else:
            self._pending_stream_seq = max(self._pending_stream_seq, stream_seq)

    def _schedule_flush(self) -> None:
        if self._flush_handle is not None:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self.flush()
            return
        delay = max(self.FLUSH_DELAY_S, self._retry_at - time.monotonic())
        self._flush_handle = loop.call_later(delay, self.flush)

    def flush(self) -> None:
        """Write every dirty view (once each) and the resume point in one transaction.

        In an event loop the transaction runs on the writer thread: SQLite releases the GIL while it updates
        indexes and writes pages, so the loop goes on serving requests meanwhile. Until the thread has committed,
        the batch's views stay readable from memory (`_writing`); `rm` waits for it (read-your-writes). While a
        batch is being written, new dirty rows wait for it to finish and then go together."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._dirty and not self._pending_stream_seq:
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._write(*self._take_dirty()[1:])
            return
        if not self._idle.is_set():
            self._flush_when_written = True
            return
        batch, encoded, seq = self._take_dirty()
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_forever, name="atlas-readmodel-writer", daemon=True)
            self._writer.start()
        self._writing = batch
        self._idle.clear()
        self._batches.put((loop, batch, encoded, seq))

    def _take_dirty(self) -> tuple[dict[str, dict[str, Any]], list[Any] | None, int | None]:
        """The dirty views, encoded for `upsert_encoded` (on the caller's thread: JSON needs the GIL, and the
        writer thread should hold it as little as possible), and the resume point to store with them."""
        batch = self._dirty
        headless = [sid for sid, view in batch.items() if not view.get("sessionId")]
        if headless:
            # Folded from a log whose first events aged out (retention): no identity, so no row can be written,
            # and raising here would fail every later flush too. Dropped; `atlas admin rebuild-readmodel` says so.
            log.warning("not storing %d session(s) whose log lacks its first events (e.g. %s)", len(headless),
                        headless[0])
            batch = {sid: view for sid, view in batch.items() if view.get("sessionId")}
        encoded = encode_rows((view, summarize(view)) for view in batch.values()) if batch else None
        seq = self._pending_stream_seq or None
        self._dirty = {}
        self._pending_stream_seq = 0
        if self._stamps:
            self._stamps_writing, self._stamps = self._stamps, {}
        return batch, encoded, seq

    def _observe_lag(self) -> None:
        """The batch is committed: each row's lag, from its oldest event's timestamp to now."""
        stamps, self._stamps_writing = self._stamps_writing, {}
        if self.observer is None or not stamps:
            return
        now = time.time()
        for stamp in stamps.values():
            with contextlib.suppress(ValueError):
                self.observer.row_written(now - datetime.fromisoformat(stamp).timestamp())

    def _write(self, encoded: list[Any] | None, seq: int | None) -> None:
        if encoded is not None:
            self._rm.upsert_encoded(encoded, seq)
        elif seq is not None:
            self._rm.note_stream_seq(seq)

    def _write_forever(self) -> None:
        while True:
            item = self._batches.get()
            if item is None:
                return
            loop, batch, encoded, seq = item
            error: Exception | None = None
            try:
                self._write(encoded, seq)
            except Exception as exc:
                error = exc
            finally:
                self._idle.set()
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody reads `_writing` any more
                loop.call_soon_threadsafe(self._written, batch, seq, error)

    def _written(self, batch: dict[str, dict[str, Any]], seq: int | None = None,
                 error: Exception | None = None) -> None:
        if self._writing is batch:
            self._writing = {}
        if error is None:
            self._write_succeeded()
            self._observe_lag()
            if self.shared:
                self._hand_over(batch)
            self._wake_committed(batch)
        elif isinstance(error, self._transient):  # full disk, I/O error, database down: worth another try
            self._write_failed(batch, seq, error)
        else:
            log.error("read-model write of %d sessions failed", len(batch), exc_info=error)
        if self._flush_when_written:
            self._flush_when_written = False
            self.flush()
        elif error is not None:
            self._schedule_flush()

    def _hand_over(self, batch: dict[str, dict[str, Any]]) -> None:
        """Committed `queued` views leave memory: whichever daemon runs the session writes its rows from now on,
        so a view kept here would go stale for this daemon's readers. So do committed views of foreign sessions
        (their writer is another daemon), without being kept as a base."""
        for sid, view in batch.items():
            foreign = sid in self._foreign
            if self._live.get(sid) is view:
                if view["status"] == "queued":
                    del self._live[sid]
                    self._handed[sid] = view
                    if len(self._handed) > self._RECENT:
                        self._handed.popitem(last=False)
                elif foreign:
                    del self._live[sid]
            if foreign and sid not in self._live:
                self._foreign.discard(sid)

    def _write_failed(self, batch: dict[str, dict[str, Any]], seq: int | None, error: Exception) -> None:
        """A batch that could not be written goes back to the dirty rows (unless a newer view of the session is
        dirty already) with its resume point, and is tried again after `RETRY_DELAY_S`: a full disk used to cost
        these rows until a restart replayed them (issue #19, bug 9). Logged once per run of failures.

        The newer view of a session wins, whichever batch reports first: the writer thread is idle before the loop
        hears of its failure, so a flush may have taken the next batch (a newer view of the same session) in
        between, and when that one fails too, both come back. Keeping the first to arrive dropped a session's end
        and left its row `active` for good (the PostgreSQL outage test's failure)."""
        for sid, view in batch.items():
            held = self._dirty.get(sid) or self._writing.get(sid)  # `_writing`: a later batch, if one is in flight
            if held is None or int(view.get("lastSeq", 0)) > int(held.get("lastSeq", 0)):
                self._dirty[sid] = view
        for sid, stamp in self._stamps_writing.items():
            self._stamps[sid] = stamp  # older than any stamp taken since
        self._stamps_writing = {}
        if seq is not None:
            self._pending_stream_seq = max(self._pending_stream_seq, seq)
        if not self._retry_at:
            log.error("read-model write of %d sessions failed (%s: %s); retrying every %gs", len(batch),
                      type(error).__name__, error, self.RETRY_DELAY_S)
        self._retry_at = time.monotonic() + self.RETRY_DELAY_S

    def _write_succeeded(self) -> None:
        if self._retry_at:
            log.info("read-model writes succeed again")
            self._retry_at = 0.0

    def close(self) -> None:
        """Write what is pending, stop the writer thread and close the read model."""
        if self._writer is not None:
            self._idle.wait()
            self._batches.put(None)
            self._writer.join()
            self._writer = None
        self._writing = {}
        if self._dirty or self._pending_stream_seq:
            failures: tuple[type[Exception], ...] = (sqlite3.Error, *self._transient)
            pending = len(self._dirty)
            try:
                self._write(*self._take_dirty()[1:])
            except failures as exc:  # a full disk, the database down
                if self.shared:  # nobody replays these: see docs/deploy.md, "When PostgreSQL is down"
                    log.error("%d session rows not written at stop (%s): the other daemons' recovery writes those "
                              "of running sessions; run `atlas admin rebuild-readmodel` for the rest", pending, exc)
                else:
                    log.warning("read model not fully written at stop (%s); the next start catches up from the bus",
                                exc)
        self._rm.close()

    def apply_chunk(self, chunk: dict[str, Any]) -> None:
        """Ephemeral chunks only touch the in-memory live view (never stored, spec §3.3)."""
        sid = chunk.get("sessionId")
        if isinstance(sid, str) and sid in self._live:
            self._live[sid] = apply_chunk(self._live[sid], chunk)

    def _remember(self, sid: str, seq: int) -> None:
        self._recent_seq[sid] = seq
        self._recent_seq.move_to_end(sid)
        while len(self._recent_seq) > self._RECENT:
            self._recent_seq.popitem(last=False)

    # ------------------------------------------------------------ waiting

    async def wait_terminal(self, session_id: str, timeout: float | None = None) -> dict[str, Any]:
        """The session's terminal view; raises TimeoutError after `timeout` seconds.

        Shared read model: unless this daemon holds the session, another one may write its end, which reaches this
        store through a watch of its subject (`settle`), entered after the waiter is registered so that nothing
        in between is missed."""
        view = self.view(session_id)
        if view is not None and is_terminal(view["status"]):
            return view
        fut: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(session_id, []).append(fut)
        try:
            running_here = self._live.get(session_id, {}).get("status") not in (None, "queued")
            if self._watch is None or running_here:
                return await asyncio.wait_for(asyncio.shield(fut), timeout)
            async with asyncio.timeout(timeout), self._watch(session_id):
                return await asyncio.shield(fut)
        finally:
            waiters = self._waiters.get(session_id)
            if waiters and fut in waiters:
                waiters.remove(fut)
                if not waiters:
                    self._waiters.pop(session_id, None)

    def observe(self, event: dict[str, Any]) -> None:
        """An event another daemon appended (shared read model, from a watch): shown to the listeners, not folded
        nor written — its writer writes its row. Events this store applied itself are not shown twice."""
        sid, seq = event.get("sessionId"), event.get("seq")
        if not isinstance(sid, str) or not isinstance(seq, int):
            return
        mine = self._in_memory(sid)
        if mine is not None and seq <= int(mine["lastSeq"]):
            return
        for listener in list(self._listeners):
            listener(event)

    def awaited(self, session_id: str) -> bool:
        """Whether anybody waits for the session's end (`wait_terminal`)."""
        return bool(self._waiters.get(session_id))

    def settle(self, session_id: str, view: dict[str, Any]) -> None:
        """The session's terminal view, folded from its log by a watch: wakes whoever waits for its end."""
        if not is_terminal(view.get("status")):
            return
        for fut in self._waiters.pop(session_id, []):
            if not fut.done():
                fut.set_result(view)

    def add_listener(self, listener: Listener) -> None:
        self._listeners.add(listener)

    def remove_listener(self, listener: Listener) -> None:
        self._listeners.discard(listener)
