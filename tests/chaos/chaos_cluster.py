"""The chaos test's parts for several daemons on one PostgreSQL database.

`ClusterChaos` spreads every request over the daemons (each request to a daemon drawn at
random; one refusing connections is skipped for the next try) and its killer `kill -9`s a
random daemon and starts it again. `ClusterVerdict` reads the runs from the database instead
of a data dir, and adds the checks several daemons need: the chain of every run verifies and
its snapshot agrees (a second writer would break the one or the other: the lease fencing
held), the inbox table is empty, and every step a kill cut short was taken up by another
daemon within the lease (its `step_interrupted` event came soon after the kill).
"""

from __future__ import annotations

import json
import os
import random
import signal
import threading
import time
from typing import Any

import httpx
import psycopg
from chaos_checks import Verdict
from chaos_support import Chaos
from daemon_support import DaemonProcess
from support import run_schema_errors

from runner.runs.postgres.store import PostgresStore
from runner.timeutil import parse_rfc3339

TAKEOVER_SLACK = 3.0  # beyond the lease: a sweep, a loaded machine's scheduling


class ClusterChaos(Chaos):
    def __init__(self, daemons: list[DaemonProcess], seed: int, *, dsn: str, lease: float) -> None:
        super().__init__(daemons[0], seed)
        self.daemons = daemons
        self.dsn, self.lease = dsn, lease
        self.down: set[int] = set()
        self.kill_times: list[tuple[float, int]] = []  # (epoch seconds, which daemon)

    def client(self, user: str | None) -> httpx.Client:
        """This thread's client for `user` on a daemon drawn at random (those being restarted skipped)."""
        local = self.local.__dict__
        rng = local.setdefault("rng", random.Random(f"{self.seed}-{threading.get_ident()}"))
        up = [n for n in range(len(self.daemons)) if n not in self.down] or list(range(len(self.daemons)))
        index = rng.choice(up)
        clients = local.setdefault("clients", {})
        if (user, index) not in clients:
            clients[(user, index)] = self.daemons[index].new_client(user)
            with self.lock:
                self.clients.append(clients[(user, index)])
        return clients[(user, index)]

    def _send(self, *args: Any, **kwargs: Any):
        """As the file test's, but a request counts as overlapping a kill also when the kill came up to a
        lease (and a sweep) before it: a daemon killed while it held the run holds it that long."""
        request = super()._send(*args, **kwargs)
        window = request.sent_at - self.lease - TAKEOVER_SLACK
        with self.lock:
            request.kills_before = sum(1 for when, _ in self.kill_times if when < window)
        return request

    def lock_holders(self, run_id: str) -> list[str]:
        with psycopg.connect(self.dsn) as conn:
            row = conn.execute("SELECT lease_holder, lease_until FROM runs WHERE id = %s", (run_id,)).fetchone()
        return [f"lease {row}"]

    def kill_and_restart(self) -> None:
        """kill -9 one daemon, drawn at random, then start it again; the others serve meanwhile."""
        index = self.rng.randrange(len(self.daemons))
        daemon = self.daemons[index]
        self.down.add(index)
        if daemon.process is not None and daemon.process.poll() is not None:
            self.problems.append(f"daemon {index + 1} exited by itself with {daemon.process.returncode}; "
                                 f"its log ends:\n{daemon.log_tail(15)}")
        if daemon.pid:
            try:
                os.killpg(daemon.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        daemon.kill()
        with self.lock:
            self.kills += 1
            self.kill_times.append((time.time(), index))
        for attempt in range(1, 4):
            try:
                daemon.start()
                break
            except AssertionError as exc:
                self.problems.append(f"restart of daemon {index + 1} failed (try {attempt}): {str(exc)[:600]}")
        self.down.discard(index)


class ClusterVerdict(Verdict):
    def recorded_runs(self) -> list[str]:
        with psycopg.connect(self.chaos.dsn) as conn:
            rows = conn.execute("SELECT id, event_count FROM runs ORDER BY id").fetchall()
        for run_id, _ in rows:
            self.chaos.open_gate(run_id)
        for run_id, count in rows:
            if not count:
                self.problem(f"run {run_id} has a row but no event (a half-created run was left behind)")
        return [run_id for run_id, count in rows if count]

    def check_database(self) -> None:
        """After the daemons stopped: every chain verifies, snapshots agree with their logs, the inbox is empty."""
        store = PostgresStore(self.chaos.dsn, self.chaos.daemon.root / "verify-cache")
        try:
            for run_id, final in self.runs.items():
                where = f"run {run_id} ({self.scenario_of(run_id)})"
                snapshot = store.read_snapshot(run_id)
                if snapshot.get("status") != final["status"]:
                    self.problem(f"{where}: the snapshot says {snapshot.get('status')}, the log {final['status']}")
                verification = store.verify(run_id)
                if not verification.ok:
                    self.problem(f"{where}: runs verify: {verification.problems} (two writers?)")
                for error in run_schema_errors(snapshot)[:3]:
                    self.problem(f"{where}: the snapshot breaks schema/run.schema.json: {error}")
            with store.pool.connection() as conn:
                left = conn.execute("SELECT run_id, step, entry::text FROM inbox WHERE entry IS NOT NULL").fetchall()
                leased = conn.execute("SELECT id FROM runs WHERE lease_until > now()").fetchall()
        finally:
            store.close()
        for run_id, step, entry in left:
            self.problem(f"the inbox still holds a callback for run {run_id} step {step}: {entry[:80]}")
        for (run_id,) in leased:
            self.problem(f"run {run_id} is still leased after every daemon stopped")
        self._check_side_effects()
        self._check_takeovers()

    def _check_takeovers(self) -> None:
        """Each step a kill cut short was taken up within the lease (and a sweep) of the kill."""
        self.takeovers: list[float] = []
        kills = sorted(self.chaos.kill_times)
        for run_id, events in self.events.items():
            for event in events:
                if event["type"] != "step_interrupted":
                    continue
                at = parse_rfc3339(event["at"]).timestamp()
                before = [when for when, _ in kills if when <= at]
                if not before:
                    self.problem(f"run {run_id}: step {event.get('step')} interrupted with no kill before it")
                    continue
                delay = at - before[-1]
                self.takeovers.append(delay)
                if delay > self.chaos.lease + TAKEOVER_SLACK:
                    self.problem(f"run {run_id}: step {event.get('step')} was taken up {delay:.1f}s after the "
                                 f"kill (lease {self.chaos.lease:.0f}s)")

    def summary(self) -> str:
        worst = max(getattr(self, "takeovers", []) or [0.0])
        return (super().summary() + f", daemons {len(self.chaos.daemons)}, steps taken over after a kill "
                f"{len(getattr(self, 'takeovers', []))} (slowest {worst:.2f}s)")


def write_requests(chaos: Chaos, path: Any) -> None:
    path.write_text("".join(json.dumps(vars(r), default=str) + "\n" for r in chaos.requests))
