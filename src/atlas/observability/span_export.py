"""Spans leave the daemon through a child process that encodes them for OTLP and sends them (issue #18).

Why a process: OTLP encoding is protobuf messages built field by field in Python, and on the batch processor's
thread it would hold the GIL the daemon's event loop needs. Here the daemon's `BatchSpanProcessor` (the standard
`OTEL_BSP_*` variables: queue size, batch size, delay) hands each batch to `ChildSpanExporter`, which writes it
down a pipe as plain tuples (about 1 µs a span); the child (`python -m atlas.observability.span_export`, started
with the daemon) encodes them (`atlas.observability.otlp_spans`: the bytes the SDK's encoder would make of the
same spans, at a third of its cost) and sends them through the SDK's `OTLPSpanExporter`'s HTTP client, configured
by the same `OTEL_EXPORTER_OTLP_*` variables the daemon was started with (endpoint, headers, compression, timeout,
certificates; its retries and their logging).

One module owns the pipe's format (`record_of`, the frames). The child ends when the pipe closes: at
the daemon's shutdown (after sending what it was given), and when the daemon dies, even by `kill -9`, so a killed
daemon leaves no exporter behind. It runs in its own session, so a terminal's Ctrl-C reaches the daemon only, which
then flushes its last spans through it. A slow collector fills the pipe and then the daemon's batch queue, whose
overflow the batch processor drops, as it would have dropped it in-process: the event loop never waits for it.
"""

from __future__ import annotations

import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import IO, Any

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult
from opentelemetry.trace import SpanKind, StatusCode

from atlas.observability.logs import LOG_FORMATS, configure_logging

__all__ = ["ChildSpanExporter", "exporter_environment", "record_of"]

log = logging.getLogger("atlas.tracing")

_FRAME = struct.Struct(">I")  # the length of the pickled list of records that follows
CHILD_EXIT_WAIT_S = 10.0
"""At shutdown, how long the child gets to send its last spans after the pipe is closed."""

EXPORTER_NICENESS = 10
"""How much lower the exporter process's CPU priority is than the daemon's."""

Record = tuple[Any, ...]


_KIND_VALUE = {kind: kind.value for kind in SpanKind}  # an enum's `.value` is a descriptor call; a dict is not
_CODE_VALUE = {code: code.value for code in StatusCode}


def record_of(span: ReadableSpan) -> Record:
    """The pipe's form of an ended span: what an OTLP export reads of it, as plain values (the exporter process
    reads them in this order: `atlas.observability.otlp_spans`). No trace flags: OTLP's span carries none. Made on
    the batch processor's thread, which holds the GIL the event loop needs while it does: kept lean."""
    ctx = span.context
    parent = span.parent
    status = span.status
    scope = span.instrumentation_scope
    assert ctx is not None
    state = ctx.trace_state
    return (
        span.name, ctx.trace_id, ctx.span_id, list(state.items()) if state else [],
        None if parent is None else (parent.span_id, parent.is_remote),
        _KIND_VALUE[span.kind], span.start_time, span.end_time, dict(span.attributes or {}),
        _CODE_VALUE[status.status_code], status.description,
        None if scope is None else (scope.name, scope.version),
    )


_PASSED_PREFIXES = ("OTEL_", "ATLAS_LOG_")
_PASSED_NAMES = frozenset({
    "PATH", "HOME", "LANG", "LC_ALL", "TZ", "TMPDIR", "PYTHONPATH", "VIRTUAL_ENV",
    "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy",
    "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_FILE", "SSL_CERT_DIR",
})


def exporter_environment(environ: Mapping[str, str]) -> dict[str, str]:
    """What the exporter process is given of the daemon's environment: the OpenTelemetry variables, the log format,
    and what Python and an HTTP client need (paths, proxies, CA bundles). Not the rest: the daemon's environment
    holds model API keys and other secrets an exporter has no use for."""
    return {k: v for k, v in environ.items() if k in _PASSED_NAMES or k.startswith(_PASSED_PREFIXES)}


