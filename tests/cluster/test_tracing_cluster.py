"""Traces survive across daemons (issue #18, item 2): a session run by another daemon continues the trigger's trace.

Real parts: a 3-node nats-server cluster and two atlasd processes on it, both exporting with the real OTLP/HTTP
exporter to one receiver in this test (`tests.test_tracing._Receiver`, protobuf decoded with
`opentelemetry-proto`). The accepting daemon has no runner slots (`ATLAS_MAX_CONCURRENT_SESSIONS=0`), so every
session it accepts runs on the other one; each daemon names itself in `service.instance.id` (the standard
`OTEL_RESOURCE_ATTRIBUTES`), so the test knows which daemon exported which span.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.cluster.conftest import DaemonFactory
from tests.cluster.harness import http
from tests.daemon_proc import wait_for
from tests.test_tracing import TRIGGER_ROUTE, _Receiver, serving

pytestmark = pytest.mark.cluster

WS = "cluster"


def traced_env(collector: str, instance: str, **extra: str) -> dict[str, str]:
    return {"OTEL_EXPORTER_OTLP_ENDPOINT": collector, "OTEL_BSP_SCHEDULE_DELAY": "50", "OTEL_SERVICE_NAME": "",
            "OTEL_RESOURCE_ATTRIBUTES": f"service.instance.id={instance}", **extra}


def test_a_session_run_by_another_daemon_continues_the_triggers_trace(daemons: DaemonFactory) -> None:
    receiver = _Receiver()
    with serving(receiver.handler()) as collector:
        [acceptor] = daemons(1, env=traced_env(collector, "acceptor", ATLAS_MAX_CONCURRENT_SESSIONS="0"))
        [runner] = daemons(1, env=traced_env(collector, "runner"))

        accepted = []
        for n in range(3):
            r = http.post(f"{acceptor.url}/api/workspaces/{WS}/signals/echo?nowait=true", json={"payload": {"n": n}},
                          timeout=30)
            assert r.status_code == 202, r.text
            accepted.append(r.json()["sessionId"])

        def view(sid: str) -> dict[str, Any] | None:
            r = http.get(f"{runner.url}/api/sessions/{sid}", timeout=10)
            return r.json() if r.status_code == 200 and r.json()["status"] == "completed" else None

        views = {sid: wait_for(lambda sid=sid: view(sid), 60, what=f"{sid} completed") for sid in accepted}

        def count(name: str) -> int:
            with receiver.lock:
                return sum(1 for _, span in receiver.spans if span.name == name)

        # Each daemon's spans leave on its own batch schedule.
        wait_for(lambda: count(f"session {WS}/echo") >= len(accepted), 30, what="every session span exported")
        wait_for(lambda: count(TRIGGER_ROUTE) >= len(accepted), 30, what="every trigger span exported")

    with receiver.lock:
        spans = list(receiver.spans)
    for sid in accepted:
        trace_id = views[sid]["traceId"]
        assert isinstance(trace_id, str) and len(trace_id) == 32
        mine = [(resource, span) for resource, span in spans if span.trace_id.hex() == trace_id]
        [(request_from, request)] = [(r, s) for r, s in mine if s.name == TRIGGER_ROUTE]
        [(session_from, session)] = [(r, s) for r, s in mine if s.name == f"session {WS}/echo"]
        assert request_from["service.instance.id"] == "acceptor" and not request.parent_span_id
        assert session_from["service.instance.id"] == "runner"  # the acceptor ran nothing
        assert session.parent_span_id == request.span_id  # the trigger's HTTP span, from the other daemon
        attrs = {kv.key: kv.value.string_value for kv in session.attributes}
        assert attrs["sessionId"] == sid
        assert attrs["correlationId"] == views[sid]["correlationId"]
        steps = [s for r, s in mine if s.name.startswith("step ")]
        assert steps and all(s.parent_span_id == session.span_id for s in steps)
        assert {r["service.instance.id"] for r, s in mine} == {"acceptor", "runner"}
    # Nothing ran on the acceptor.
    assert not [s for r, s in spans if r["service.instance.id"] == "acceptor" and s.name.startswith("session ")]
