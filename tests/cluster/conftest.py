"""Fixtures for the multi-daemon tests: a fresh 3-node nats-server cluster per test, and daemons on it.

Markers: `cluster` (every test here; `make test-cluster` runs `-m cluster`) and `cluster_long` (the long chaos
variants). Plain `pytest` (`make test`) runs only the short variants: long ones are *deselected*, not skipped,
unless `ATLAS_CLUSTER_LONG=1` is set (as `make test-cluster` does).
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.cluster.harness import BusProbe, ClusterDaemon, NatsCluster
from tests.daemon_proc import FIXTURES

LONG_ENV = "ATLAS_CLUSTER_LONG"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "cluster: multi-daemon test on a 3-node nats-server cluster (tests/cluster)")
    config.addinivalue_line("markers", f"cluster_long: long cluster/chaos variant, run only with {LONG_ENV}=1")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(LONG_ENV) == "1":
        return
    keep = [item for item in items if item.get_closest_marker("cluster_long") is None]
    if len(keep) != len(items):
        config.hook.pytest_deselected(items=[item for item in items if item not in keep])
        items[:] = keep


@pytest.fixture
def nats_cluster(tmp_path: Path) -> Iterator[NatsCluster]:
    """A fresh cluster for one test (a module may override this fixture to share one, see test_chaos.py)."""
    cluster = NatsCluster(tmp_path / "nats").start()
    try:
        yield cluster
    finally:
        cluster.stop()


def make_workspace(root: Path, ws_id: str) -> Path:
    """A copy of tests/fixtures/cluster under its own workspace id (tests sharing a cluster stay apart)."""
    text = (FIXTURES / "cluster" / "workspace.yml").read_text()
    target = root / ws_id
    target.mkdir(parents=True, exist_ok=True)
    (target / "workspace.yml").write_text(text.replace("id: cluster,", f"id: {ws_id},", 1))
    return target


@pytest.fixture
def workspace(tmp_path: Path) -> Path:
    """This test's own workspace (id `c<8 hex>`); its id is the directory name."""
    return make_workspace(tmp_path / "ws", f"c{uuid.uuid4().hex[:8]}")


DaemonFactory = Callable[..., list[ClusterDaemon]]


@pytest.fixture
def daemons(tmp_path: Path, nats_cluster: NatsCluster) -> Iterator[DaemonFactory]:
    """`daemons(n)` starts n more daemons (homes d1, d2, …) on the cluster, in parallel, and returns them; all
    are stopped at the end (SIGTERM to all at once, then waited for)."""
    started: list[ClusterDaemon] = []

    def make(n: int = 1, workspaces: list[Path] | None = None,
             env: dict[str, str] | None = None) -> list[ClusterDaemon]:
        batch = []
        for _ in range(n):
            d = ClusterDaemon(tmp_path / f"d{len(started) + 1}", workspaces or [FIXTURES / "cluster"], nats_cluster,
                              env)
            started.append(d)
            batch.append(d)
            d.spawn()
        return [d.wait_started() for d in batch]

    try:
        yield make
    finally:
        stop_all(started)


def stop_all(ds: list[ClusterDaemon]) -> list[int]:
    """SIGTERM every daemon at once, then wait for each; their exit codes."""
    for d in ds:
        if d.running:
            d.sigcont()  # a SIGSTOPped daemon cannot handle SIGTERM
            d.terminate()
    return [d.stop() for d in ds]


@pytest.fixture
def probe(nats_cluster: NatsCluster) -> Iterator[BusProbe]:
    with BusProbe(nats_cluster) as p:
        p.start_diagnostics()
        yield p
