"""Workspaces loaded into a daemon, with everything the hot path needs precomputed.

Triggering must not re-read YAML or rebuild validators: at load we compile each job's FSM, its planned steps, the
signal → job map and a JSON Schema validator per signal.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

from atlas.config.loader import LoadedWorkspace, load_workspace
from atlas.config.model import Fsm, Job, WorkspaceConfig
from atlas.errors import ApiError
from atlas.runtime.fsm import job_display_name, job_fsm, planned_steps
from atlas.sessions.events import now_iso


@dataclass
class Workspace:
    loaded: LoadedWorkspace
    config: WorkspaceConfig
    job_for_signal: dict[str, str]
    fsms: dict[str, Fsm]
    plans: dict[str, list[dict[str, Any]]]
    validators: dict[str, Draft202012Validator]
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
    """Turn a valid LoadedWorkspace into a Workspace; raises ApiError 422 for an invalid one."""
    if loaded.config is None or loaded.errors:
        raise ApiError(
            422,
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
    return Workspace(loaded, cfg, job_for_signal, fsms, plans, validators)


class WorkspaceRegistry:
    """Workspaces by id; a path can be registered once, an id belongs to one path."""

    def __init__(self) -> None:
        self._by_id: dict[str, Workspace] = {}

    def add(self, path: str | Path) -> tuple[Workspace, bool]:
        """Load (or reload) the workspace at `path`; returns it and whether it is new."""
        p = Path(path).expanduser().resolve()
        if not p.exists():
            raise ApiError(400, "path_not_found", f"No workspace at {p}")
        ws = compile_workspace(load_workspace(p))
        existing = self._by_id.get(ws.id)
        if existing is not None and existing.path != ws.path:
            raise ApiError(409, "workspace_exists", f"Workspace id '{ws.id}' is already used by {existing.path}")
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
