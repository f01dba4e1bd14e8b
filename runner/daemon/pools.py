"""The thread pools the daemon's blocking work runs on: made by the daemon, shut down when it stops.

`files` takes file I/O that should not hold the loop (the inbox journal's writes and
compactions, large callback bodies stored as resources); `git` has one thread, since
GitPython is not thread-safe; `replay` has one thread, so replaying the recent runs of a
release pending approval (CPU-bound, an event loop of its own) never crowds the rest. No pool outlives its daemon, so two daemons in one process
(tests) never share one.
"""

from __future__ import annotations

import asyncio
import functools
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable


class ThreadPools:
    def __init__(self) -> None:
        self.files = ThreadPoolExecutor(thread_name_prefix="signoff-files")
        self.git = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signoff-git")
        self.replay = ThreadPoolExecutor(max_workers=1, thread_name_prefix="signoff-replay")

    def shutdown(self) -> None:
        """Take no more work and wait for what is running, as the loop's default executor is waited for
        when its loop closes: a git command of a stopped daemon must not still be forking (its children
        would share the descriptors, and so the run locks, of whatever opens files next)."""
        self.replay.shutdown(wait=True, cancel_futures=True)  # a replay not begun is done again at start-up
        for pool in (self.files, self.git):
            pool.shutdown(wait=True)


async def in_pool(pool: ThreadPoolExecutor | None, func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """func(*args, **kwargs) on `pool` (None: the loop's default executor), awaited."""
    return await asyncio.get_running_loop().run_in_executor(pool, functools.partial(func, *args, **kwargs))
