"""OpenTelemetry traces (issue #18, item 2) from real daemons.

In-process daemons get a `Tracing` whose provider exports to the SDK's `InMemorySpanExporter` (the Daemon's seam),
and are driven over their real ASGI app, so the HTTP request span is the route's own. One daemon in a child process
exports with the real OTLP/HTTP exporter to a receiver in this test, which decodes the protobuf with
`opentelemetry-proto`. Models are the scripted server (`tests.fake_models`); tools a real MCP server over stdio.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from atlas.api.app import create_app
from atlas.config.settings import Settings
from atlas.errors import AtlasError
from atlas.llm import retry
from atlas.observability.tracing import Tracing
from atlas.runtime.daemon import Daemon
from tests.daemon_proc import DaemonProcess, wait_for
from tests.fake_models import FakeModels, Reply, ToolCall, fake_models
from tests.mcp_servers import REPO, tools_server_argv

WS = "traced"
LLM_KEY = "sk-tracing-test-0123456789"
TRIGGER_ROUTE = "POST /api/workspaces/{workspace_id}/signals/{signal_id}"


def workspace(root: Path, model_url: str, http_url: str = "http://127.0.0.1:9/") -> Path:
    argv = tools_server_argv("stdio")
    config = {
        "version": "1.0",
        "workspace": {"id": WS, "name": "Traced"},
        "signals": {name: {"provider": "http", "concurrency": "concurrent", "config": {"path": f"/{name}"}}
                    for name in ("parent", "child", "ask", "call", "echo")},
        "tools": {"mcp": {"servers": {"t": {
            "transport": {"type": "stdio", "command": argv[0], "args": argv[1:]},
            "env": {"PYTHONPATH": str(REPO)},
        }}}},
        "agents": {
            "adder": {"type": "llm", "config": {
                "provider": "openai", "base_url": model_url, "api_key_env": "ATLAS_TEST_LLM_KEY",
                "model": "m", "prompt": "Add the numbers", "tools": ["add", "traceparent"]}},
            "caller": {"type": "http", "config": {"url": http_url, "method": "POST", "json": {"x": 1}}},
        },
        "jobs": {
            "parent": {"triggers": [{"signal": "parent"}], "fsm": {
                "initial": "idle",
                "states": {
                    "idle": {"on": {"parent": {"target": "send"}}},
                    "send": {"entry": [{"type": "signal", "signal": "child", "wait": True, "outputTo": "child"},
                                       {"type": "emit", "event": "ADVANCE"}],
                             "on": {"ADVANCE": {"target": "done"}}},
                    "done": {"type": "final"},
                }}},
            "child": {"triggers": [{"signal": "child"}],
                      "execution": {"strategy": "sequential", "agents": ["atlas/echo"]}},
            "echo": {"triggers": [{"signal": "echo"}],
                     "execution": {"strategy": "sequential", "agents": ["atlas/echo"]}},
            "ask": {"triggers": [{"signal": "ask"}], "execution": {"strategy": "sequential", "agents": ["adder"]}},
            "call": {"triggers": [{"signal": "call"}], "execution": {"strategy": "sequential", "agents": ["caller"]}},
        },
    }
    path = root / "ws"
    path.mkdir(exist_ok=True)
    (path / "workspace.yml").write_text(json.dumps(config, indent=1))
    return path


@pytest.fixture
def fake(monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeModels]:
    monkeypatch.setenv("ATLAS_TEST_LLM_KEY", LLM_KEY)
    monkeypatch.setattr(retry, "RETRY_BACKOFF", (0.0,))
    with fake_models() as server:
        yield server


@asynccontextmanager
async def traced_daemon(tmp_path: Path, ws: Path) -> AsyncIterator[tuple[Daemon, httpx.AsyncClient,
                                                                         InMemorySpanExporter]]:
    """An in-process daemon whose spans go to an in-memory exporter, and a client on its ASGI app."""
    exporter = InMemorySpanExporter()
    settings = dataclasses.replace(Settings.from_env().with_overrides(home=tmp_path / "home", workspaces=(ws,)),
                                   nats_url=None)
    daemon = Daemon(settings, tracing=Tracing.with_exporter(exporter))
    try:
        await daemon.start()
        transport = httpx.ASGITransport(app=create_app(daemon))
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8080", timeout=60) as http:
            yield daemon, http, exporter
    finally:
        await daemon.stop()


async def trigger(http: httpx.AsyncClient, signal: str, headers: dict[str, str] | None = None) -> str:
    r = await http.post(f"/api/workspaces/{WS}/signals/{signal}?nowait=true", json={"payload": {}},
                        headers=headers or {})
    assert r.status_code == 202, r.text
    return str(r.json()["sessionId"])


async def finished(daemon: Daemon, sid: str) -> dict[str, Any]:
    view = await daemon.store.wait_terminal(sid, 60)
    assert view["status"] == "completed", view
    return view


async def spans_when(exporter: InMemorySpanExporter, done: Any, what: str) -> list[ReadableSpan]:
    """The finished spans once `done(spans)` holds (the session span ends just after `session:complete`)."""
    def ready() -> list[ReadableSpan] | None:
        spans = list(exporter.get_finished_spans())
        return spans if done(spans) else None
    return await asyncio.to_thread(wait_for, ready, 30.0, 0.02, what)


def session_span(spans: list[ReadableSpan], sid: str) -> ReadableSpan:
    [span] = [s for s in spans if s.name.startswith("session ")
              and (s.attributes or {}).get("sessionId") == sid]
    return span


def children(spans: list[ReadableSpan], parent: ReadableSpan) -> list[ReadableSpan]:
    return [s for s in spans if s.parent is not None and s.parent.span_id == parent.context.span_id]


def trace_hex(span: ReadableSpan) -> str:
    return format(span.context.trace_id, "032x")


# ---------------------------------------------------------------- one trace per trigger


async def test_a_cascade_is_one_trace_with_its_parent_links(tmp_path: Path) -> None:
    async with traced_daemon(tmp_path, workspace(tmp_path, "http://127.0.0.1:9/v1")) as (d, http, exporter):
        parent_id = await trigger(http, "parent")
        parent = await finished(d, parent_id)
        child_id = parent["agentBlocks"][0]["childSessionId"]
        child = await finished(d, child_id)
        spans = await spans_when(exporter, lambda ss: sum(s.name.startswith("session ") for s in ss) == 2,
                                 "both session spans")
        listed = (await http.get("/api/sessions", params={"correlationId": parent["correlationId"]})).json()

    assert len({s.context.trace_id for s in spans}) == 1, [s.name for s in spans]
    [request] = [s for s in spans if s.kind == SpanKind.SERVER]
    assert request.name == TRIGGER_ROUTE and request.parent is None
    assert (request.attributes or {})["http.response.status_code"] == 202
    assert (request.attributes or {})["http.route"] == "/api/workspaces/{workspace_id}/signals/{signal_id}"

    parent_span = session_span(spans, parent_id)
    assert parent_span.parent is not None and parent_span.parent.span_id == request.context.span_id
    assert parent_span.name == f"session {WS}/parent"
    attrs = parent_span.attributes or {}
    assert attrs["correlationId"] == parent["correlationId"]
    assert attrs["workspaceId"] == WS and attrs["jobName"] == "parent"
    assert attrs["atlas.status"] == "completed"
    [signal_step] = children(spans, parent_span)
    assert signal_step.name == "step send"
    assert (signal_step.attributes or {})["atlas.step.action_type"] == "signal"

    # The child was accepted inside the parent's step: its session span hangs from that step.
    child_span = session_span(spans, child_id)
    assert child_span.parent is not None and child_span.parent.span_id == signal_step.context.span_id
    child_attrs = child_span.attributes or {}
    assert child_attrs["correlationId"] == parent["correlationId"]  # the tree's id, on every session
    assert child_attrs["atlas.parent_session_id"] == parent_id and child_attrs["atlas.depth"] == 1
    [child_step] = children(spans, child_span)
    assert child_step.name.startswith("step ") and child_step.status.status_code != StatusCode.ERROR

    # The views and summaries carry the trace id.
    trace_id = trace_hex(request)
    assert parent["traceId"] == child["traceId"] == trace_id
    assert {s["sessionId"]: s.get("traceId") for s in listed["sessions"]} == {parent_id: trace_id, child_id: trace_id}


async def test_a_trigger_joins_the_callers_trace(tmp_path: Path) -> None:
    caller_trace, caller_span = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    async with traced_daemon(tmp_path, workspace(tmp_path, "http://127.0.0.1:9/v1")) as (d, http, exporter):
        sid = await trigger(http, "echo", {"traceparent": f"00-{caller_trace}-{caller_span}-01"})
        view = await finished(d, sid)
        spans = await spans_when(exporter, lambda ss: any(s.name.startswith("session ") for s in ss), "session span")
        untraced = await trigger(http, "echo")  # no header: a trace of its own
        other = await finished(d, untraced)

    assert view["traceId"] == caller_trace
    [request] = [s for s in spans if s.kind == SpanKind.SERVER]
    assert trace_hex(request) == caller_trace
    assert request.parent is not None and format(request.parent.span_id, "016x") == caller_span
    assert request.parent.is_remote
    assert trace_hex(session_span(spans, sid)) == caller_trace
    assert other["traceId"] != caller_trace and len(other["traceId"]) == 32


async def test_an_llm_step_has_model_and_tool_spans(tmp_path: Path, fake: FakeModels) -> None:
    fake.enqueue(Reply(tool_calls=[ToolCall("add", {"a": 2, "b": 3}, id="c1"), ToolCall("traceparent", {}, id="c2")],
                       usage=(11, 4), model="served-model-1"),
                 Reply(text=["5"], usage=(20, 3), model="served-model-2"))
    async with traced_daemon(tmp_path, workspace(tmp_path, fake.openai_url)) as (d, http, exporter):
        sid = await trigger(http, "ask")
        view = await finished(d, sid)
        spans = await spans_when(exporter, lambda ss: any(s.name.startswith("session ") for s in ss), "session span")

    [step] = children(spans, session_span(spans, sid))
    assert step.name.startswith("step ") and (step.attributes or {})["atlas.step.agent"] == "adder"
    below = children(spans, step)
    models = sorted((s for s in below if s.name == "chat m"), key=lambda s: s.start_time or 0)
    assert [(s.kind, dict(s.attributes or {})) for s in models] == [
        (SpanKind.CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.provider.name": "openai",
                           "gen_ai.request.model": "m", "gen_ai.response.model": "served-model-1",
                           "gen_ai.usage.input_tokens": 11, "gen_ai.usage.output_tokens": 4,
                           "gen_ai.response.finish_reasons": ("tool_calls",)}),
        (SpanKind.CLIENT, {"gen_ai.operation.name": "chat", "gen_ai.system": "openai", "gen_ai.provider.name": "openai",
                           "gen_ai.request.model": "m", "gen_ai.response.model": "served-model-2",
                           "gen_ai.usage.input_tokens": 20, "gen_ai.usage.output_tokens": 3,
                           "gen_ai.response.finish_reasons": ("stop",)}),
    ]
    tools = {str((s.attributes or {})["gen_ai.tool.name"]): s for s in below if s.name.startswith("execute_tool ")}
    assert set(tools) == {"add", "traceparent"}
    assert all((s.attributes or {})["atlas.mcp.server"] == "t" for s in tools.values())
    # The MCP server got the tool span's context in the call's `_meta`.
    calls = {c["toolName"]: c for c in view["agentBlocks"][0]["toolCalls"]}
    sent = tools["traceparent"].context
    assert calls["traceparent"]["result"].startswith(f"00-{sent.trace_id:032x}-{sent.span_id:016x}-")
    assert LLM_KEY not in json.dumps([dict(s.attributes or {}) for s in spans])


async def test_an_http_agent_sends_the_steps_traceparent(tmp_path: Path) -> None:
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            seen.append(self.headers.get("traceparent"))
            self.rfile.read(int(self.headers.get("content-length") or 0))
            body = b'{"ok": true}'
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    with serving(Handler) as url:
        async with traced_daemon(tmp_path, workspace(tmp_path, "http://127.0.0.1:9/v1", url)) as (d, http, exporter):
            sid = await trigger(http, "call")
            await finished(d, sid)
            spans = await spans_when(exporter, lambda ss: any(s.name.startswith("session ") for s in ss), "spans")
    [step] = children(spans, session_span(spans, sid))
    [sent] = seen
    assert sent is not None and sent.startswith(f"00-{step.context.trace_id:032x}-{step.context.span_id:016x}-")


# ---------------------------------------------------------------- settings


def test_tracing_is_off_unless_configured() -> None:
    assert not Tracing.from_env({}).enabled
    assert not Tracing.from_env({"ATLAS_TRACING": "1", "OTEL_SDK_DISABLED": "true"}).enabled
    on = Tracing.from_env({"ATLAS_TRACING": "1"})
    try:
        assert on.enabled and on.provider is not None
        assert on.provider.resource.attributes["service.name"] == "atlasd"
    finally:
        on.shutdown()


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"])
def test_an_otlp_protocol_atlas_cannot_speak_is_refused(variable: str) -> None:
    with pytest.raises(AtlasError) as err:
        Tracing.from_env({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", variable: "grpc"})
    assert err.value.code == "invalid_settings" and "http/protobuf" in err.value.message


# ---------------------------------------------------------------- the real exporter


class _Receiver:
    """An OTLP/HTTP traces endpoint: decodes each `ExportTraceServiceRequest` and keeps its spans."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spans: list[tuple[dict[str, Any], Any]] = []  # (resource attributes, span)
        self.paths: list[str] = []

    def handler(self) -> type[BaseHTTPRequestHandler]:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                data = self.rfile.read(int(self.headers.get("content-length") or 0))
                request = ExportTraceServiceRequest()
                request.ParseFromString(data)
                with receiver.lock:
                    receiver.paths.append(self.path)
                    for rs in request.resource_spans:
                        resource = {kv.key: kv.value.string_value for kv in rs.resource.attributes}
                        receiver.spans.extend((resource, span) for ss in rs.scope_spans for span in ss.spans)
                self.send_response(200)
                self.send_header("content-type", "application/x-protobuf")
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        return Handler


