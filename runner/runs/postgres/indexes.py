"""The PostgreSQL store's small indexes: callback tokens to their step, and the runs with kills still to carry out.

Both are idempotent inserts on a unique key: indexing a token again, or noting a
run's kills twice, is a no-op, never a lock wait.
"""

from __future__ import annotations

import hashlib
from typing import Any

from psycopg_pool import ConnectionPool

from runner.runs.postgres import queries as q


class PostgresIndexes:
    """A part of `runner.runs.postgres.store.PostgresStore`, which sets `pool`; its one-statement helpers."""

    pool: ConnectionPool

    def _one(self, query: str, params: dict[str, Any]) -> tuple[Any, ...] | None:
        with self.pool.connection() as conn:
            return conn.execute(query, params).fetchone()

    def _count(self, query: str, params: dict[str, Any]) -> int:
        with self.pool.connection() as conn:
            return conn.execute(query, params).rowcount

    def index_callbacks(self, run_id: str, tokens: dict[str, str]) -> None:
        """token sha256 -> (run, step), committed before the run that hands the URLs out is created;
        an entry for a token already indexed is left as it is."""
        rows = [{"digest": hashlib.sha256(token.encode()).hexdigest(), "run": run_id, "step": step}
                for step, token in tokens.items()]
        if rows:
            with self.pool.connection() as conn, conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(q.INDEX_CALLBACK, rows)

    def find_callback(self, token: str) -> tuple[str, str] | None:
        found = self._one(q.FIND_CALLBACK, {"digest": hashlib.sha256(token.encode()).hexdigest()})
        return (found[0], found[1]) if found else None

    def note_kills(self, run_id: str) -> None:
        self._count(q.NOTE_KILLS, {"run": run_id})

    def runs_with_kills(self) -> list[str]:
        with self.pool.connection() as conn:
            return [r for (r,) in conn.execute(q.RUNS_WITH_KILLS).fetchall()]

    def kills_settled(self, run_id: str) -> None:
        self._count(q.KILLS_SETTLED, {"run": run_id})
