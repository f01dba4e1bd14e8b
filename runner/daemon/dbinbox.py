"""The callback inbox in PostgreSQL, for several daemons on one database: committed before the 202.

The same contract as the file inbox (`runner.daemon.inbox.Inbox`): the first body
accepted for a (run, step) wins and a second request is answered with it; a step
whose wait ended is closed, so a callback is either in the run's record or refused
(409), never acknowledged and then dropped. Here the unique key (run, step) of the
`inbox` table decides both, across daemons: an insert that finds a row is a no-op,
not a lock wait. Callbacks that arrive together are inserted in one statement and
one commit (group commit); the insert wakes the other daemons by NOTIFY from its
own transaction (a trigger), so the one advancing the run sees the row.
"""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import Executor
from typing import Any, Callable

from runner import jsonvalue
from runner.daemon.inbox import refuse_batch
from runner.daemon.pools import in_pool
from runner.errors import Conflict, StoreError
from runner.runs.postgres import queries as q

Key = tuple[str, str]  # (run id, step id)
BATCH_LIMIT = 500  # callbacks in one insert


class DatabaseInbox:
    def __init__(self, store: Any, *, pool: Executor | None = None) -> None:
        self.store = store  # a PostgresStore: its connection pool
        self.pool = pool  # where the inserts run (None: the loop's default executor)
        self._inflight: dict[Key, tuple[dict[str, Any], asyncio.Future]] = {}
        self._batch: list[Key] = []
        self._committer: asyncio.Task | None = None

    def __len__(self) -> int:
        with self.store.pool.connection() as conn:
            return conn.execute(q.INBOX_COUNT).fetchone()[0]

    def load(self, wanted: Callable[[str, str], bool]) -> int:
        """Nothing to read into memory: the table is the inbox. How many callbacks wait in it."""
        return len(self)

    def close(self) -> None:
        pass

    # ---- accepting and consuming -------------------------------------------------

    def get(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        """The committed entry for a step, if one was accepted and its run has not recorded it yet."""
        found = self._row(run_id, step_id)
        return found if found else None

    def _row(self, run_id: str, step_id: str) -> dict[str, Any] | None | bool:
        """The step's entry; False if the step was closed without one; None if there is no row."""
        with self.store.pool.connection() as conn:
            row = conn.execute(q.INBOX_ENTRY, {"run": run_id, "step": step_id}).fetchone()
        if row is None:
            return None
        return json.loads(row[0]) if row[0] is not None else False

    def busy(self, run_id: str, step_id: str) -> bool:
        """Whether this daemon is committing a callback for the step right now."""
        return (run_id, step_id) in self._inflight

    async def accept(self, run_id: str, step_id: str, entry: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(True, entry) once this entry is committed; (False, the first entry) if another one won."""
        key = (run_id, step_id)
        if key in self._inflight:
            first, committed = self._inflight[key]
            await asyncio.shield(committed)
            return False, first
        committed = asyncio.get_running_loop().create_future()
        self._inflight[key] = (entry, committed)
        self._batch.append(key)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit(), name="inbox-commit")
        won = await asyncio.shield(committed)
        if won:
            return True, entry
        existing = await in_pool(self.pool, self._row, run_id, step_id)
        if not existing:
            raise Conflict(f"step '{step_id}' of run {run_id} is no longer waiting for a callback",
                           hint="its deadline passed or its run ended before the callback came")
        return False, existing

    async def close_step(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        """Take no new callback for the step, on every daemon; the entry, if one won."""
        key = (run_id, step_id)
        if key in self._inflight:
            try:
                await asyncio.shield(self._inflight[key][1])
            except StoreError:
                pass
        await in_pool(self.pool, self._close, run_id, step_id)
        return self.get(run_id, step_id)

    def _close(self, run_id: str, step_id: str) -> None:
        with self.store.pool.connection() as conn:
            conn.execute(q.INBOX_CLOSE, {"run": run_id, "step": step_id})

    def consumed(self, run_id: str, step_id: str) -> None:
        """The run recorded this callback (or ended): the row goes (the record answers replays now)."""
        with self.store.pool.connection() as conn:
            conn.execute(q.INBOX_CONSUMED, {"run": run_id, "step": step_id})

    # ---- the group commit --------------------------------------------------------------

    async def _commit(self) -> None:
        try:
            while self._batch:
                keys, self._batch = self._batch[:BATCH_LIMIT], self._batch[BATCH_LIMIT:]
                entries = [jsonvalue.dumps(self._inflight[key][0]).decode("utf-8") for key in keys]
                try:
                    won = await in_pool(self.pool, self._insert, keys, entries)
                except Exception as exc:
                    refuse_batch(self._inflight, keys, StoreError(f"could not record the callback in the database: {exc}"))
                    continue
                for key in keys:
                    _, committed = self._inflight.pop(key)
                    committed.set_result(key in won)
        finally:
            self._committer = None
            if self._batch:
                self._committer = asyncio.create_task(self._commit(), name="inbox-commit")

    def _insert(self, keys: list[Key], entries: list[str]) -> set[Key]:
        params = {"runs": [k[0] for k in keys], "steps": [k[1] for k in keys], "entries": entries}
        with self.store.pool.connection() as conn:
            return {(run, step) for run, step in conn.execute(q.INBOX_ACCEPT, params).fetchall()}
