"""atlas's own span path (issue #18): spans made by `atlas.observability.spans` and exported by a child process
(`atlas.observability.span_export`).

What must hold for that path to be a faithful stand-in for the SDK's: a span sent down the pipe and rebuilt in the
child encodes to the very same OTLP bytes; the sampler of `OTEL_TRACES_SAMPLER` decides as it does for the SDK; the
child sends everything it was given before the daemon's shutdown returns; and a daemon killed with `kill -9` leaves
no exporter process behind, which was never given the daemon's secrets.
"""

from __future__ import annotations

import os
import signal
import zlib
from pathlib import Path

import httpx
import pytest
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, sampling
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, StatusCode, TraceFlags, TraceState
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
from opentelemetry.trace.status import Status

from atlas.observability.otlp_spans import RecordEncoder
from atlas.observability.span_export import ChildSpanExporter, record_of
from atlas.observability.tracing import Tracing, mark_error, record_model_answer
from tests.daemon_proc import DaemonProcess, exporter_pid, wait_for
from tests.test_tracing import WS, _Receiver, serving, workspace

CALLER = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
CALLER_UNSAMPLED = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
SECRET = "sk-not-for-the-exporter-0123456789"


def _traced() -> tuple[Tracing, InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    return Tracing.with_exporter(exporter), exporter


def _a_small_trace(tracing: Tracing, headers: dict[str, str]) -> None:
    """A request span joining the caller's trace, a child with a failed status, a model span with a list attribute."""
    assert tracing.tracer is not None
    with tracing.server_span("POST /x", headers, {"http.route": "/x", "n": 3}) as request:
        request.set_attribute("http.response.status_code", 202)
        with tracing.tracer.start_as_current_span("child", kind=SpanKind.INTERNAL) as child:
            mark_error(child, "boom")
        with tracing.model_span("openai", "m") as model:
            record_model_answer(model, "m-1", 5, 7, "stop")


def test_a_span_sent_through_the_pipe_encodes_to_the_same_otlp_bytes() -> None:
    tracing, exporter = _traced()
    _a_small_trace(tracing, {"traceparent": CALLER, "tracestate": "vendor=abc"})
    spans = exporter.get_finished_spans()
    assert [s.name for s in spans] == ["child", "chat m", "POST /x"]
    assert tracing.provider is not None
    # What the exporter process sends is byte for byte what the SDK's encoder makes of the daemon's spans.
    sent = RecordEncoder(tracing.provider.resource).encode([record_of(s) for s in spans])
    assert sent == encode_spans(spans).SerializeToString()

    child, model, request = spans
    assert request.parent is not None and request.parent.is_remote
    assert format(request.parent.span_id, "016x") == "b7ad6b7169203331"
    assert request.context is not None and request.context.trace_state.get("vendor") == "abc"
    assert child.parent is not None and child.parent.span_id == request.context.span_id
    assert child.status.status_code == StatusCode.ERROR and (child.attributes or {})["error.type"] == "boom"
    assert (model.attributes or {})["gen_ai.response.finish_reasons"] == ("stop",)
    assert model.kind == SpanKind.CLIENT and (request.attributes or {})["n"] == 3


def _span(name: str, attributes: dict[str, object], *, parent: SpanContext | None = None,
          scope: InstrumentationScope | None = None, kind: SpanKind = SpanKind.INTERNAL,
          status: Status | None = None, state: TraceState | None = None, resource: Resource) -> ReadableSpan:
    context = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, zlib.crc32(name.encode()) + 1, is_remote=False,
                          trace_flags=TraceFlags(1), trace_state=state or TraceState())
    return ReadableSpan(name=name, context=context, parent=parent, resource=resource, attributes=attributes,
                        kind=kind, status=status or Status(StatusCode.UNSET), start_time=1_700_000_000_000_000_001,
                        end_time=1_700_000_000_123_456_789, instrumentation_scope=scope)


