"""OpenTelemetry traces (issue #18): one trace per accepted trigger, its spans' names and attributes.

Shape of a trace: the trigger's HTTP request span (`server_span`, joining the caller's `traceparent`) → the session
span (`session_span`, parented by the `traceparent` the accept pipeline put in the envelope and `session:queued`,
so a session run by another daemon, or started from a parked queue much later, continues the same trace) → one span
per step (`step_span`) → the model calls (`model_span`, GenAI semantic conventions) and tool calls (`tool_span`). A
cascade is accepted inside its parent's step span, so the child's envelope carries that span as its parent.

Why a `Tracing` object per daemon instead of `trace.set_tracer_provider`: the global provider can be set once per
process and would leak between in-process test daemons; each Daemon owns a `TracerProvider`, shuts it down with
itself, and hands the tracer to the components that make spans. The agents layer (model and tool spans, the
`traceparent` an `http` agent or an MCP server is sent) is reached through `active()`, a context variable the
session span sets for its own run only: the run's asyncio tasks inherit it, other runs never see it.

Off (the default) costs nothing: `Tracing.tracer` is None, every helper checks that first and returns one shared
null context manager, so no span object is made on the hot path. On, spans are made by `atlas.observability.spans`
(the SDK's span data without its per-span machinery) and leave through a child process
(`atlas.observability.span_export`), so that a traced trigger costs the event loop little more than an untraced one.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping
from contextvars import ContextVar, Token
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import SERVICE_NAME, Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import Span, SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from atlas import __version__
from atlas.errors import AtlasError
from atlas.observability.span_export import ChildSpanExporter
from atlas.observability.spans import CurrentSpan, SpanTracer

__all__ = [
    "Tracing",
    "active",
    "current_traceparent",
    "service_resource",
    "tracing_enabled",
]

DEFAULT_SERVICE_NAME = "atlasd"
TRACEPARENT = "traceparent"
SUPPORTED_PROTOCOL = "http/protobuf"

# Span attribute names. The four ids issue #18 names are the wire's own (`correlationId`, `sessionId`, `workspaceId`,
# `jobName`), so a trace is searched by the same names as the API; atlas's other attributes are namespaced
# (`atlas.*`, as OpenTelemetry asks of non-standard attributes).
CORRELATION_ID = "correlationId"
SESSION_ID = "sessionId"
WORKSPACE_ID = "workspaceId"
JOB_NAME = "jobName"
SIGNAL_ID = "atlas.signal_id"
TRIGGER = "atlas.trigger"
PARENT_SESSION_ID = "atlas.parent_session_id"
DEPTH = "atlas.depth"
STATUS = "atlas.status"
ERROR_CODE = "atlas.error_code"
STEP_NUMBER = "atlas.step.number"
STATE_ID = "atlas.step.state_id"
ACTION_TYPE = "atlas.step.action_type"
AGENT_NAME = "atlas.step.agent"
MCP_SERVER = "atlas.mcp.server"

_PROPAGATOR = TraceContextTextMapPropagator()
_NULL: contextlib.nullcontext[None] = contextlib.nullcontext()
_active: ContextVar[Tracing | None] = ContextVar("atlas_tracing", default=None)


def tracing_enabled(environ: Mapping[str, str]) -> bool:
    """On when an OTLP endpoint is configured or `ATLAS_TRACING=1`; `OTEL_SDK_DISABLED=true` wins over both."""
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    if environ.get("ATLAS_TRACING", "").strip().lower() in {"1", "true", "yes"}:
        return True
    return bool(environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def _check_protocol(environ: Mapping[str, str]) -> None:
    """Only the OTLP/HTTP protobuf exporter ships with atlas: a gRPC or JSON protocol would silently export nothing,
    so it is refused at start."""
    for name in ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"):
        value = environ.get(name, "").strip()
        if value:
            if value != SUPPORTED_PROTOCOL:
                raise AtlasError("invalid_settings",
                                 f"{name}={value} is not supported: atlas exports traces over OTLP "
                                 f"{SUPPORTED_PROTOCOL} only (unset it or set {SUPPORTED_PROTOCOL})")
            return


def service_resource() -> Resource:
    """The standard resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named `atlasd` unless they name it
    (the daemon's spans and the exporter process's alike: both read the same environment)."""
    detected = Resource.create({"service.version": __version__})
    if str(detected.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
        detected = detected.merge(Resource({SERVICE_NAME: DEFAULT_SERVICE_NAME}))
    return detected


class Tracing:
    """A daemon's tracer (or none: tracing off). Build with `from_env` (the OTLP/HTTP exporter in a child process,
    configured by the standard `OTEL_*` variables) or `with_exporter` (tests: an `InMemorySpanExporter`, spans
    exported as they end). The `TracerProvider` holds the configuration the spans are made with (resource, sampler
    from `OTEL_TRACES_SAMPLER`, id generator); the processor gets them as they end."""

    def __init__(self, provider: TracerProvider | None = None, processor: SpanProcessor | None = None) -> None:
        self.provider = provider
        self.processor = processor
        self.tracer: SpanTracer | None = None
        if provider is not None and processor is not None:
            self.tracer = SpanTracer(provider, processor, InstrumentationScope("atlas", __version__))

    @property
    def enabled(self) -> bool:
        return self.tracer is not None

    @classmethod
    def off(cls) -> Tracing:
        return cls(None)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Tracing:
        """From the process environment; raises `invalid_settings` for an OTLP protocol atlas cannot speak."""
        env = os.environ if environ is None else environ
        if not tracing_enabled(env):
            return cls.off()
        _check_protocol(env)
        provider = TracerProvider(resource=service_resource(), shutdown_on_exit=False)  # OTEL_TRACES_SAMPLER
        # OTEL_BSP_* here, OTEL_EXPORTER_OTLP_* in the exporter process (started now)
        return cls(provider, BatchSpanProcessor(ChildSpanExporter({**os.environ, **env})))

    @classmethod
    def with_exporter(cls, exporter: SpanExporter) -> Tracing:
        return cls(TracerProvider(resource=service_resource(), shutdown_on_exit=False), SimpleSpanProcessor(exporter))

    def shutdown(self) -> None:
        """Flush what is batched and stop the exporter (the daemon's last step)."""
        if self.processor is not None:
            self.processor.shutdown()
        if self.provider is not None:
            self.provider.shutdown()

    # ------------------------------------------------------------ spans

    def server_span(self, name: str, headers: Mapping[str, str],
                    attributes: Mapping[str, Any]) -> contextlib.AbstractContextManager[Any]:
        """An HTTP request's span, joining the trace of the request's `traceparent` header when it has one."""
        if self.tracer is None:
            return _NULL
        return self.tracer.start_as_current_span(name, context=_PROPAGATOR.extract(headers), kind=SpanKind.SERVER,
                                                 attributes=dict(attributes))

    def envelope_traceparent(self, envelope: Mapping[str, Any]) -> str | None:
        """The `traceparent` a new session's envelope carries: the current span (the trigger's HTTP request, or a
        cascade's step), or, for a trigger with no span around it (a schedule), a trigger span of its own that
        roots the trace. None when tracing is off."""
        if self.tracer is None:
            return None
        span = trace.get_current_span()
        if not span.get_span_context().is_valid:
            span = self.tracer.start_span(f"trigger {envelope['workspaceId']}/{envelope['signalId']}",
                                          context=Context(), attributes=session_attributes(envelope))
            span.end()
        return _traceparent_of(span)

    def session_span(self, envelope: Mapping[str, Any], job_name: str) -> contextlib.AbstractContextManager[Any]:
        """The session's span for its run on this daemon, parented by the envelope's `traceparent` (a root span
        without one: never the span of whatever task started the run); it makes this tracer the run's `active()`
        one (agents' model and tool spans)."""
        if self.tracer is None:
            return _NULL
        parent = _PROPAGATOR.extract({TRACEPARENT: envelope[TRACEPARENT]} if envelope.get(TRACEPARENT) else {})
        attrs = session_attributes(envelope)
        attrs[JOB_NAME] = job_name
        return _RunScope(self, self.tracer.start_as_current_span(f"session {envelope['workspaceId']}/{job_name}",
                                                                 context=parent, attributes=attrs))

    def step_span(self, number: int, state_id: str, action_type: str,
                  agent: str | None) -> contextlib.AbstractContextManager[Any]:
        if self.tracer is None:
            return _NULL
        attrs: dict[str, Any] = {STEP_NUMBER: number, STATE_ID: state_id, ACTION_TYPE: action_type}
        if agent:
            attrs[AGENT_NAME] = agent
        return self.tracer.start_as_current_span(f"step {state_id}", attributes=attrs)

    def model_span(self, system: str, model: str) -> contextlib.AbstractContextManager[Any]:
        """One model call (GenAI semantic conventions: span `chat {model}`, kind CLIENT); `record_model_answer`
        adds what the answer says."""
        if self.tracer is None:
            return _NULL
        return self.tracer.start_as_current_span(f"chat {model}", kind=SpanKind.CLIENT, attributes={
            "gen_ai.operation.name": "chat", "gen_ai.system": system, "gen_ai.provider.name": system,
            "gen_ai.request.model": model})

    def tool_span(self, name: str, server: str | None) -> contextlib.AbstractContextManager[Any]:
        """One tool call (GenAI `execute_tool {name}`), with the MCP server that runs it."""
        if self.tracer is None:
            return _NULL
        attrs: dict[str, Any] = {"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": name}
        if server:
            attrs[MCP_SERVER] = server
        return self.tracer.start_as_current_span(f"execute_tool {name}", kind=SpanKind.INTERNAL, attributes=attrs)


class _RunScope:
    """The session span's block: the span is current and `tracing` is the run's `active()` one inside it (set
    first, reset last). A class, not a generator: it is entered once per session on the event loop."""

    __slots__ = ("_current", "_token", "_tracing")

    def __init__(self, tracing: Tracing, current: CurrentSpan) -> None:
        self._tracing = tracing
        self._current = current
        self._token: Token[Tracing | None] | None = None

    def __enter__(self) -> Any:
        self._token = _active.set(self._tracing)
        return self._current.__enter__()

    def __exit__(self, *exc_info: object) -> None:
        try:
            self._current.__exit__(*exc_info)
        finally:
            if self._token is not None:
                _active.reset(self._token)


def session_attributes(envelope: Mapping[str, Any]) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        SESSION_ID: envelope["sessionId"],
        CORRELATION_ID: envelope["correlationId"],
        WORKSPACE_ID: envelope["workspaceId"],
        SIGNAL_ID: envelope["signalId"],
        TRIGGER: envelope.get("trigger") or "",
        DEPTH: int(envelope.get("depth") or 0),
    }
    if envelope.get("parentSessionId"):
        attrs[PARENT_SESSION_ID] = envelope["parentSessionId"]
    return attrs


