"""Workspaces loaded into a daemon, with everything the hot path needs precomputed.

Triggering must not re-read YAML or rebuild validators: at load we compile each job's FSM, its planned steps, the
signal → job map and a JSON Schema validator per signal.

Adding a workspace is also where an API client names a path on the daemon's host, so the path is checked before
anything is read (issue #19): only a directory (its `workspace.yml`) or a file named `workspace.yml` /
`workspace.yaml` may be added, and with `ATLAS_WORKSPACE_ROOTS` only from under one of those directories, symlinks
and `..` resolved first. Loading itself (parsing a 1 MiB file takes tens of seconds) runs in a worker thread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from atlas.agents.python_agent import forget_workspace_code
from atlas.config.loader import WORKSPACE_FILE, LoadedWorkspace, load_workspace
from atlas.config.model import Fsm, Job, WorkspaceConfig
from atlas.errors import AtlasError
from atlas.runtime.fsm import agent_ids, job_display_name, job_fsm, planned_steps
from atlas.sessions.events import PlannedStep, now_iso


@dataclass
class Workspace:
    loaded: LoadedWorkspace
    config: WorkspaceConfig
    job_for_signal: dict[str, str]
    fsms: dict[str, Fsm]
    plans: dict[str, list[PlannedStep]]
    validators: dict[str, Draft202012Validator]
    unavailable: dict[str, list[str]] = field(default_factory=dict)
    """Per job, the agents it uses that atlas cannot run (issue #14); such a job refuses every trigger."""
    created_at: str = field(default_factory=now_iso)
    last_seen: str = field(default_factory=now_iso)

    @property
    def id(self) -> str:
        return self.loaded.id

    @property
    def path(self) -> Path:
        return self.loaded.path

    def job(self, job_id: str) -> Job:
        return self.config.jobs[job_id]

    def check_runnable(self, job_id: str) -> None:
        """422 `agent_unavailable` for a job that uses an agent atlas lacks (a reference `type: system` agent or a
        bundled one such as `agent: web`): refused at acceptance, before anything is written, rather than failing a
        session at its first step."""
        missing = self.unavailable.get(job_id)
        if not missing:
            return
        whats = self.loaded.unavailable_agents
        names = ", ".join(f"'{a}' ({whats.get(a, 'unavailable')})" for a in missing)
        raise AtlasError("agent_unavailable", f"Job '{job_id}' uses agent {names}, which atlas cannot run",
                         {"jobId": job_id, "agents": [{"id": a, "agent": whats.get(a, "")} for a in missing]})

    def entry(self) -> dict[str, Any]:
        """The list item of `GET /api/workspaces` (spec §9)."""
        info = self.config.workspace
        return {
            "id": self.id,
            "name": info.name,
            "description": info.description or "",
            "path": str(self.path),
            "configPath": str(self.loaded.file),
            "status": "ready",
            "createdAt": self.created_at,
            "lastSeen": self.last_seen,
            "signalCount": len(self.config.signals),
            "jobCount": len(self.config.jobs),
            "warnings": [w.to_dict() for w in self.loaded.warnings],
        }

    def jobs_listing(self) -> list[dict[str, Any]]:
        return [
            {
                "id": job_id,
                "name": job_display_name(job_id, job),
                "title": job.title,
                "description": job.description,
                "triggers": [t.signal for t in job.triggers],
                "plannedSteps": self.plans[job_id],
            }
            for job_id, job in self.config.jobs.items()
        ]


def compile_workspace(loaded: LoadedWorkspace) -> Workspace:
    """Turn a valid LoadedWorkspace into a Workspace; raises `workspace_invalid` for an invalid one."""
    if loaded.config is None or loaded.errors:
        raise AtlasError(
            "workspace_invalid",
            f"Workspace file {loaded.file} is invalid ({len(loaded.errors)} errors)",
            [e.to_dict() for e in loaded.errors],
        )
    cfg = loaded.config
    job_for_signal = {t.signal: job_id for job_id, job in cfg.jobs.items() for t in job.triggers}
    fsms = {job_id: job_fsm(job_id, job) for job_id, job in cfg.jobs.items()}
    plans = {job_id: planned_steps(job_id, job, cfg.agents, loaded.id) for job_id, job in cfg.jobs.items()}
    validators = {
        sig_id: Draft202012Validator(sig.schema_) for sig_id, sig in cfg.signals.items() if sig.schema_ is not None
    }
    unavailable = {job_id: missing for job_id, fsm in fsms.items()
                   if (missing := [a for a in agent_ids(fsm) if a in loaded.unavailable_agents])}
    return Workspace(loaded, cfg, job_for_signal, fsms, plans, validators, unavailable)


WORKSPACE_FILE_NAMES = frozenset({WORKSPACE_FILE, "workspace.yaml"})


def _resolve(path: Path) -> Path:
    try:
        return path.resolve()
    except (RuntimeError, OSError):  # a symlink loop
        raise AtlasError("path_not_found", f"Cannot resolve {path}: too many levels of symbolic links") from None


def _check_roots(given: Path, resolved: Path, roots: Sequence[Path]) -> None:
    """`path_not_allowed` unless `resolved` (symlinks and `..` already resolved) lies in one of `roots`."""
    if roots and not any(resolved.is_relative_to(root) for root in roots):
        raise AtlasError("path_not_allowed",
                         f"{given} is outside the directories ATLAS_WORKSPACE_ROOTS allows workspaces from",
                         {"roots": [str(r) for r in roots]})


def workspace_target(path: str | Path, roots: Sequence[Path] = ()) -> Path:
    """What `load_workspace` may be given for `path`: a directory, or a file named workspace.yml/.yaml.

    Anything else is refused before it is opened: a daemon that took any file as a workspace file read keys and
    env files for whoever could call the API, and quoted them back in its errors. The roots are checked first, so
    a client cannot probe what exists outside them, and again on the workspace file itself, so a `workspace.yml`
    symlinked out of the roots is refused too.
    """
    given = Path(path).expanduser()
    resolved = _resolve(given)
    _check_roots(given, resolved, roots)
    try:
        is_dir = resolved.is_dir()
        exists = is_dir or resolved.exists()
    except OSError as exc:
        raise AtlasError("path_not_found", f"Cannot access {resolved}: {exc.strerror or exc}") from None
    if not exists:
        raise AtlasError("path_not_found", f"No workspace at {resolved}")
    if not is_dir and given.name not in WORKSPACE_FILE_NAMES and resolved.name not in WORKSPACE_FILE_NAMES:
        raise AtlasError("not_a_workspace",
                         f"{given} is not a workspace: give the workspace directory (holding {WORKSPACE_FILE}) or "
                         "its workspace.yml / workspace.yaml file")
    if roots:
        _check_roots(given, _resolve(resolved / WORKSPACE_FILE if is_dir else resolved), roots)
    return resolved


def load_checked(path: str | Path, roots: Sequence[Path] = ()) -> Workspace:
    """Check `path` (see `workspace_target`), then load and compile the workspace; blocking, raises AtlasError."""
    return compile_workspace(load_workspace(workspace_target(path, roots)))


class WorkspaceRegistry:
    """Workspaces by id; a path can be registered once, an id belongs to one path."""

    def __init__(self) -> None:
        self._by_id: dict[str, Workspace] = {}
        # One load at a time: each one is seconds of CPU in a worker thread for a big file, and a client adding
        # many at once must not take every core (and the GIL) from the event loop. It also registers in order.
        self._loading = asyncio.Lock()

    async def add(self, path: str | Path, roots: Sequence[Path] = ()) -> tuple[Workspace, bool]:
        """Load (or reload) the workspace at `path`, off the event loop; returns it and whether it is new.

        `roots` are the directories it must lie under (`ATLAS_WORKSPACE_ROOTS`; empty: anywhere).
        """
        async with self._loading:
            ws = await asyncio.to_thread(load_checked, path, tuple(roots))
            # its python steps' code is part of it: the next run imports it as it is now (issue #16, item 3)
            await asyncio.to_thread(forget_workspace_code, ws.path)
            return self._register(ws)

    def _register(self, ws: Workspace) -> tuple[Workspace, bool]:
        existing = self._by_id.get(ws.id)
        if existing is not None and existing.path != ws.path:
            raise AtlasError("workspace_exists", f"Workspace id '{ws.id}' is already used by {existing.path}")
        if existing is not None:
            ws.created_at = existing.created_at
        self._by_id[ws.id] = ws
        return ws, existing is None

    def get(self, workspace_id: str) -> Workspace | None:
        return self._by_id.get(workspace_id)

    def remove(self, workspace_id: str) -> Workspace | None:
        return self._by_id.pop(workspace_id, None)

    def all(self) -> list[Workspace]:
        return sorted(self._by_id.values(), key=lambda w: w.config.workspace.name.lower())
