"""Workspace memory (issue #17): corpora of short text entries, durable on the bus, offered to agents as tools.

- `store.py`: `MemoryStore`, the entries in the `MEMORY` KV bucket (one key per entry).
- `tools.py`: `memory_tools(...)`, the `save_memory_entry` / `list_memory_entries` / `delete_memory_entry` runner
  an llm step or a chat turn calls; `with_memory(...)`, an llm step's `tools:` resolved over memory and MCP.
- `prompt.py`: `narrative_prompt(...)`, the long-term narrative corpora as system-prompt text, cut to a budget.
"""

from atlas.memory.prompt import NARRATIVE_BUDGET_CHARS, narrative_prompt
from atlas.memory.store import Corpus, MemoryStore, corpora_of
from atlas.memory.tools import MEMORY_TOOL_NAMES, MemoryTools, memory_tools, with_memory

__all__ = [
    "MEMORY_TOOL_NAMES",
    "NARRATIVE_BUDGET_CHARS",
    "Corpus",
    "MemoryStore",
    "MemoryTools",
    "corpora_of",
    "memory_tools",
    "narrative_prompt",
    "with_memory",
]
