"""The release state in PostgreSQL, for several daemons on one database: one state, one history.

The same documents as `runner.releases.live.State` keeps under `<data>/releases` (verdicts
per commit, tags seen, pins, yanks, activations), each a row of `release_state`; the
history is `release_history`; `locked()` is a session advisory lock, so one release
decision holds for every daemon.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

from runner.releases.live import State


class DatabaseState(State):
    def __init__(self, store: Any) -> None:
        self.store = store  # a PostgresStore

    @contextmanager
    def locked(self) -> Iterator["DatabaseState"]:
        with self.store.release_lock():
            yield self

    def load(self, name: str, default: Any) -> Any:
        value = self.store.release_value(name)
        return default if value is None else value

    def save(self, name: str, value: Any) -> None:
        self.store.save_release_value(name, value)

    def append_history(self, entry: dict[str, Any]) -> None:
        self.store.append_release_history(entry)

    def history(self, flow: str | None = None) -> list[dict[str, Any]]:
        return self.store.release_history(flow)


def release_state(store: Any) -> State:
    """Where a store keeps release state: its database, or `<data>/releases` beside a file store."""
    if hasattr(store, "release_value"):
        return DatabaseState(store)
    return State(store.data_dir)
