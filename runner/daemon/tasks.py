"""The daemon's side tasks: named supervised ones (timers, ref watcher) and short background ones.

A supervised task that dies makes the daemon say which one and stop cleanly (SIGTERM to
itself: runs stay resumable). Background tasks (an announcement, a kill, a schedule plan)
are kept here until they end, so they are not collected half-way and `stop` can cancel
them.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any, Coroutine

log = logging.getLogger(__name__)


class SideTasks:
    def __init__(self) -> None:
        self.stopping = False
        self.failed: str | None = None  # the supervised task that died, if one did
        self.background: set[asyncio.Task] = set()
        self._supervised: dict[str, asyncio.Task] = {}

    def supervise(self, coroutine: Coroutine[Any, Any, Any], name: str) -> asyncio.Task:
        """A named side task; if it dies, the daemon says which and stops cleanly (runs stay resumable)."""
        task = asyncio.create_task(coroutine, name=name)

        def died(done: asyncio.Task) -> None:
            if done.cancelled() or self.stopping:
                return
            self.failed = name
            log.error("the %s task died: %r; stopping the daemon", name, done.exception(),
                      extra={"event": "side_task_died", "task": name})
            os.kill(os.getpid(), signal.SIGTERM)

        task.add_done_callback(died)
        self._supervised[name] = task
        return task

    def spawn(self, coroutine: Coroutine[Any, Any, Any]) -> None:
        """Run `coroutine` in the background, kept until it ends."""
        task = asyncio.get_running_loop().create_task(coroutine)
        self.background.add(task)
        task.add_done_callback(self.background.discard)

    def cancel_supervised(self) -> None:
        for task in self._supervised.values():
            task.cancel()

    def cancel_background(self) -> None:
        for task in list(self.background):
            task.cancel()
