"""The daemon-wide callback inbox (`runner/inbox.py`): the journal on its own, then through the real daemon.

The unit tests drive a real `Inbox` on a real file in a temp dir. The write-failure
tests provoke real I/O errors with RLIMIT_FSIZE (the "file too large" limit, which
binds root as well) in a child Python process, so the limit never touches pytest;
the child exits with os._exit, as a kill -9 would leave things, and the test reads
what is on disk. The daemon tests use one real daemon for the module (kill -9,
restarts and a refused second daemon on the same data directory included).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from daemon_support import DaemonProcess, event_types
from support import PROJECT_ROOT, eventually, free_port

import runner.daemon.inbox
from runner.daemon.inbox import Inbox
from postgres_support import files_only


def entry(body: str, at: str = "2030-01-02T03:04:05.000000Z") -> dict:
    """An inbox entry as `entry_for` makes it for a small body."""
    data = body.encode()
    return {"sha256": hashlib.sha256(data).hexdigest(), "at": at, "bytes": len(data), "body": body}


def journal(path: Path) -> list[dict]:
    """The journal's lines, parsed; fails the test on a torn or unparsable line."""
    raw = path.read_bytes()
    assert raw == b"" or raw.endswith(b"\n"), f"the journal ends in a torn line: {raw[-80:]!r}"
    return [json.loads(line) for line in raw.splitlines()]


def keys(path: Path) -> list[tuple[str, str]]:
    return [(line["run"], line["step"]) for line in journal(path)]


# ---- the journal on its own ------------------------------------------------------------------


@pytest.fixture
def open_inbox(tmp_path: Path):
    """open_inbox(path=tmp_path/inbox.jsonl) -> a real Inbox on that file, closed after the test."""
    made: list[Inbox] = []

    def make(path: Path | None = None) -> Inbox:
        made.append(Inbox(path or tmp_path / "inbox.jsonl"))
        return made[-1]

    yield make
    for inbox in made:
        inbox.close()


def test_an_accepted_callback_is_in_the_journal_on_disk_when_accept_returns(tmp_path: Path, open_inbox) -> None:
    path = tmp_path / "inbox.jsonl"
    inbox = open_inbox(path)
    assert inbox.load(lambda run, step: True) == 0
    first = entry('{"ok": true}')

    async def scenario() -> tuple[bool, dict, list[dict]]:
        accepted, answer = await inbox.accept("run-1", "done", first)
        return accepted, answer, journal(path)  # read before anything else gets to run

    accepted, answer, on_disk = asyncio.run(scenario())
    assert accepted is True and answer == first
    assert on_disk == [{"run": "run-1", "step": "done", **first}]
    assert inbox.get("run-1", "done") == first
    assert not inbox.busy("run-1", "done")
    assert len(inbox) == 1


def test_fifty_concurrent_callbacks_for_different_steps_are_all_accepted_and_journaled_once(
        tmp_path: Path, open_inbox) -> None:
    path = tmp_path / "inbox.jsonl"
    inbox = open_inbox(path)
    inbox.load(lambda run, step: True)
    entries = {(f"run-{n:02d}", f"step-{n % 3}"): entry(json.dumps({"n": n})) for n in range(50)}

    async def burst() -> list[tuple[bool, dict]]:
        return list(await asyncio.gather(*(inbox.accept(run, step, e) for (run, step), e in entries.items())))

    answers = asyncio.run(burst())
    assert answers == [(True, e) for e in entries.values()]
    lines = journal(path)
    assert len(lines) == 50
    assert {(line.pop("run"), line.pop("step")): line for line in lines} == entries
    assert len(inbox) == 50 and all(inbox.get(*key) == e for key, e in entries.items())


