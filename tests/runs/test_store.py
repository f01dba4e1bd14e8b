"""runner.runs.store: the hash-chained event log, run.json snapshots, run ids and resources (DESIGN §4)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from runner.errors import NotFound, RunLocked
from runner.runs.chain import GENESIS
from runner.runs.files import FileStore
from runner.runs.store import RUN_ID

from support import PROJECT_ROOT, Harness, run_schema_errors

FLOW = """\
name: chain
inputs:
  who: {type: string, default: world}
steps:
  - id: first
    kind: set
    values: {greeting: "hi ${{ inputs.who }}"}
  - id: second
    kind: shell
    run: echo ${{ steps.first.outputs.greeting }}
  - id: third
    kind: set
    values: {said: "${{ steps.second.outputs.stdout | trim }}"}
"""


@pytest.fixture
def finished(tmp_path: Path) -> tuple[Harness, str]:
    """A real, finished run of a three-step flow."""
    harness = Harness(tmp_path)
    record = harness.run(FLOW)
    assert record["status"] == "succeeded"
    return harness, record["id"]


def lines_of(path: Path) -> list[bytes]:
    data = path.read_bytes()
    assert data.endswith(b"\n")
    return data.split(b"\n")[:-1]


def events_path(harness: Harness, run_id: str) -> Path:
    return harness.run_dir(run_id) / "events.jsonl"


# ---- the chain ------------------------------------------------------------------


def test_each_event_line_carries_the_sha256_of_the_line_before(finished):
    harness, run_id = finished
    lines = lines_of(events_path(harness, run_id))
    assert len(lines) >= 8  # created, started, 3 x (started, finished), finished
    previous = GENESIS
    for number, line in enumerate(lines):
        event = json.loads(line)
        assert event["prev"] == previous, f"line {number} is not chained"
        assert event["seq"] == number
        previous = hashlib.sha256(line).hexdigest()
    snapshot = harness.snapshot(run_id)
    assert snapshot["events"]["count"] == len(lines)
    assert snapshot["events"]["last_sha256"] == previous
    assert [json.loads(line)["type"] for line in lines][:2] == ["run_created", "run_started"]
    assert json.loads(lines[-1])["type"] == "run_finished"


def test_verify_passes_on_a_real_run(finished):
    harness, run_id = finished
    result = harness.store.verify(run_id)
    assert result.ok, result.problems
    assert result.events == len(lines_of(events_path(harness, run_id)))
    assert result.to_dict() == {"run": run_id, "ok": True, "events": result.events, "problems": []}


def _flip_one_byte(line: bytes) -> bytes:
    """Change one letter of the event's type value (the line stays valid JSON)."""
    at = line.index(b'"type":"') + len(b'"type":"')
    return line[:at] + bytes([line[at] ^ 0x20]) + line[at + 1:]


