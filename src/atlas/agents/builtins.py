"""Built-in agents `atlas/sleep`, `atlas/echo` and `atlas/count` (spec §2.5).

They need no workspace code, which makes them the engine of demos and of tests for timeouts, cancellation and
progress streaming. Config comes from the agent's `config` over the defaults; keys of an object input override
config keys of the same name, so `{"count": 3, "interval": 0.5}` as a payload drives `atlas/count` directly.
All waiting is `asyncio.sleep`, so cancellation stops a built-in at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from atlas.agents.base import AgentContext, StepError
from atlas.config.durations import parse_duration

__all__ = ["BUILTIN_DEFAULTS", "run_builtin"]

BUILTIN_DEFAULTS: dict[str, dict[str, Any]] = {
    "atlas/sleep": {"duration": "1s"},
    "atlas/echo": {},
    "atlas/count": {"count": 5, "interval": "1s"},
}


def _settings(name: str, config: Mapping[str, Any], input_value: Any) -> dict[str, Any]:
    settings = {**BUILTIN_DEFAULTS[name], **config}
    if isinstance(input_value, Mapping):
        settings.update({key: input_value[key] for key in settings if key in input_value})
    return settings


def _seconds(name: str, key: str, value: Any) -> float:
    """A duration string (`"500ms"`) or a number of seconds (≥ 0)."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value < 0:
            raise StepError("agent_error", f"{name}: {key} must not be negative")
        return float(value)
    if isinstance(value, str):
        try:
            return parse_duration(value)
        except ValueError as exc:
            raise StepError("agent_error", f"{name}: {key}: {exc}") from exc
    raise StepError("agent_error", f"{name}: {key} must be a duration or a number of seconds")


async def _sleep(settings: dict[str, Any], ctx: AgentContext) -> dict[str, Any]:
    seconds = _seconds("atlas/sleep", "duration", settings["duration"])
    await asyncio.sleep(seconds)
    return {"sleptMs": round(seconds * 1000)}


async def _echo(settings: dict[str, Any], ctx: AgentContext) -> Any:
    return ctx.input


async def _count(settings: dict[str, Any], ctx: AgentContext) -> dict[str, Any]:
    count = settings["count"]
    if not isinstance(count, int) or isinstance(count, bool) or count < 0:
        raise StepError("agent_error", "atlas/count: count must be a non-negative integer")
    interval = _seconds("atlas/count", "interval", settings["interval"])
    for i in range(1, count + 1):
        await asyncio.sleep(interval)
        ctx.emit_progress(f"{i}/{count}", current=i, total=count)
    return {"counted": count}


_BUILTINS: dict[str, Callable[[dict[str, Any], AgentContext], Awaitable[Any]]] = {
    "atlas/sleep": _sleep,
    "atlas/echo": _echo,
    "atlas/count": _count,
}


async def run_builtin(name: str, config: Mapping[str, Any], ctx: AgentContext) -> Any:
    """Run built-in `name` with `config` (the agent's `config`, or `{}` when used directly by name)."""
    run = _BUILTINS.get(name)
    if run is None:
        raise StepError("agent_error", f"unknown built-in agent {name!r}")
    return await run(_settings(name, config, ctx.input), ctx)