def test_every_attribute_type_scope_kind_and_status_encodes_as_the_sdk_does() -> None:
    """The encoder against the SDK's, over what a span can hold: each attribute value type (lists, an empty one, a
    mapping, bytes, a value neither can encode), scopes with and without a version and none at all, every kind,
    each status, a remote and a local parent, a trace state; and a resource with a schema URL."""
    resource = Resource({"service.name": "atlasd", "host.cores": 2, "deployment.blue": True,
                         "process.command_args": ("atlas", "daemon", "start")}, "https://opentelemetry.io/schemas/1.4.0")
    values: dict[str, object] = {
        "s": "text ünïcode", "empty": "", "t": True, "f": False, "i": -7, "zero": 0, "big": 2**62, "x": 0.25,
        "strs": ["a", "b"], "ints": (1, 2, 3), "bools": [True, False], "floats": [1.5], "none_list": [],
        "bytes": b"\x00\xff", "map": {"k": "v", "n": 1}, "bad": object(), "after_bad": "kept"}
    remote = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, is_remote=True,
                         trace_flags=TraceFlags(1))
    local = SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0x1111111111111111, is_remote=False,
                        trace_flags=TraceFlags(0))
    spans = [
        _span("root", values, resource=resource, kind=SpanKind.SERVER, state=TraceState([("vendor", "abc"),
                                                                                         ("other", "1")])),
        _span("remote child", {"n": 1}, parent=remote, kind=SpanKind.CLIENT, resource=resource,
              scope=InstrumentationScope("atlas", "1.0"), status=Status(StatusCode.ERROR, "boom")),
        _span("local child", {}, parent=local, kind=SpanKind.PRODUCER, resource=resource,
              scope=InstrumentationScope("atlas", None), status=Status(StatusCode.OK)),
        _span("consumer", {"n": 2}, kind=SpanKind.CONSUMER, resource=resource,
              scope=InstrumentationScope("atlas", "1.0")),
        _span("no scope again", {"n": 3}, resource=resource),
    ]
    sdk = encode_spans(spans)
    assert RecordEncoder(resource).encode([record_of(s) for s in spans]) == sdk.SerializeToString()
    # The comparison is not vacuous: the SDK's request holds three scopes, the skipped attribute and the rest.
    [resource_spans] = sdk.resource_spans
    assert resource_spans.schema_url.endswith("1.4.0") and len(resource_spans.scope_spans) == 3
    root_keys = [kv.key for kv in resource_spans.scope_spans[0].spans[0].attributes]
    assert "bad" not in root_keys and root_keys[-1] == "after_bad" and len(root_keys) == len(values) - 1


def test_a_finished_span_takes_no_more_writes() -> None:
    tracing, exporter = _traced()
    assert tracing.tracer is not None
    span = tracing.tracer.start_span("once")
    span.end()
    span.set_attribute("late", 1)
    span.set_status(StatusCode.ERROR)
    span.end()
    [exported] = exporter.get_finished_spans()
    assert "late" not in (exported.attributes or {}) and exported.status.status_code == StatusCode.UNSET
    assert not span.is_recording()


def test_the_sampler_of_otel_traces_sampler_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    # The default (parentbased_always_on): a caller's unsampled trace is followed, not recorded.
    tracing, exporter = _traced()
    with tracing.server_span("POST /x", {"traceparent": CALLER_UNSAMPLED}, {}) as span:
        assert not span.is_recording()
        assert tracing.envelope_traceparent({"workspaceId": WS, "signalId": "s"}) is not None
    assert exporter.get_finished_spans() == ()

    monkeypatch.setenv("OTEL_TRACES_SAMPLER", "always_off")
    tracing, exporter = _traced()
    with tracing.server_span("POST /x", {"traceparent": CALLER}, {}) as span:
        assert not span.is_recording()
        # The trace still goes on, marked unsampled, so services called from the run agree.
        carrier: dict[str, str] = {}
        TraceContextTextMapPropagator().inject(carrier, trace.set_span_in_context(span))
        assert carrier["traceparent"].startswith("00-0af7651916cd43dd8448eb211c80319c-")
        assert carrier["traceparent"].endswith("-00")
    assert exporter.get_finished_spans() == ()


