"""The agent's story through the remote CLI: nothing but `signoff` with a server URL and a token.

Author a flow on a branch, validate it, run the draft through the daemon, wait for a
person's decision (the author's own approval is refused), read it, release, and see the
release live: every command with SIGNOFF_SERVER / SIGNOFF_TOKEN from a directory with no
data of its own (the same story as tests/cli/test_mcp.py, through the CLI).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from agent_support import SHIP_NOTE, daemon_with_author
from gitops_support import GitOpsDaemon
from support import broken_flow, wait_until


@pytest.fixture
def daemon(tmp_path):
    world = daemon_with_author(tmp_path / "world")
    yield world
    world.close()


def signoff(daemon: GitOpsDaemon, user: str, *args: str, code: int = 0) -> dict:
    done = daemon.cli(*args, "--json", user=user)
    assert done.returncode == code, f"signoff {' '.join(args)}: exit {done.returncode}\n{done.stdout}\n{done.stderr}"
    return json.loads(done.stdout)


def test_an_agent_authors_runs_waits_for_a_decision_and_releases_through_the_api(daemon: GitOpsDaemon) -> None:
    repo = str(daemon.repo)
    daemon.branch("ship-note", {"ship-note": broken_flow("ship-note")}, message="ship-note: first try")
    report = signoff(daemon, "ada", "validate", "--ref", "ship-note", "--repo", repo, code=1)
    assert report["ok"] is False and report["flows"]
    daemon.branch("ship-note", {"ship-note": SHIP_NOTE}, message="ship-note: reviewed release notes")
    assert signoff(daemon, "ada", "validate", "--ref", "ship-note", "--repo", repo)["ok"] is True
    diff = signoff(daemon, "ada", "diff", "ship-note", "--ref", "ship-note")
    assert diff["live"] is None and "review" in diff["steps"]["added"]

    # the agent starts the draft and follows it: the command waits, through the API, for the person
    agent = subprocess.Popen([sys.executable, "-m", "runner", "run", "ship-note", "--ref", "ship-note",
                              "-i", "note=v2", "--json"], cwd=daemon.root, env=daemon.cli_env("ada"),
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        def waiting() -> dict | None:
            runs = signoff(daemon, "ada", "runs", "list", "--flow", "ship-note")["runs"]
            return runs[0] if runs and runs[0]["status"] == "waiting" else None

        run = wait_until(waiting, timeout=30)
        assert run["draft"] is True and run["started_by"] == "ada" and run["current_step"] == "review"
        pending = signoff(daemon, "bob", "pending")
        assert [p["run"] for p in pending["pending"]] == [run["id"]]
        own = daemon.cli("approve", run["id"], "review", "-i", "ticket=CHG-1", "--json", user="ada")
        assert own.returncode == 1 and "may not approve" in (own.stdout + own.stderr)
        decided = signoff(daemon, "bob", "approve", run["id"], "review", "-i", "ticket=CHG-1",
                          "--comment", "reads well")
        assert decided["accepted"] is True and decided["final"] is True
        out, err = agent.communicate(timeout=60)
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()
    assert agent.returncode == 0, err
    done = json.loads(out)
    assert done["id"] == run["id"] and done["status"] == "succeeded"
    shown = signoff(daemon, "ada", "runs", "show", run["id"])
    assert shown["steps"]["review"]["decided_by"] == "bob" and shown["steps"]["review"]["comment"] == "reads well"
    assert signoff(daemon, "ada", "runs", "verify", run["id"])["ok"] is True

    release = signoff(daemon, "ada", "release", "ship-note", "1.0.0", "--ref", "ship-note")
    assert release["tag"] == "ship-note/v1.0.0" and release["via"] == "daemon"
    releases = signoff(daemon, "ada", "releases", "--flow", "ship-note")
    [flow] = releases["flows"]
    assert flow["live"]["tag"] == "ship-note/v1.0.0" and flow["live"]["commit"] == release["commit"]
