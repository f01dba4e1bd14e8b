"""What several daemons share in one database besides the runs, each decided by a unique key (real PostgreSQL)."""

from __future__ import annotations

import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from runner.daemon.backends import DatabaseSchedules
from runner.releases.dbstate import DatabaseState, release_state
from runner.runs.files import FileStore
from runner.runs.postgres.log import PostgresLog
from runner.runs.postgres.store import PostgresStore
from runner.releases.live import State


@pytest.fixture
def pair(pg_dsn: str, tmp_path: Path):
    """Two stores on one database, as two daemons have them."""
    first, second = PostgresStore(pg_dsn, tmp_path / "a"), PostgresStore(pg_dsn, tmp_path / "b")
    second.holder = first.holder + "-second"
    yield first, second
    first.close()
    second.close()


def test_a_claim_is_taken_once_and_a_lapsed_one_again(pair):
    first, second = pair
    assert first.claim("reminder:r:s:t") and not second.claim("reminder:r:s:t")
    assert first.claim("kill:r:j", lapse=0) and second.claim("kill:r:j", lapse=0)  # lapsed at once: taken again
    assert second.claim("kill:r:k", lapse=60) and not first.claim("kill:r:k", lapse=60)


def test_a_flow_slot_is_held_by_one_active_run_until_it_ends(pair):
    first, second = pair
    with first.pool.connection() as conn:
        for run_id in ("run-a", "run-b"):
            conn.execute("INSERT INTO runs (id, flow_source, status) VALUES (%s, '', 'queued')", (run_id,))
    assert first.take_flow_slot("queue", 1, "run-a")
    assert first.take_flow_slot("queue", 1, "run-a")  # the run that holds it keeps it
    assert not second.take_flow_slot("queue", 1, "run-b")  # run-a is active: the one slot is its
    assert second.take_flow_slot("queue", 2, "run-b")  # a flow with two slots has room
    with first.pool.connection() as conn:
        conn.execute("UPDATE runs SET status = 'succeeded' WHERE id = 'run-a'")
    assert second.take_flow_slot("queue", 1, "run-b")  # run-a ended: its slot is free


def test_a_schedule_slot_fires_once_whichever_daemon_claims_it(pair):
    first, second = pair
    slot = datetime(2030, 1, 1, 9, tzinfo=timezone.utc)
    one, two = DatabaseSchedules(first), DatabaseSchedules(second)
    assert one.claim("nightly", 0, slot, "run-1") and not two.claim("nightly", 0, slot, "run-2")
    assert two.last("nightly", 0) == slot and two.half_done() == [("nightly", 0, slot, "run-1")]
    one.created("nightly", 0)
    assert two.half_done() == []


def test_the_link_secret_and_release_state_are_one_for_all(pair, tmp_path):
    first, second = pair
    assert first.kept_secret("link_secret") == second.kept_secret("link_secret")
    mine, theirs = release_state(first), release_state(second)
    assert isinstance(mine, DatabaseState) and isinstance(release_state(FileStore(tmp_path / "d")), State)
    with mine.locked():
        mine.save("overrides", {"refund": {"pinned": "1.2.0"}})
        mine.append_history({"flow": "refund", "pinned": "1.2.0"})
    assert theirs.load("overrides", {}) == {"refund": {"pinned": "1.2.0"}}
    assert theirs.history("refund") == [{"flow": "refund", "pinned": "1.2.0"}] and theirs.history("other") == []
    assert theirs.load("missing", []) == []


def test_the_leases_and_claims_of_a_dead_process_of_this_host_are_let_go_at_once(pair):
    first, second = pair
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    first.holder = f"{first.holder.rpartition(':')[0]}:{gone.pid}"  # what a writer killed -9 left behind
    with first.pool.connection() as conn:
        conn.execute("INSERT INTO runs (id, flow_source, status) VALUES ('run-a', '', 'running')")
    log = PostgresLog(first.pool, "run-a", first.holder, 60.0)
    log._stop.set()  # its heartbeat stops, as it would with its process
    assert first.claim("kill:run-a:job", lapse=120)
    assert not second.claim("kill:run-a:job", lapse=120)
    assert second.forget_the_dead() == [first.holder]
    assert second.claim("kill:run-a:job", lapse=120)
    PostgresLog(second.pool, "run-a", second.holder, 60.0).close()  # the run's lease is free: taken at once