def test_concurrent_callbacks_for_the_same_step_accept_exactly_one_and_answer_the_others_with_it(
        tmp_path: Path, open_inbox) -> None:
    path = tmp_path / "inbox.jsonl"
    inbox = open_inbox(path)
    inbox.load(lambda run, step: True)
    bodies = [entry(json.dumps({"attempt": n})) for n in range(8)]

    async def race() -> tuple[list[tuple[bool, dict]], tuple[bool, dict]]:
        raced = list(await asyncio.gather(*(inbox.accept("run-1", "done", e) for e in bodies)))
        later = await inbox.accept("run-1", "done", entry('{"attempt": "late"}'))
        return raced, later

    raced, later = asyncio.run(race())
    winners = [answer for accepted, answer in raced if accepted]
    assert len(winners) == 1
    first = winners[0]
    assert first in bodies
    assert [answer for accepted, answer in raced if not accepted] == [first] * 7, "the others see the first one"
    assert later == (False, first), "after the commit too"
    assert journal(path) == [{"run": "run-1", "step": "done", **first}], "one line, the winner's"
    assert inbox.get("run-1", "done") == first


def test_load_drops_a_torn_last_line_keeps_what_is_wanted_and_rewrites_the_journal(tmp_path: Path, open_inbox) -> None:
    path = tmp_path / "inbox.jsonl"
    kept_1, dropped, kept_3, duplicate = entry('{"n": 1}'), entry('{"n": 2}'), entry('{"n": 3}'), entry('{"n": 9}')
    lines = [{"run": "r1", "step": "done", **kept_1}, {"run": "r2", "step": "done", **dropped},
             {"run": "r3", "step": "done", **kept_3}, {"run": "r1", "step": "done", **duplicate}]
    text = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    torn = json.dumps({"run": "r4", "step": "done", **entry('{"n": 4}')}).encode()[:40]
    path.write_bytes(text + torn)
    asked: list[tuple[str, str]] = []

    def wanted(run: str, step: str) -> bool:
        asked.append((run, step))
        return run != "r2"

    inbox = open_inbox(path)
    assert inbox.load(wanted) == 2
    assert sorted(asked) == [("r1", "done"), ("r2", "done"), ("r3", "done")], "the torn line is never offered"
    assert inbox.get("r1", "done") == kept_1, "the first line for a step won"
    assert inbox.get("r2", "done") is None
    assert inbox.get("r3", "done") == kept_3
    assert inbox.get("r4", "done") is None
    assert journal(path) == [{"run": "r1", "step": "done", **kept_1}, {"run": "r3", "step": "done", **kept_3}]
    assert not path.with_name(".inbox.jsonl.tmp").exists()

    again = open_inbox(path)
    assert again.load(lambda run, step: True) == 2, "what was rewritten loads the same"
    assert again.get("r1", "done") == kept_1 and again.get("r3", "done") == kept_3


def test_an_entry_consumed_before_close_is_gone_from_the_journal(tmp_path: Path, open_inbox) -> None:
    path = tmp_path / "inbox.jsonl"
    inbox = open_inbox(path)
    inbox.load(lambda run, step: True)
    entries = {(f"run-{n}", "done"): entry(json.dumps({"n": n})) for n in range(3)}

    async def scenario() -> None:
        await asyncio.gather(*(inbox.accept(run, step, e) for (run, step), e in entries.items()))
        assert len(journal(path)) == 3
        inbox.consumed("run-0", "done")
        inbox.consumed("run-2", "done")
        inbox.consumed("run-2", "done")  # twice is harmless
        inbox.consumed("no-such-run", "done")
        inbox.close()

    asyncio.run(scenario())
    assert journal(path) == [{"run": "run-1", "step": "done", **entries[("run-1", "done")]}]
    assert inbox.get("run-0", "done") is None and inbox.get("run-1", "done") is not None
    reloaded = open_inbox(path)
    assert reloaded.load(lambda run, step: True) == 1
    assert reloaded.get("run-1", "done") == entries[("run-1", "done")]


