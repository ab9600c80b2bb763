"""Bus failures in the metrics (issue #18): a JetStream publish that fails after its retries is counted by error
type, and a lost write race (the expected-sequence protocol working) is not.

In process, on the daemon's own embedded nats-server: a stream that takes no message (`stream_refusing`, what a
stream without a leader answers) makes an accept's envelope publish fail. Reconnections are counted in
tests/cluster/test_metrics_cluster.py, where a nats node can be killed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from atlas.bus.client import SESSION_EVENTS, SIGNALS, WrongLastSequence
from atlas.errors import AtlasError
from atlas.runtime.accept import TriggerRequest
from atlas.runtime.daemon import Daemon
from tests.daemon_proc import FIXTURES
from tests.inproc import running
from tests.test_accept_stranded import stream_refusing


def publish_errors(d: Daemon) -> dict[str, float]:
    """`atlas_bus_publish_errors_total` by its `error` label, read from the daemon's own registry."""
    return {sample.labels["error"]: sample.value
            for family in d.metrics.registry.collect() if family.name == "atlas_bus_publish_errors"
            for sample in family.samples if sample.name == "atlas_bus_publish_errors_total"}


async def test_a_publish_that_fails_is_counted_by_error_type(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), bus_retry_s=1.0) as d:
        assert publish_errors(d) == {}
        req = TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1}, trigger="http")
        async with stream_refusing(d, SIGNALS):
            with pytest.raises(AtlasError) as err:
                await d.accept.accept(req)
        assert err.value.code == "bus_unavailable"
        counted = publish_errors(d)
        assert sum(counted.values()) >= 1, counted
        assert all(name and name[0].isupper() for name in counted), counted  # exception type names, no messages


async def test_a_lost_write_race_is_not_a_publish_error(tmp_path: Path) -> None:
    async with running(tmp_path / "home", (FIXTURES / "core",), bus_retry_s=1.0) as d:
        accepted = await d.accept.accept(TriggerRequest(workspace_id="core", signal_id="echo", payload={"n": 1},
                                                        trigger="http"))
        await d.store.wait_terminal(accepted.session_id, timeout=30)
        last = await d.bus.last_event(accepted.session_id)
        assert last is not None
        event = {**last[0], "seq": int(last[0]["seq"]) + 1, "type": "session:summary", "summary": "late"}
        with pytest.raises(WrongLastSequence):
            await d.bus.append_event(event, expected_last_subject_seq=last[1] - 1)  # someone else wrote since
        assert publish_errors(d) == {}
        async with stream_refusing(d, SESSION_EVENTS):
            with pytest.raises(Exception):  # noqa: B017 - whatever the bus raises, it is counted
                await d.bus.append_event(event, expected_last_subject_seq=last[1], retry_for=0.5)
        assert sum(publish_errors(d).values()) >= 1