def end_status(span: Span | None, status: str, code: str | None) -> None:
    """A session's or step's outcome on its span: anything but `completed` is an error status."""
    if span is None or not span.is_recording():
        return
    span.set_attribute(STATUS, status)
    if code:
        span.set_attribute(ERROR_CODE, code)
    if status not in ("completed", "skipped"):
        span.set_attribute("error.type", code or status)
        span.set_status(Status(StatusCode.ERROR, code or status))


def mark_error(span: Any, error_type: str) -> None:
    """An error status with only its kind (`error.type`): messages may carry what a span must not export."""
    if span is None or not span.is_recording():
        return
    span.set_attribute("error.type", error_type)
    span.set_status(Status(StatusCode.ERROR))


def record_model_answer(span: Any, model: str | None, input_tokens: int, output_tokens: int,
                        finish_reason: str | None) -> None:
    if span is None or not span.is_recording():
        return
    if model:
        span.set_attribute("gen_ai.response.model", model)
    span.set_attribute("gen_ai.usage.input_tokens", input_tokens)
    span.set_attribute("gen_ai.usage.output_tokens", output_tokens)
    if finish_reason:
        span.set_attribute("gen_ai.response.finish_reasons", [finish_reason])


def active() -> Tracing | None:
    """The tracer of the session run this code belongs to (set by `session_span`), else None."""
    return _active.get()


def _traceparent_of(span: Span) -> str | None:
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier, trace.set_span_in_context(span))
    return carrier.get(TRACEPARENT)


def current_traceparent() -> str | None:
    """The W3C `traceparent` of the current span, to send on (an `http` agent's request, an MCP call's `_meta`);
    None outside a traced run."""
    span = trace.get_current_span()
    if not span.get_span_context().is_valid:
        return None
    return _traceparent_of(span)

