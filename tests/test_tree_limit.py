"""ATLAS_MAX_TREE_SESSIONS caps the sessions under one correlationId (spec §6.6; issue #19, low items).

A 4-way fan-out loop once made 1,764 sessions in one correlation with a cap of 1,000: every refused cascade still
created a `failed` session, and concurrent accepts all saw room under the cap. Now a cascade over the cap is
refused without a record (the parent's signal step fails `cascade_limit_exceeded`), and accepts in flight count.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.daemon_proc import FIXTURES, DaemonProcess, wait_for

CAP = 60


def _tree(d: DaemonProcess, cid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{d.url}/api/sessions", params={"correlationId": cid, "limit": 500}, timeout=10)
    assert r.status_code == 200, r.text
    return list(r.json()["sessions"])


def test_a_fan_out_loop_stops_at_the_tree_cap(tmp_path: Path) -> None:
    d = DaemonProcess(tmp_path / "home", [FIXTURES / "fanout"], {"ATLAS_MAX_TREE_SESSIONS": str(CAP)}).start()
    try:
        r = httpx.post(f"{d.url}/api/workspaces/fanout/signals/spread?nowait=true", json={"payload": {}}, timeout=10)
        assert r.status_code == 202, r.text
        cid = r.json()["correlationId"]

        def settled() -> list[dict[str, Any]] | None:
            tree = _tree(d, cid)
            done = all(s["status"] in ("completed", "failed") for s in tree)
            return tree if done and len(tree) >= CAP else None

        tree = wait_for(settled, 60, what="the fan-out to reach its cap and settle")
        assert len(tree) == CAP, len(tree)
        failed = [s for s in tree if s["status"] == "failed"]
        assert failed and all(s["errorCode"] == "cascade_limit_exceeded" for s in failed), failed[:3]
        # Every failed session is a parent whose cascade was refused, not a child recorded only to fail.
        assert all(s["stepCount"] >= 1 for s in failed)
    finally:
        d.stop()