def test_consumed_entries_are_compacted_away_while_running_and_later_callbacks_land_in_the_new_journal(
        tmp_path: Path, open_inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.daemon.inbox, "COMPACT_AFTER", 3)
    path = tmp_path / "inbox.jsonl"
    inbox = open_inbox(path)
    inbox.load(lambda run, step: True)
    entries = {(f"run-{n}", "done"): entry(json.dumps({"n": n})) for n in range(5)}
    latest = entry('{"n": "after the compaction"}')

    async def scenario() -> list[list[tuple[str, str]]]:
        await asyncio.gather(*(inbox.accept(run, step, e) for (run, step), e in entries.items()))
        seen = [keys(path)]
        for n in range(3):
            inbox.consumed(f"run-{n}", "done")
        await eventually(lambda: len(keys(path)) == 2, what="the journal to be compacted")
        seen.append(keys(path))
        assert await inbox.accept("run-9", "done", latest) == (True, latest)
        seen.append(keys(path))
        return seen

    before, compacted, after = asyncio.run(scenario())
    assert before == list(entries)
    assert compacted == [("run-3", "done"), ("run-4", "done")]
    assert after == [("run-3", "done"), ("run-4", "done"), ("run-9", "done")], "appended to the compacted file"
    reloaded = open_inbox(path)
    assert reloaded.load(lambda run, step: True) == 3
    assert reloaded.get("run-9", "done") == latest and reloaded.get("run-0", "done") is None


def test_consumed_bytes_trigger_a_compaction_long_before_the_entry_count_does(
        tmp_path: Path, open_inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.daemon.inbox, "COMPACT_AFTER_BYTES", 3 * 1024, raising=False)  # the count stays 20,000
    path = tmp_path / "inbox.jsonl"
    inbox = open_inbox(path)
    inbox.load(lambda run, step: True)
    entries = {(f"run-{n}", "done"): entry(json.dumps({"n": n, "pad": "x" * 1500})) for n in range(4)}

    async def scenario() -> list[tuple[str, str]]:
        await asyncio.gather(*(inbox.accept(run, step, e) for (run, step), e in entries.items()))
        inbox.consumed("run-0", "done")  # about 1.6 kB of the journal no longer needed: not yet
        assert len(keys(path)) == 4
        inbox.consumed("run-1", "done")  # about 3.2 kB: over the bound
        await eventually(lambda: len(keys(path)) == 2, what="the journal to be compacted by bytes")
        return keys(path)

    assert asyncio.run(scenario()) == [("run-2", "done"), ("run-3", "done")]


def big_journal(path: Path, count: int, body_bytes: int, run: str = "old") -> int:
    """A journal of `count` entries with bodies of about `body_bytes`; its size."""
    with open(path, "ab") as handle:
        for n in range(count):
            body = json.dumps({"n": n, "pad": "y" * body_bytes})
            handle.write(runner.daemon.inbox._line((f"{run}-{n}", "done"), entry(body)))
    return path.stat().st_size


def peak_memory_of(work) -> tuple[object, int]:
    """(what `work()` returns, the peak of Python memory allocated while it ran, in bytes)."""
    import tracemalloc

    tracemalloc.start()
    try:
        result = work()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_start_up_load_holds_no_entry_it_does_not_keep(tmp_path: Path, open_inbox) -> None:
    path = tmp_path / "inbox.jsonl"
    size = big_journal(path, 200, 40_000)  # 8 MB of callbacks already recorded by their runs
    kept = entry('{"still": "wanted"}')
    with path.open("ab") as handle:
        handle.write(json.dumps({"run": "new-1", "step": "done", **kept}).encode() + b"\n")
    inbox = open_inbox(path)
    count, peak = peak_memory_of(lambda: inbox.load(lambda run, step: run.startswith("new-")))
    assert count == 1 and inbox.get("new-1", "done") == kept
    assert peak < size / 8, f"loading a {size} byte journal peaked at {peak} bytes"
    assert keys(path) == [("new-1", "done")]