@pytest.mark.parametrize("parent", [
    None,
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(1), TraceState([("k", "v")])),
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, True, TraceFlags(0), TraceState([("k", "v")])),
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(1)),
    SpanContext(0x0AF7651916CD43DD8448EB211C80319C, 0xB7AD6B7169203331, False, TraceFlags(0), TraceState([("a", "b")])),
], ids=["root", "remote-sampled", "remote-unsampled", "local-sampled", "local-unsampled"])
def test_the_default_sampler_decides_as_the_sdks_tracer(parent: SpanContext | None) -> None:
    # atlas decides the default sampler (parentbased_always_on) without calling it: the same decision, flags,
    # trace state, parent and attributes as the SDK's own tracer makes of the same provider.
    tracing, exporter = _traced()
    assert tracing.tracer is not None and tracing.provider is not None
    assert tracing.provider.sampler is sampling.DEFAULT_ON
    context = trace.set_span_in_context(trace.NonRecordingSpan(parent), Context()) if parent else Context()
    attributes = {"a": 1, "b": ["x", "y"]}
    ours = tracing.tracer.start_span("s", context=context, attributes=attributes)
    sdks = tracing.provider.get_tracer("t").start_span("s", context=context, attributes=attributes)
    for span in (ours, sdks):
        span.end()
    mine, theirs = ours.get_span_context(), sdks.get_span_context()
    assert ours.is_recording() is sdks.is_recording() is False
    assert (mine.trace_flags, mine.trace_state, mine.is_remote) == (theirs.trace_flags, theirs.trace_state,
                                                                     theirs.is_remote)
    if parent is not None:
        assert mine.trace_id == theirs.trace_id == parent.trace_id
    sampled = parent is None or parent.trace_flags.sampled
    assert mine.trace_flags.sampled is sampled
    finished = exporter.get_finished_spans()  # ours only: the SDK's tracer has no processor here
    assert len(finished) == (1 if sampled else 0)
    if sampled:
        assert isinstance(sdks, ReadableSpan)
        assert [(s.parent, dict(s.attributes or {}), s.kind) for s in (finished[0], sdks)] == [
            (parent, {"a": 1, "b": ("x", "y")}, SpanKind.INTERNAL)] * 2


def test_the_exporter_process_sends_every_batch_before_shutdown_returns() -> None:
    receiver = _Receiver()
    tracing, memory = _traced()
    for _ in range(3):
        _a_small_trace(tracing, {"traceparent": CALLER})
    spans = memory.get_finished_spans()
    with serving(receiver.handler()) as url:
        exporter = ChildSpanExporter({**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": url})
        assert exporter.export(spans[:4]).name == "SUCCESS"
        assert exporter.export(spans[4:]).name == "SUCCESS"
        child = exporter.child_pid
        exporter.shutdown()
        assert exporter.export(spans).name == "FAILURE"  # after shutdown nothing is taken
    assert child is not None and not _alive(child)
    with receiver.lock:
        got = [span for _, span in receiver.spans]
    assert sorted((s.span_id.hex(), s.name) for s in got) == sorted(
        (format(s.context.span_id, "016x"), s.name) for s in spans if s.context is not None)
    assert {s.trace_id.hex() for s in got} == {"0af7651916cd43dd8448eb211c80319c"}


def _alive(pid: int) -> bool:
    """Running, as opposed to gone or a zombie nobody has reaped yet."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def test_a_killed_daemon_leaves_no_exporter_process_and_it_never_saw_a_secret(tmp_path: Path) -> None:
    receiver = _Receiver()
    with serving(receiver.handler()) as url:
        d = DaemonProcess(tmp_path / "home", [workspace(tmp_path, "http://127.0.0.1:9/v1")], env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_BSP_SCHEDULE_DELAY": "50", "OPENAI_API_KEY": SECRET}).start()
        try:
            r = httpx.post(f"{d.url}/api/workspaces/{WS}/signals/echo", json={"payload": {}}, timeout=60)
            assert r.status_code == 200, r.text
            assert d.proc is not None
            daemon_pid = d.proc.pid

            def started() -> bool:
                with receiver.lock:
                    return bool(receiver.spans)

            wait_for(started, 30, what="the first spans at the collector")
            child = exporter_pid(daemon_pid)
            assert child is not None and _alive(child)
            # Given what it needs of the daemon's environment, and none of its secrets.
            environ = dict(item.split(b"=", 1) for item in Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
                           if b"=" in item)
            assert environ[b"OTEL_EXPORTER_OTLP_ENDPOINT"] == url.encode()
            assert b"OPENAI_API_KEY" not in environ and SECRET.encode() not in b"".join(environ.values())
            os.kill(daemon_pid, signal.SIGKILL)
            wait_for(lambda: not _alive(child), 30, what="the exporter process to end with its daemon")
        finally:
            d.stop()
