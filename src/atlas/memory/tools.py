"""The memory tools an agent calls (issue #17): `save_memory_entry`, `list_memory_entries`, `delete_memory_entry`.

Inputs are the reference's (`{text, memoryName?, metadata?}`, `{memoryName?, query?, limit?}`, `{id,
memoryName?}`); their JSON Schemas are generated from the pydantic models below, and the arguments a model sends
are validated by the same models, so what the model is told and what is checked cannot drift apart.

`memoryName` defaults to the workspace's first `long_term` corpus (its first corpus when it has no long-term one);
an undeclared name is an error result naming the declared ones, so the model can correct itself. As with MCP
tools (`atlas.llm.loop`), every failure is an error *result*, never a step failure.

Secrets: the text and metadata go through `redact` (the daemon's `Templater.redact`: API keys, tokens, `secret()`
values) before they are stored, so memory, which is fed back into prompts and shown in the UI, never holds one.

`MemoryTools` is a `ToolRunner` (the tool loop's protocol). `with_memory` puts it in front of the workspace's MCP
tools for an llm step whose `tools:` names a memory tool: those names go to memory, the rest to MCP as before.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any, Protocol

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from atlas.agents.base import StepError
from atlas.agents.llm import ResolvedToolSet, ToolSource
from atlas.config.model import WorkspaceConfig
from atlas.errors import AtlasError
from atlas.llm.conversation import ToolSpec
from atlas.llm.loop import ToolOutcome
from atlas.memory.store import Corpus, MemorySource, MemoryStore, corpora_of, find_corpus

__all__ = ["MAX_TEXT_CHARS", "MEMORY_SERVER", "MEMORY_TOOL_NAMES", "MemoryTools", "memory_tools", "with_memory"]

#: What `server_of` answers for a memory tool (recorded on each call like an MCP server id).
MEMORY_SERVER = "memory"
#: The longest entry a tool saves: entries go back into prompts, so a note stays a note.
MAX_TEXT_CHARS = 4000
#: The most entries `list_memory_entries` answers with.
MAX_LIST = 100


class _Input(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SaveInput(_Input):
    text: str = Field(min_length=1, max_length=MAX_TEXT_CHARS,
                      description="What to remember: one short, self-contained statement.")
    memoryName: str | None = Field(default=None, description="The memory corpus to save into; defaults to the "
                                   "workspace's first long_term corpus.")
    metadata: dict[str, Any] | None = Field(default=None, description="Optional structured data kept with the "
                                            "entry (tags, a source URL…).")


class ListInput(_Input):
    memoryName: str | None = Field(default=None, description="The memory corpus to list; defaults to the "
                                   "workspace's first long_term corpus.")
    query: str | None = Field(default=None, description="Keep only entries whose text contains this "
                              "(case-insensitive).")
    limit: int | None = Field(default=None, ge=1, le=MAX_LIST, description=f"At most this many entries (newest "
                              f"first; default and maximum {MAX_LIST}).")


class DeleteInput(_Input):
    id: str = Field(min_length=1, description="The id of the entry to delete (from list_memory_entries).")
    memoryName: str | None = Field(default=None, description="The memory corpus holding it; defaults to the "
                                   "workspace's first long_term corpus.")


_TOOLS: dict[str, tuple[type[_Input], str]] = {
    "save_memory_entry": (SaveInput, "Save an entry to the workspace's memory, so that it is remembered in later "
                                     "conversations and runs."),
    "list_memory_entries": (ListInput, "List the entries of a workspace memory corpus, newest first, optionally "
                                       "filtered by a text query."),
    "delete_memory_entry": (DeleteInput, "Delete one entry from a workspace memory corpus by its id."),
}
MEMORY_TOOL_NAMES = frozenset(_TOOLS)


def _spec(name: str) -> ToolSpec:
    model, description = _TOOLS[name]
    return ToolSpec(name, description, model.model_json_schema())


# Generated once: pydantic's schema generation costs about a millisecond per model, and the tools are built for
# every llm step and chat turn (the specs are never mutated).
_SPECS: dict[str, ToolSpec] = {name: _spec(name) for name in _TOOLS}


class WorkspaceLike(Protocol):
    """What the tools need of a workspace (`atlas.runtime.workspaces.Workspace` is one)."""

    @property
    def id(self) -> str: ...

    @property
    def config(self) -> WorkspaceConfig: ...


class MemoryTools:
    """The memory tools of one workspace, for one source (an llm step's session or a chat)."""

    def __init__(self, store: MemoryStore, workspace_id: str, corpora: list[Corpus], source: MemorySource,
                 redact: Callable[[str], str], names: frozenset[str] = MEMORY_TOOL_NAMES) -> None:
        self._store = store
        self._workspace_id = workspace_id
        self._corpora = corpora
        self._source = source
        self._redact = redact
        self.names: set[str] = set(names)
        self.corpora = corpora
        self.specs: list[ToolSpec] = [_SPECS[name] for name in _TOOLS if name in names]

    def only(self, names: set[str]) -> MemoryTools:
        """The same tools limited to `names` (an llm agent gets the memory tools its `tools:` names)."""
        return MemoryTools(self._store, self._workspace_id, self._corpora, self._source, self._redact,
                           frozenset(self.names & names))

    def server_of(self, name: str) -> str | None:
        return MEMORY_SERVER if name in self.names else None

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        """Run one call; every failure (bad arguments, an undeclared corpus, the bus) is an error outcome."""
        if name not in self.names:
            return _error(f"unknown tool {name!r}; memory offers: {', '.join(sorted(self.names)) or 'none'}")
        model = _TOOLS[name][0]
        try:
            parsed = model.model_validate(args)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'arguments'}: {e['msg']}" for e in exc.errors())
            return _error(f"invalid arguments for {name}: {problems}")
        try:
            if isinstance(parsed, SaveInput):
                return await self._save(parsed)
            if isinstance(parsed, ListInput):
                return await self._list(parsed)
            assert isinstance(parsed, DeleteInput)
            return await self._delete(parsed)
        except AtlasError as exc:
            return _error(exc.message)
        except Exception as exc:  # the bus did not answer: the model hears it and may try again
            return _error(f"memory is unavailable: {type(exc).__name__}: {exc}")

    def _corpus(self, name: str | None) -> Corpus:
        if name is None:
            if not self._corpora:
                raise AtlasError("memory_not_found", f"workspace {self._workspace_id!r} declares no memory corpus "
                                 "(memory.own)", {"declared": []})
            return next((c for c in self._corpora if c.type == "long_term"), self._corpora[0])
        return find_corpus(self._corpora, name, self._workspace_id)

    async def _save(self, args: SaveInput) -> ToolOutcome:
        corpus = self._corpus(args.memoryName)
        metadata = _redact_value(args.metadata, self._redact) if args.metadata else None
        entry = await self._store.save(self._workspace_id, corpus.name, self._redact(args.text), source=self._source,
                                       metadata=metadata)
        result = {"saved": True, "memoryName": corpus.name, "entry": entry}
        return ToolOutcome(text=json.dumps(result, ensure_ascii=False), result=result, server=MEMORY_SERVER)

    async def _list(self, args: ListInput) -> ToolOutcome:
        corpus = self._corpus(args.memoryName)
        entries = await self._store.list_entries(self._workspace_id, corpus.name, query=args.query,
                                         limit=args.limit or MAX_LIST)
        result = {"memoryName": corpus.name, "entries": entries}
        return ToolOutcome(text=json.dumps(result, ensure_ascii=False), result=result, server=MEMORY_SERVER)

    async def _delete(self, args: DeleteInput) -> ToolOutcome:
        corpus = self._corpus(args.memoryName)
        await self._store.delete(self._workspace_id, corpus.name, args.id)
        result = {"deleted": True, "memoryName": corpus.name, "id": args.id}
        return ToolOutcome(text=json.dumps(result, ensure_ascii=False), result=result, server=MEMORY_SERVER)


