"""Several real daemons on one PostgreSQL database: any takes any request, a dead one's runs move on.

Each daemon is a real `signoff serve` subprocess with its own port and data folder, over
one repository and one database, with a one-second lease so a kill -9 is taken up quickly.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from daemon_support import DaemonProcess, event_types
from support import approval_step, callback_step, flow_doc, make_repo, set_step, wait_until

LEASE = "1s"


def flows(tmp_path: Path) -> dict[str, dict]:
    marker = tmp_path / "side-effects.txt"
    return {
        "review": flow_doc("review", approval_step("review", approvers=("group:ops",)),
                           set_step("after", {"done": True})),
        "handoff": flow_doc("handoff", callback_step("done"), set_step("after", {"done": True})),
        "slow": flow_doc("slow", {"id": "work", "kind": "shell", "timeout": "1m",
                                  "retry": {"attempts": 2, "backoff": "100ms"},
                                  "run": f"echo started >> {marker}; sleep 4; echo finished"}),
        "pause": flow_doc("pause", {"id": "nap", "kind": "wait", "duration": "2s"}, set_step("after", {"x": 1})),
    }


@pytest.fixture(scope="module")
def daemons(tmp_path_factory, postgres_server):
    """Three daemons on one database and one repository, for the whole module."""
    root = tmp_path_factory.mktemp("several")
    dsn = postgres_server.database()
    repo = make_repo(root / "repo", flows(root), message="flows for several daemons")
    store = {"kind": "postgres", "dsn": {"env": "SIGNOFF_DSN"}, "lease": LEASE}
    first = DaemonProcess(root / "d1", repo=repo, store=store, env={"SIGNOFF_DSN": dsn})
    started = [first] + [DaemonProcess(root / f"d{n}", repo=repo, store=store, env={"SIGNOFF_DSN": dsn},
                                       tokens=first.tokens) for n in (2, 3)]
    try:
        for daemon in started:
            daemon.start()
        yield root, started
    finally:
        for daemon in started:
            daemon.close()
        postgres_server.drop(dsn)


@pytest.fixture
def cluster(daemons):
    """The three daemons, each running (one a test killed is started again for the next)."""
    root, started = daemons
    for daemon in started:
        if daemon.process is None:
            daemon.start()
    return started


def test_a_decision_on_another_daemon_moves_the_run_and_every_daemon_shows_it(cluster):
    first, second, third = cluster
    run = first.start_run("review", user="alice")
    first.wait_step(run["id"], "review")
    # alice started it; bob decides through another daemon
    assert second.decide(run["id"], "review", "bob").status_code == 200
    done = third.wait_end(run["id"])
    assert done["status"] == "succeeded"
    assert done["steps"]["review"]["decided_by"] == "bob"
    for daemon in cluster:
        listed = daemon.api("root").get("/api/v1/runs", params={"flow": "review"}).json()
        assert [r["id"] for r in listed["runs"]] == [run["id"]]
    health = third.api("root").get("/api/v1/health").json()
    assert health["ok"] and health["store"]["kind"] == "postgres" and len(health["store"]["daemons"]) == 3
    verified = first.cli("runs", "verify", run["id"], "--json", "--config", str(first.config_path), env=first.env())
    assert verified.returncode == 0, verified.stderr


def test_a_callback_is_accepted_once_whichever_daemon_it_reaches(cluster):
    first, second, third = cluster
    run = first.start_run("handoff")
    url = first.callback_url(run, "done")
    token = url.rsplit("/", 1)[1]
    assert second.post_callback(token, {"ok": 1}).status_code == 202
    assert third.post_callback(token, {"ok": 1}).status_code == 200  # the identical one again: a replay
    assert first.post_callback(token, {"ok": 2}).status_code == 409  # a different one: refused
    done = third.wait_end(run["id"])
    assert done["status"] == "succeeded"
    assert done["steps"]["done"]["outputs"]["payload"] == {"ok": 1}
    assert event_types(first.events(run["id"])).count("callback_received") == 1


def test_the_runs_of_a_killed_daemon_move_on_elsewhere_within_the_lease(cluster, daemons):
    first, second, third = cluster
    marker = daemons[0] / "side-effects.txt"
    run = first.start_run("slow")
    wait_until(lambda: marker.exists() and marker.read_text().count("started") == 1, timeout=20)
    first.kill()
    killed_at = time.monotonic()
    # the step cut short is retried by another daemon (its retry allows it), once
    wait_until(lambda: marker.read_text().count("started") == 2, timeout=20)
    resumed_after = time.monotonic() - killed_at
    done = second.wait_end(run["id"], timeout=30)
    assert done["status"] == "succeeded", done
    assert "step_interrupted" in event_types(second.events(run["id"]), "work")
    assert resumed_after < 5.0, f"resumed {resumed_after:.1f}s after the kill (lease {LEASE})"


def test_a_wait_timed_by_a_dead_daemon_fires_once_on_another(cluster):
    first, second, third = cluster
    run = first.start_run("pause")
    first.wait_step(run["id"], "nap")
    first.kill()
    done = second.wait_end(run["id"], timeout=30)
    assert done["status"] == "succeeded"
    assert event_types(second.events(run["id"])).count("step_finished") == 2