class ChildSpanExporter(SpanExporter):
    """The daemon's side: a `SpanExporter` whose `export` writes the batch to the child (started with the exporter,
    so its start-up — a Python process importing the OTLP stack — is over before the first trigger; started again
    if it died)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self._env = exporter_environment(environ)
        self._lock = threading.Lock()  # export (the batch thread) against shutdown (the daemon)
        self._shut = False
        self._child: subprocess.Popen[bytes] | None = self._spawn()

    @property
    def child_pid(self) -> int | None:
        return self._child.pid if self._child is not None else None

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        data = pickle.dumps([record_of(span) for span in spans], protocol=pickle.HIGHEST_PROTOCOL)
        with self._lock:
            if self._shut:
                return SpanExportResult.FAILURE
            try:
                pipe = self._pipe()
                pipe.write(_FRAME.pack(len(data)) + data)
                pipe.flush()
            except (OSError, ValueError) as exc:  # the child died: the next batch starts another
                log.warning("trace exporter process failed (%s): %d spans dropped", exc, len(spans))
                self._child = None
                return SpanExportResult.FAILURE
        return SpanExportResult.SUCCESS

    def _pipe(self) -> IO[bytes]:
        child = self._child
        if child is None or child.poll() is not None:
            child = self._child = self._spawn()
        assert child.stdin is not None
        return child.stdin

    def _spawn(self) -> subprocess.Popen[bytes]:
        return subprocess.Popen([sys.executable, "-m", "atlas.observability.span_export"], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, env=self._env, start_new_session=True)

    def shutdown(self) -> None:
        """Close the pipe and wait for the child to send what it has (at most `CHILD_EXIT_WAIT_S`, then it is
        stopped: a collector that does not answer must not hold the daemon's shutdown)."""
        self._shut = True
        if not self._lock.acquire(timeout=CHILD_EXIT_WAIT_S):
            # The batch thread is stuck writing to a child that does not read (its collector does not answer).
            stuck = self._child
            if stuck is not None:
                stuck.kill()  # its write fails, and the lock is released
            self._lock.acquire()
        try:
            child, self._child = self._child, None
        finally:
            self._lock.release()
        if child is None:
            return
        try:
            if child.stdin is not None:
                child.stdin.close()
            child.wait(CHILD_EXIT_WAIT_S)
        except (OSError, subprocess.TimeoutExpired):
            log.warning("trace exporter process did not finish in %gs; stopped", CHILD_EXIT_WAIT_S)
            child.kill()
            child.wait()

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True  # what was written is the child's; it sends every batch as it reads it


def _read_frames(stream: IO[bytes]) -> Iterator[list[Record]]:
    """The batches the daemon wrote, until the pipe closes."""
    while True:
        head = stream.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return
        size = _FRAME.unpack(head)[0]
        body = stream.read(size)
        if len(body) < size:  # the daemon died mid-write: what came whole is sent
            return
        yield pickle.loads(body)


def main() -> int:
    """The child: read batches until the pipe closes, export each with the OTLP/HTTP exporter."""
    # Background work: where cores are scarce, the daemon and nats-server (a trigger's critical path) come first.
    os.nice(EXPORTER_NICENESS)
    fmt = os.environ.get("ATLAS_LOG_FORMAT", "text").strip().lower()
    configure_logging("warning", fmt if fmt in LOG_FORMATS else "text")  # into the daemon's log, in its format
    # Imported here: the daemon never needs the exporter's protobuf and HTTP stack in its own process.
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    from atlas.observability.otlp_spans import RecordEncoder
    from atlas.observability.tracing import service_resource

    encoder = RecordEncoder(service_resource())
    exporter = OTLPSpanExporter()
    # The exporter's own `export` takes SDK spans and encodes them itself; its client takes the encoded request
    # (and compresses, retries and logs as for any batch). A private name of a pinned SDK: the exporter-process
    # tests send through it, so an SDK that renames it fails them.
    client = exporter._client
    try:
        for records in _read_frames(sys.stdin.buffer):
            client.export(encoder.encode(records))
    finally:
        exporter.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
