"""What is PostgreSQL's own in its store: migrations, the schema check, the writer's fenced lease, chunks.

The engine's behaviour on this store is tested with the other stores in
test_engine_stores.py. Each test here gets a fresh database of a real server
(tests/postgres_support.py): `pg_dsn` with the schema in place, `pg_empty_dsn`
without.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Iterator

import psycopg
import pytest

from runner.errors import RunLocked, StoreError
from runner.flows.inputs import resolve_inputs
from runner.runs.engine import Engine
from runner.runs.postgres import SCHEMA_VERSION, PostgresStore, migrate, schema
from runner.runs.store import RES_PREFIX

from support import FakeClock, load_test_flow as make_flow

ONE_STEP = "name: one\nsteps:\n  - {id: a, kind: set, values: {x: 1}}\n"


@pytest.fixture
def stores(pg_dsn: str, tmp_path: Path) -> Iterator:
    """stores(name, **kwargs): a PostgresStore on the test's database (as many as a test wants), all closed after."""
    made: list[PostgresStore] = []

    def make(name: str = "a", **kwargs) -> PostgresStore:
        made.append(PostgresStore(pg_dsn, tmp_path / f"cache-{name}", **kwargs))
        return made[-1]

    yield make
    for store in made:
        store.close()


def sql(dsn: str, statement: str, params: dict | None = None) -> list[tuple]:
    with psycopg.connect(dsn, autocommit=True) as conn:
        cursor = conn.execute(statement, params)
        return cursor.fetchall() if cursor.description else []


def finished_run(store: PostgresStore, tmp_path: Path, text: str = ONE_STEP) -> str:
    (tmp_path / "work").mkdir(exist_ok=True)
    engine = Engine(store, work_dir=tmp_path / "work", clock=FakeClock())
    flow = make_flow(tmp_path, text)
    run_id = engine.create_run(flow, resolve_inputs(flow, {}), started_by="tester")
    assert asyncio.run(engine.advance(run_id))["status"] == "succeeded"
    return run_id


# ---- migrations and the schema check ---------------------------------------------------------

def test_migrate_creates_the_schema_once_and_says_its_version(pg_empty_dsn):
    assert migrate(pg_empty_dsn) == (0, SCHEMA_VERSION)
    assert migrate(pg_empty_dsn) == (SCHEMA_VERSION, SCHEMA_VERSION)
    rows = sql(pg_empty_dsn, "SELECT version, name FROM schema_version ORDER BY version")
    assert [(m.version, m.name) for m in schema.migrations()] == rows
    assert rows[0] == (1, "runs")


def test_two_migrations_at_once_apply_each_step_once(pg_empty_dsn):
    results, errors = [], []

    def run() -> None:
        try:
            results.append(migrate(pg_empty_dsn))
        except Exception as exc:  # pragma: no cover - shown by the assertion
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert not errors
    assert sorted(after for _, after in results) == [SCHEMA_VERSION, SCHEMA_VERSION]
    assert sql(pg_empty_dsn, "SELECT count(*) FROM schema_version") == [(SCHEMA_VERSION,)]


def test_a_database_without_the_schema_is_refused_with_what_to_run(pg_empty_dsn, tmp_path):
    with pytest.raises(StoreError) as caught:
        PostgresStore(pg_empty_dsn, tmp_path / "cache")
    assert "no signoff schema" in caught.value.message
    assert "signoff db migrate" in caught.value.hint


def test_a_newer_schema_is_refused_by_the_store_and_by_migrate(pg_dsn, tmp_path):
    sql(pg_dsn, "INSERT INTO schema_version (version, name) VALUES (%(v)s, 'from_the_future')",
        {"v": SCHEMA_VERSION + 1})
    with pytest.raises(StoreError) as caught:
        PostgresStore(pg_dsn, tmp_path / "cache")
    assert f"version {SCHEMA_VERSION + 1}, newer than this signoff understands ({SCHEMA_VERSION})" \
        in caught.value.message
    assert "upgrade signoff" in caught.value.hint
    with pytest.raises(StoreError, match="newer than this signoff"):
        migrate(pg_dsn)


def test_an_older_schema_is_refused_until_migrated(pg_dsn, monkeypatch):
    monkeypatch.setattr(schema, "SCHEMA_VERSION", SCHEMA_VERSION + 1)  # a build that knows one more migration
    with psycopg.connect(pg_dsn) as conn, pytest.raises(StoreError) as caught:
        schema.check_schema(conn)
    assert f"version {SCHEMA_VERSION}, older than this signoff's ({SCHEMA_VERSION + 1})" in caught.value.message
    assert "signoff db migrate" in caught.value.hint


def test_an_unreachable_database_is_a_store_error_naming_no_password(tmp_path):
    from support import free_port

    dsn = f"postgresql://signoff:hunter2@127.0.0.1:{free_port()}/signoff?connect_timeout=5"
    with pytest.raises(StoreError) as caught:
        PostgresStore(dsn, tmp_path / "cache")
    assert "cannot connect to the database" in caught.value.message
    assert "hunter2" not in caught.value.message
    with pytest.raises(StoreError, match="cannot connect"):
        migrate(dsn)


# ---- the writer's fenced lease ---------------------------------------------------------------------

