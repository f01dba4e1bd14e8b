"""The real `signoff` CLI as a subprocess, in a real git repository made in a temp dir.

Covers `run --local` (JSON record, exit codes, inputs, --ref drafts, SIGINT),
`runs list/show/verify` and `resource get`. No failure may print a traceback.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
from pathlib import Path

import pytest

from support import (ALL_PROJECT_FLOWS, cli_env, free_port, git, kill_quietly, make_repo, pid_alive, read_pid,
                     run_schema_errors, run_signoff, signoff_cmd, wait_pid_gone, wait_until, write_config)

FAILING = """\
name: fails
steps:
  - id: ok
    kind: set
    values: {a: 1}
  - id: boom
    kind: shell
    run: echo "it broke" >&2; exit 3
"""

SLEEPY = """\
name: sleepy
steps:
  - id: nap
    kind: shell
    run: |
      echo $$ > sleep.pid
      exec sleep 30
  - id: never
    kind: set
    values: {a: 1}
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", copy=ALL_PROJECT_FLOWS)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / "data")


def cli(repo: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = run_signoff(repo, env, *args)
    assert "Traceback" not in done.stderr, done.stderr
    assert "Traceback" not in done.stdout, done.stdout
    return done


def one_json(done: subprocess.CompletedProcess):
    """stdout must be exactly one JSON document."""
    text = done.stdout.strip()
    assert text.startswith("{") and text.endswith("}"), done.stdout
    return json.loads(text)


# ---- signoff run --local -----------------------------------------------------------


def test_run_hello_locally_prints_its_json_record(repo, env, tmp_path):
    done = cli(repo, env, "run", "hello", "--local", "--json", "-i", "who=Ada")
    assert done.returncode == 0, done.stderr
    record = one_json(done)
    assert record["flow"] == "hello"
    assert record["status"] == "succeeded"
    assert record["draft"] is True
    assert record["inputs"] == {"who": "Ada"}
    assert record["ref"] == "refs/heads/main"
    assert record["commit"] == git(repo, "rev-parse", "HEAD")
    steps = record["steps"]
    assert list(steps) == ["greeting", "say", "pause", "report"]
    assert steps["greeting"]["outputs"] == {"text": "Hello, Ada!", "shout": "ADA"}
    assert steps["say"]["outputs"]["stdout"] == "Hello, Ada!\n"
    assert steps["report"]["outputs"]["greeted"] is True
    assert steps["report"]["outputs"]["artifacts"]["report.md"].startswith("res://")
    assert all(s["status"] == "succeeded" for s in steps.values())
    on_disk = json.loads((tmp_path / "data" / "runs" / record["id"] / "run.json").read_text())
    assert on_disk["status"] == "succeeded"
    assert on_disk["id"] == record["id"]
    assert "greeting" in done.stderr  # progress goes to stderr, never into the JSON
    assert run_schema_errors(record) == []


def test_a_failing_flow_exits_1_with_the_error_in_its_record(repo, env):
    (repo / "flows" / "fails.yaml").write_text(FAILING)
    done = cli(repo, env, "run", "fails", "--local", "--json")
    assert done.returncode == 1
    record = one_json(done)
    assert record["status"] == "failed"
    assert record["steps"]["boom"]["status"] == "failed"
    assert record["error"] == "step 'boom' failed: exit code 3: it broke"
    human = cli(repo, env, "run", "fails", "--local", "--no-follow")
    assert human.returncode == 1
    assert "failed" in human.stdout


def test_a_missing_required_input_exits_2_with_a_clear_message(repo, env, tmp_path):
    config = write_config(tmp_path, {"connections": {"status-api": {"kind": "http",
                                                                    "base_url": f"http://127.0.0.1:{free_port()}"}}})
    done = cli(repo, env, "run", "api-health", "--local", "--config", str(config))
    assert done.returncode == 2
    assert "needs input 'service'" in done.stderr
    assert "-i service=" in done.stderr
    as_json = cli(repo, env, "run", "api-health", "--local", "--config", str(config), "--json")
    assert as_json.returncode == 2
    assert one_json(as_json)["error"]["code"] == "usage"
    assert not (tmp_path / "data" / "runs").exists() or not list((tmp_path / "data" / "runs").iterdir())


@pytest.mark.parametrize("args, message", [
    (("-i", "limit_mb=lots"), "is not a valid number"),
    (("-i", "colour=red"), "has no input colour"),
    (("-i", "no-equals-sign"), "is not KEY=VALUE"),
])
def test_bad_inputs_exit_2(repo, env, args, message):
    done = cli(repo, env, "run", "disk-report", "--local", *args)
    assert done.returncode == 2
    assert message in done.stderr


def test_an_unknown_flow_exits_non_zero_with_a_hint(repo, env):
    done = cli(repo, env, "run", "helo", "--local")
    assert done.returncode != 0
    assert "no flow named 'helo'" in done.stderr
    assert "hint:" in done.stderr
    assert "hello" in done.stderr.split("hint:", 1)[1]
    as_json = cli(repo, env, "run", "helo", "--local", "--json")
    assert as_json.returncode == done.returncode
    assert one_json(as_json)["error"]["code"] == "not_found"


def test_run_without_local_and_no_daemon_fails_with_a_hint(repo, env):
    done = cli(repo, {**env, "SIGNOFF_SERVER": f"http://127.0.0.1:{free_port()}"}, "run", "hello")
    assert done.returncode != 0
    assert "hint:" in done.stderr
    hint = done.stderr.split("hint:", 1)[1]
    assert "signoff serve" in hint or "--local" in hint


# ---- runs list / show / verify, resource get ----------------------------------------------


def test_runs_list_show_verify_and_resource_get(repo, env, tmp_path):
    first = one_json(cli(repo, env, "run", "hello", "--local", "--json", "-i", "who=Ada"))
    (repo / "flows" / "fails.yaml").write_text(FAILING)
    second = one_json(cli(repo, env, "run", "fails", "--local", "--json"))
    run_id = first["id"]

    listing = one_json(cli(repo, env, "runs", "list", "--json"))
    assert [r["id"] for r in listing["runs"]] == [second["id"], run_id]
    only_hello = one_json(cli(repo, env, "runs", "list", "--flow", "hello", "--json"))
    assert [r["id"] for r in only_hello["runs"]] == [run_id]
    failed = one_json(cli(repo, env, "runs", "list", "--status", "failed", "--json"))
    assert [r["id"] for r in failed["runs"]] == [second["id"]]
    human = cli(repo, env, "runs", "list")
    assert human.returncode == 0 and run_id in human.stdout

    shown = one_json(cli(repo, env, "runs", "show", run_id, "--json"))
    assert shown["id"] == run_id
    assert shown["status"] == "succeeded"
    assert shown["steps"] == first["steps"]
    with_events = one_json(cli(repo, env, "runs", "show", run_id, "--events", "--json"))
    assert with_events["history"][0]["type"] == "run_created"
    assert with_events["history"][-1]["type"] == "run_finished"

    verified = cli(repo, env, "runs", "verify", run_id)
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert one_json(cli(repo, env, "runs", "verify", run_id, "--json"))["ok"] is True

    ref = first["steps"]["report"]["outputs"]["artifacts"]["report.md"]
    out = tmp_path / "report.md"
    got = cli(repo, env, "resource", "get", ref, "-o", str(out))
    assert got.returncode == 0, got.stderr
    data = out.read_bytes()
    assert data.startswith(b"# Report\n\nGreeted Ada as ")
    assert "res://" + hashlib.sha256(data).hexdigest() == ref
    to_stdout = subprocess.run(signoff_cmd("resource", "get", ref), cwd=repo, env=env, capture_output=True)
    assert to_stdout.returncode == 0 and to_stdout.stdout == data

    events = tmp_path / "data" / "runs" / run_id / "events.jsonl"
    raw = bytearray(events.read_bytes())
    at = raw.index(b"Ada")
    raw[at] = ord("E")  # one byte: Ada -> Eda
    events.write_bytes(bytes(raw))
    broken = cli(repo, env, "runs", "verify", run_id)
    assert broken.returncode == 1
    assert "INTEGRITY" in broken.stdout
    report = one_json(cli(repo, env, "runs", "verify", run_id, "--json"))
    assert report["ok"] is False and report["problems"]


@pytest.mark.parametrize("args", [
    ("runs", "show", "20991231t235959z-00000000"),
    ("runs", "show", "../../etc"),
    ("runs", "verify", "not-a-run"),
    ("resource", "get", "res://../../etc/passwd"),
    ("resource", "get", "res://" + "0" * 64),
])
def test_reading_what_does_not_exist_fails_cleanly(repo, env, args):
    done = cli(repo, env, *args)
    assert done.returncode == 1
    assert done.stderr.startswith("error: ")


# ---- drafts at a ref ------------------------------------------------------------------------


def test_run_with_ref_runs_the_committed_version_on_a_branch(repo, env, tmp_path):
    hello = repo / "flows" / "hello.yaml"
    original = hello.read_text()
    git(repo, "checkout", "-q", "-b", "draft-howdy")
    drafted = original.replace("Hello, ", "Howdy, ").replace("duration: 1s", "duration: 10ms")
    hello.write_text(drafted)
    git(repo, "commit", "-qam", "howdy")
    branch_sha = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "main")
    hello.write_text(original.replace("Hello, ", "Uncommitted, "))  # the working tree must not matter

    done = cli(repo, env, "run", "hello", "--local", "--ref", "draft-howdy", "--json")
    assert done.returncode == 0, done.stderr
    record = one_json(done)
    assert record["steps"]["greeting"]["outputs"]["text"] == "Howdy, world!"
    assert record["ref"] == "refs/heads/draft-howdy"
    assert record["commit"] == branch_sha
    assert record["commit"] != git(repo, "rev-parse", "main")
    assert record["draft"] is True
    kept = (tmp_path / "data" / "runs" / record["id"] / "flow.yaml").read_text()
    assert kept == drafted

    missing = cli(repo, env, "run", "hello", "--local", "--ref", "no-such-branch")
    assert missing.returncode != 0
    assert "no-such-branch" in missing.stderr


