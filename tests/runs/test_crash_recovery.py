"""What a crash (kill -9, power loss) or a badly timed request leaves, and how the daemon recovers it.

Each test builds the exact state a crash leaves on disk (a snapshot behind its log, a log with
no snapshot, a dead writer's temp files) or aims a request at the instant of a race, then
checks the promise: nothing acknowledged lost, nothing stuck, nothing applied twice.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import stat
import textwrap
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from daemon_support import DaemonProcess, InProcessDaemon, event_types
from support import FakeClock, Harness, wait_until

from runner.errors import Conflict, RunLocked
from runner.daemon.http import error_response
from runner.runs.files import FileStore
from postgres_support import files_only

CALLBACK_FLOW = {"name": "cb", "steps": [
    {"id": "done", "kind": "callback", "timeout": "1h", "on_timeout": "fail"}]}
QUEUE_FLOW = {"name": "one", "concurrency": 1, "steps": [
    {"id": "ok", "kind": "approval", "approvers": ["group:ops"], "allow_self_approval": True, "timeout": "1h",
     "on_timeout": "fail"}]}
GATED_FLOW = {"name": "gated", "steps": [
    {"id": "prepare", "kind": "shell", "run": "while [ ! -f \"$GO\" ]; do sleep 0.02; done", "env": {"GO": "${{ inputs.go }}"},
     "timeout": "30s"},
    {"id": "review", "kind": "approval", "approvers": ["group:ops"], "timeout": "1h", "on_timeout": "fail"}],
    "inputs": {"go": {"type": "string", "required": True}}}


@pytest.fixture()
def daemon(tmp_path: Path):
    with DaemonProcess(tmp_path / "d", flows={"cb": CALLBACK_FLOW, "one": QUEUE_FLOW, "gated": GATED_FLOW}) as proc:
        yield proc


def _snapshot_path(daemon: DaemonProcess, run_id: str) -> Path:
    return daemon.data / "runs" / run_id / "run.json"


# ---- a snapshot a crash left behind its log ---------------------------------------------------


@files_only
def test_a_snapshot_left_parked_by_a_crash_is_rewritten_at_start_and_callbacks_answer_by_the_log(
        daemon: DaemonProcess) -> None:
    run = daemon.start_run("cb")
    daemon.wait_step(run["id"], "done", "waiting")
    parked = _snapshot_path(daemon, run["id"]).read_bytes()
    token = run["callbacks"]["done"]
    assert daemon.post_callback(token, {"n": 1}).status_code == 202
    assert daemon.wait_end(run["id"])["status"] == "succeeded"
    daemon.stop()
    # kill -9 between the last event's fsync and the snapshot's rename leaves exactly this
    _snapshot_path(daemon, run["id"]).write_bytes(parked)
    lagging = FileStore(daemon.data).verify(run["id"])
    assert not lagging.ok and any("lags its log" in p for p in lagging.problems), lagging.problems

    daemon.start()
    assert json.loads(_snapshot_path(daemon, run["id"]).read_text())["status"] == "succeeded"
    assert FileStore(daemon.data).verify(run["id"]).ok
    waiting = daemon.api().get("/api/v1/runs", params={"status": "waiting"}).json()["runs"]
    assert run["id"] not in [r["id"] for r in waiting]
    different = daemon.post_callback(token, {"n": 2})
    assert different.status_code == 409, different.text
    assert daemon.post_callback(token, {"n": 1}).status_code == 200
    assert event_types(daemon.events(run["id"])).count("callback_received") == 1


@files_only
def test_a_stale_snapshot_does_not_hold_a_concurrency_slot_forever(daemon: DaemonProcess) -> None:
    first = daemon.start_run("one")
    daemon.wait_step(first["id"], "ok", "waiting")
    parked = _snapshot_path(daemon, first["id"]).read_bytes()
    second = daemon.start_run("one")
    assert daemon.decide(first["id"], "ok", "alice").status_code == 200
    daemon.wait_step(second["id"], "ok", "waiting")
    daemon.stop()
    _snapshot_path(daemon, first["id"]).write_bytes(parked)  # the first run looks parked still
    daemon.start()
    third = daemon.start_run("one")
    assert daemon.decide(second["id"], "ok", "alice").status_code == 200
    daemon.wait_step(third["id"], "ok", "waiting")  # before the fix: queued forever


@files_only
def test_a_run_whose_log_exists_but_not_its_snapshot_is_listed_and_resumed(daemon: DaemonProcess) -> None:
    run = daemon.start_run("cb")
    daemon.wait_step(run["id"], "done", "waiting")
    daemon.stop()
    folder = daemon.data / "runs" / run["id"]
    (folder / "run.json").unlink()  # kill -9 after `run_created` was fsynced, before the first snapshot
    first_line = (folder / "events.jsonl").read_bytes().split(b"\n")[0] + b"\n"
    (folder / "events.jsonl").write_bytes(first_line)
    listed = FileStore(daemon.data).list_runs()
    assert [r["id"] for r in listed] == [run["id"]] and listed[0]["status"] == "queued"

    daemon.start()
    daemon.wait_step(run["id"], "done", "waiting")
    assert daemon.post_callback(run["callbacks"]["done"], {"ok": True}).status_code == 202
    assert daemon.wait_end(run["id"])["status"] == "succeeded"
    assert FileStore(daemon.data).verify(run["id"]).ok


@files_only
def test_start_up_removes_what_a_dead_writer_left(daemon: DaemonProcess) -> None:
    run = daemon.start_run("cb")
    daemon.wait_step(run["id"], "done", "waiting")
    daemon.stop()
    folder = daemon.data / "runs" / run["id"]
    dead_pid = 2 ** 22 + 12345  # above pid_max's default: never a live process
    (folder / f".run.json.{dead_pid}.tmp").write_text("{")
    (folder / "work" / "prepare-1").mkdir(parents=True)
    (folder / "work" / "prepare-1" / "stdout").write_text("raw, unmasked output")
    (daemon.data / "resources").mkdir(exist_ok=True)
    (daemon.data / "resources" / f".incoming-abc.{dead_pid}.tmp").write_bytes(b"half a blob")
    unborn = daemon.data / "runs" / "20260101t000000z-0000abcd"  # kill -9 before `run_created` was fsynced
    unborn.mkdir()
    (unborn / "flow.yaml").write_text("name: cb\n")
    (unborn / "events.jsonl").write_bytes(b"")
    daemon.start()
    assert not unborn.exists()
    assert not (folder / f".run.json.{dead_pid}.tmp").exists()
    assert not (folder / "work").exists()
    assert not list((daemon.data / "resources").glob(".incoming-*"))
    assert daemon.run(run["id"])["status"] == "waiting"


# ---- decisions and callbacks at the wrong moment ---------------------------------------------


def test_a_decision_for_a_step_not_yet_waiting_is_refused_at_once(daemon: DaemonProcess, tmp_path: Path) -> None:
    go = tmp_path / "go"
    run = daemon.start_run("gated", {"go": str(go)})
    daemon.wait_step(run["id"], "prepare", "running")
    refused = daemon.decide(run["id"], "review", "bob")  # before the fix: waits, then lands on the next wait
    assert refused.status_code == 409, refused.text
    go.write_text("")
    parked = daemon.wait_step(run["id"], "review", "waiting")
    assert parked["steps"]["review"].get("approvals") == []
    assert "decision" not in event_types(daemon.events(run["id"]))


def _now() -> datetime:
    return datetime.now(timezone.utc)


def test_a_decision_after_the_deadline_loses_to_the_timeout_even_before_the_timer_fires(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock(_now())
        harness = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"one": QUEUE_FLOW}, users=True), clock)
        async with harness as daemon:
            run = await daemon.start_run("one", {}, harness.named("alice"))
            await harness.drain()
            clock.offset += timedelta(hours=2)  # the deadline has passed; the timer has not run yet
            with pytest.raises(Conflict, match="deadline"):
                await daemon.decide(run["id"], "ok", harness.named("bob"), {"decision": "approve"})
            daemon.schedule(run["id"])
            await harness.drain()
            assert daemon.store.read_run(run["id"])["status"] == "timed_out"

    asyncio.run(scenario())


def test_a_callback_being_committed_when_the_deadline_fires_is_recorded_not_dropped(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock(_now())
        harness = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"cb": CALLBACK_FLOW}, users=True), clock)
        async with harness as daemon:
            run = await daemon.start_run("cb", {}, harness.named("alice"))
            await harness.drain()
            posting = asyncio.create_task(daemon.callback(run["callbacks"]["done"], b'{"late": "but in time"}'))
            async with asyncio.timeout(10):
                while not daemon.inbox.busy(run["id"], "done"):
                    await asyncio.sleep(0)
            clock.offset += timedelta(hours=2)
            daemon.schedule(run["id"])  # the deadline's timer fires while the callback is being fsynced
            status, _ = await posting
            await harness.drain()
            final = daemon.store.read_run(run["id"])
            assert status == 202
            assert final["status"] == "succeeded", final
            assert final["callbacks_received"]["done"]["payload"] == {"late": "but in time"}

    asyncio.run(scenario())


def test_a_callback_after_the_wait_closed_is_409_and_never_journaled(tmp_path: Path) -> None:
    async def scenario() -> None:
        clock = FakeClock(_now())
        harness = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"cb": CALLBACK_FLOW}, users=True), clock)
        async with harness as daemon:
            run = await daemon.start_run("cb", {}, harness.named("alice"))
            await harness.drain()
            await daemon.inbox.close_step(run["id"], "done")  # the wait is over; its end not yet written
            with pytest.raises(Conflict, match="no longer waiting"):
                await daemon.callback(run["callbacks"]["done"], b'{"too": "late"}')
            assert daemon.inbox.get(run["id"], "done") is None

    asyncio.run(scenario())


# ---- cancels at the wrong moment ---------------------------------------------------------------


def test_cancelling_a_run_whose_advance_has_not_started_cancels_it(tmp_path: Path) -> None:
    async def scenario() -> None:
        harness = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"cb": CALLBACK_FLOW}, users=True), None)
        async with harness as daemon:
            alice = harness.named("alice")
            run = await daemon.start_run("cb", {}, alice)  # its advance task is created, not yet started
            cancelled = await daemon.cancel(run["id"], alice)
            assert cancelled["status"] == "cancelled"
            assert run["id"] not in daemon._tasks
            again = await daemon.start_run("cb", {}, alice)
            await harness.drain()
            assert daemon.store.read_run(again["id"])["status"] == "waiting"

    asyncio.run(scenario())


class _SlowParkStore(FileStore):
    """A file store whose snapshot write of a parked run waits for the test: the window of a park."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.in_park = threading.Event()
        self.release = threading.Event()

    def write_snapshot(self, run, log) -> None:
        if run.get("status") == "waiting" and not self.in_park.is_set():
            self.in_park.set()
            self.release.wait(10)
        super().write_snapshot(run, log)


