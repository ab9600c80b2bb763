"""A failed child session as the `cause` of its parent's error (issue #16): the chain a cascade's failure follows.

Why: a parent whose `signal` step waited on a child only knew `Child session 98d8… ended failed: command exited
with status 3`; what the child's command said (`disk full: /var/data`) sat in the child's step. The cause is taken
from the child's terminal view when the parent's step fails, so it holds the child's error, its failed step's
`errorDetails` and, when the child itself failed because of a grandchild, that grandchild's cause: one nested record
per level, down to the root cause. It is plain recorded data: it needs no read of the child when it is shown.

Bounded: at most MAX_CAUSE_DEPTH levels (the default cascade depth limit, so a whole tree fits); the texts inside
were bounded when the child recorded them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

__all__ = ["MAX_CAUSE_DEPTH", "cause_from_view", "refused_child_cause"]

#: Levels of a cause chain (ATLAS_MAX_CASCADE_DEPTH's default: a root's chain reaches its deepest descendant).
MAX_CAUSE_DEPTH: Final = 8

_VIEW_FIELDS: Final = ("workspaceId", "jobName", "status", "error", "errorCode")


def _failed_block(view: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The step the child failed in: its last `failed` block (a run stops at its first failed step, and a block
    failed by the session's end comes after the steps that ran)."""
    blocks = view.get("agentBlocks")
    if not isinstance(blocks, list):
        return None
    failed = [block for block in blocks if isinstance(block, Mapping) and block.get("status") == "failed"]
    return failed[-1] if failed else None


def _bounded(cause: Mapping[str, Any], levels: int) -> dict[str, Any]:
    """A copy of `cause` with at most `levels` levels (the deeper ones dropped)."""
    copied = {key: value for key, value in cause.items() if key != "cause"}
    inner = cause.get("cause")
    if levels > 1 and isinstance(inner, Mapping):
        copied["cause"] = _bounded(inner, levels - 1)
    return copied


def cause_from_view(view: Mapping[str, Any], levels: int = MAX_CAUSE_DEPTH) -> dict[str, Any]:
    """The `cause` record of the child session `view` (terminal, not `completed`): its ids, status and error, its
    failed step's number, agent and `errorDetails`, and its own cause (at most `levels` levels in all)."""
    cause: dict[str, Any] = {"sessionId": str(view.get("sessionId") or "")}
    for key in _VIEW_FIELDS:
        value = view.get(key)
        if isinstance(value, str) and value:
            cause[key] = value
    cause.setdefault("jobName", "")
    block = _failed_block(view)
    inner: Any = view.get("cause")
    if block is not None:
        step = block.get("stepNumber")
        if isinstance(step, int) and not isinstance(step, bool):
            cause["stepNumber"] = step
        if isinstance(block.get("agentName"), str):
            cause["agentName"] = block["agentName"]
        if isinstance(block.get("errorDetails"), Mapping):
            cause["errorDetails"] = dict(block["errorDetails"])
        if isinstance(block.get("cause"), Mapping):
            inner = block["cause"]
    if levels > 1 and isinstance(inner, Mapping):
        cause["cause"] = _bounded(inner, levels - 1)
    return cause


def refused_child_cause(session_id: str, workspace_id: str, job_name: str, error_code: str | None) -> dict[str, Any]:
    """The cause of a child that failed at acceptance (a depth or tree limit, a missing job): it never ran, so there
    is no step to point at, only its code."""
    cause: dict[str, Any] = {"sessionId": session_id, "workspaceId": workspace_id, "jobName": job_name,
                             "status": "failed"}
    if error_code:
        cause["errorCode"] = error_code
    return cause
