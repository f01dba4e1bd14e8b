"""Long polls on a run's events: a request that waits until the run records something new."""

from __future__ import annotations

import asyncio
from typing import Any

from runner.runs.store import Store
from runner.status import is_terminal


class LongPolls:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._changed: dict[str, asyncio.Event] = {}  # run id -> set at its next event

    async def events_after(self, run_id: str, after: int, wait: float = 0.0) -> list[dict[str, Any]]:
        """Events with seq > after; with `wait`, hold the request until one arrives (long poll)."""
        events = list(self.store.read_events(run_id, after=after))
        if events or wait <= 0 or is_terminal(self.store.read_run(run_id)["status"]):
            return events
        changed = self._changed.setdefault(run_id, asyncio.Event())
        try:
            await asyncio.wait_for(changed.wait(), timeout=wait)
        except TimeoutError:
            pass
        return list(self.store.read_events(run_id, after=after))

    def on_event(self, run: dict[str, Any], event: dict[str, Any]) -> None:
        """Listener: wake whoever waits on this run."""
        self.wake(run["id"])

    def wake(self, run_id: str) -> None:
        """The run recorded something (here, or on another daemon of the same database)."""
        changed = self._changed.pop(run_id, None)
        if changed is not None:
            changed.set()
