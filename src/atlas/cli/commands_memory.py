"""`atlas memory list|rm` (issue #17): a workspace's memory corpora and their entries, from any daemon."""

from __future__ import annotations

from typing import Annotated, Any
from urllib.parse import quote

import typer

from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, WorkspaceOpt, connect, handle_errors
from atlas.cli.render import Output, local_time, rel_time

memory_app = typer.Typer(help="Workspace memory: list corpora and entries, remove an entry.", no_args_is_help=True)

CorpusArg = Annotated[str, typer.Argument(help="Memory corpus name (under memory.own).")]
OptionalCorpusArg = Annotated[str | None, typer.Argument(help="Memory corpus name; without it, list the corpora.")]
EntryArg = Annotated[str, typer.Argument(help="Entry id (from `atlas memory list -w WS CORPUS`).")]
QueryOpt = Annotated[str | None, typer.Option("--query", "-q", help="Only entries containing this text "
                                              "(case-insensitive).")]
LimitOpt = Annotated[int, typer.Option("--limit", "-n", min=1, max=1000, help="At most this many entries.")]

#: Entry text in the table is cut here (--json has it whole).
_TEXT_COLUMN = 100


def _path(*parts: str) -> str:
    return "/".join(quote(part, safe="") for part in parts)


def _source(entry: dict[str, Any]) -> str:
    source = entry.get("source") or {}
    if source.get("chatId"):
        return f"chat {source['chatId']}"
    if source.get("sessionId"):
        return f"session {source['sessionId']}"
    return "-"


def _text(entry: dict[str, Any]) -> str:
    text = " ".join(str(entry.get("text", "")).split())
    return text if len(text) <= _TEXT_COLUMN else text[: _TEXT_COLUMN - 1] + "…"


@memory_app.command("list")
@handle_errors
def memory_list(workspace: WorkspaceOpt, corpus: OptionalCorpusArg = None, query: QueryOpt = None,
                limit: LimitOpt = 100, url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """List a workspace's memory corpora, or the entries of one corpus (newest first).

    --json prints the answer of GET /api/workspaces/{ws}/memory (or …/memory/{corpus} with a CORPUS).
    """
    out = Output(json_out)
    with connect(url, token) as api:
        if corpus is None:
            body = api.get(f"/api/workspaces/{_path(workspace)}/memory")
        else:
            body = api.get(f"/api/workspaces/{_path(workspace, 'memory', corpus)}", query=query, limit=limit)
    if out.json:
        out.emit_json(body)
        return
    if corpus is None:
        rows = [[c["name"], c["type"], c["strategy"], str(c["count"])] for c in body.get("corpora", [])]
        out.table(["corpus", "type", "strategy", "entries"], rows,
                  empty=f"Workspace '{workspace}' declares no memory (add a corpus under memory.own).")
        return
    rows = [[e["id"], f"{local_time(e['createdAt'], with_date=True)} ({rel_time(e['createdAt'])})", _source(e),
             _text(e)] for e in body.get("entries", [])]
    out.table(["id", "saved", "source", "text"], rows,
              empty=f"No entries in '{corpus}'" + (f" containing {query!r}." if query else "."))


@memory_app.command("rm")
@handle_errors
def memory_rm(workspace: WorkspaceOpt, corpus: CorpusArg, entry_id: EntryArg, url: UrlOpt = None,
              token: TokenOpt = None, json_out: JsonOpt = False) -> None:
    """Remove one memory entry for good (DELETE /api/workspaces/{ws}/memory/{corpus}/{id})."""
    out = Output(json_out)
    with connect(url, token) as api:
        api.request("DELETE", f"/api/workspaces/{_path(workspace, 'memory', corpus, entry_id)}")
    if out.json:
        out.emit_json({"deleted": True, "workspaceId": workspace, "corpus": corpus, "id": entry_id})
        return
    out.print(f"Removed entry {entry_id} from '{corpus}'.")
