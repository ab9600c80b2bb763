"""atlas: a local-first workflow runtime (workspaces, signals, FSM jobs, event-sourced sessions)."""

__version__ = "0.1.0"
