"""What several daemons on one database share besides the runs: once-only claims, schedule slots,
settings, release state, and the sweep for runs nobody holds.

Each is an idempotent statement on a unique key, so two daemons doing the same thing at
once is a no-op for the second, never a lock wait: a claim is taken by the first to insert
it, a schedule slot by the first to move it forward, a setting by the first to write it.
"""

from __future__ import annotations

import json
import os
import secrets
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Iterator

from psycopg_pool import ConnectionPool

from runner.runs.postgres import queries as q

RELEASE_LOCK_KEY = 0x5160FD  # pg_advisory_lock key of the release state


class PostgresShared:
    """A part of `runner.runs.postgres.store.PostgresStore`, which sets `pool` and `holder`."""

    pool: ConnectionPool
    holder: str

    def _rowcount(self, query: str, params: dict[str, Any]) -> int:
        with self.pool.connection() as conn:
            return conn.execute(query, params).rowcount

    # ---- runs that need a writer ---------------------------------------------------------

    def orphaned_runs(self, limit: int = 200) -> list[str]:
        """Active runs nobody holds that need a writer now (oldest first): a dead daemon's, due waits,
        waits with a callback in the inbox. Rows another daemon's sweep holds are skipped."""
        with self.pool.connection() as conn, conn.transaction():
            return [run_id for (run_id,) in conn.execute(q.ORPHANED_RUNS, {"limit": limit}).fetchall()]

    def forget_the_dead(self) -> list[str]:
        """Writers of this host whose process is gone (a kill -9, a crash, a restart): their leases and claims
        are let go at once instead of at their expiry, since nothing of theirs can write any more. (A holder
        is `host:pid`; were two hosts named alike, a live writer let go of this way only loses its run: every
        write is fenced by the lease epoch.)"""
        host = self.holder.rpartition(":")[0]
        with self.pool.connection() as conn:
            names = [name for (name,) in conn.execute(q.HOST_HOLDERS, {"prefix": f"{host}:%"}).fetchall()]
            dead = [name for name in names if name != self.holder and not _process_alive(name.rpartition(":")[2])]
            if dead:
                with conn.transaction():
                    for query in (q.FORGET_DAEMONS, q.FORGET_CLAIMS, q.FORGET_LEASES):
                        conn.execute(query, {"holders": dead})
        return dead

    def still_alive(self) -> None:
        """This daemon's heartbeat in `daemons`."""
        self._rowcount(q.DAEMON_ALIVE, {"holder": self.holder})

    # ---- things done once across daemons ----------------------------------------------------

    def claim(self, key: str, *, lapse: float | None = None) -> bool:
        """True for the one caller that may do `key` now. With `lapse`, a claim whose holder did not
        `settle` it within that many seconds may be taken again (the holder died doing it)."""
        return bool(self._rowcount(q.TAKE_CLAIM, {"key": key, "holder": self.holder,
                                                  "lapse": lapse if lapse is not None else 10 ** 9}))

    def settle(self, key: str) -> None:
        """The claimed thing is done: the claim never lapses."""
        self._rowcount(q.SETTLE_CLAIM, {"key": key, "holder": self.holder})

    def take_flow_slot(self, flow: str, limit: int, run_id: str) -> bool:
        """One of the flow's `limit` concurrency slots for the run (kept if it has one); False if all are held
        by active runs. The slot is the run's until it ends, whichever daemon advances it."""
        return any(self._rowcount(q.TAKE_FLOW_SLOT, {"key": f"concurrency:{flow}:{n}", "run": run_id})
                   for n in range(limit))

    # ---- schedule slots -----------------------------------------------------------------------

    def schedule_claims(self) -> dict[str, dict[str, Any]]:
        with self.pool.connection() as conn:
            rows = conn.execute(q.SCHEDULE_CLAIMS).fetchall()
        return {key: {"slot": slot.isoformat(), "run": run_id, "creating": creating}
                for key, slot, run_id, creating in rows}

    def last_slot(self, key: str) -> datetime | None:
        with self.pool.connection() as conn:
            found = conn.execute(q.SCHEDULE_CLAIM, {"key": key}).fetchone()
        return found[0] if found else None

    def claim_slot(self, key: str, slot: datetime, run_id: str) -> bool:
        """Move the trigger's last slot to `slot`, to fire as `run_id`; False if it (or a later one) was claimed."""
        return bool(self._rowcount(q.CLAIM_SLOT, {"key": key, "slot": slot, "run": run_id}))

    def slot_created(self, key: str) -> None:
        self._rowcount(q.SLOT_CREATED, {"key": key})

    # ---- settings ---------------------------------------------------------------------------------

    def kept_secret(self, name: str) -> str:
        """A random secret every daemon agrees on: made by the first that asks, kept in `settings`."""
        self._rowcount(q.KEEP_SETTING, {"name": name, "value": secrets.token_urlsafe(32)})
        with self.pool.connection() as conn:
            return conn.execute(q.SETTING, {"name": name}).fetchone()[0]

    # ---- release state --------------------------------------------------------------------------

    @contextmanager
    def release_lock(self) -> Iterator[None]:
        """Held while one daemon (or CLI) changes the release state: a session advisory lock."""
        with self.pool.connection() as conn:
            conn.execute("SELECT pg_advisory_lock(%(key)s)", {"key": RELEASE_LOCK_KEY})
            try:
                yield
            finally:
                conn.execute("SELECT pg_advisory_unlock(%(key)s)", {"key": RELEASE_LOCK_KEY})

    def release_value(self, name: str) -> Any:
        """The release state document `name`; None if there is none."""
        with self.pool.connection() as conn:
            found = conn.execute(q.RELEASE_STATE, {"name": name}).fetchone()
        return json.loads(found[0]) if found else None

    def save_release_value(self, name: str, value: Any) -> None:
        self._rowcount(q.SAVE_RELEASE_STATE, {"name": name, "value": json.dumps(value, sort_keys=True)})

    def append_release_history(self, entry: dict[str, Any]) -> None:
        self._rowcount(q.APPEND_RELEASE_HISTORY, {"flow": entry.get("flow"), "entry": json.dumps(entry, sort_keys=True)})

    def release_history(self, flow: str | None = None) -> list[dict[str, Any]]:
        with self.pool.connection() as conn:
            return [json.loads(text) for (text,) in conn.execute(q.RELEASE_HISTORY, {"flow": flow}).fetchall()]


def _process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError):
        return True  # someone else's process, or not a pid: not ours to call dead
    return True