def _error(message: str) -> ToolOutcome:
    return ToolOutcome(text=f"Error: {message}", result=None, error=message, server=MEMORY_SERVER)


def _redact_value(value: Any, redact: Callable[[str], str]) -> Any:
    """Every string of a JSON value (keys too) through `redact`."""
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, dict):
        return {redact(str(k)): _redact_value(v, redact) for k, v in value.items()}
    if isinstance(value, list):
        return [_redact_value(v, redact) for v in value]
    return value


def memory_tools(store: MemoryStore, workspace: WorkspaceLike, source: MemorySource,
                 redact: Callable[[str], str]) -> MemoryTools:
    """The three memory tools of `workspace` (its `memory.own` corpora), saving with `source`
    (`{"sessionId": …}` for an llm step, `{"chatId": …}` for a chat turn) and `redact` applied to what is saved."""
    return MemoryTools(store, workspace.id, corpora_of(workspace.config), source, redact)


class _Combined:
    """One step's tools: memory names to the memory runner, the rest to the MCP tools the step resolved."""

    def __init__(self, memory: MemoryTools, mcp: ResolvedToolSet | None) -> None:
        self._memory = memory
        self._mcp = mcp
        self.specs: list[ToolSpec] = [*memory.specs, *(mcp.specs if mcp is not None else [])]

    def server_of(self, name: str) -> str | None:
        if name in self._memory.names:
            return MEMORY_SERVER
        return self._mcp.server_of(name) if self._mcp is not None else None

    async def call(self, name: str, args: dict[str, Any]) -> ToolOutcome:
        if name in self._memory.names or self._mcp is None:
            return await self._memory.call(name, args)
        return await self._mcp.call(name, args)


class _WithMemory:
    """A `ToolSource` (what `atlas.agents.llm.run_llm` resolves `tools:` through) that knows the memory tools."""

    def __init__(self, memory: MemoryTools, mcp: ToolSource | None) -> None:
        self._memory = memory
        self._mcp = mcp

    async def resolve(self, names: list[str]) -> ResolvedToolSet:
        wanted = [n for n in names if n in MEMORY_TOOL_NAMES]
        rest = [n for n in names if n not in MEMORY_TOOL_NAMES]
        if wanted and not self._memory.corpora:
            raise StepError("unknown_tool", f"tool {wanted[0]!r} needs workspace memory, and this workspace declares "
                            "no memory corpus (memory.own)")
        mcp: ResolvedToolSet | None = None
        if rest:
            if self._mcp is None:
                raise StepError("unknown_tool", f"no MCP server offers {rest[0]!r}: the workspace has no tools.mcp "
                                "servers (memory tools: " + ", ".join(sorted(MEMORY_TOOL_NAMES)) + ")")
            mcp = await self._mcp.resolve(rest)
        clash = sorted({spec.name for spec in mcp.specs} & MEMORY_TOOL_NAMES) if mcp is not None else []
        if clash:
            raise StepError("tool_conflict", f"tool {clash[0]!r} is both a memory tool and an MCP tool: deny it on "
                            "its MCP server (tools.mcp.servers.<id>.tools.deny)")
        return _Combined(self._memory.only(set(wanted)), mcp)


def with_memory(mcp: ToolSource | None, memory: MemoryTools) -> ToolSource:
    """`mcp` (the workspace's MCP tools, or None) with the memory tools in front of it."""
    return _WithMemory(memory, mcp)
