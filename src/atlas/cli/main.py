"""The `atlas` command line (spec §11). This issue's slice: `daemon start` and `workspace validate`."""

from __future__ import annotations

from pathlib import Path

import typer

from atlas.config.settings import Settings

app = typer.Typer(help="atlas: workspaces, signals, jobs and sessions on a local daemon.", no_args_is_help=True)
daemon_app = typer.Typer(help="Run and control the atlas daemon.", no_args_is_help=True)
workspace_app = typer.Typer(help="Workspaces: validate workspace.yml files.", no_args_is_help=True)
app.add_typer(daemon_app, name="daemon")
app.add_typer(workspace_app, name="workspace")


@daemon_app.command("start")
def daemon_start(
    host: str | None = typer.Option(None, help="Address to bind (default 127.0.0.1, ATLAS_HOST)."),
    port: int | None = typer.Option(None, help="Port to listen on (default 8080, ATLAS_PORT; 0 = any free)."),
    home: Path | None = typer.Option(None, help="State directory (default ~/.atlas, ATLAS_HOME)."),
    workspace: list[Path] = typer.Option([], "--workspace", "-w", help="Workspace directory to load (repeatable)."),
    nats_url: str | None = typer.Option(None, help="External NATS URL(s); default: start an embedded server."),
) -> None:
    """Run the daemon in the foreground until Ctrl-C or SIGTERM, then shut down gracefully."""
    from atlas.cli.serve import run_daemon

    settings = Settings.from_env().with_overrides(
        host=host, port=port, home=home.expanduser().resolve() if home else None, nats_url=nats_url,
        workspaces=tuple(p.expanduser().resolve() for p in workspace) or None,
    )
    raise typer.Exit(run_daemon(settings))


@workspace_app.command("validate")
def workspace_validate(path: Path = typer.Argument(..., help="A workspace directory or workspace.yml file.")) -> None:
    """Check a workspace.yml offline (no daemon); prints file:line:column: path: message per error, exit 5."""
    from atlas.cli.validate import validate_command

    raise typer.Exit(validate_command(str(path)))


def daemon_main() -> None:
    """`atlasd`: the same as `atlas daemon start`."""
    typer.run(daemon_start)


if __name__ == "__main__":
    app()
