"""A file store moved into PostgreSQL (runner.runs.postgres.importer): runs made by the engine on files, imported
into a fresh database of a real server, read back equal; again, skipped; refused while a daemon holds the data dir.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import psycopg
import pytest

from runner.errors import StoreError
from runner.flows.inputs import resolve_inputs
from runner.runs.engine import Engine
from runner.runs.files import FileStore
from runner.runs.postgres import PostgresStore
from runner.runs.postgres.importer import import_file_store
from runner.runs.store import Store

from support import FakeClock, load_test_flow

SETS = "name: sets\nsteps:\n  - {id: a, kind: set, values: {x: 1}}\n  - {id: b, kind: set, values: {y: 2}}\n"
BIG = "name: big\nsteps:\n  - {id: make, kind: set, values: {text: \"${{ 'x' * 1000 }}\"}}\n"
CALLED = """\
name: called
steps:
  - {id: hand-out, kind: set, values: {url: "${{ callbacks.done.url }}"}}
  - {id: done, kind: callback, timeout: 1h}
"""


class Mailbox:
    """The daemon's inbox as the engine sees it: callbacks accepted, not yet recorded."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        return self.entries.get((run_id, step_id))

    async def close_step(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        return self.entries.get((run_id, step_id))


def engine_on(store: Store, tmp_path: Path, mailbox: Mailbox | None = None) -> Engine:
    (tmp_path / "work").mkdir(exist_ok=True)
    return Engine(store, work_dir=tmp_path / "work", clock=FakeClock(), output_threshold=64, accepts_messages=True,
                  mailbox=mailbox or Mailbox(), public_url="http://signoff.test")


def start(engine: Engine, tmp_path: Path, text: str, *, hold: bool = True) -> str:
    flow = load_test_flow(tmp_path, text)
    run_id = engine.create_run(flow, resolve_inputs(flow, {}), started_by="tester")
    asyncio.run(engine.advance(run_id, hold=hold))
    return run_id


@pytest.fixture
def files(tmp_path: Path) -> FileStore:
    """A file store with runs the engine made: set steps, two runs storing the same large output (a resource
    held by both), one parked on its callback (indexed) with kills noted, and some release state."""
    store = FileStore(tmp_path / "data")
    engine = engine_on(store, tmp_path)
    start(engine, tmp_path, SETS)
    start(engine, tmp_path, BIG)
    start(engine, tmp_path, BIG)
    parked = start(engine, tmp_path, CALLED, hold=False)
    store.note_kills(parked)
    (store.data_dir / "releases").mkdir()
    (store.data_dir / "releases" / "live.json").write_text("{}\n")
    return store


@pytest.fixture
def postgres(pg_dsn: str, tmp_path: Path) -> Iterator[PostgresStore]:
    store = PostgresStore(pg_dsn, tmp_path / "cache")
    yield store
    store.close()


def run_ids(store: Store) -> list[str]:
    return sorted(r["id"] for r in store.list_runs(limit=100))


def lines(dsn: str, run_id: str) -> bytes:
    with psycopg.connect(dsn) as conn:
        rows = conn.execute("SELECT line FROM events WHERE run_id = %s ORDER BY seq", (run_id,)).fetchall()
    return b"".join(bytes(line) + b"\n" for (line,) in rows)


def test_every_run_moves_verifies_and_reads_back_equal(files, postgres, pg_dsn):
    report = import_file_store(files, postgres)
    ids = run_ids(files)
    assert report.ok, (report.conflicting, report.failed)
    assert sorted(report.imported) == ids == run_ids(postgres) and len(ids) == 4
    total = sum(len((files.runs_dir / r / "events.jsonl").read_bytes()) for r in ids)
    assert report.event_bytes == total and report.events == sum(len(list(files.read_events(r))) for r in ids)
    for run_id in ids:
        assert postgres.verify(run_id).ok
        assert lines(pg_dsn, run_id) == (files.runs_dir / run_id / "events.jsonl").read_bytes()  # byte for byte
        assert postgres.read_run(run_id) == files.read_run(run_id)
        assert postgres.read_snapshot(run_id) == files.read_snapshot(run_id)
        assert list(postgres.read_events(run_id)) == list(files.read_events(run_id))
        assert postgres.flow_source(run_id) == files.flow_source(run_id)
    [parked] = [r for r in ids if files.read_run(r)["status"] == "waiting"]
    token = files.read_run(parked)["callbacks"]["done"]
    assert postgres.find_callback(token) == (parked, "done") and report.callbacks == 1
    assert postgres.runs_with_kills() == [parked] and report.kills == 1
    assert report.releases_found and report.releases_imported
    assert postgres.release_value("live") == {}


def test_resources_round_trip_with_their_metadata_and_runs(files, postgres, tmp_path):
    report = import_file_store(files, postgres)
    refs = {r["steps"]["make"]["outputs"]["text"] for r in files.list_runs(flow="big")}
    [ref] = refs
    blobs = [p for p in files.resources_dir.iterdir() if "." not in p.name]
    assert report.resources_imported == len(blobs) >= 1
    assert report.resource_bytes == sum(p.stat().st_size for p in blobs)
    for blob in blobs:
        assert postgres.resource_meta(blob.name) == files.resource_meta(blob.name)
        assert postgres.resource_runs(blob.name) == files.resource_runs(blob.name)
        assert postgres.resource_path(blob.name).read_bytes() == blob.read_bytes()
    assert postgres.resource_meta(ref) == files.resource_meta(ref)
    assert postgres.resource_runs(ref) == files.resource_runs(ref) and len(files.resource_runs(ref)) == 2
    assert postgres.resource_path(ref).read_bytes() == b"x" * 1000
    with open(tmp_path / "copy", "wb") as out:
        assert postgres.copy_resource(ref, out) == 1000


def test_a_second_import_skips_everything(files, postgres):
    first = import_file_store(files, postgres)
    again = import_file_store(files, postgres)
    assert again.ok and again.imported == [] and sorted(again.skipped) == sorted(first.imported)
    assert (again.events, again.resources_imported, again.resources_skipped) == (0, 0, first.resources_imported)
    assert (again.callbacks, again.kills) == (0, 0)


def test_a_run_that_went_on_in_the_database_is_skipped(files, postgres, tmp_path):
    import_file_store(files, postgres)
    [parked] = [r["id"] for r in files.list_runs(status="waiting")]
    mailbox = Mailbox()
    mailbox.entries[(parked, "done")] = {"body": b'{"ok": true}', "sha256": "0" * 64, "bytes": 12,
                                         "at": "2030-01-02T03:04:05.600000Z"}
    assert asyncio.run(engine_on(postgres, tmp_path, mailbox).advance(parked))["status"] == "succeeded"
    again = import_file_store(files, postgres)
    assert again.ok and parked in again.skipped
    assert postgres.read_run(parked)["status"] == "succeeded"


def test_a_run_whose_events_differ_is_a_conflict_left_as_it_is(files, postgres, tmp_path):
    import_file_store(files, postgres)
    [parked] = [r["id"] for r in files.list_runs(status="waiting")]
    mailbox = Mailbox()
    mailbox.entries[(parked, "done")] = {"body": b'{"ok": true}', "sha256": "0" * 64, "bytes": 12,
                                         "at": "2030-01-02T03:04:05.600000Z"}
    asyncio.run(engine_on(files, tmp_path, mailbox).advance(parked))  # it went on in the data dir after the import
    again = import_file_store(files, postgres)
    assert not again.ok
    assert [c["run"] for c in again.conflicting] == [parked]
    assert "went on in the data dir" in again.conflicting[0]["reason"]
    assert postgres.read_run(parked)["status"] == "waiting"


def test_a_run_that_does_not_verify_is_reported_and_not_kept(files, postgres):
    [tampered] = [r["id"] for r in files.list_runs(flow="sets")]
    log = files.runs_dir / tampered / "events.jsonl"
    log.write_bytes(log.read_bytes().replace(b'"y":2', b'"y":3'))  # valid JSON, a broken chain
    report = import_file_store(files, postgres)
    assert not report.ok
    assert [f["run"] for f in report.failed] == [tampered] and "does not chain" in report.failed[0]["problems"][0]
    assert tampered not in run_ids(postgres) and len(report.imported) == 3


def test_a_data_dir_a_daemon_holds_is_refused(files, postgres):
    with files.daemon_lock():
        with pytest.raises(StoreError, match="another signoff daemon is already serving the data dir"):
            import_file_store(files, postgres)
    assert run_ids(postgres) == []


def test_a_database_without_the_current_schema_is_refused(pg_empty_dsn, tmp_path):
    with pytest.raises(StoreError, match="no signoff schema") as refused:
        PostgresStore(pg_empty_dsn, tmp_path / "cache")
    assert "signoff db migrate" in refused.value.hint
