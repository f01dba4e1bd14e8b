"""The engine over each store of the `Store` protocol: the file store, the in-memory one and PostgreSQL.

The same runs (steps, retries, jumps, waits, decisions, callbacks, cancels,
resources, the writer lock) give the same records and a chain that verifies,
whichever store keeps them (PostgreSQL: a real server, a fresh database per
test, tests/postgres_support.py). What is specific to files (run.json on disk, torn
lines, fsyncs) is tested in test_store.py and test_engine.py against the file
store alone; what is PostgreSQL's own in test_postgres_store.py.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, Iterator

import pytest

from runner.auth import User, Users
from runner.errors import Conflict, RunLocked
from runner.flows.inputs import resolve_inputs
from runner.runs.engine import Engine
from runner.runs.files import FileStore
from runner.runs.memory import MemoryStore
from runner.runs.postgres import PostgresStore
from runner.runs.store import Store

from support import FakeClock, load_test_flow as make_flow

BOB = User("bob", frozenset({"run", "approve"}), frozenset({"ops"}))


class Mailbox:
    """The daemon's inbox, as the engine sees it: callbacks accepted for a run, not yet recorded by it."""

    def __init__(self) -> None:
        self.entries: dict[tuple[str, str], dict[str, Any]] = {}

    def get(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        return self.entries.get((run_id, step_id))

    async def close_step(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        return self.entries.get((run_id, step_id))


@pytest.fixture(params=["files", "memory", "postgres"])
def store(request, tmp_path: Path) -> Iterator[Store]:
    if request.param == "files":
        yield FileStore(tmp_path / "data")
    elif request.param == "memory":
        yield MemoryStore(tmp_path / "scratch")
    else:
        postgres = PostgresStore(request.getfixturevalue("pg_dsn"), tmp_path / "cache")
        try:
            yield postgres
        finally:
            postgres.close()


@pytest.fixture
def make_engine(store: Store, tmp_path: Path):
    def make(**kwargs: Any) -> Engine:
        (tmp_path / "work").mkdir(exist_ok=True)
        kwargs.setdefault("clock", FakeClock())
        return Engine(store, work_dir=tmp_path / "work", **kwargs)
    return make


def start(engine: Engine, tmp_path: Path, text: str, inputs: dict | None = None) -> str:
    flow = make_flow(tmp_path, text)
    return engine.create_run(flow, resolve_inputs(flow, inputs or {}), started_by="tester")


def types(store: Store, run_id: str) -> list[str]:
    return [e["type"] for e in store.read_events(run_id)]


def assert_sound(store: Store, run_id: str, record: dict) -> None:
    verified = store.verify(run_id)
    assert verified.ok, verified.problems
    assert store.read_run(run_id) == {**record, "events": store.read_run(run_id)["events"]}


def test_a_run_of_set_steps_is_recorded_and_verifies(make_engine, store, tmp_path):
    engine = make_engine()
    run_id = start(engine, tmp_path, """\
name: chain
inputs:
  n: {type: number, default: 1}
steps:
  - {id: one, kind: set, values: {n: "${{ inputs.n + 1 }}"}}
  - {id: two, kind: set, values: {n: "${{ steps.one.outputs.n * 10 }}"}}
""")
    record = asyncio.run(engine.advance(run_id))
    assert record["status"] == "succeeded"
    assert record["steps"]["two"]["outputs"] == {"n": 20}
    assert types(store, run_id) == ["run_created", "run_started", "step_started", "step_finished",
                                    "step_started", "step_finished", "run_finished"]
    assert [r["id"] for r in store.list_runs()] == [run_id]
    assert store.list_runs(status="failed") == []
    assert_sound(store, run_id, record)


def test_a_failure_retries_then_on_error_jumps_and_skips_what_it_passes(make_engine, store, tmp_path):
    engine = make_engine()
    run_id = start(engine, tmp_path, """\
name: jumpy
steps:
  - id: flaky
    kind: shell
    run: exit 3
    retry: {attempts: 2, backoff: 1s}
    on_error: handler
  - {id: passed, kind: set, values: {x: 1}}
  - {id: handler, kind: set, values: {handled: true}}
""")
    record = asyncio.run(engine.advance(run_id))
    assert record["status"] == "succeeded"
    assert record["steps"]["flaky"]["status"] == "failed"
    assert record["steps"]["flaky"]["attempts"] == 2
    assert record["steps"]["passed"]["status"] == "skipped"
    assert record["steps"]["handler"]["outputs"] == {"handled": True}
    assert "step_retrying" in types(store, run_id) and "jump" in types(store, run_id)
    assert_sound(store, run_id, record)


def test_a_wait_parks_and_resumes_on_its_timer(make_engine, store, tmp_path):
    engine = make_engine()
    run_id = start(engine, tmp_path, """\
name: napper
steps:
  - {id: nap, kind: wait, duration: 10m}
  - {id: after, kind: set, values: {done: true}}
""")
    parked = asyncio.run(engine.advance(run_id, hold=False))
    assert parked["status"] == "waiting"
    assert store.read_run(run_id)["steps"]["nap"]["status"] == "waiting"
    record = asyncio.run(engine.advance(run_id))  # held: it sleeps through the wait on the fake clock
    assert record["status"] == "succeeded"
    assert engine.clock.slept == [600.0]
    assert_sound(store, run_id, record)


APPROVAL = """\
name: review
steps:
  - {id: review, kind: approval, approvers: [group:ops], timeout: 1h, on_timeout: fail}
  - {id: apply, kind: set, values: {applied: true}}
"""


@pytest.mark.parametrize("decision, status", [("approve", "succeeded"), ("reject", "rejected")])
def test_a_decision_ends_the_wait_and_decides_the_run(make_engine, store, tmp_path, decision, status):
    engine = make_engine(accepts_messages=True, users=Users(groups={"ops": {"bob"}}))
    run_id = start(engine, tmp_path, APPROVAL)
    asyncio.run(engine.advance(run_id, hold=False))
    receipt, run = engine.deliver(run_id, "review", {"user": BOB, "decision": decision})
    assert receipt.outcome == ("succeeded" if decision == "approve" else "rejected")
    assert run["steps"]["review"]["decided_by"] == "bob"
    with pytest.raises(Conflict):
        engine.deliver(run_id, "review", {"user": BOB, "decision": decision})
    record = asyncio.run(engine.advance(run_id))
    assert record["status"] == status
    assert_sound(store, run_id, record)


def test_a_callback_in_the_mailbox_is_consumed_and_its_token_is_indexed(make_engine, store, tmp_path):
    mailbox = Mailbox()
    engine = make_engine(accepts_messages=True, mailbox=mailbox, public_url="http://signoff.test")
    run_id = start(engine, tmp_path, """\
name: called
steps:
  - {id: hand-out, kind: set, values: {url: "${{ callbacks.done.url }}"}}
  - {id: done, kind: callback, timeout: 1h}
""")
    token = store.read_run(run_id)["callbacks"]["done"]
    assert store.find_callback(token) == (run_id, "done")
    assert store.find_callback("not-a-token") is None
    mailbox.entries[(run_id, "done")] = {"body": b'{"ok": true}', "sha256": "0" * 64, "bytes": 12,
                                         "at": "2030-01-02T03:04:05.600000Z"}
    record = asyncio.run(engine.advance(run_id))
    assert record["status"] == "succeeded"
    assert record["steps"]["hand-out"]["outputs"]["url"] == f"http://signoff.test/callbacks/{token}"
    assert record["steps"]["done"]["outputs"]["payload"] == {"ok": True}
    assert record["callbacks_received"]["done"]["payload"] == {"ok": True}
    assert_sound(store, run_id, record)


def test_a_parked_run_is_cancelled_and_ends_cancelled(make_engine, store, tmp_path):
    engine = make_engine(accepts_messages=True, users=Users(groups={"ops": {"bob"}}))
    run_id = start(engine, tmp_path, APPROVAL)
    asyncio.run(engine.advance(run_id, hold=False))
    record = engine.cancel(run_id, "not needed")
    assert record["status"] == "cancelled"
    assert record["steps"]["review"]["status"] == "cancelled"
    with pytest.raises(Conflict):
        engine.cancel(run_id, "again")
    assert_sound(store, run_id, record)


def test_a_large_output_becomes_a_resource_of_the_run(make_engine, store, tmp_path):
    engine = make_engine(output_threshold=64)
    run_id = start(engine, tmp_path, """\
name: big
steps:
  - {id: make, kind: set, values: {text: "${{ 'x' * 1000 }}"}}
""")
    record = asyncio.run(engine.advance(run_id))
    ref = record["steps"]["make"]["outputs"]["text"]
    assert ref.startswith("res://")
    assert store.resource_path(ref).read_bytes() == b"x" * 1000
    assert store.resource_meta(ref)["size"] == 1000
    assert store.resource_runs(ref) == [run_id]
    assert_sound(store, run_id, record)


def test_one_writer_per_run(make_engine, store, tmp_path):
    engine = make_engine()
    run_id = start(engine, tmp_path, "name: one\nsteps:\n  - {id: a, kind: set, values: {x: 1}}\n")
    held = store.open_log(run_id)
    try:
        with pytest.raises(RunLocked):
            asyncio.run(engine.advance(run_id))
    finally:
        held.close()
    assert asyncio.run(engine.advance(run_id))["status"] == "succeeded"


def test_repair_rebuilds_a_lagging_snapshot_from_the_log(make_engine, store, tmp_path):
    engine = make_engine()
    run_id = start(engine, tmp_path, "name: lag\nsteps:\n  - {id: a, kind: set, values: {x: 1}}\n")
    log = store.open_log(run_id)
    try:
        log.resume(store.read_snapshot(run_id)["events"])
        log.append([{"type": "run_started", "at": "2030-01-02T03:04:06.000000Z"}])
    finally:
        log.close()
    found = {f.run_id: f for f in store.scan()}
    assert found[run_id].lags
    assert store.read_run(run_id)["status"] == "running"
    assert engine.repair(run_id)["status"] == "running"
    assert not {f.run_id: f for f in store.scan()}[run_id].lags
    assert store.verify(run_id).ok
