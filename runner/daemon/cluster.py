"""Several daemons on one PostgreSQL database: wake-ups between them, and the sweep for runs nobody holds.

None of the daemons is special. Each advances the runs it starts or is asked about,
under the run's lease; what the others need to know reaches them two ways:

    listen   one connection of its own (never through a transaction pooler) LISTENs to
             `signoff_inbox` (a callback was committed for a run) and `signoff_events`
             (a run recorded something). NOTIFY is sent by the committing transaction (a
             trigger), so the row is visible when the wake-up arrives; payloads are run ids.
             A callback for a run this daemon is advancing now makes it go round once more;
             a long poll on a run another daemon advances wakes up.
    sweep    every fraction of the lease: the active runs whose lease lapsed or that no one
             holds, and that need a writer (queued, running: a dead daemon's; a wait that is
             due; a wait with a callback in the inbox), claimed with FOR UPDATE SKIP LOCKED,
             oldest first, and advanced here (the lease decides, if two daemons try at once).
             Polling is the backstop: a wake-up lost with a dropped connection costs one sweep.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any, Callable

import psycopg

log = logging.getLogger(__name__)
CHANNELS = ("signoff_inbox", "signoff_events")
RECONNECT_SECONDS = 1.0
SWEEP_BATCH = 200


class Cluster:
    def __init__(self, *, store: Any, runs: Any, polls: Any, kills_sweep: Callable[[], int], pool: Any) -> None:
        self.store, self.runs, self.polls, self._kills_sweep, self.pool = store, runs, polls, kills_sweep, pool
        self.sweep_every = max(0.05, min(1.0, store.lease / 5))
        self.swept = 0  # runs this daemon took up from the sweep (for health and tests)

    # ---- wake-ups -------------------------------------------------------------------------

    async def listen(self) -> None:
        """LISTEN on a connection of its own, for as long as the daemon runs (reconnecting)."""
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(self.store.dsn, autocommit=True)
            except psycopg.Error as exc:
                log.warning("cannot listen for wake-ups: %s; polling meanwhile", exc,
                            extra={"event": "listen_failed"})
                await asyncio.sleep(RECONNECT_SECONDS)
                continue
            try:
                async with conn:
                    for channel in CHANNELS:
                        await conn.execute(f"LISTEN {channel}")
                    async for note in conn.notifies():
                        self.woken(note.channel, note.payload)
            except psycopg.Error as exc:
                log.warning("wake-ups connection lost: %s; reconnecting", exc, extra={"event": "listen_lost"})
                await asyncio.sleep(RECONNECT_SECONDS)

    def woken(self, channel: str, run_id: str) -> None:
        if channel == "signoff_inbox":
            if run_id in self.runs.tasks:
                self.runs.schedule(run_id)  # being advanced here: once more, to take the callback
        elif channel == "signoff_events":
            self.polls.wake(run_id)

    # ---- the sweep --------------------------------------------------------------------------

    async def sweep(self) -> None:
        """Take up the runs nobody holds that need a writer, forever (a supervised side task)."""
        rounds = 0
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.sweep_every)
            try:
                found = await loop.run_in_executor(self.pool, self.store.orphaned_runs, SWEEP_BATCH)
                rounds += 1
                if rounds % 20 == 1:
                    await loop.run_in_executor(self.pool, self.store.still_alive)
                    self._kills_sweep()  # kills a dead daemon left outstanding (each claimed once)
            except psycopg.Error as exc:
                log.warning("sweep failed: %s", exc, extra={"event": "sweep_failed"})
                continue
            for run_id in found:
                if run_id not in self.runs.tasks:
                    self.swept += 1
                    self.runs.schedule(run_id)
