"""runner.runs.engine.Engine over a real Store: steps, retries, jumps, timeouts, outputs, waits, crashes, secrets.

Flows are written as YAML and loaded with `load_flow`, as users write them.
Time is a FakeClock (sleeps return at once and are recorded), except where a
real process has to be killed on a real deadline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import resource
import signal
import subprocess
from datetime import timedelta
from pathlib import Path

import pytest

from runner.runs.engine import Engine
from runner.runs.files import FileStore
from runner.runs.store import Store
from runner.timeutil import parse_rfc3339, rfc3339

from support import (FakeClock, Harness, HttpServer, all_file_bytes, flow_name, free_port, harness_with_config,
                     json_reply, kill_quietly, pid_alive, read_pid, signoff_cmd, wait_pid_gone, wait_until,
                     write_flow)


def events_of(harness: Harness, run_id: str, kind: str, step: str | None = None) -> list[dict]:
    return [e for e in harness.history(run_id) if e["type"] == kind and (step is None or e.get("step") == step)]


def assert_verified(harness: Harness, run_id: str) -> None:
    result = harness.store.verify(run_id)
    assert result.ok, result.problems


# ---- a whole run --------------------------------------------------------------------


def test_shell_set_wait_and_http_steps_in_one_run(tmp_path):
    with HttpServer({"GET /ping": lambda req, n: json_reply(200, {"pong": True, "who": req.query["who"][0]})}) as api:
        harness = harness_with_config(tmp_path, {"connections": {"api": {"kind": "http", "base_url": api.url}}})
        record = harness.run("""\
name: mixed
inputs:
  who: {type: string, default: ada}
steps:
  - id: compute
    kind: set
    values: {name: "${{ inputs.who | upper }}", n: "${{ 2 + 3 }}"}
  - id: say
    kind: shell
    run: echo hello ${{ steps.compute.outputs.name }}
  - id: nap
    kind: wait
    duration: 10m
  - id: call
    kind: http
    connection: api
    path: /ping
    query: {who: "${{ steps.compute.outputs.name }}"}
  - id: done
    kind: set
    values:
      pong: "${{ steps.call.outputs.json.pong }}"
      said: "${{ steps.say.outputs.stdout | trim }}"
""")
    assert record["status"] == "succeeded", record["error"]
    steps = record["steps"]
    assert steps["compute"]["outputs"] == {"name": "ADA", "n": 5}
    assert steps["say"]["outputs"]["stdout"] == "hello ADA\n"
    assert steps["say"]["outputs"]["exit_code"] == 0
    assert harness.clock.slept == [600.0]
    assert parse_rfc3339(steps["nap"]["outputs"]["woke_at"]) == harness.clock.start + timedelta(minutes=10)
    assert steps["call"]["outputs"]["status"] == 200
    assert steps["done"]["outputs"] == {"pong": True, "said": "hello ADA"}
    assert [r.query for r in api.requests] == [{"who": ["ADA"]}]
    assert all(s["status"] == "succeeded" and s["attempts"] == 1 for s in steps.values())
    assert record["steps_executed"] == 5
    assert harness.snapshot(record["id"])["status"] == "succeeded"
    assert_verified(harness, record["id"])


def test_a_false_if_skips_the_step_and_the_run_moves_on(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: maybe
steps:
  - id: decide
    kind: set
    values: {go: false}
  - id: guarded
    kind: shell
    if: ${{ steps.decide.outputs.go }}
    run: touch guarded.ran
  - id: always
    kind: shell
    if: ${{ not steps.decide.outputs.go }}
    run: touch always.ran
""")
    assert record["status"] == "succeeded"
    guarded = record["steps"]["guarded"]
    assert guarded["status"] == "skipped"
    assert guarded["attempts"] == 0
    assert "`if` was false" in guarded["skip_reason"]
    assert not (tmp_path / "work" / "guarded.ran").exists()
    assert (tmp_path / "work" / "always.ran").exists()
    assert [e["step"] for e in events_of(harness, record["id"], "step_skipped")] == ["guarded"]
    assert not events_of(harness, record["id"], "step_started", "guarded")


