"""The memory store, tools and prompt (issue #17) on an in-process daemon's real nats-server.

Pinned here: the store's round trip (newest first, query, limit, counts, delete, an unknown entry); the tools'
input validation and their generated JSON Schemas, the default corpus (the first long_term one), the refusal of an
undeclared corpus naming the declared ones, secrets redacted from text and metadata before saving; `with_memory`
routing an llm step's `tools:` names; `narrative_prompt` (long_term only, newest first, cut to its budget with a
line saying how many were left out); the config's memory errors.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from atlas.agents.base import StepError
from atlas.config.loader import load_workspace
from atlas.errors import AtlasError
from atlas.memory import memory_tools, narrative_prompt, with_memory
from atlas.templating import Templater
from tests.daemon_proc import FIXTURES
from tests.inproc import running

SECRET = "hunter2-very-secret-token"


async def test_store_tools_and_prompt(tmp_path: Path) -> None:
    async with running(tmp_path / "home", [FIXTURES / "memory"]) as daemon:
        ws = daemon.workspaces.get("memws")
        assert ws is not None
        store = daemon.memory

        # -- the store
        first = await store.save("memws", "notes", "Alpha", source={"chatId": "c1"})
        second = await store.save("memws", "notes", "bravo two", source={"sessionId": "s1"}, metadata={"k": 1})
        third = await store.save("memws", "notes", "Charlie", source={})
        await store.save("memws", "scratch", "temporary", source={})
        assert [e["id"] for e in await store.list_entries("memws", "notes")] == [third["id"], second["id"],
                                                                                  first["id"]]
        assert [e["text"] for e in await store.list_entries("memws", "notes", query="BRAVO")] == ["bravo two"]
        assert [e["text"] for e in await store.list_entries("memws", "notes", limit=2)] == ["Charlie", "bravo two"]
        assert await store.get("memws", "notes", second["id"]) == second
        assert second["metadata"] == {"k": 1} and second["source"] == {"sessionId": "s1"}
        assert await store.counts("memws") == {"notes": 3, "scratch": 1}
        assert await store.list_entries("memws", "nothing-here") == []
        await store.delete("memws", "notes", first["id"])
        assert await store.get("memws", "notes", first["id"]) is None
        with pytest.raises(AtlasError) as gone:
            await store.delete("memws", "notes", first["id"])
        assert gone.value.code == "memory_entry_not_found"
        assert await store.counts("memws") == {"notes": 2, "scratch": 1}

        # -- narrative_prompt: long_term corpora only, newest first, cut to the budget
        prompt = await narrative_prompt(store, ws)
        assert "temporary" not in prompt  # a short_term corpus is never put into a prompt
        assert prompt.index("- Charlie") < prompt.index("- bravo two")
        assert "## notes" in prompt and "left out" not in prompt
        lines = [line for line in prompt.splitlines() if line.startswith("- ")]
        budget = len(lines[0]) + 1 + 1  # room for the newest entry only
        cut = await narrative_prompt(store, ws, budget=budget)
        assert "- Charlie" in cut and "bravo two" not in cut
        assert "(1 older entry was left out: over the memory budget" in cut
        tiny = await narrative_prompt(store, ws, budget=10)  # the newest alone is over it: its start is kept
        assert "- Charl" in tiny and "(1 older entry was left out" in tiny

        # -- the tools
        templater = Templater()
        templater.add_secret(SECRET)
        tools = memory_tools(store, ws, {"chatId": "chat-1"}, lambda text: str(templater.redact(text)))
        assert [s.name for s in tools.specs] == ["save_memory_entry", "list_memory_entries", "delete_memory_entry"]
        assert tools.server_of("save_memory_entry") == "memory" and tools.server_of("add") is None
        schema = tools.specs[0].input_schema
        assert schema["required"] == ["text"] and schema["additionalProperties"] is False
        assert set(schema["properties"]) == {"text", "memoryName", "metadata"}

        saved = await tools.call("save_memory_entry", {"text": f"the token is {SECRET}",
                                                       "metadata": {"why": SECRET, SECRET: "key"}})
        assert saved.error is None and saved.server == "memory"
        entry = saved.result["entry"]
        assert saved.result["memoryName"] == "notes"  # the first long_term corpus
        assert entry["text"] == "the token is ***" and entry["metadata"] == {"why": "***", "***": "key"}
        assert entry["source"] == {"chatId": "chat-1"}
        assert SECRET not in json.dumps(await store.list_entries("memws", "notes"))

        into = await tools.call("save_memory_entry", {"text": "scratch note", "memoryName": "scratch"})
        assert into.error is None and into.result["memoryName"] == "scratch"
        refused = await tools.call("save_memory_entry", {"text": "x", "memoryName": "diary"})
        assert refused.error is not None and "declared: notes, scratch" in refused.error
        assert refused.text.startswith("Error: ")

        for args, problem in (({}, "text: Field required"),
                              ({"text": ""}, "text: String should have at least 1 character"),
                              ({"text": "x", "colour": "red"}, "colour: Extra inputs are not permitted"),
                              ({"text": "x" * 4001}, "text: String should have at most 4000 characters")):
            bad = await tools.call("save_memory_entry", args)
            assert bad.error is not None and problem in bad.error, bad.error
        bad_limit = await tools.call("list_memory_entries", {"limit": 0})
        assert bad_limit.error is not None and "limit" in bad_limit.error

        listed = await tools.call("list_memory_entries", {"query": "TOKEN"})
        assert [e["text"] for e in listed.result["entries"]] == ["the token is ***"]
        deleted = await tools.call("delete_memory_entry", {"id": entry["id"]})
        assert deleted.error is None and deleted.result == {"deleted": True, "memoryName": "notes", "id": entry["id"]}
        again = await tools.call("delete_memory_entry", {"id": entry["id"]})
        assert again.error is not None and "no entry" in again.error
        unknown = await tools.call("forget_everything", {})
        assert unknown.error is not None

        # -- with_memory: an llm step's `tools:` names, memory ones to memory, the rest to MCP
        resolved = await with_memory(None, tools).resolve(["save_memory_entry"])
        assert [s.name for s in resolved.specs] == ["save_memory_entry"]
        assert resolved.server_of("save_memory_entry") == "memory"
        with pytest.raises(StepError) as no_mcp:
            await with_memory(None, tools).resolve(["save_memory_entry", "add"])
        assert no_mcp.value.code == "unknown_tool" and "'add'" in no_mcp.value.message


async def test_a_workspace_without_memory_offers_no_memory_tools(tmp_path: Path) -> None:
    async with running(tmp_path / "home", [FIXTURES / "core"]) as daemon:
        ws = daemon.workspaces.get("core")
        assert ws is not None
        assert await narrative_prompt(daemon.memory, ws) == ""
        tools = memory_tools(daemon.memory, ws, {"sessionId": "s"}, lambda text: text)
        with pytest.raises(StepError) as refused:
            await with_memory(None, tools).resolve(["save_memory_entry"])
        assert refused.value.code == "unknown_tool" and "declares no memory corpus" in refused.value.message
        answer = await tools.call("save_memory_entry", {"text": "x"})
        assert answer.error is not None and "declares no memory corpus" in answer.error


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "workspace.yml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_memory_config_errors_name_file_line_and_path(tmp_path: Path) -> None:
    loaded = load_workspace(write(tmp_path, """\
        workspace: { name: Kb }
        memory:
          own:
            - { name: notes, type: long_term }
            - { name: "bad name", type: forever, strategy: retrieval }
    """))
    assert [(e.line, e.column, e.path, e.message) for e in loaded.errors] == [
        (5, 9, "memory.own[1].name", "invalid memory corpus name 'bad name': use 1-64 letters, digits, '_' or '-'"),
        (5, 27, "memory.own[1].type", "invalid value 'forever': expected 'long_term', 'short_term' or 'scratchpad'"),
        (5, 42, "memory.own[1].strategy", "invalid value 'retrieval': expected 'narrative'"),
    ]
    twice = load_workspace(write(tmp_path, """\
        workspace: { name: Kb }
        memory: { own: [{ name: notes, type: long_term }, { name: notes, type: short_term }] }
    """))
    assert [(e.line, e.path, e.message) for e in twice.errors] == [
        (2, "memory.own[1].name", "memory corpus 'notes' is declared twice")]
    mounted = load_workspace(write(tmp_path, """\
        workspace: { name: Kb }
        memory:
          own: [{ name: notes, type: long_term }]
          mounts: [{ name: shared, source: other/narrative/notes }]
          shareable: { list: [notes] }
    """))
    assert mounted.errors == []
    assert [(w.line, w.path) for w in mounted.warnings] == [(4, "memory.mounts"), (5, "memory.shareable")]
    assert mounted.config is not None and [c.name for c in mounted.config.memory.own] == ["notes"]
    assert mounted.config.memory.own[0].strategy == "narrative"  # the default


def test_the_knowledge_base_example_declares_a_notes_corpus() -> None:
    loaded = load_workspace(FIXTURES.parent.parent / "examples" / "knowledge-base")
    assert loaded.errors == [] and loaded.config is not None
    assert [(c.name, c.type, c.strategy) for c in loaded.config.memory.own] == [("notes", "long_term", "narrative")]
    assert loaded.config.agents == {} and loaded.config.jobs == {}
