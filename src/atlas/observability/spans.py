"""atlas's tracer: spans made the cheap way, as the OpenTelemetry SDK's own `ReadableSpan` data (issue #18).

Why not the SDK's `Tracer`: a traced trigger makes three spans on the daemon's one event loop (the HTTP request,
the session, its step), and the SDK's `Span` costs 15–25 µs to start and end (a lock and a bounded dict per span,
attribute values checked one by one against ABCs, tracer metrics). Measured in `bench/tracing_overhead.py`, that
alone put tracing on at 0.82× of off even with an exporter that threw every span away (issue #18 asks for 0.85×).

What this module keeps from the SDK: the `TracerProvider`'s configuration (its sampler from `OTEL_TRACES_SAMPLER`,
its id generator, its resource), the span data model (`RecordingSpan` *is* a `ReadableSpan`, so every SDK span
processor and exporter — the batch processor, the OTLP encoder, the in-memory exporter of the tests — takes it as
it is) and the API's context handling (`attach`/`detach` of the span's context, `get_current_span`, W3C
propagation). What it leaves out: span limits (atlas sets a handful of attributes of its own, never user data),
span events and links (atlas records none: an exception's message may carry a secret), and the SDK's internal
metrics. The default sampler (`parentbased_always_on`) is decided inline, as it decides; any other is called.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextvars import Token
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor, TracerProvider, sampling
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Link, NonRecordingSpan, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util.types import AttributeValue

__all__ = ["CurrentSpan", "RecordingSpan", "SpanTracer"]

# A new span's trace flags, by [sampled][random trace id].
_FLAGS = ((TraceFlags(TraceFlags.DEFAULT), TraceFlags(TraceFlags.RANDOM_TRACE_ID)),
          (TraceFlags(TraceFlags.SAMPLED), TraceFlags(TraceFlags.SAMPLED | TraceFlags.RANDOM_TRACE_ID)))
_UNSET = Status(StatusCode.UNSET)


class RecordingSpan(trace_api.Span, ReadableSpan):
    """A span being recorded: the API's `Span` (what the code that traces calls) on the SDK's `ReadableSpan` (what
    processors and exporters read). Ended once; the processor gets the span itself, no copy. Not thread-safe: a
    span belongs to the task that opened it (atlas's spans live on the event loop)."""

    def __init__(self, name: str, context: SpanContext, parent: SpanContext | None, kind: SpanKind,
                 attributes: dict[str, AttributeValue], start_time: int, tracer: SpanTracer) -> None:
        ReadableSpan.__init__(self, name=name, context=context, parent=parent, resource=tracer.resource,
                              attributes=attributes, kind=kind, status=_UNSET, start_time=start_time,
                              instrumentation_scope=tracer.scope)
        self._processor = tracer.processor
        self._attrs = attributes  # the dict ReadableSpan exposes read-only; set_attribute writes here

    def end(self, end_time: int | None = None) -> None:
        if self._end_time is not None:
            return
        self._end_time = end_time if end_time is not None else time.time_ns()
        self._processor.on_end(self)

    def get_span_context(self) -> SpanContext:
        return self._context  # type: ignore[return-value]  # always set: built with one

    def is_recording(self) -> bool:
        return self._end_time is None

    def set_attribute(self, key: str, value: AttributeValue) -> None:
        if self._end_time is None and value is not None:
            self._attrs[key] = tuple(value) if isinstance(value, list) else value

    def set_attributes(self, attributes: Mapping[str, AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end_time is None:
            self._status = status if isinstance(status, Status) else Status(status, description)

    def update_name(self, name: str) -> None:
        if self._end_time is None:
            self._name = name

    def add_event(self, name: str, attributes: Mapping[str, AttributeValue] | None = None,
                  timestamp: int | None = None) -> None:
        """Not recorded (see the module's docstring)."""

    def add_link(self, context: SpanContext, attributes: Mapping[str, AttributeValue] | None = None) -> None:
        """Not recorded (see the module's docstring)."""

    def record_exception(self, exception: BaseException, attributes: Mapping[str, AttributeValue] | None = None,
                         timestamp: int | None = None, escaped: bool = False) -> None:
        """Never recorded: an exception's message may carry a secret; atlas marks failures with their code."""


class SpanTracer:
    """Starts `RecordingSpan`s as the SDK's tracer would (same parent rules, sampler and ids) and hands each ended
    one to `processor` (a `BatchSpanProcessor` in a daemon, a `SimpleSpanProcessor` in tests). The API's `Tracer`
    methods, without its base class (whose context-manager type ties it to the API's own decorator)."""

    def __init__(self, provider: TracerProvider, processor: SpanProcessor, scope: InstrumentationScope) -> None:
        self.resource: Resource = provider.resource
        self.sampler = provider.sampler
        self.ids = provider.id_generator
        self.processor = processor
        self.scope = scope
        self._parent_based_always_on = provider.sampler is sampling.DEFAULT_ON  # OTEL_TRACES_SAMPLER's default
        self._random_ids = self.ids.is_trace_id_random()

    def start_span(self, name: str, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
                   attributes: Mapping[str, AttributeValue] | None = None, links: Sequence[Link] | None = None,
                   start_time: int | None = None) -> trace_api.Span:
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = self.ids.generate_trace_id()
        else:
            trace_id = parent.trace_id
        # W3C trace context level 2, as the SDK's tracer: a trace id this generator made at random says so.
        random_id = self._random_ids if parent is None else parent.trace_flags.random_trace_id
        if self._parent_based_always_on:
            # The default sampler's decision without its three calls: follow the parent's sampled flag, sample a
            # root; the trace state is the parent's (what `ParentBased(ALWAYS_ON)` returns, tested against it).
            sampled = recording = parent is None or parent.trace_flags.sampled
            trace_state = None if parent is None else parent.trace_state
            kept = attributes
        else:
            result = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
            sampled, recording = result.decision.is_sampled(), result.decision.is_recording()
            trace_state, kept = result.trace_state, result.attributes
        span_context = SpanContext(trace_id, self.ids.generate_span_id(), is_remote=False,
                                   trace_flags=_FLAGS[sampled][random_id], trace_state=trace_state)
        if not recording:
            return NonRecordingSpan(span_context)  # still carries the trace on (a `traceparent`, unsampled)
        # As the SDK keeps them: no None, sequences frozen.
        attrs: dict[str, AttributeValue] = {k: tuple(v) if isinstance(v, list) else v
                                            for k, v in (kept or {}).items() if v is not None}
        return RecordingSpan(name, span_context, parent, kind, attrs,
                             start_time if start_time is not None else time.time_ns(), self)

    def start_as_current_span(self, name: str, context: Context | None = None, kind: SpanKind = SpanKind.INTERNAL,
                              attributes: Mapping[str, AttributeValue] | None = None,
                              links: Sequence[Link] | None = None, start_time: int | None = None) -> CurrentSpan:
        """A new span, current inside the `with` block and ended when it is left. An exception leaving the block
        is neither recorded nor made the span's status (its message may carry a secret): the code that traces
        marks a failure with its atlas code (`tracing.end_status`, `tracing.mark_error`)."""
        return CurrentSpan(self.start_span(name, context, kind, attributes, links, start_time))


class CurrentSpan:
    """What the API's `use_span(span, end_on_exit=True, record_exception=False, set_status_on_exception=False)`
    does, as one small object instead of two generator context managers (a fifth of a span's cost on the event
    loop): the span is the context's current one inside the block and ends when the block is left."""

    __slots__ = ("_token", "span")

    def __init__(self, span: trace_api.Span) -> None:
        self.span = span
        self._token: Token[Context] | None = None

    def __enter__(self) -> Any:
        self._token = context_api.attach(trace_api.set_span_in_context(self.span))
        return self.span

    def __exit__(self, *exc_info: object) -> None:
        try:
            if self._token is not None:
                context_api.detach(self._token)
        finally:
            self.span.end()
