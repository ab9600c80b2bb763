"""`atlas workspace validate PATH`: offline validation of a workspace file (spec §11, §2.8).

Needs no daemon, so a workspace can be checked in an editor hook or in CI before it is added.
"""

from __future__ import annotations

from pathlib import Path

from atlas.config.loader import load_workspace, workspace_file

EXIT_OK = 0
EXIT_INVALID = 5  # "invalid input", the CLI's code for an invalid workspace (spec §11)


def validate_command(path: str) -> int:
    """Print every warning and error as `file:line:column: path: message`; return 5 if any error, else 0."""
    loaded = load_workspace(path)
    for warning in loaded.warnings:
        print(f"warning: {warning.format()}")
    for error in loaded.errors:
        print(error.format())
    if loaded.errors:
        return EXIT_INVALID
    print(f"ok: {workspace_file(Path(path))} (workspace '{loaded.id}')")
    return EXIT_OK
