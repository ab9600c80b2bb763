"""Fire-and-forget tasks that must stay referenced until done (asyncio keeps only weak references to tasks).

Why a component: the runner spawns chunk flushes and finalisation retries, and these outlive the call that
started them; one owner keeps them alive, so none is garbage-collected mid-flight.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

__all__ = ["Background"]


class Background:
    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[Any]] = set()

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` in its own task, kept referenced until it is done."""
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