def test_a_cancel_that_lands_while_the_park_is_written_cancels_the_run(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    harness.store = _SlowParkStore(tmp_path / "data")
    harness.engine.store = harness.store
    harness.engine.accepts_messages = True
    flow = harness.flow(textwrap.dedent("""
        name: parked
        steps:
          - {id: wait-here, kind: approval, approvers: [alice], timeout: 1h, on_timeout: fail}
        """))
    run_id = harness.start(flow)

    async def scenario() -> None:
        task = asyncio.create_task(harness.engine.advance(run_id, hold=False))
        await asyncio.to_thread(harness.store.in_park.wait, 10)
        task.cancel("cancelled by alice")
        harness.store.release.set()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(scenario())
    final = harness.store.read_run(run_id)
    assert final["status"] == "cancelled", final["status"]
    assert final["error"] == "cancelled by alice"
    assert harness.store.verify(run_id).ok


# ---- another process holding a run ----------------------------------------------------------


def test_a_run_held_by_another_process_is_retried_and_answers_503_meanwhile(tmp_path: Path) -> None:
    async def scenario() -> None:
        harness = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"one": QUEUE_FLOW}, users=True), None)
        async with harness as daemon:
            run = await daemon.start_run("one", {}, harness.named("alice"))
            await harness.drain()
            held = daemon.store.open_log(run["id"])  # as a `run --local` process would hold it
            try:
                with pytest.raises(RunLocked) as refused:
                    await daemon.decide(run["id"], "ok", harness.named("bob"), {"decision": "approve"})
                answer = error_response(refused.value)
                assert answer.status_code == 503 and answer.headers["retry-after"]
                daemon.schedule(run["id"])
                await harness.drain()
                assert daemon.store.read_run(run["id"])["status"] == "waiting"
            finally:
                held.close()
            await daemon.decide(run["id"], "ok", harness.named("alice"), {"decision": "approve"})
            async with asyncio.timeout(10):
                while daemon.store.read_run(run["id"])["status"] != "succeeded":
                    await harness.drain()
                    await asyncio.sleep(0.01)

    asyncio.run(scenario())