@pytest.mark.parametrize("which", ["first", "middle", "last"])
def test_verify_fails_after_one_byte_of_events_changes(finished, which):
    harness, run_id = finished
    path = events_path(harness, run_id)
    lines = lines_of(path)
    index = {"first": 0, "middle": len(lines) // 2, "last": len(lines) - 1}[which]
    lines[index] = _flip_one_byte(lines[index])
    path.write_bytes(b"\n".join(lines) + b"\n")
    result = harness.store.verify(run_id)
    assert not result.ok
    assert result.problems


def test_verify_fails_after_a_byte_breaks_the_json(finished):
    harness, run_id = finished
    path = events_path(harness, run_id)
    data = bytearray(path.read_bytes())
    data[0] = ord("[")
    path.write_bytes(bytes(data))
    result = harness.store.verify(run_id)
    assert not result.ok
    assert any("not valid JSON" in p for p in result.problems)


def test_verify_fails_after_the_last_line_is_removed(finished):
    harness, run_id = finished
    path = events_path(harness, run_id)
    lines = lines_of(path)
    path.write_bytes(b"\n".join(lines[:-1]) + b"\n")
    result = harness.store.verify(run_id)
    assert not result.ok
    assert any("truncated or altered" in p for p in result.problems)


def test_verify_fails_after_the_file_is_cut_mid_line(finished):
    harness, run_id = finished
    path = events_path(harness, run_id)
    data = path.read_bytes()
    path.write_bytes(data[:-10])
    result = harness.store.verify(run_id)
    assert not result.ok
    assert any("partial line" in p for p in result.problems)


def test_verify_fails_after_a_middle_line_is_deleted(finished):
    harness, run_id = finished
    path = events_path(harness, run_id)
    lines = lines_of(path)
    middle = len(lines) // 2
    path.write_bytes(b"\n".join(lines[:middle] + lines[middle + 1:]) + b"\n")
    result = harness.store.verify(run_id)
    assert not result.ok
    assert any(f"line {middle + 1} does not chain" in p for p in result.problems)


def test_verify_fails_after_run_json_is_edited(finished):
    harness, run_id = finished
    path = harness.run_dir(run_id) / "run.json"
    snapshot = json.loads(path.read_text())
    snapshot["status"] = "failed"
    path.write_text(json.dumps(snapshot))
    result = harness.store.verify(run_id)
    assert not result.ok
    assert any("status" in p for p in result.problems)


def test_verify_fails_after_a_step_output_in_run_json_is_edited(finished):
    harness, run_id = finished
    path = harness.run_dir(run_id) / "run.json"
    snapshot = json.loads(path.read_text())
    snapshot["steps"]["first"]["outputs"]["greeting"] = "hi mallory"
    path.write_text(json.dumps(snapshot))
    result = harness.store.verify(run_id)
    assert not result.ok
    assert any("steps" in p for p in result.problems)


def test_a_torn_last_line_is_dropped_when_the_log_is_reopened(finished):
    harness, run_id = finished
    path = events_path(harness, run_id)
    good = path.read_bytes()
    lines = lines_of(path)
    with open(path, "ab") as handle:  # a crash mid-write: half an event, no newline
        handle.write(b'{"type":"step_started","at":"2030-01-0')
    assert not harness.store.verify(run_id).ok
    assert list(harness.store.read_events(run_id)) == [json.loads(line) for line in lines]

    log = harness.store.open_log(run_id)
    log.resume()
    try:
        assert path.read_bytes() == good
        assert log.count == len(lines)
        assert log.last_sha256 == hashlib.sha256(lines[-1]).hexdigest()
        log.append([{"type": "note", "at": "2030-01-02T03:04:05.000000Z"}])
    finally:
        log.close()
    appended = lines_of(path)
    assert len(appended) == len(lines) + 1
    last = json.loads(appended[-1])
    assert last["seq"] == len(lines)
    assert last["prev"] == hashlib.sha256(lines[-1]).hexdigest()


# ---- run ids --------------------------------------------------------------------


def test_run_ids_are_url_safe_and_sort_by_creation_time(tmp_path):
    store = FileStore(tmp_path / "data")
    base = datetime(2026, 11, 24, 19, 8, 12, tzinfo=timezone.utc)
    moments = [base + timedelta(microseconds=us) for us in (0, 1, 15, 16, 65535, 65536, 500000, 999999)]
    moments += [base + timedelta(seconds=1), base + timedelta(minutes=1), base + timedelta(days=40),
                base + timedelta(days=400)]
    ids = [store.new_run_id(moment) for moment in moments]
    for run_id in ids:
        assert RUN_ID.match(run_id), run_id
    shuffled = ids[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled) == ids
    assert ids[0].startswith("20261124t190812z-")


def test_create_run_dir_makes_distinct_dirs_for_the_same_instant(tmp_path):
    store = FileStore(tmp_path / "data")
    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    ids = {store.create_run_dir(now, "name: x\n") for _ in range(20)}
    assert len(ids) == 20
    for run_id in ids:
        assert RUN_ID.match(run_id)
        assert store.flow_source(run_id) == "name: x\n"


@pytest.mark.parametrize("bad", ["../etc", "20261124t190812z-3f9a2c1b/../..", "", "20261124T190812Z-3F9A2C1B"])
def test_run_dir_refuses_what_is_not_a_run_id(tmp_path, bad):
    with pytest.raises(NotFound):
        FileStore(tmp_path / "data").run_dir(bad)


# ---- resources ------------------------------------------------------------------


def test_resources_are_content_addressed_with_metadata(tmp_path):
    store = FileStore(tmp_path / "data")
    payload = b"report body\n" * 1000
    sha = hashlib.sha256(payload).hexdigest()
    ref = store.put_resource(payload, media_type="text/markdown", name="report.md", run_id="r", step="s")
    assert ref == f"res://{sha}"
    assert store.put_resource(payload) == ref
    source = tmp_path / "copy.bin"
    source.write_bytes(payload)
    assert store.put_resource(source) == ref
    other = store.put_resource(b"something else")
    assert other != ref

    path = store.resource_path(ref)
    assert path == store.resources_dir / sha
    assert path.read_bytes() == payload
    meta = json.loads((store.resources_dir / f"{sha}.json").read_text())
    assert meta["sha256"] == sha
    assert meta["size"] == len(payload)
    assert meta["media_type"] == "text/markdown"
    assert meta["name"] == "report.md"
    assert store.resource_meta(ref) == meta
    assert store.resource_path(sha) == path  # a bare digest works too
    blobs = sorted(p.name for p in store.resources_dir.iterdir())
    assert blobs == sorted([sha, f"{sha}.json", other[6:], f"{other[6:]}.json"])  # no temp files left


@pytest.mark.parametrize("bad", [
    "../etc/passwd",
    "res://../etc/passwd",
    "res:///etc/passwd",
    "/etc/passwd",
    "res://" + "g" * 64,
    "res://" + "A" * 64,
    "res://" + "a" * 63,
    "res://" + "a" * 65,
    "res://" + "a" * 64 + "/../../../etc/passwd",
    "res://" + "a" * 32 + "/" + "a" * 31,
    "res://",
    "",
])
def test_resource_path_refuses_path_tricks(tmp_path, bad):
    store = FileStore(tmp_path / "data")
    store.put_resource(b"x")
    with pytest.raises(NotFound) as caught:
        store.resource_path(bad)
    assert caught.value.message


def test_resource_path_of_an_unknown_digest_is_not_found(tmp_path):
    store = FileStore(tmp_path / "data")
    store.put_resource(b"x")
    with pytest.raises(NotFound, match="no resource"):
        store.resource_path("res://" + "0" * 64)


# ---- listing runs ------------------------------------------------------------------

ALPHA = "name: alpha\nsteps:\n  - {id: one, kind: set, values: {a: 1}}\n"
BETA = "name: beta\nsteps:\n  - {id: one, kind: shell, run: exit 3}\n"


@pytest.fixture
def several_runs(tmp_path: Path) -> tuple[Harness, dict[str, str]]:
    harness = Harness(tmp_path)
    alpha, beta = harness.flow(ALPHA), harness.flow(BETA)
    made = {}
    for label, flow, draft in (("alpha-draft", alpha, True), ("beta-draft", beta, True),
                               ("alpha-live", alpha, False), ("beta-live", beta, False)):
        harness.clock.offset += timedelta(seconds=1)
        record = harness.run(flow, draft=draft)
        made[label] = record["id"]
    return harness, made


def test_list_runs_filters_by_flow_status_and_draft(several_runs):
    harness, made = several_runs
    store = harness.store

    def ids(**filters) -> list[str]:
        return [run["id"] for run in store.list_runs(**filters)]

    assert ids() == [made["beta-live"], made["alpha-live"], made["beta-draft"], made["alpha-draft"]]
    assert ids(flow="alpha") == [made["alpha-live"], made["alpha-draft"]]
    assert ids(status="failed") == [made["beta-live"], made["beta-draft"]]
    assert ids(status="succeeded", draft=True) == [made["alpha-draft"]]
    assert ids(draft=False) == [made["beta-live"], made["alpha-live"]]
    assert ids(flow="beta", status="succeeded") == []
    assert ids(limit=1) == [made["beta-live"]]
    assert ids(flow="nope") == []


def test_list_runs_reads_snapshots_only_never_event_logs(several_runs):
    harness, made = several_runs
    before = harness.store.list_runs()
    for run_id in made.values():
        events = harness.run_dir(run_id) / "events.jsonl"
        events.unlink()
        events.mkdir()  # opening it as a file now fails loudly
        (events / "x").write_text("not a log")
    after = harness.store.list_runs()
    assert after == before
    assert {run["status"] for run in after} == {"succeeded", "failed"}
    with pytest.raises(IsADirectoryError):  # anything reading an event log now fails loudly
        list(harness.store.read_events(made["alpha-draft"]))


def test_list_runs_skips_stray_entries_and_an_absent_data_dir(tmp_path, several_runs):
    harness, made = several_runs
    (harness.store.runs_dir / "not-a-run").mkdir()
    (harness.store.runs_dir / ".tmp").write_text("x")
    assert len(harness.store.list_runs()) == 4
    assert FileStore(tmp_path / "nowhere").list_runs() == []


# ---- the run record schema ----------------------------------------------------------


def test_run_json_of_a_real_run_validates_against_the_run_schema(finished, tmp_path):
    harness, run_id = finished
    assert (PROJECT_ROOT / "schema" / "run.schema.json").is_file(), "schema/run.schema.json is missing (DESIGN §4)"
    records = [harness.snapshot(run_id)]
    second = Harness(tmp_path / "second")  # a failed run, a skipped step and a live run with git fields
    records.append(second.run(BETA))
    flow = second.flow("name: gamma\nsteps:\n  - {id: one, kind: set, if: false, values: {a: 1}}\n")
    live = second.engine.create_run(flow, {}, started_by="tester", draft=False, ref="refs/tags/v1.2.0",
                                    version="v1.2.0", commit="a" * 40)
    asyncio.run(second.engine.advance(live))
    records.append(second.snapshot(live))
    for record in records:
        errors = run_schema_errors(record)
        assert not errors, errors
    for key in ("id", "flow", "status", "draft", "ref", "version", "commit", "inputs", "started_by",
                "created_at", "updated_at", "error", "steps"):
        assert key in records[0]
    for state in records[0]["steps"].values():
        assert {"status", "attempts", "started_at", "finished_at", "outputs", "error"} <= set(state)


def test_a_run_held_by_another_process_is_refused_with_a_message_and_left_intact(tmp_path: Path) -> None:
    """One writer per run: whoever has the run's log open holds its lock (DESIGN section 9)."""
    harness = Harness(tmp_path)
    run_id = harness.start(harness.flow("name: held\nsteps:\n  - {id: a, kind: set, values: {n: 1}}\n"))
    before = (harness.store.run_dir(run_id) / "events.jsonl").read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from runner.runs.files import FileStore; "
         "log = FileStore(sys.argv[1]).open_log(sys.argv[2]); print('held', flush=True); time.sleep(30)",
         str(harness.store.data_dir), run_id], stdout=subprocess.PIPE, text=True, cwd=PROJECT_ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(RunLocked) as refused:
            asyncio.run(harness.engine.advance(run_id))
        assert f"run {run_id} is being advanced by another process" in refused.value.message
        assert (harness.store.run_dir(run_id) / "events.jsonl").read_bytes() == before
    finally:
        holder.kill()
        holder.wait()
        holder.stdout.close()
    assert asyncio.run(harness.engine.advance(run_id))["status"] == "succeeded"  # free again once it is gone