# ---- SIGINT ---------------------------------------------------------------------------------


def test_sigint_cancels_a_local_run_and_kills_its_step(repo, env, tmp_path):
    (repo / "flows" / "sleepy.yaml").write_text(SLEEPY)
    out, err = tmp_path / "cli.out", tmp_path / "cli.err"
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        proc = subprocess.Popen(signoff_cmd("run", "sleepy", "--local", "--json"), cwd=repo, env=env,
                                stdout=stdout, stderr=stderr, start_new_session=True)
    sleeper = None
    try:
        sleeper = wait_until(lambda: read_pid(repo / "sleep.pid"), timeout=30, what="the sleep step to start")
        assert pid_alive(sleeper)
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)  # far less than the 30 s sleep
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    try:
        wait_pid_gone(sleeper, timeout=5)
    finally:
        if pid_alive(sleeper):
            kill_quietly(sleeper)
    assert code == 1
    assert "Traceback" not in err.read_text()
    record = json.loads(out.read_text())
    assert record["status"] == "cancelled"
    run_dir = Path(env["SIGNOFF_DATA"]) / "runs" / record["id"]
    on_disk = json.loads((run_dir / "run.json").read_text())
    assert on_disk["status"] == "cancelled"
    assert "SIGINT" in on_disk["error"]
    assert on_disk["steps"]["nap"]["status"] == "cancelled"
    assert on_disk["steps"]["never"]["status"] == "pending"
    assert run_schema_errors(on_disk) == []
    verified = cli(repo, env, "runs", "verify", record["id"])
    assert verified.returncode == 0, verified.stdout


# ---- secrets on the terminal ----------------------------------------------------------------------


def test_secrets_printed_by_a_step_are_masked_on_the_terminal_too(repo, tmp_path):
    secret = "tok-live-9b8a7c6d5e"
    env = cli_env(tmp_path / "data", SIGNOFF_TEST_TOK=secret)
    config = write_config(tmp_path, {"secrets": {"tok": {"env": "SIGNOFF_TEST_TOK"}}})
    (repo / "token.txt").write_text(secret)  # the step's environment no longer hands it over
    (repo / "flows" / "talks.yaml").write_text(
        "name: talks\nsteps:\n  - id: say\n    kind: shell\n    run: echo \"the token is $(cat token.txt)\"\n")
    done = cli(repo, env, "run", "talks", "--local", "--config", str(config))
    assert done.returncode == 0, done.stderr
    assert secret not in done.stdout
    assert secret not in done.stderr