def test_an_advance_deferred_by_another_process_happens_once_it_lets_go(tmp_path: Path) -> None:
    async def scenario() -> None:
        harness = InProcessDaemon(InProcessDaemon.lay_out(tmp_path, {"cb": CALLBACK_FLOW}, users=True), None)
        async with harness as daemon:
            alice = harness.named("alice")
            run = await daemon.start_run("cb", {}, alice)
            held = daemon.store.open_log(run["id"])  # before its advance starts
            await harness.drain()
            assert daemon.store.read_run(run["id"])["status"] == "queued"
            held.close()
            async with asyncio.timeout(10):
                while daemon.store.read_run(run["id"])["status"] != "waiting":
                    await asyncio.sleep(0.05)  # the retry's own timer: no work of ours to wait for

    asyncio.run(scenario())


# ---- durable and private files ------------------------------------------------------------------


def _fsynced_paths(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    seen: list[str] = []
    real = os.fsync

    def recording(fd: int) -> None:
        seen.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    return seen


def test_every_new_file_and_directory_is_durable_in_its_parent(tmp_path: Path, monkeypatch) -> None:
    harness = Harness(tmp_path)
    flow = harness.flow(textwrap.dedent("""
        name: durable
        steps:
          - {id: big, kind: set, values: {text: "${{ 'x' * 70000 }}"}}
          - {id: done, kind: callback, timeout: 1h, on_timeout: fail}
        """))
    seen = _fsynced_paths(monkeypatch)
    harness.engine.accepts_messages = True
    run_id = harness.start(flow)
    asyncio.run(harness.engine.advance(run_id, hold=False))
    data = harness.store.data_dir.resolve()
    run_dir = harness.store.run_dir(run_id).resolve()
    for directory in (data, data / "runs", run_dir, data / "callbacks", data / "resources"):
        assert str(directory) in seen, f"{directory} was never fsynced"
    # the log's name is durable before its first event is acknowledged
    assert seen.index(str(run_dir)) < seen.index(str(run_dir / "events.jsonl"))


def test_the_data_directory_is_private_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o000)
    try:
        harness = Harness(tmp_path)
        flow = harness.flow(textwrap.dedent("""
            name: private
            steps:
              - {id: big, kind: set, values: {text: "${{ 'x' * 70000 }}"}}
              - {id: done, kind: callback, timeout: 1h, on_timeout: fail}
            """))
        harness.engine.accepts_messages = True
        run_id = harness.start(flow)
        asyncio.run(harness.engine.advance(run_id, hold=False))
    finally:
        os.umask(old)
    loose = [f"{path.relative_to(tmp_path)} {stat.filemode(path.stat().st_mode)}"
             for path in [harness.store.data_dir, *harness.store.data_dir.rglob("*")]
             if path.stat().st_mode & 0o077]
    assert not loose, loose


def test_an_existing_loose_data_directory_is_made_private_by_the_daemon(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir(mode=0o755)
    os.chmod(data, 0o755)
    with FileStore(data).daemon_lock():
        assert stat.S_IMODE(data.stat().st_mode) == 0o700
    shutil.rmtree(data)


def test_a_shell_attempt_cut_short_leaves_no_work_folder(tmp_path: Path) -> None:
    harness = Harness(tmp_path)
    flow = harness.flow(textwrap.dedent("""
        name: cut-short
        steps:
          - {id: slow, kind: shell, run: "echo partial; exec sleep 30", timeout: 300ms}
        """))
    run = harness.run(flow)
    assert run["steps"]["slow"]["status"] == "timed_out"
    assert not (harness.run_dir(run["id"]) / "work").exists() or not any((harness.run_dir(run["id"]) / "work").iterdir())
