"""The workspace's long-term memory as system-prompt text (issue #17): what makes "what did I ask you to remember?"
answerable in a new chat.

Which entries: those of every `long_term` corpus with the `narrative` strategy (`short_term` and `scratchpad`
corpora are kept and listed, never put into a prompt). Order: newest first, across corpora, shown grouped by
corpus in declaration order. Budget: `NARRATIVE_BUDGET_CHARS` (8,000) characters of entry lines; entries are
taken whole, newest first, until the next one would pass the budget, and a last line says how many older entries
were left out (the model can still read them with `list_memory_entries`). Why a character budget and not tokens:
it needs no tokenizer per provider, and 8,000 characters (about 2,000 tokens) leaves room in any model's context
while holding a few hundred short notes. An entry longer than the whole budget is cut, so the newest is never lost.
"""

from __future__ import annotations

from atlas.memory.store import MemoryEntry, MemoryStore, corpora_of
from atlas.memory.tools import WorkspaceLike

__all__ = ["NARRATIVE_BUDGET_CHARS", "narrative_prompt"]

#: The most characters of entry lines a prompt carries.
NARRATIVE_BUDGET_CHARS = 8000


def _line(entry: MemoryEntry) -> str:
    day = entry["createdAt"][:10]
    return f"- {' '.join(entry['text'].split())} (saved {day})"


async def narrative_prompt(store: MemoryStore, workspace: WorkspaceLike,
                           budget: int = NARRATIVE_BUDGET_CHARS) -> str:
    """The long-term narrative memory of `workspace` as prompt text; "" when it has no such entries."""
    corpora = [c for c in corpora_of(workspace.config) if c.type == "long_term" and c.strategy == "narrative"]
    if not corpora:
        return ""
    every: list[tuple[str, int, MemoryEntry]] = []
    for order, corpus in enumerate(corpora):
        every.extend((corpus.name, order, entry) for entry in await store.list_entries(workspace.id, corpus.name))
    if not every:
        return ""
    every.sort(key=lambda item: item[2]["createdAt"], reverse=True)  # stable: each corpus is newest first already
    kept: dict[str, list[str]] = {}
    used = 0
    left_out = 0
    for index, (name, _, entry) in enumerate(every):
        line = _line(entry)
        if used + len(line) + 1 > budget:
            if used:  # this one and every older one stay out (no gaps: the prompt is a newest-first prefix)
                left_out = len(every) - index
                break
            line = line[: max(0, budget - 2)] + "…"  # the newest entry alone is over the budget: keep its start
        kept.setdefault(name, []).append(line)
        used += len(line) + 1
    parts = ["# Workspace memory", "What you saved to this workspace's long-term memory, newest first. Use it to "
             "answer; save new facts with save_memory_entry."]
    for corpus in corpora:
        if corpus.name in kept:
            parts.append(f"## {corpus.name}")
            parts.extend(kept[corpus.name])
    if left_out:
        parts.append(f"({left_out} older {'entry was' if left_out == 1 else 'entries were'} left out: over the "
                     f"memory budget of {budget} characters; list_memory_entries reads them.)")
    return "\n".join(parts)
