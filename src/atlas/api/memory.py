"""Workspace memory routes (issue #17): the corpora a workspace declares, their entries, deleting one.

The entries live in the cluster's `MEMORY` bucket (`atlas.memory.store`), so every daemon answers the same. Which
corpora exist is the workspace file's `memory.own`: a corpus it does not declare is 404 `memory_not_found` (with
the declared names in `details`), even if entries of an older declaration are still on the bus.
"""

from __future__ import annotations

import re

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.responses import json_response
from atlas.api.state import daemon_of
from atlas.api.workspaces import workspace_of
from atlas.errors import AtlasError
from atlas.memory.store import Corpus, corpora_of, find_corpus
from atlas.runtime.workspaces import Workspace

__all__ = ["DEFAULT_LIMIT", "MAX_LIMIT", "delete_entry", "list_corpora", "list_entries"]

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
_LIMIT = re.compile(r"[0-9]{1,5}")


def _corpus(request: Request, ws: Workspace) -> Corpus:
    return find_corpus(corpora_of(ws.config), request.path_params["corpus"], ws.id)


def _invalid(path: str, message: str) -> AtlasError:
    return AtlasError("invalid_query", message, [{"path": path, "message": message}])


async def list_corpora(request: Request) -> Response:
    """200 `{corpora: [{name, type, strategy, count}]}`, in the file's order."""
    ws = workspace_of(request)
    corpora = corpora_of(ws.config)
    counts = await daemon_of(request).memory.counts(ws.id) if corpora else {}
    return json_response({"corpora": [{"name": c.name, "type": c.type, "strategy": c.strategy,
                                       "count": counts.get(c.name, 0)} for c in corpora]})


async def list_entries(request: Request) -> Response:
    """200 `{entries: [...]}` newest first; `query` keeps those containing it (case-insensitive), `limit` (1–1000,
    default 100) caps them."""
    ws = workspace_of(request)
    corpus = _corpus(request, ws)
    params = request.query_params
    raw = params.get("limit")
    limit = DEFAULT_LIMIT
    if raw is not None:
        limit = int(raw) if _LIMIT.fullmatch(raw) else 0
        if not 1 <= limit <= MAX_LIMIT:
            raise _invalid("limit", f"limit must be an integer from 1 to {MAX_LIMIT}")
    query = params.get("query") or None
    entries = await daemon_of(request).memory.list_entries(ws.id, corpus.name, query=query, limit=limit)
    return json_response({"entries": entries})


async def delete_entry(request: Request) -> Response:
    """204; 404 `memory_entry_not_found` for an entry the corpus does not hold."""
    ws = workspace_of(request)
    corpus = _corpus(request, ws)
    await daemon_of(request).memory.delete(ws.id, corpus.name, request.path_params["entry_id"])
    return Response(status_code=204)