def test_bodies_past_the_memory_bound_are_read_back_from_the_journal_through_compactions_and_restarts(
        tmp_path: Path, open_inbox, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runner.daemon.inbox, "MEMORY_BYTES", 200_000, raising=False)
    monkeypatch.setattr(runner.daemon.inbox, "COMPACT_AFTER", 5)
    path = tmp_path / "inbox.jsonl"
    size = big_journal(path, 60, 40_000, run="early")  # 2.4 MB accepted before a restart, none recorded yet
    inbox = open_inbox(path)
    count, peak = peak_memory_of(lambda: inbox.load(lambda run, step: True))
    assert count == 60
    assert peak < 1_000_000, f"loading {size} bytes of wanted entries held {peak} bytes (bound: 200 kB of bodies)"

    def body(n: int, run: str = "early") -> dict:
        return json.loads(inbox.get(f"{run}-{n}", "done")["body"])

    assert [body(n)["n"] for n in range(60)] == list(range(60))
    later = {n: entry(json.dumps({"n": n, "pad": "z" * 40_000})) for n in range(10)}

    async def scenario() -> None:
        await asyncio.gather(*(inbox.accept(f"late-{n}", "done", e) for n, e in later.items()))
        assert inbox.get("late-9", "done") == later[9], "a body past the bound, read back"
        for n in range(0, 60, 2):  # half of them recorded: compactions on the way
            inbox.consumed(f"early-{n}", "done")
        await eventually(lambda: len(keys(path)) == 40, what="the compactions")
        assert [body(n)["n"] for n in range(1, 60, 2)] == list(range(1, 60, 2)), "read from the new journal"
        assert all(inbox.get(f"late-{n}", "done") == e for n, e in later.items())
        inbox.close()

    asyncio.run(scenario())
    again = open_inbox(path)
    assert again.load(lambda run, step: True) == 40
    assert all(json.loads(again.get(f"early-{n}", "done")["body"])["n"] == n for n in range(1, 60, 2))
    assert all(again.get(f"late-{n}", "done") == e for n, e in later.items())


# ---- write failures (a real EFBIG from RLIMIT_FSIZE, in a child process) --------------------------

CHILD_PRELUDE = """
import asyncio, hashlib, json, os, resource, signal, sys
from pathlib import Path
import runner.daemon.inbox
from runner.errors import StoreError
from runner.daemon.inbox import Inbox

signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG from write(), not a killed process
SOFT, HARD = resource.getrlimit(resource.RLIMIT_FSIZE)
PATH = Path(sys.argv[1])
RESULT = {}

def entry(body):
    return {"sha256": hashlib.sha256(body.encode()).hexdigest(), "at": "t", "bytes": len(body), "body": body}

def limit(size):
    resource.setrlimit(resource.RLIMIT_FSIZE, (size, HARD))

def unlimit():
    resource.setrlimit(resource.RLIMIT_FSIZE, (SOFT, HARD))

def crash():  # what kill -9 leaves: no close(), no rewrite
    sys.stdout.write(json.dumps(RESULT))
    sys.stdout.flush()
    os._exit(0)
"""


def run_child(tmp_path: Path, script: str) -> dict:
    """Run CHILD_PRELUDE + script in a fresh interpreter on tmp_path/inbox.jsonl; its RESULT dict."""
    source = tmp_path / "child.py"
    source.write_text(CHILD_PRELUDE + textwrap.dedent(script), encoding="utf-8")
    environ = {k: v for k, v in os.environ.items() if not k.startswith("SIGNOFF_")}
    environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
    done = subprocess.run([sys.executable, str(source), str(tmp_path / "inbox.jsonl")], env=environ,
                          capture_output=True, text=True, timeout=30, check=False)
    assert done.returncode == 0, f"the child failed ({done.returncode}):\n{done.stderr}"
    return json.loads(done.stdout)


REFUSED_THEN_RETRIED = """
async def main():
    inbox = Inbox(PATH)
    inbox.load(lambda run, step: True)
    await inbox.accept("run-1", "done", entry('{"n": 1}'))
    limit(PATH.stat().st_size)  # the disk is "full": the next line does not fit
    try:
        await inbox.accept("run-2", "done", entry('{"refused": true}'))
        RESULT["refused"] = None
    except StoreError as exc:
        RESULT["refused"] = exc.message
    RESULT["busy_after_failure"] = inbox.busy("run-2", "done")
    unlimit()  # space again: the sender retries, with a body of its own
    accepted, answer = await inbox.accept("run-2", "done", entry('{"retried": true}'))
    RESULT["retry"] = [accepted, answer["body"]]
    RESULT["in_memory"] = inbox.get("run-2", "done")["body"]
    crash()

asyncio.run(main())
"""


