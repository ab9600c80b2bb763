"""`atlas admin rebuild-readmodel` (issue #15): operator actions on a running daemon."""

from __future__ import annotations

from typing import Annotated

import typer

from atlas.cli.common import JsonOpt, TokenOpt, UrlOpt, connect, handle_errors
from atlas.cli.render import Output

admin_app = typer.Typer(help="Operator actions: rebuild the read model from the log.", no_args_is_help=True)

TimeoutOpt = Annotated[float, typer.Option(
    "--timeout", metavar="SECONDS", help="How long to wait for the daemon's answer (a large log takes a while).")]


@admin_app.command("rebuild-readmodel")
@handle_errors
def rebuild_readmodel(url: UrlOpt = None, token: TokenOpt = None, json_out: JsonOpt = False,
                      timeout: TimeoutOpt = 600.0) -> None:
    """Refill the daemon's read model (SQLite, or PostgreSQL with ATLAS_DATABASE_URL) from the JetStream log.

    Every session is folded from its events again; missing rows come back and rows behind the log move forward.
    Idempotent: on a read model that is right it writes nothing. Use it after moving a cluster to PostgreSQL, or
    on a damaged or emptied database (POST /api/admin/rebuild-readmodel)."""
    out = Output(json_out)
    with connect(url, token) as api:
        body = api.request("POST", "/api/admin/rebuild-readmodel", timeout=timeout).json()
    if out.json:
        out.emit_json(body)
        return
    out.fields([("read model", body["readModel"]), ("events", str(body["events"])),
                ("sessions", str(body["sessions"])), ("rows written", str(body["written"])),
                ("partial", f"{body['partial']} (first event past retention: skipped)")])
