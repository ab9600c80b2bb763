"""The `atlas` command line (spec §11): Typer + Rich, talking to the daemon over HTTP only.

Commands live in small modules: `commands_daemon` (daemon start|stop|status|restart), `commands_workspace`,
`commands_signal` (list, trigger), `commands_sessions` (sessions list|show|follow|cancel, follow, ps). The HTTP
client and URL/token resolution are in `client`, output helpers in `render`, live following in `follow`.
"""

from __future__ import annotations

from typing import Annotated

import typer

from atlas import __version__
from atlas.cli.commands_admin import admin_app
from atlas.cli.commands_chat import chat_command
from atlas.cli.commands_daemon import daemon_app, daemon_start
from atlas.cli.commands_memory import memory_app
from atlas.cli.commands_schedules import schedules_app
from atlas.cli.commands_sessions import follow_command, ps_command, sessions_app
from atlas.cli.commands_signal import signal_app
from atlas.cli.commands_workspace import workspace_app, workspace_validate

__all__ = ["app", "daemon_main", "daemon_start", "workspace_validate"]

app = typer.Typer(
    help="atlas: workspaces, signals, jobs and sessions on a local daemon.\n\n"
         "The daemon is found through --url / ATLAS_URL, else $ATLAS_HOME/daemon.json, else "
         "http://127.0.0.1:8080; the token comes from --token / ATLAS_TOKEN. Every command takes --json.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(daemon_app, name="daemon")
app.add_typer(workspace_app, name="workspace")
app.add_typer(signal_app, name="signal")
app.add_typer(sessions_app, name="sessions")
app.add_typer(schedules_app, name="schedules")
app.add_typer(memory_app, name="memory")
app.add_typer(admin_app, name="admin")
app.command("follow")(follow_command)
app.command("ps")(ps_command)
app.command("chat")(chat_command)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"atlas {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print the version and exit.")] = False,
) -> None:
    """atlas: workspaces, signals, jobs and sessions on a local daemon."""


def daemon_main() -> None:
    """`atlasd`: the same as `atlas daemon start`."""
    typer.run(daemon_start)


if __name__ == "__main__":
    app()