def test_a_callback_whose_write_fails_is_refused_with_a_store_error_and_may_be_retried(tmp_path: Path) -> None:
    result = run_child(tmp_path, REFUSED_THEN_RETRIED)
    assert result["refused"] is not None, "accept must not report success for a line that is not on disk"
    assert "could not record the callback" in result["refused"] and "File too large" in result["refused"]
    assert result["busy_after_failure"] is False, "a failed commit leaves nothing in flight"
    assert result["retry"] == [True, '{"retried": true}']
    assert result["in_memory"] == '{"retried": true}'


def test_after_a_crash_the_acknowledged_retry_stands_and_not_the_refused_callback(tmp_path: Path) -> None:
    result = run_child(tmp_path, REFUSED_THEN_RETRIED)
    assert result["retry"] == [True, '{"retried": true}'], "the retry was acknowledged (202)"
    bodies = [(line["run"], line["body"]) for line in journal(tmp_path / "inbox.jsonl")]
    after_restart = Inbox(tmp_path / "inbox.jsonl")  # what the next daemon start replays
    after_restart.load(lambda run, step: True)
    assert after_restart.get("run-2", "done")["body"] == '{"retried": true}', f"the journal holds {bodies}"
    assert ("run-2", '{"refused": true}') not in bodies, "a refused callback must never reach the journal"


def test_a_callback_arriving_during_a_failed_compaction_is_still_answered(tmp_path: Path) -> None:
    result = run_child(tmp_path, """
        runner.daemon.inbox.COMPACT_AFTER = 2

        async def main():
            inbox = Inbox(PATH)
            inbox.load(lambda run, step: True)
            await asyncio.gather(*(inbox.accept(f"run-{n}", "done", entry(str(n))) for n in range(3)))
            limit(0)  # the compaction's temp file cannot be written
            inbox.consumed("run-0", "done")
            inbox.consumed("run-1", "done")  # the compaction starts here
            arriving = asyncio.ensure_future(inbox.accept("run-9", "done", entry("9")))
            await asyncio.sleep(0.3)
            unlimit()
            try:
                accepted, _ = await asyncio.wait_for(arriving, 3)
                RESULT["answer"] = "accepted" if accepted else "not accepted"
            except StoreError as exc:
                RESULT["answer"] = "refused: " + exc.message
            except TimeoutError:
                RESULT["answer"] = "no answer within 3 s"
            RESULT["busy"] = inbox.busy("run-9", "done")
            crash()

        asyncio.run(main())
        """)
    assert result["answer"] != "no answer within 3 s", "the sender must get an answer, accepted or refused"
    assert result["busy"] is False


# ---- through the real daemon ---------------------------------------------------------------------