class serving:
    """A local HTTP server on a free port in a thread; the context value is its base URL."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)

    def __enter__(self) -> str:
        self.thread.start()
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)


def test_the_otlp_http_exporter_sends_the_trace_to_a_collector(tmp_path: Path) -> None:
    receiver = _Receiver()
    with serving(receiver.handler()) as url:
        d = DaemonProcess(tmp_path / "home", [workspace(tmp_path, "http://127.0.0.1:9/v1")], env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": url, "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "",
            "ATLAS_TRACE_URL_TEMPLATE": "http://jaeger.example:16686/trace/{traceId}",
        }).start()
        try:
            r = httpx.post(f"{d.url}/api/workspaces/{WS}/signals/echo", json={"payload": {}}, timeout=60)
            assert r.status_code == 200 and r.json()["status"] == "completed", r.text
            sid = r.json()["sessionId"]
            view = httpx.get(f"{d.url}/api/sessions/{sid}", timeout=10).json()
            status = httpx.get(f"{d.url}/api/daemon/status", timeout=10).json()

            def session_exported() -> bool:
                with receiver.lock:
                    return any(span.name == f"session {WS}/echo" for _, span in receiver.spans)

            wait_for(session_exported, 30, what="the session span at the collector")
        finally:
            assert d.stop() == 0, d.log()

    assert status["traceUrlTemplate"] == "http://jaeger.example:16686/trace/{traceId}"
    with receiver.lock:
        spans, paths = list(receiver.spans), set(receiver.paths)
    assert paths == {"/v1/traces"}
    assert {resource["service.name"] for resource, _ in spans} == {"atlasd"}
    mine = [span for _, span in spans if span.trace_id.hex() == view["traceId"]]
    names = {span.name for span in mine}
    assert {TRIGGER_ROUTE, f"session {WS}/echo"} <= names and any(n.startswith("step ") for n in names)
    [session] = [span for span in mine if span.name == f"session {WS}/echo"]
    attrs = {kv.key: kv.value.string_value for kv in session.attributes}
    assert attrs["sessionId"] == sid and attrs["correlationId"] == view["correlationId"]
