"""`signoff replay`: the real CLI as a subprocess, real git repositories, runs recorded for real.

A run recorded by `run --local` (a draft run) or by the real daemon (a live run,
with a callback posted to it) is replayed against a branch: the JSON report, the
text for a person, exit codes, usage errors, and that nothing is executed or
written to the data directory.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from daemon_support import DaemonProcess
from support import all_file_bytes, cli_env, git, make_repo, run_signoff, write_flow

DEPLOY = """\
name: deploy
inputs:
  target: {type: string, default: staging}
steps:
  - id: plan
    kind: shell
    run: echo plan for ${{ inputs.target }}
  - id: build
    kind: shell
    run: echo "no build for $PWD" >&2; exit 3
  - id: report
    kind: set
    values: {plan: "${{ steps.plan.outputs.stdout }}"}
"""


def cli(cwd: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    done = run_signoff(cwd, env, *args)
    assert "Traceback" not in done.stderr + done.stdout, done.stderr
    return done


def on_branch(repo: Path, name: str, flow: str, text: str) -> None:
    git(repo, "checkout", "-q", "-b", name)
    write_flow(repo, flow, text)
    git(repo, "commit", "-q", "-am", f"draft {name}")
    git(repo, "checkout", "-q", "main")


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, dict[str, str], Path]:
    """A repo with `deploy` on main and a repaired draft on branch `fix`; the marker the repair would make."""
    repo = make_repo(tmp_path / "repo", {"deploy": DEPLOY})
    marker = tmp_path / "built"
    on_branch(repo, "fix", "deploy", DEPLOY.replace('echo "no build for $PWD" >&2; exit 3', f"touch {marker}"))
    return repo, cli_env(tmp_path / "data"), marker


def recorded_failure(repo: Path, env: dict[str, str]) -> str:
    done = cli(repo, env, "run", "deploy", "--local", "-i", "target=prod", "--json")
    assert done.returncode == 1, done.stderr
    return json.loads(done.stdout)["id"]


def test_replay_of_a_failed_run_against_the_repair(world, tmp_path) -> None:
    repo, env, marker = world
    run_id = recorded_failure(repo, env)
    before = all_file_bytes(tmp_path / "data")

    done = cli(repo, env, "replay", run_id, "--ref", "fix", "--json")

    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert set(report) == {"run", "flow", "recorded", "draft", "status", "error", "stopped_at", "assumed",
                           "steps", "counts"}
    assert (report["status"], report["recorded"]["status"]) == ("succeeded", "failed")
    assert report["draft"]["ref"] == "refs/heads/fix"
    assert report["draft"]["commit"] == git(repo, "rev-parse", "fix")
    assert [(e["step"], e["verdict"]) for e in report["steps"]] == [
        ("plan", "same"), ("build", "changed"), ("report", "would_run")]
    build = report["steps"][1]
    assert set(build) == {"step", "kind", "visit", "verdict", "status", "old_status", "error", "rendered",
                          "outputs", "would_run", "assumed", "fed"}
    assert build["would_run"] == f"$ touch {marker}" and build["assumed"] is True
    assert not marker.exists()
    assert all_file_bytes(tmp_path / "data") == before

    text = cli(repo, env, "replay", run_id, "--ref", "fix")
    assert text.returncode == 0
    assert "changed    build" in text.stdout and f"would run: $ touch {marker}" in text.stdout
    assert "the draft would end succeeded (assuming build succeeds)" in text.stdout

    unrepaired = cli(repo, env, "replay", run_id, "--ref", "main", "--json")
    assert unrepaired.returncode == 1  # the draft still fails
    assert [e["verdict"] for e in json.loads(unrepaired.stdout)["steps"]] == ["same", "same"]


def test_replay_of_recent_runs_and_usage_errors(world) -> None:
    repo, env, _ = world
    failed = recorded_failure(repo, env)

    live_only = cli(repo, env, "replay", "--flow", "deploy", "--ref", "fix", "--last", "3")
    assert live_only.returncode == 0 and "no ended runs of deploy to replay" in live_only.stdout
    done = cli(repo, env, "replay", "--flow", "deploy", "--ref", "fix", "--last", "3", "--drafts", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert set(result) == {"flow", "draft", "runs", "summary"}
    assert [r["run"] for r in result["runs"]] == [failed]
    assert result["summary"]["statuses"] == {"succeeded": 1}
    assert result["summary"]["outcome_changed"] == [failed]

    for args in (["replay"], ["replay", failed, "--flow", "deploy"]):
        usage = cli(repo, env, *args)
        assert usage.returncode == 2 and "give either a RUN or --flow FLOW" in usage.stderr, args
    missing = cli(repo, env, "replay", "20300101t000000z-00000000", "--ref", "fix", "--json")
    assert missing.returncode == 1 and json.loads(missing.stdout)["error"]["code"] == "not_found"
    no_ref = cli(repo, env, "replay", failed, "--ref", "no-such-branch")
    assert no_ref.returncode == 1 and "no-such-branch" in no_ref.stderr


DELIVER = """\
name: deliver
steps:
  - id: hand
    kind: set
    values: {url: "${{ callbacks.done.url }}"}
  - id: done
    kind: callback
    timeout: 1h
  - id: check
    kind: shell
    run: test ${{ steps.done.outputs.payload.count }} -gt 2
"""


def test_a_live_run_of_the_daemon_with_its_callback_payload_replays_against_a_branch(tmp_path) -> None:
    root = tmp_path / "daemon"
    daemon = DaemonProcess(root, flows={"deliver": DELIVER})
    git(daemon.repo, "tag", "v1.0.0")
    on_branch(daemon.repo, "fix", "deliver", DELIVER.replace("-gt 2", "-gt 0"))
    with daemon:
        run = daemon.start_run("deliver")
        daemon.wait_step(run["id"], "done", "waiting")
        assert daemon.post_callback(run["callbacks"]["done"], {"count": 1}).status_code == 202
        final = daemon.wait_end(run["id"])
        assert final["status"] == "failed" and final["draft"] is False

        done = cli(daemon.repo, daemon.env(), "replay", "--flow", "deliver", "--ref", "fix", "--last", "5",
                   "--config", str(daemon.config_path), "--json")

    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    (report,) = result["runs"]
    assert report["run"] == run["id"] and report["status"] == "succeeded"
    steps = {e["step"]: e for e in report["steps"]}
    assert steps["done"]["verdict"] == "same"
    assert steps["done"]["outputs"]["new"]["payload"] == {"count": 1}  # the recorded payload, fed again
    assert steps["check"]["verdict"] == "changed"
    assert steps["check"]["rendered"] == {"old": {**steps["check"]["rendered"]["old"], "run": "test 1 -gt 2"},
                                          "new": {**steps["check"]["rendered"]["new"], "run": "test 1 -gt 0"}}
    assert result["summary"]["recorded_statuses"] == {"failed": 1}
