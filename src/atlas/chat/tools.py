"""One `ToolRunner` over several tool sets (the chat's job tools, memory tools and named MCP tools).

The tool loop takes one runner; a chat turn has three sources. Each name is routed to the first set that offers
it, in the order given (jobs, then memory, then MCP), and a name offered twice is offered once: the model must
never see two tools of one name.
"""

from __future__ import annotations

from typing import Any, Protocol

from atlas.llm.conversation import ToolSpec
from atlas.llm.loop import ToolOutcome

__all__ = ["CompositeTools", "ToolSet"]


class ToolSet(Protocol):
    specs: list[ToolSpec]

    def server_of(self, name: str) -> str | None: ...

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome: ...


class CompositeTools:
    def __init__(self, sets: list[ToolSet]) -> None:
        self._routes: dict[str, ToolSet] = {}
        self.specs: list[ToolSpec] = []
        for tool_set in sets:
            for spec in tool_set.specs:
                if spec.name not in self._routes:
                    self._routes[spec.name] = tool_set
                    self.specs.append(spec)

    def server_of(self, name: str) -> str | None:
        tool_set = self._routes.get(name)
        return tool_set.server_of(name) if tool_set is not None else None

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        tool_set = self._routes.get(name)
        if tool_set is None:
            offered = ", ".join(sorted(self._routes)) or "none"
            return ToolOutcome(text=f"Error: unknown tool {name!r}; offered: {offered}", error=f"unknown tool {name!r}")
        return await tool_set.call(name, args)