def test_a_writer_that_lost_its_lease_can_never_append(stores, pg_dsn, tmp_path):
    first, second = stores("first"), stores("second")  # two daemons on one database
    run_id = finished_run(first, tmp_path)
    events_before = list(first.read_events(run_id))
    stale = first.open_log(run_id)
    stale.resume(first.read_snapshot(run_id)["events"])
    with pytest.raises(RunLocked, match="another writer"):
        second.open_log(run_id)  # the lease is held and current
    sql(pg_dsn, "UPDATE runs SET lease_until = now() - interval '1 second' WHERE id = %(r)s", {"r": run_id})
    taker = second.open_log(run_id)  # the first writer stalled past its lease: the second takes the run
    try:
        assert taker.epoch == stale.epoch + 1
        taker.resume(second.read_snapshot(run_id)["events"])
        with pytest.raises(RunLocked, match="taken over"):
            stale.append([{"type": "note", "at": "2030-01-02T03:04:06.000000Z", "text": "late"}])
        assert not stale.renew()
        with pytest.raises(RunLocked):
            first.write_snapshot(first.read_run(run_id), stale)
        assert list(first.read_events(run_id)) == events_before  # nothing of the stale writer landed
        taker.append([{"type": "note", "at": "2030-01-02T03:04:07.000000Z", "text": "on time"}])
        second.write_snapshot(second.read_run(run_id), taker)
    finally:
        stale.close()
        taker.close()
    events = list(second.read_events(run_id))
    assert [e.get("text") for e in events[len(events_before):]] == ["on time"]
    assert second.verify(run_id).ok, second.verify(run_id).problems
    again = first.open_log(run_id)  # closed: the lease is free again
    again.close()


def test_an_unborn_run_is_not_discarded_while_its_creator_holds_it(stores, tmp_path):
    store = stores()
    from datetime import datetime, timezone

    run_id = store.create_run(datetime.now(timezone.utc), ONE_STEP)
    held = store.open_log(run_id)
    try:
        with pytest.raises(RunLocked):
            store.discard_unborn(run_id)
    finally:
        held.close()
    assert [found.run_id for found in store.scan()] == [run_id]
    assert store.discard_unborn(run_id)
    assert list(store.scan()) == []


# ---- the chain ------------------------------------------------------------------------------

def test_the_chain_verifies_and_an_edited_event_is_seen(stores, pg_dsn, tmp_path):
    store = stores()
    run_id = finished_run(store, tmp_path, "name: two\nsteps:\n  - {id: a, kind: set, values: {x: 1}}\n"
                                           "  - {id: b, kind: set, values: {y: 2}}\n")
    verified = store.verify(run_id)
    assert verified.ok and verified.events == 7
    sql(pg_dsn, "UPDATE events SET line = convert_to(replace(convert_from(line, 'UTF8'), '\"x\":1', '\"x\":9'), "
                "'UTF8') WHERE run_id = %(r)s AND seq = 3", {"r": run_id})
    problems = store.verify(run_id, grace=0).problems
    assert any("does not chain" in p for p in problems), problems


def test_a_nul_character_in_a_value_round_trips(stores, tmp_path):
    store = stores()
    run_id = finished_run(store, tmp_path, 'name: nul\nsteps:\n  - {id: a, kind: set, values: {x: "a\\0b"}}\n')
    assert store.read_snapshot(run_id)["steps"]["a"]["outputs"] == {"x": "a\x00b"}
    assert store.verify(run_id).ok


# ---- resources, the callback index, the daemon lock ---------------------------------------------------

def test_resources_round_trip_in_chunks(stores, pg_dsn, tmp_path):
    store = stores(chunk_size=1000)
    source = tmp_path / "big.bin"
    source.write_bytes(bytes(range(256)) * 10)  # 2,560 bytes: three chunks
    ref = store.put_resource(source, media_type="application/x-test", name="big.bin", run_id="r1", step="s")
    sha = ref[len(RES_PREFIX):]
    assert sql(pg_dsn, "SELECT n, length(data) FROM resource_chunks WHERE sha256 = %(s)s ORDER BY n", {"s": sha}) \
        == [(0, 1000), (1, 1000), (2, 560)]
    assert store.resource_path(ref).read_bytes() == source.read_bytes()
    with open(tmp_path / "copy", "wb") as out:
        assert store.copy_resource(ref, out) == 2560
    assert (tmp_path / "copy").read_bytes() == source.read_bytes()
    assert store.resource_meta(ref) == {"sha256": sha, "size": 2560, "media_type": "application/x-test",
                                        "name": "big.bin", "run": "r1", "step": "s", "created_at": None}
    assert store.put_resource(source.read_bytes(), run_id="r2") == ref  # the same bytes: one copy, two runs
    assert store.put_resource(source, run_id="r1") == ref
    assert store.resource_runs(ref) == ["r1", "r2"]
    assert sql(pg_dsn, "SELECT count(*) FROM resource_chunks") == [(3,)]
    empty = store.put_resource(b"")
    assert stores("other").resource_path(empty).read_bytes() == b""


def test_indexing_a_callback_token_again_is_a_no_op(stores, pg_dsn):
    store = stores()
    store.index_callbacks("20300102t030405z-00000aaa", {"done": "token-1", "other": "token-2"})
    store.index_callbacks("20300102t030405z-00000bbb", {"late": "token-1"})
    assert store.find_callback("token-1") == ("20300102t030405z-00000aaa", "done")
    assert store.find_callback("token-2") == ("20300102t030405z-00000aaa", "other")
    assert store.find_callback("token-3") is None
    assert sql(pg_dsn, "SELECT count(*) FROM callbacks") == [(2,)]
    store.note_kills("20300102t030405z-00000aaa")
    store.note_kills("20300102t030405z-00000aaa")
    assert store.runs_with_kills() == ["20300102t030405z-00000aaa"]
    store.kills_settled("20300102t030405z-00000aaa")
    assert store.runs_with_kills() == []


def test_several_daemons_serve_one_database_each_listed_while_it_runs(stores):
    first, second = stores("first"), stores("second")
    second.holder = first.holder + "-other"
    with first.daemon_lock(), second.daemon_lock():
        assert [d["holder"] for d in first.live_daemons()] == sorted([first.holder, second.holder])
    assert first.live_daemons() == []
