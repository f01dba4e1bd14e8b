"""`signoff db import --from <data-dir>`: the real `signoff` in a subprocess, a file store the engine made, a real
PostgreSQL (tests/postgres_support.py).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runner.flows.inputs import resolve_inputs
from runner.runs.engine import Engine
from runner.runs.files import FileStore
from runner.runs.postgres import PostgresStore

from support import FakeClock, load_test_flow

CONFIG = "store:\n  kind: postgres\n  dsn: {env: SIGNOFF_TEST_STORE_DSN}\n"
FLOW = "name: sets\nsteps:\n  - {id: a, kind: set, values: {x: 1}}\n"
KEYS = {"source", "ok", "runs", "events", "resources", "bytes", "callbacks", "kills", "releases", "imported",
        "skipped", "conflicts", "failures", "notes"}


@pytest.fixture
def data(tmp_path: Path) -> FileStore:
    """A data dir with two finished runs."""
    store = FileStore(tmp_path / "data")
    (tmp_path / "work").mkdir()
    engine = Engine(store, work_dir=tmp_path / "work", clock=FakeClock())
    for _ in range(2):
        flow = load_test_flow(tmp_path, FLOW)
        asyncio.run(engine.advance(engine.create_run(flow, resolve_inputs(flow, {}), started_by="tester")))
    return store


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "signoff.yaml"
    path.write_text(CONFIG)
    return path


def test_import_says_what_moved_then_skips_it_all_again(cli, data, config, pg_dsn, tmp_path):
    env = {"SIGNOFF_TEST_STORE_DSN": pg_dsn}
    done = cli(["db", "import", "--from", str(data.data_dir), "--config", str(config), "--json"], env=env)
    assert done.code == 0, done.err
    assert set(done.json) == KEYS
    assert done.json["ok"] is True
    assert done.json["runs"] == {"imported": 2, "skipped": 0, "conflicting": 0, "failed": 0, "unborn": 0}
    assert set(done.json["resources"]) == {"imported", "skipped"}
    assert set(done.json["bytes"]) == {"events", "resources", "total"}
    assert done.json["releases"] == {"found": False, "imported": False}
    assert done.json["events"] == sum(len(list(data.read_events(r))) for r in done.json["imported"])
    store = PostgresStore(pg_dsn, tmp_path / "cache")
    try:
        assert all(store.verify(r).ok for r in done.json["imported"])
    finally:
        store.close()
    again = cli(["db", "import", "--from", str(data.data_dir), "--config", str(config)], env=env)
    assert again.code == 0, again.err
    assert "runs: 0 imported, 2 skipped (already there), 0 conflicting, 0 failed" in again.out


def test_import_refuses_a_data_dir_a_daemon_holds(cli, data, config, pg_dsn):
    with data.daemon_lock():
        done = cli(["db", "import", "--from", str(data.data_dir), "--config", str(config), "--json"],
                   env={"SIGNOFF_TEST_STORE_DSN": pg_dsn})
    assert done.code == 1
    assert "another signoff daemon is already serving the data dir" in done.json["error"]["message"]


def test_import_refuses_a_database_without_the_schema_and_says_to_migrate(cli, data, config, pg_empty_dsn):
    done = cli(["db", "import", "--from", str(data.data_dir), "--config", str(config)],
               env={"SIGNOFF_TEST_STORE_DSN": pg_empty_dsn})
    assert done.code != 0
    assert "no signoff schema" in done.err and "signoff db migrate" in done.err
