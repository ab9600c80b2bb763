"""The read-model interface (issue #15): what the store and the API use, whichever database holds the rows.

Two adapters implement it: `atlas.sessions.readmodel.ReadModel` (SQLite under `$ATLAS_HOME`, the default for a
single daemon) and `atlas.sessions.readmodel_pg.PostgresReadModel` (`ATLAS_DATABASE_URL`, shared by daemons). The
same contract tests run against both (`tests/test_readmodel.py`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Protocol

__all__ = ["ReadModelPort"]


class ReadModelPort(Protocol):
    transient_errors: tuple[type[Exception], ...]
    """Write errors worth another try later; the store keeps the rows meanwhile."""

    def close(self) -> None: ...

    def upsert(self, view: dict[str, Any], summary: dict[str, Any], stream_seq: int | None = None) -> bool: ...

    def upsert_many(self, rows: Iterable[tuple[dict[str, Any], dict[str, Any]]],
                    stream_seq: int | None = None) -> int: ...

    def upsert_encoded(self, params: list[Any], stream_seq: int | None = None) -> int: ...

    def set_meta(self, key: str, value: str) -> None: ...

    def get_meta(self, key: str) -> str | None: ...

    def get_stream_seq(self) -> int: ...

    def note_stream_seq(self, stream_seq: int) -> None: ...

    def get_view(self, sid: str) -> dict[str, Any] | None: ...

    def get_summary(self, sid: str) -> dict[str, Any] | None: ...

    def get_last_seq(self, sid: str) -> int: ...

    def list_sessions(
        self,
        *,
        workspace_id: str | None = None,
        correlation_id: str | None = None,
        job_name: str | None = None,
        signal_id: str | None = None,
        parent_session_id: str | None = None,
        root_session_id: str | None = None,
        statuses: list[str] | None = None,
        since: str | None = None,
        until: str | None = None,
        limit: int = 50,
        cursor: str | None = None,
        session_id_prefix: str | None = None,
    ) -> tuple[list[dict[str, Any]], str | None]: ...

    def explain(self, sql: str, params: Sequence[Any] = ()) -> list[str]: ...

    def explain_get(self) -> list[str]: ...

    def explain_list(self, **filters: Any) -> list[str]: ...

    def children(self, parent_id: str) -> list[dict[str, Any]]: ...

    def descendants(self, sid: str) -> list[str]: ...

    def non_terminal(self, statuses: Sequence[str] = ..., *, queued_after: str | None = None,
                     queued_before: str | None = None, limit: int | None = None) -> list[dict[str, Any]]: ...

    def count_by_status(self) -> dict[str, int]: ...

    def count_live(self) -> dict[tuple[str, str], int]: ...

    def count_correlation(self, correlation_id: str) -> int: ...

    def prune(self, before: str) -> int: ...