# ---- retries ------------------------------------------------------------------------

COUNTER = 'n=$(cat {name} 2>/dev/null || echo 0); n=$((n+1)); echo $n > {name}; echo "try $n"; [ $n -ge {ok_at} ]'


def test_a_failing_step_is_retried_with_growing_jittered_backoff(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run(f"""\
name: flaky
steps:
  - id: flaky
    kind: shell
    run: '{COUNTER.format(name="count", ok_at=3)}'
    retry: {{attempts: 3, backoff: 10s}}
""")
    assert record["status"] == "succeeded", record["error"]
    state = record["steps"]["flaky"]
    assert state["attempts"] == 3
    assert state["outputs"]["stdout"] == "try 3\n"
    assert (tmp_path / "work" / "count").read_text().strip() == "3"
    retrying = events_of(harness, record["id"], "step_retrying")
    assert [e["attempt"] for e in retrying] == [1, 2]
    assert all(e["error"].startswith("exit code 1") for e in retrying)
    delays = [e["delay_seconds"] for e in retrying]
    assert 5 <= delays[0] <= 10  # base 10s, equal jitter: [base/2, base]
    assert 10 <= delays[1] <= 20  # doubled
    assert delays[0] <= delays[1]
    assert harness.clock.slept == pytest.approx(delays, abs=0.001)
    started = events_of(harness, record["id"], "step_started", "flaky")
    assert [e["attempt"] for e in started] == [1, 2, 3]
    assert record["steps_executed"] == 1  # retries are attempts of one step, not extra steps
    assert_verified(harness, record["id"])


def test_max_backoff_caps_the_delay_and_attempts_run_out(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: hopeless
steps:
  - id: hopeless
    kind: shell
    run: echo nope >&2; exit 1
    retry: {attempts: 6, backoff: 10s, max_backoff: 15s}
""")
    assert record["status"] == "failed"
    state = record["steps"]["hopeless"]
    assert state["attempts"] == 6
    assert state["status"] == "failed"
    assert state["error"] == "exit code 1: nope"
    assert record["error"] == "step 'hopeless' failed: exit code 1: nope"
    delays = [e["delay_seconds"] for e in events_of(harness, record["id"], "step_retrying")]
    assert len(delays) == 5
    assert 5 <= delays[0] <= 10
    for delay in delays[1:]:
        assert 7.5 <= delay <= 15


def test_a_failure_a_retry_cannot_fix_is_not_retried(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: notjson
steps:
  - id: parse
    kind: shell
    run: echo this is not json
    output: json
    retry: {attempts: 5, backoff: 1s}
""")
    assert record["status"] == "failed"
    assert record["steps"]["parse"]["attempts"] == 1
    assert "not JSON" in record["steps"]["parse"]["error"]
    assert not events_of(harness, record["id"], "step_retrying")
    assert harness.clock.slept == []


# ---- on_error and jumps ---------------------------------------------------------------


def test_on_error_continue_moves_on_and_keeps_the_failure(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: tolerant
steps:
  - id: broken
    kind: shell
    run: exit 2
    on_error: continue
  - id: after
    kind: set
    values: {saw: "${{ steps.broken.status }}", code: "${{ steps.broken.outputs.exit_code }}"}
""")
    assert record["status"] == "succeeded"
    assert record["error"] is None
    assert record["steps"]["broken"]["status"] == "failed"
    assert record["steps"]["broken"]["error"] == "exit code 2"
    assert record["steps"]["after"]["outputs"] == {"saw": "failed", "code": 2}


def test_on_error_jumps_to_a_step_and_the_steps_passed_over_are_skipped(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: jumper
steps:
  - id: broken
    kind: shell
    run: exit 1
    on_error: cleanup
  - id: deploy
    kind: shell
    run: touch deployed
  - id: announce
    kind: set
    values: {x: 1}
  - id: cleanup
    kind: shell
    run: touch cleaned
""")
    assert record["status"] == "succeeded"
    steps = record["steps"]
    assert steps["broken"]["status"] == "failed"
    for passed in ("deploy", "announce"):
        assert steps[passed]["status"] == "skipped"
        assert "cleanup" in steps[passed]["skip_reason"]
        assert steps[passed]["attempts"] == 0
    assert steps["cleanup"]["status"] == "succeeded"
    assert not (tmp_path / "work" / "deployed").exists()
    assert (tmp_path / "work" / "cleaned").exists()
    jumps = events_of(harness, record["id"], "jump")
    assert [(j["step"], j["to"]) for j in jumps] == [("broken", "cleanup")]
    skipped = events_of(harness, record["id"], "step_skipped")
    assert [(e["step"], e["by_jump"]) for e in skipped] == [("deploy", True), ("announce", True)]
    assert_verified(harness, record["id"])


def test_a_jump_that_loops_forever_fails_once_max_steps_is_reached(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: looper
max_steps: 9
steps:
  - id: again
    kind: set
    values: {x: 1}
  - id: broken
    kind: shell
    run: exit 1
    on_error: again
""")
    assert record["status"] == "failed"
    assert record["steps_executed"] == 9
    assert "max_steps: 9" in record["error"]
    assert "loop" in record["error"]
    assert len(events_of(harness, record["id"], "jump")) == 4
    assert len(events_of(harness, record["id"], "step_started")) == 9
    assert_verified(harness, record["id"])


# ---- timeouts and process groups ---------------------------------------------------------


def _group_flow(ignore_term: bool) -> str:
    child = "(trap '' TERM; exec sleep 300)" if ignore_term else "sleep 300"
    return f"""\
name: stuck
steps:
  - id: stuck
    kind: shell
    run: |
      echo $$ > shell.pid
      {child} &
      echo $! > child.pid
      wait
    timeout: 1s
"""


def _run_and_check_group_is_gone(tmp_path: Path, text: str) -> None:
    harness = Harness(tmp_path, clock=FakeClock())
    work = tmp_path / "work"
    try:
        record = harness.run(text)
        state = record["steps"]["stuck"]
        assert state["status"] == "timed_out"
        assert state["error"] == "timed out after 1.0s"
        assert record["status"] == "failed"
        assert "timed_out" in record["error"]
        shell_pid, child_pid = read_pid(work / "shell.pid"), read_pid(work / "child.pid")
        assert shell_pid and child_pid and shell_pid != child_pid
        wait_pid_gone(shell_pid, timeout=5)
        wait_pid_gone(child_pid, timeout=5)
    finally:
        for name in ("shell.pid", "child.pid"):
            pid = read_pid(work / name)
            if pid and pid_alive(pid):
                kill_quietly(pid)


def test_a_timeout_kills_the_steps_whole_process_group(tmp_path):
    _run_and_check_group_is_gone(tmp_path, _group_flow(ignore_term=False))


def test_a_timeout_kills_a_child_that_ignores_sigterm(tmp_path):
    _run_and_check_group_is_gone(tmp_path, _group_flow(ignore_term=True))


# ---- outputs ----------------------------------------------------------------------------


def test_a_command_printing_100_mb_stays_on_disk_not_in_the_record(tmp_path):
    harness = Harness(tmp_path, keep_output=False)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    record = harness.run("""\
name: loud
steps:
  - id: loud
    kind: shell
    run: head -c 100000000 /dev/zero | tr '\\0' a
  - id: next
    kind: set
    values: {size: "${{ steps.loud.outputs.stdout_bytes }}"}
""")
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert record["status"] == "succeeded", record["error"]
    outputs = record["steps"]["loud"]["outputs"]
    assert outputs["stdout"].startswith("res://")
    assert outputs["stdout_bytes"] == 100_000_000
    assert set(outputs["stdout_tail"]) == {"a"}
    assert record["steps"]["next"]["outputs"] == {"size": 100_000_000}
    blob = harness.store.resource_path(outputs["stdout"])
    size = blob.stat().st_size
    assert size == 100_000_000 or (outputs.get("stdout_truncated") and size > 64 * 1024)
    with open(blob, "rb") as handle:
        assert handle.read(4096) == b"a" * 4096
    run_json = harness.run_dir(record["id"]) / "run.json"
    assert run_json.stat().st_size < 100_000
    assert (harness.run_dir(record["id"]) / "events.jsonl").stat().st_size < 100_000
    assert (peak_after - peak_before) < 60 * 1024, "the output went through memory"


def test_signoff_output_key_value_multiline_and_json(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: outs
steps:
  - id: pairs
    kind: shell
    run: |
      echo "color=blue" >> "$SIGNOFF_OUTPUT"
      echo "equation=a=b+c" >> "$SIGNOFF_OUTPUT"
      echo "empty=" >> "$SIGNOFF_OUTPUT"
  - id: multi
    kind: shell
    run: |
      {
        echo "notes<<EOF"
        echo "line one"
        echo "line = two"
        echo "EOF"
        echo "after=yes"
      } >> "$SIGNOFF_OUTPUT"
  - id: obj
    kind: shell
    run: |
      echo '{"n": 3, "list": [1, 2], "nested": {"k": "v"}}' > "$SIGNOFF_OUTPUT"
  - id: use
    kind: set
    values:
      color: ${{ steps.pairs.outputs.color }}
      k: ${{ steps.obj.outputs.nested.k }}
      total: ${{ steps.obj.outputs.n + steps.obj.outputs.list | length }}
""")
    assert record["status"] == "succeeded", record["error"]
    steps = record["steps"]
    pairs = steps["pairs"]["outputs"]
    assert (pairs["color"], pairs["equation"], pairs["empty"]) == ("blue", "a=b+c", "")
    multi = steps["multi"]["outputs"]
    assert multi["notes"] == "line one\nline = two"
    assert multi["after"] == "yes"
    obj = steps["obj"]["outputs"]
    assert (obj["n"], obj["list"], obj["nested"]) == (3, [1, 2], {"k": "v"})
    assert steps["use"]["outputs"] == {"color": "blue", "k": "v", "total": 5}


@pytest.mark.parametrize("content, message", [
    ("exit_code=5", "may not set output 'exit_code'"),
    ("not a pair", "is not key=value"),
    ("{broken json", "invalid JSON"),
])
def test_a_bad_signoff_output_file_fails_the_step(tmp_path, content, message):
    harness = Harness(tmp_path)
    record = harness.run(f"""\
name: badout
steps:
  - id: bad
    kind: shell
    run: echo '{content}' > "$SIGNOFF_OUTPUT"
""")
    assert record["status"] == "failed"
    assert message in record["steps"]["bad"]["error"]


def test_an_unterminated_multiline_output_fails_the_step(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: heredoc
steps:
  - id: bad
    kind: shell
    run: printf 'notes<<EOF\\nline one\\nother=1\\n' > "$SIGNOFF_OUTPUT"
""")
    outputs = record["steps"]["bad"]["outputs"]
    assert record["steps"]["bad"]["status"] == "failed", f"the step succeeded with outputs {outputs}"
    assert "EOF" in record["steps"]["bad"]["error"]


def test_files_in_signoff_artifacts_become_resources_with_the_same_bytes(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: arts
steps:
  - id: make
    kind: shell
    run: |
      printf 'plain text' > "$SIGNOFF_ARTIFACTS/notes.txt"
      mkdir -p "$SIGNOFF_ARTIFACTS/deep/er"
      head -c 300000 /dev/urandom > "$SIGNOFF_ARTIFACTS/deep/er/blob.bin"
      cp "$SIGNOFF_ARTIFACTS/deep/er/blob.bin" expected.bin
""")
    assert record["status"] == "succeeded", record["error"]
    artifacts = record["steps"]["make"]["outputs"]["artifacts"]
    assert set(artifacts) == {"notes.txt", "deep/er/blob.bin"}
    store = harness.store
    assert store.resource_path(artifacts["notes.txt"]).read_bytes() == b"plain text"
    expected = (tmp_path / "work" / "expected.bin").read_bytes()
    assert len(expected) == 300_000
    assert store.resource_path(artifacts["deep/er/blob.bin"]).read_bytes() == expected
    assert artifacts["deep/er/blob.bin"] == "res://" + hashlib.sha256(expected).hexdigest()
    meta = store.resource_meta(artifacts["deep/er/blob.bin"])
    assert (meta["name"], meta["run"], meta["step"], meta["size"]) == ("deep/er/blob.bin", record["id"], "make",
                                                                      300_000)


def test_output_json_parses_stdout(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: js
steps:
  - id: emit
    kind: shell
    run: 'echo ''{"ok": true, "items": [1, 2, 3], "name": "x"}'''
    output: json
  - id: count
    kind: set
    values: {n: "${{ steps.emit.outputs.json['items'] | length }}", ok: "${{ steps.emit.outputs.json.ok }}"}
""")
    assert record["status"] == "succeeded", record["error"]
    assert record["steps"]["emit"]["outputs"]["json"] == {"ok": True, "items": [1, 2, 3], "name": "x"}
    assert record["steps"]["count"]["outputs"] == {"n": 3, "ok": True}


def test_a_step_output_over_64_kib_becomes_a_resource(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: bigout
steps:
  - id: big
    kind: set
    values:
      huge: ${{ 'x' * 70000 }}
      small: ${{ 'y' * 10 }}
      items: ${{ range(20000) | list }}
  - id: shellbig
    kind: shell
    run: |
      {
        echo "blob<<EOF"
        head -c 80000 /dev/zero | tr '\\0' z
        echo
        echo "EOF"
      } >> "$SIGNOFF_OUTPUT"
  - id: reads
    kind: set
    values: {ref: "${{ steps.big.outputs.huge }}"}
""")
    assert record["status"] == "succeeded", record["error"]
    big = record["steps"]["big"]["outputs"]
    assert big["small"] == "yyyyyyyyyy"
    assert big["huge"].startswith("res://")
    assert harness.store.resource_path(big["huge"]).read_bytes() == b"x" * 70000
    assert big["items"].startswith("res://")
    assert json.loads(harness.store.resource_path(big["items"]).read_bytes()) == list(range(20000))
    assert harness.store.resource_meta(big["items"])["media_type"] == "application/json"
    blob = record["steps"]["shellbig"]["outputs"]["blob"]
    assert blob.startswith("res://")
    assert harness.store.resource_path(blob).read_bytes() == b"z" * 80000
    assert record["steps"]["reads"]["outputs"] == {"ref": big["huge"]}  # later steps get the reference
    assert (harness.run_dir(record["id"]) / "run.json").stat().st_size < 20_000


def test_outputs_named_like_dict_methods_are_read_by_dot_syntax(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: names
steps:
  - id: src
    kind: shell
    run: |
      echo "items=3" >> "$SIGNOFF_OUTPUT"
      echo "copy=yes" >> "$SIGNOFF_OUTPUT"
  - id: use
    kind: set
    values: {items: "${{ steps.src.outputs.items }}", copy: "${{ steps.src.outputs.copy }}"}
""")
    assert record["status"] == "succeeded", record["error"]
    assert record["steps"]["use"]["outputs"] == {"items": "3", "copy": "yes"}


# ---- waits ---------------------------------------------------------------------------------


def test_wait_duration_sleeps_on_the_injected_clock(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("name: nap\nsteps:\n  - {id: nap, kind: wait, duration: 4h}\n")
    assert record["status"] == "succeeded"
    assert harness.clock.slept == [4 * 3600]
    woke = parse_rfc3339(record["steps"]["nap"]["outputs"]["woke_at"])
    assert woke == harness.clock.start + timedelta(hours=4)
    waiting = events_of(harness, record["id"], "step_waiting", "nap")
    assert len(waiting) == 1
    assert parse_rfc3339(waiting[0]["wake_at"]) == woke


def test_wait_until_a_time_from_an_expression(tmp_path):
    harness = Harness(tmp_path)
    when = harness.clock.start + timedelta(days=2, minutes=3)
    flow = harness.flow("""\
name: later
inputs:
  when: {type: string, required: true}
steps:
  - id: hold
    kind: wait
    until: ${{ inputs.when }}
  - id: after
    kind: set
    values: {woke: "${{ steps.hold.outputs.woke_at }}"}
""")
    run_id = harness.start(flow, {"when": rfc3339(when)})
    record = asyncio.run(harness.engine.advance(run_id))
    assert record["status"] == "succeeded", record["error"]
    assert harness.clock.slept == pytest.approx([(when - harness.clock.start).total_seconds()])
    assert parse_rfc3339(record["steps"]["hold"]["outputs"]["woke_at"]) == when
    assert record["steps"]["after"]["outputs"]["woke"] == record["steps"]["hold"]["outputs"]["woke_at"]


def test_wait_until_a_past_time_does_not_wait(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("name: past\nsteps:\n  - {id: hold, kind: wait, until: '2001-01-01T00:00:00Z'}\n")
    assert record["status"] == "succeeded"
    assert all(seconds <= 0 for seconds in harness.clock.slept)
    assert harness.clock.offset == timedelta(0)


# ---- expressions at run time ------------------------------------------------------------------


@pytest.mark.parametrize("step, field", [
    ("  - id: calc\n    kind: set\n    values: {ratio: '${{ inputs.n / inputs.d }}'}\n", "values.ratio"),
    ("  - id: calc\n    kind: shell\n    run: echo ${{ inputs.n / inputs.d }}\n", "run"),
    ("  - id: calc\n    kind: shell\n    run: echo hi\n    env: {RATIO: '${{ inputs.n // inputs.d }}'}\n", "env.RATIO"),
    ("  - id: calc\n    kind: set\n    if: ${{ inputs.n / inputs.d > 1 }}\n    values: {a: 1}\n", "if"),
])
def test_an_expression_that_raises_fails_the_step_naming_step_and_field(tmp_path, step, field):
    harness = Harness(tmp_path)
    flow = harness.flow("name: divide\ninputs:\n  n: {type: integer, default: 1}\n"
                        "  d: {type: integer, default: 0}\nsteps:\n" + step
                        + "  - {id: never, kind: set, values: {a: 1}}\n")
    record = asyncio.run(harness.engine.advance(harness.start(flow)))
    assert record["status"] == "failed"
    error = record["steps"]["calc"]["error"]
    assert error.startswith(f"calc.{field}: "), error
    assert "ZeroDivisionError" in error
    assert record["steps"]["calc"]["status"] == "failed"
    assert record["steps"]["never"]["status"] == "pending"
    assert f"calc.{field}" in record["error"]
    assert_verified(harness, record["id"])


# ---- crash recovery ------------------------------------------------------------------------------


def _crash_mid_step(tmp_path: Path, flow_text: str) -> tuple[Store, str, int]:
    """Start `signoff run --local` in a subprocess and SIGKILL it while its step sleeps.

    Returns the store, the run id and the pid of the (orphaned, then killed) sleep.
    """
    write_flow(tmp_path, flow_name(flow_text), flow_text)
    data = tmp_path / "data"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SIGNOFF_")}
    env["SIGNOFF_DATA"] = str(data)
    with open(tmp_path / "cli.out", "wb") as out, open(tmp_path / "cli.err", "wb") as err:
        proc = subprocess.Popen(signoff_cmd("run", "crashy", "--local", "--json"), cwd=tmp_path, env=env,
                                stdout=out, stderr=err, start_new_session=True)
    sleeper = None
    try:
        sleeper = wait_until(lambda: read_pid(tmp_path / "sleep.pid"), timeout=30, what="the step to start sleeping")
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=10) == -signal.SIGKILL
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if sleeper:  # the step's own session outlives the killed runner, as after a real crash
            kill_quietly(sleeper)
            wait_pid_gone(sleeper)
    store = FileStore(data)
    runs = store.list_runs()
    assert len(runs) == 1
    return store, runs[0]["id"], sleeper


def _resume(tmp_path: Path, store: Store, run_id: str) -> dict:
    engine = Engine(store, work_dir=tmp_path, clock=FakeClock())
    return asyncio.run(engine.advance(run_id))


CRASHY = """\
name: crashy
steps:
  - id: slow
    kind: shell
    run: |
      if [ -f recovered ]; then echo "attempt after restart"; exit 0; fi
      {before}
      echo $$ > sleep.pid
      exec sleep 30
    {retry}
  - id: after
    kind: set
    values: {{x: 1}}
"""


def test_a_step_interrupted_by_a_crash_is_retried_when_its_policy_allows(tmp_path):
    store, run_id, _ = _crash_mid_step(tmp_path, CRASHY.format(before="", retry="retry: {attempts: 2, backoff: 1s}"))
    before = store.read_run(run_id)
    assert before["status"] == "running"
    assert before["steps"]["slow"]["status"] == "running"
    assert before["steps"]["slow"]["attempts"] == 1
    (tmp_path / "recovered").touch()
    record = _resume(tmp_path, store, run_id)
    assert record["status"] == "succeeded", record["error"]
    slow = record["steps"]["slow"]
    assert slow["attempts"] == 2
    assert slow["outputs"]["stdout"] == "attempt after restart\n"
    events = list(store.read_events(run_id))
    interrupted = [e for e in events if e["type"] == "step_interrupted"]
    assert len(interrupted) == 1 and interrupted[0]["step"] == "slow"
    assert "restart" in interrupted[0]["reason"]
    assert store.verify(run_id).ok, store.verify(run_id).problems


def test_a_step_interrupted_by_a_crash_without_retries_fails_with_a_clear_reason(tmp_path):
    store, run_id, _ = _crash_mid_step(tmp_path, CRASHY.format(before="", retry=""))
    (tmp_path / "recovered").touch()
    record = _resume(tmp_path, store, run_id)
    assert record["status"] == "failed"
    slow = record["steps"]["slow"]
    assert slow["status"] == "failed"
    assert slow["error"] == "interrupted by a restart"
    assert slow["attempts"] == 1
    assert "interrupted by a restart" in record["error"]
    assert record["steps"]["after"]["status"] == "pending"
    assert store.verify(run_id).ok


def test_a_crash_during_the_last_retry_attempt_fails_the_step(tmp_path):
    first_fails = "if [ ! -f first.done ]; then touch first.done; exit 1; fi"
    store, run_id, _ = _crash_mid_step(
        tmp_path, CRASHY.format(before=first_fails, retry="retry: {attempts: 2, backoff: 100ms}"))
    assert store.read_run(run_id)["steps"]["slow"]["attempts"] == 2
    (tmp_path / "recovered").touch()
    record = _resume(tmp_path, store, run_id)
    slow = record["steps"]["slow"]
    assert slow["attempts"] == 2, "the step ran more attempts than its retry policy allows"
    assert slow["status"] == "failed"
    assert slow["error"] == "interrupted by a restart"
    assert record["status"] == "failed"


# ---- secrets -------------------------------------------------------------------------------------

TOKEN = "tok-7f3a9c2e51d84b06"
HEADER = "Bearer hdr-c0ffee5eed1234"


def _secret_config(tmp_path: Path, monkeypatch, **kwargs) -> Harness:
    """Secrets from the environment; a step learns them only from `secrets.sh` in its work dir (`. ./secrets.sh`)."""
    monkeypatch.setenv("SIGNOFF_TEST_TOK", TOKEN)
    monkeypatch.setenv("SIGNOFF_TEST_HDR", HEADER)
    (tmp_path / "work").mkdir(parents=True, exist_ok=True)
    (tmp_path / "work" / "secrets.sh").write_text(f"SIGNOFF_TEST_TOK='{TOKEN}'\nSIGNOFF_TEST_HDR='{HEADER}'\n")
    return harness_with_config(tmp_path, {
        "secrets": {"tok": {"env": "SIGNOFF_TEST_TOK"}},
        "connections": {"api": {"kind": "http", "base_url": f"http://127.0.0.1:{free_port()}",
                                "headers": {"Authorization": {"env": "SIGNOFF_TEST_HDR"}}}},
    }, **kwargs)


def test_secret_values_printed_by_a_step_are_masked_in_outputs_errors_and_files(tmp_path, monkeypatch):
    harness = _secret_config(tmp_path, monkeypatch)
    record = harness.run("""\
name: leaky
steps:
  - id: prints
    kind: shell
    run: |
      . ./secrets.sh
      echo "tok=$SIGNOFF_TEST_TOK hdr=$SIGNOFF_TEST_HDR"
      echo "copied=$SIGNOFF_TEST_TOK" >> "$SIGNOFF_OUTPUT"
  - id: fails
    kind: shell
    run: . ./secrets.sh; echo "auth failed for $SIGNOFF_TEST_HDR" >&2; exit 1
    on_error: continue
  - id: reads
    kind: set
    values: {seen: "${{ steps.prints.outputs.copied }}"}
""")
    assert record["status"] == "succeeded", record["error"]
    prints = record["steps"]["prints"]["outputs"]
    assert prints["stdout"] == "tok=*** hdr=***\n"
    assert prints["copied"] == "***"
    assert record["steps"]["fails"]["error"] == "exit code 1: auth failed for ***"
    assert record["steps"]["fails"]["outputs"]["stderr"] == "auth failed for ***\n"
    assert record["steps"]["reads"]["outputs"] == {"seen": "***"}
    for path, data in all_file_bytes(harness.store.data_dir).items():
        assert TOKEN.encode() not in data, path
        assert b"hdr-c0ffee5eed1234" not in data, path


def test_secret_values_in_a_large_stdout_are_masked_in_its_resource(tmp_path, monkeypatch):
    harness = _secret_config(tmp_path, monkeypatch)
    record = harness.run("""\
name: leakybig
steps:
  - id: prints
    kind: shell
    run: |
      . ./secrets.sh
      echo "tok=$SIGNOFF_TEST_TOK"
      head -c 100000 /dev/zero | tr '\\0' .
""")
    assert record["status"] == "succeeded"
    ref = record["steps"]["prints"]["outputs"]["stdout"]
    assert ref.startswith("res://")
    for path, data in all_file_bytes(harness.store.data_dir).items():
        assert TOKEN.encode() not in data, path


def test_with_secrets_configured_large_binary_stdout_is_stored_byte_for_byte(tmp_path, monkeypatch):
    harness = _secret_config(tmp_path, monkeypatch)
    record = harness.run("""\
name: binary
steps:
  - id: dump
    kind: shell
    run: head -c 200000 /dev/urandom | tee printed.bin
""")
    assert record["status"] == "succeeded", record["error"]
    ref = record["steps"]["dump"]["outputs"]["stdout"]
    printed = (tmp_path / "work" / "printed.bin").read_bytes()
    assert TOKEN.encode() not in printed
    stored = harness.store.resource_path(ref).read_bytes()
    assert len(stored) == len(printed) == 200_000
    assert stored == printed


def test_with_secrets_configured_100_mb_of_stdout_still_costs_disk_not_memory(tmp_path, monkeypatch):
    harness = _secret_config(tmp_path, monkeypatch, keep_output=False)
    peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    record = harness.run("""\
name: loudsecret
steps:
  - id: loud
    kind: shell
    run: head -c 100000000 /dev/zero | tr '\\0' a
""")
    peak_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert record["status"] == "succeeded", record["error"]
    assert record["steps"]["loud"]["outputs"]["stdout"].startswith("res://")
    assert (peak_after - peak_before) < 60 * 1024, "the output went through memory"