FLOWS_HERE = {
    "worker": """
        name: worker
        steps:
          - id: done
            kind: callback
            timeout: 1h
            on_timeout: fail
        """,
    # the first attempt of `work` takes 5 s (the daemon is killed in it); the retry after the restart is quick
    "slow": """
        name: slow
        steps:
          - id: work
            kind: shell
            run: 'if [ -e "MARKER" ]; then exit 0; fi; touch "MARKER"; sleep 5'
            timeout: 5m
            retry: {attempts: 2, backoff: 100ms}
          - id: done
            kind: callback
            timeout: 1h
            on_timeout: fail
          - id: report
            kind: set
            values: {got: "${{ steps.done.outputs.payload.value }}"}
        """,
    "early": """
        name: early
        steps:
          - id: first
            kind: wait
            duration: 1s
          - id: done
            kind: callback
            timeout: 1h
            on_timeout: fail
        """,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("inbox")
    flows = {**FLOWS_HERE, "slow": FLOWS_HERE["slow"].replace("MARKER", str(root / "slept-once"))}
    with DaemonProcess(root, flows=flows) as process:
        yield process


def inbox_lines(daemon: DaemonProcess) -> list[dict]:
    path = daemon.data / "inbox.jsonl"
    return journal(path) if path.exists() else []


@files_only
def test_a_second_daemon_on_the_same_data_dir_is_refused_and_the_first_keeps_serving(running: DaemonProcess) -> None:
    second_port = free_port()
    started = time.monotonic()
    done = subprocess.run([sys.executable, "-m", "runner", "serve", "--config", str(running.config_path),
                           "--port", str(second_port)],
                          cwd=running.root, env=running.env(), capture_output=True, text=True, timeout=30, check=False)
    took = time.monotonic() - started
    assert done.returncode != 0, f"the second daemon ran:\n{done.stderr}"
    assert took < 10, f"refusing took {took:.1f}s"
    assert "Traceback" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, done.stderr
    assert "another signoff daemon" in errors[0] and str(running.data) in errors[0]
    with pytest.raises(httpx.TransportError):
        httpx.get(f"http://127.0.0.1:{second_port}/api/v1/health", timeout=1.0)

    assert running.process.poll() is None, "the first daemon is still running"
    assert running.api().get("/api/v1/health").status_code == 200
    run = running.start_run("worker")
    running.wait_step(run["id"], "done", "waiting")
    assert running.post_callback(run["callbacks"]["done"], {"still": "serving"}).status_code == 202
    assert running.wait_end(run["id"])["steps"]["done"]["payload"] == {"still": "serving"}


@files_only
def test_a_callback_accepted_during_a_long_shell_step_survives_kill_9_and_completes_the_run(
        running: DaemonProcess) -> None:
    run = running.start_run("slow")
    running.wait_step(run["id"], "work", "running")
    response = running.post_callback(run["callbacks"]["done"], {"value": "sent before the crash"}, timeout=httpx.Timeout(4.0))
    assert response.status_code == 202, response.text
    assert running.run(run["id"])["steps"]["work"]["status"] == "running", "accepted while the shell step still ran"
    on_disk = [line for line in inbox_lines(running) if line["run"] == run["id"]]
    assert [(line["step"], line["sha256"]) for line in on_disk] == [("done", response.json()["sha256"])]

    running.kill()
    assert running.run_json(run["id"])["status"] == "running", "nothing recorded the callback before the kill"
    running.start()

    final = running.wait_end(run["id"], timeout=20)
    assert final["status"] == "succeeded", final.get("error")
    assert final["steps"]["done"]["payload"] == {"value": "sent before the crash"}
    assert final["steps"]["report"]["outputs"] == {"got": "sent before the crash"}
    events = running.events(run["id"])
    assert "step_interrupted" in event_types(events, "work"), "the shell step was cut short by the kill"
    received = [e for e in events if e["type"] == "callback_received"]
    assert len(received) == 1
    assert received[0]["accepted_at"] == response.json()["at"] and received[0]["early"] is True
    again = running.post_callback(run["callbacks"]["done"], {"value": "sent before the crash"})
    assert again.status_code == 200 and again.json()["replay"] is True


@files_only
def test_a_graceful_stop_leaves_no_consumed_callback_in_the_journal(running: DaemonProcess) -> None:
    runs = [running.start_run("worker") for _ in range(6)]
    for run in runs:
        running.wait_step(run["id"], "done", "waiting")
        assert running.post_callback(run["callbacks"]["done"], {"n": run["id"]}).status_code == 202
    for run in runs:
        assert running.wait_end(run["id"])["status"] == "succeeded"
    ids = {run["id"] for run in runs}
    assert ids <= {line["run"] for line in inbox_lines(running)}, "consumed lines stay until the journal is rewritten"

    assert running.stop() != -signal.SIGKILL, "a graceful stop, not the SIGKILL after the stop deadline"
    assert not ids & {line["run"] for line in inbox_lines(running)}, "the stop rewrote the journal without them"
    assert inbox_lines(running) == [], "nothing else was waiting to be recorded"
    running.start()
    assert inbox_lines(running) == []


def test_a_callback_replayed_after_kill_9_and_consumed_is_gone_after_a_graceful_stop(running: DaemonProcess) -> None:
    run = running.start_run("early")
    response = running.post_callback(run["callbacks"]["done"], {"replayed": True})
    assert response.status_code == 202, response.text
    running.kill()
    assert "done" not in (running.run_json(run["id"]).get("callbacks_received") or {}), "replayed, not yet recorded"
    running.start()
    final = running.wait_end(run["id"])
    assert final["status"] == "succeeded" and final["steps"]["done"]["payload"] == {"replayed": True}

    assert running.stop() != -signal.SIGKILL, "a graceful stop, not the SIGKILL after the stop deadline"
    assert [line["run"] for line in inbox_lines(running)] == [], "the consumed entry is still in the journal"
