"""Prometheus metrics (issue #18, item 1): every metric name and label set of atlas, in one place.

Each `Daemon` owns one `Metrics` with a `CollectorRegistry` of its own rather than prometheus-client's global
default registry: tests run several daemons in one process, and each daemon's `/metrics` must show its own work
only. Components never import this module to reach a global; the composition root hands each one the `Metrics`
object (or a narrow protocol of it declared next to the component: `StoreObserver`, `BusObserver`,
`LlmObserver`...) as a dependency, so a component built alone in a unit test simply has none.

Label sets are bounded by configuration: outcome and status words, error codes, workspace, job, agent type,
provider, model and MCP server names. Session and correlation ids are never labels (one series per run would
grow without bound); they belong to traces and logs.

The hot path (one trigger) costs a counter increment and a histogram observation, on children bound once here, so
`nowait` throughput stays within noise; prometheus-client's own per-metric lock is the only lock taken.

Queued and active sessions (`atlas_sessions`) are not counted in process: a session is queued by the daemon that
accepted it, started by whichever daemon's consumer takes it and ended by its runner (or by recovery on another
daemon), so no single daemon could keep an exact in-process count. The read model already knows: a custom collector
runs one grouped count (`count_live`: `status IN ('queued', 'active') GROUP BY status, workspace_id`, on the status
index) at scrape time. On a cluster every daemon therefore reports the sessions its read model sees (the whole
cluster's on a shared PostgreSQL or a materialised SQLite read model): aggregate that gauge with `max`, not `sum`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

log = logging.getLogger("atlas.metrics")

__all__ = ["Metrics", "SessionCounts"]

#: `(status, workspace) -> count` of the sessions still queued or active, as the read model groups them.
SessionCounts = Callable[[], Mapping[tuple[str, str], int]]

# An accept is milliseconds of durable work (two acknowledged publishes); a queue wait or a run can be hours.
_FAST_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
_SLOW_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
                 1800.0, 3600.0)
_LIVE_STATUSES = ("queued", "active")


class _SessionsCollector(Collector):
    """`atlas_sessions{status,workspace}`, read from the read model at scrape time (see the module docstring)."""

    def __init__(self, counts: SessionCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterable[Metric]:
        family = GaugeMetricFamily("atlas_sessions", "Sessions queued or active, per workspace, as the read "
                                   "model holds them (aggregate with max across daemons)",
                                   labels=["status", "workspace"])
        try:
            counts = self._counts()
        except Exception as exc:  # the database is down: the scrape still answers with the other metrics
            log.warning("atlas_sessions not collected: %s: %s", type(exc).__name__, exc)
            return [family]
        for (status, workspace), count in sorted(counts.items()):
            family.add_metric([status, workspace], count)
        return [family]

    def describe(self) -> Iterable[Metric]:
        # Describing without collecting: registering must not query the read model.
        return [GaugeMetricFamily("atlas_sessions", "", labels=["status", "workspace"])]


class Metrics:
    """One daemon's metrics; small methods named after what happened, called by the components that saw it."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry(auto_describe=True)
        self.triggers = Counter("atlas_triggers", "Triggers answered: accepted, or refused with an error code",
                                ["outcome", "code"], registry=r)
        self.sessions_ended = Counter("atlas_sessions_ended", "Sessions ended (their session:complete written by "
                                      "this daemon), by terminal status", ["status"], registry=r)
        self.accept_seconds = Histogram("atlas_accept_seconds", "Accept latency: the durable work of one accepted "
                                        "trigger (envelope and session:queued acknowledged)", registry=r,
                                        buckets=_FAST_BUCKETS)
        self.queue_wait_seconds = Histogram("atlas_queue_wait_seconds", "Queue wait: session:queued to "
                                            "session:start", registry=r, buckets=_SLOW_BUCKETS)
        self.session_seconds = Histogram("atlas_session_seconds", "Session run time (session:start to "
                                         "session:complete) of sessions that started, by job", ["job"], registry=r,
                                         buckets=_SLOW_BUCKETS)
        self.step_seconds = Histogram("atlas_step_seconds", "Step duration, by agent type", ["agent_type"],
                                      registry=r, buckets=_SLOW_BUCKETS)
        self.model_calls = Counter("atlas_model_calls", "Model turns (with their retries), by provider, model and "
                                   "outcome (ok|error)", ["provider", "model", "outcome"], registry=r)
        self.model_call_seconds = Histogram("atlas_model_call_seconds", "Model turn latency (retries included)",
                                            ["provider", "model"], registry=r, buckets=_SLOW_BUCKETS)
        self.model_tokens = Counter("atlas_model_tokens", "Tokens the model servers reported, by direction "
                                    "(input|output)", ["provider", "model", "direction"], registry=r)
        self.tool_calls = Counter("atlas_tool_calls", "MCP tool calls, by server and outcome (ok|error)",
                                  ["server", "outcome"], registry=r)
        self.tool_call_seconds = Histogram("atlas_tool_call_seconds", "MCP tool call latency, by server",
                                           ["server"], registry=r, buckets=_SLOW_BUCKETS)
        self.bus_publish_errors = Counter("atlas_bus_publish_errors", "JetStream publishes that failed after their "
                                          "retries (lost write races excluded), by error type", ["error"],
                                          registry=r)
        self.bus_reconnects = Counter("atlas_bus_reconnects", "Reconnections to NATS", registry=r)
        self.write_lag_seconds = Histogram("atlas_readmodel_write_lag_seconds", "Read-model write lag: from the "
                                           "timestamp of the oldest event a row holds to the row's commit",
                                           registry=r, buckets=_FAST_BUCKETS)
        # Bound once: the per-trigger path skips the label lookup.
        self._accepted = self.triggers.labels("accepted", "")

    def count_sessions(self, counts: SessionCounts) -> None:
        """Serve `atlas_sessions` from `counts` (the read model's grouped count), queried at each scrape."""
        self.registry.register(_SessionsCollector(counts))

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """Every metric, in the exposition format the scraper's `Accept` asks for (Prometheus text, or OpenMetrics),
        and its content type. Runs the read-model count: call it off the loop when that may wait on a network."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type

    # ------------------------------------------------------------ triggers (the accept pipeline, the trigger route)

    def trigger_accepted(self, seconds: float) -> None:
        self._accepted.inc()
        self.accept_seconds.observe(seconds)

    def trigger_refused(self, code: str) -> None:
        self.triggers.labels("refused", code).inc()

    # ------------------------------------------------------------ sessions and steps

    def event_written(self, event: Mapping[str, Any], view: Mapping[str, Any]) -> None:
        """A durable event this daemon appended (`SessionStore.observer`): queue wait at `session:start`, the end
        and run time at `session:complete`. Every session:complete has exactly one writer on the cluster, so a
        session is counted once however many daemons see it."""
        kind = event.get("type")
        if kind == "session:start":
            waited = _seconds_between(view.get("queuedAt"), event.get("timestamp"))
            if waited is not None:
                self.queue_wait_seconds.observe(waited)
        elif kind == "session:complete":
            self.sessions_ended.labels(str(event.get("status"))).inc()
            duration = event.get("durationMs")
            if view.get("startedAt") and isinstance(duration, int | float):
                self.session_seconds.labels(str(view.get("jobName") or "")).observe(duration / 1000)

    def step_ended(self, agent_type: str, seconds: float) -> None:
        self.step_seconds.labels(agent_type).observe(seconds)

    def row_written(self, lag_s: float) -> None:
        self.write_lag_seconds.observe(max(0.0, lag_s))

    # ------------------------------------------------------------ models and tools (an llm step)

    def model_call(self, provider: str, model: str, ok: bool, seconds: float, input_tokens: int,
                   output_tokens: int) -> None:
        self.model_calls.labels(provider, model, "ok" if ok else "error").inc()
        self.model_call_seconds.labels(provider, model).observe(seconds)
        if input_tokens:
            self.model_tokens.labels(provider, model, "input").inc(input_tokens)
        if output_tokens:
            self.model_tokens.labels(provider, model, "output").inc(output_tokens)

    def tool_call(self, server: str | None, ok: bool, seconds: float) -> None:
        name = server or ""
        self.tool_calls.labels(name, "ok" if ok else "error").inc()
        self.tool_call_seconds.labels(name).observe(seconds)

    # ------------------------------------------------------------ the bus

    def publish_failed(self, error: str) -> None:
        self.bus_publish_errors.labels(error).inc()

    def reconnected(self) -> None:
        self.bus_reconnects.inc()


def _seconds_between(earlier: Any, later: Any) -> float | None:
    """Seconds from one RFC 3339 event timestamp to another (None when either is missing or malformed)."""
    if not isinstance(earlier, str) or not isinstance(later, str) or not earlier or not later:
        return None
    try:
        delta = (datetime.fromisoformat(later) - datetime.fromisoformat(earlier)).total_seconds()
    except ValueError:
        return None
    return max(0.0, delta)
