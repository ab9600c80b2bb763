"""`GET /api/workspaces/<id>/tools` (issue #14, item 7): the workspace's MCP servers and the tools they offer.

Listing starts the servers that are not running yet (they are pooled per workspace, see `atlas.mcp.servers`), so
a user sees a broken server here, with its error, before an agent runs into it.
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from atlas.api.responses import json_response
from atlas.api.state import daemon_of
from atlas.errors import AtlasError


async def list_tools(request: Request) -> Response:
    """200 `{workspaceId, servers: [{id, description?, transport, status, error?, tools: [{name, description,
    inputSchema}]}]}`; a workspace without `tools.mcp` has no servers."""
    daemon = daemon_of(request)
    workspace_id: str = request.path_params["workspace_id"]
    ws = daemon.workspaces.get(workspace_id)
    if ws is None:
        raise AtlasError("workspace_not_found", f"Workspace '{workspace_id}' not found")
    tools = daemon.workspace_tools(ws)
    servers = await tools.listing() if tools is not None else []
    return json_response({"workspaceId": ws.id, "servers": servers})
