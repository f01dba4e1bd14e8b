"""A run's event log in PostgreSQL, open for appending: the PostgreSQL store's `RunLog`.

Opening it takes the run's lease: the run row's `lease_epoch` grows by one and
`lease_until` is set `lease` seconds ahead, only if no other writer holds an
unexpired lease (else RunLocked, as the file store's lock). While it is open a
heartbeat renews the lease every third of its duration. Every append (and
snapshot) is one statement fenced by the epoch: if another writer took the
run after this one's lease ran out, nothing of the batch lands and the append
raises RunLocked, so a run never has two writers.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
from typing import Any

from psycopg_pool import ConnectionPool

from runner.errors import RunLocked
from runner.runs.chain import GENESIS, chain
from runner.runs.postgres import queries as q

log = logging.getLogger(__name__)


class PostgresLog:
    """The append-only, hash-chained history of one run; opening it takes the run's lease."""

    def __init__(self, pool: ConnectionPool, run_id: str, holder: str, lease: float) -> None:
        self.pool = pool
        self.run_id = run_id
        self.lease = lease
        self.count = 0
        self.last_sha256 = GENESIS
        self.tail: list[dict[str, Any]] = []
        self.lost = False  # another writer took the run: nothing more lands
        with pool.connection() as conn:
            row = conn.execute(q.TAKE_LEASE, {"run": run_id, "holder": holder, "lease": lease}).fetchone()
            if row is None:
                held = conn.execute(q.LEASE_HOLDER, {"run": run_id}).fetchone()
        if row is None:
            who = f" ({held[0]}, until {held[1]:%H:%M:%S})" if held and held[0] else ""
            raise RunLocked(f"run {run_id} is being advanced by another writer{who}",
                            hint="wait for it, or stop the daemon that owns it")
        self.epoch, self._stored_count, self._stored_last, self.size = row
        self._stop = threading.Event()
        self._heartbeat = threading.Thread(target=self._beat, name=f"lease {run_id}", daemon=True)
        self._heartbeat.start()

    def resume(self, start: dict[str, Any] | None = None) -> bool:
        """Read the events after `start` (a snapshot's `events`), or all of them; True if `start` was used."""
        resumed = bool(start) and start.get("count", 0) <= self._stored_count
        if resumed:
            self.count, self.last_sha256 = start["count"], start["last_sha256"]
        with self.pool.connection() as conn:
            lines = conn.execute(q.EVENTS_AFTER, {"run": self.run_id, "after": self.count - 1}).fetchall()
        for (line,) in lines:
            self.count += 1
            self.last_sha256 = hashlib.sha256(line).hexdigest()
            self.tail.append(json.loads(line))
        return resumed

    def append(self, events: list[dict[str, Any]]) -> None:
        """Chain a batch and write it in one fenced statement: all of it, or none (RunLocked)."""
        if not events:
            return
        data, count, last = chain(events, self.count, self.last_sha256)
        lines = data.split(b"\n")[:-1]
        params = {"run": self.run_id, "epoch": self.epoch, "first": self.count, "count": count, "last": last,
                  "bytes": len(data), "lease": self.lease, "seqs": list(range(self.count, count)), "lines": lines}
        with self.pool.connection() as conn:
            landed = conn.execute(q.APPEND_EVENTS, params).rowcount
        if landed != len(lines):
            self._lose()
        self.count, self.last_sha256 = count, last
        self.size += len(data)

    def renew(self) -> bool:
        """Push the lease `lease` seconds ahead; False (and the log is lost) if another writer took the run."""
        with self.pool.connection() as conn:
            kept = conn.execute(q.RENEW_LEASE, {"run": self.run_id, "epoch": self.epoch, "lease": self.lease}).rowcount
        if not kept:
            self.lost = True
        return bool(kept)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 3):
            try:
                if not self.renew():
                    log.warning("run %s: its lease was taken by another writer", self.run_id,
                                extra={"event": "lease_lost", "run_id": self.run_id})
                    return
            except Exception as exc:  # the database away for a moment: the next beat tries again
                log.warning("run %s: lease renewal failed: %s", self.run_id, exc,
                            extra={"event": "lease_renewal_failed", "run_id": self.run_id})

    def _lose(self) -> None:
        self.lost = True
        raise RunLocked(f"run {self.run_id} was taken over by another writer; this one's events were not written",
                        hint="its lease ran out (the writer stalled for longer than the lease)")

    def close(self) -> None:
        if self._stop.is_set():
            return
        self._stop.set()
        self._heartbeat.join()
        if not self.lost:
            with self.pool.connection() as conn:
                conn.execute(q.RELEASE_LEASE, {"run": self.run_id, "epoch": self.epoch})
