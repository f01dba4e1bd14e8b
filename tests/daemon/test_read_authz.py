"""Who may read what, through the real daemon (a subprocess on loopback) and the real CLI.

The rule (runner/auth.py, `may_see_run`): a run is seen by admins, by the user
who started it, and by users with the approve role whom its flow names among
its approvers; a resource by whoever may see a run that stored it. For anyone
else the run or resource does not exist: 404, the same answer as for one that
never existed, and the run list leaves it out.

Users (tests/daemon_support.py): alice, bob, carol (run, approve; group ops),
dave (run only), root (admin).
"""

from __future__ import annotations

import hashlib
import json

import httpx
import pytest

from daemon_support import DaemonProcess

pytestmark = pytest.mark.usefixtures("running")

BOB_REVIEWS = """
name: bob-reviews
steps:
  - id: review
    kind: approval
    approvers: [bob]
    context: please look
    timeout: 1h
  - id: after
    kind: set
    values: {done: true}
"""

OPS_REVIEWS = """
name: ops-reviews
steps:
  - id: note
    kind: set
    values: {ready: true}
  - id: review
    kind: approval
    approvers: [group:ops]
    context: ops, please look
    timeout: 1h
"""

NOTE = """
name: note
inputs:
  text: {type: string, default: hello resource}
steps:
  - id: make
    kind: shell
    run: |
      printf '%s\\n' "${{ inputs.text }}" > "$SIGNOFF_ARTIFACTS/note.txt"
    timeout: 1m
"""

QUICK = """
name: quick
steps:
  - id: one
    kind: set
    values: {n: 1}
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("read-authz")
    flows = {"bob-reviews": BOB_REVIEWS, "ops-reviews": OPS_REVIEWS, "note": NOTE, "quick": QUICK}
    with DaemonProcess(root, flows=flows) as process:
        yield process


def status_of(response: httpx.Response) -> int:
    return response.status_code


def not_found(response: httpx.Response) -> dict:
    assert response.status_code == 404, f"expected 404, got {response.status_code}: {response.text}"
    return response.json()["error"]


def listed(daemon: DaemonProcess, user: str, **params) -> list[str]:
    response = daemon.api(user).get("/api/v1/runs", params={"limit": 1000, **params})
    assert response.status_code == 200, response.text
    return [run["id"] for run in response.json()["runs"]]


def test_a_run_is_seen_by_its_starter_its_approvers_and_admins_only(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("bob-reviews", user="dave")["id"]
    daemon.wait_step(run_id, "review", "waiting")
    path = f"/api/v1/runs/{run_id}"
    for user in ("dave", "bob", "root"):  # the starter, the flow's approver, an admin
        assert status_of(daemon.api(user).get(path)) == 200, user
        assert status_of(daemon.api(user).get(f"{path}/events")) == 200, user
        assert run_id in listed(daemon, user), user
    never = "20200101t000000z-00000000"
    unknown = not_found(daemon.api("alice").get(f"/api/v1/runs/{never}"))
    for user in ("alice", "carol"):  # approvers elsewhere, but not named by this flow
        error = not_found(daemon.api(user).get(path))
        assert error == {**unknown, "message": unknown["message"].replace(never, run_id)}  # nothing tells them apart
        not_found(daemon.api(user).get(f"{path}/events", params={"wait": 1}))
        assert run_id not in listed(daemon, user)
        not_found(daemon.api(user).post(f"{path}/cancel"))
        assert run_id not in {p["run"] for p in daemon.api(user).get("/api/v1/pending").json()["pending"]}
    not_found(daemon.decide(run_id, "review", "carol"))
    assert daemon.run(run_id)["status"] == "waiting"  # nothing they sent changed it
    assert daemon.decide(run_id, "review", "bob").status_code == 200
    assert daemon.wait_end(run_id)["status"] == "succeeded"


def test_a_user_with_only_the_run_role_sees_only_the_runs_they_started(daemon: DaemonProcess) -> None:
    theirs = [daemon.start_run("quick", user=user)["id"] for user in ("alice", "bob", "root")]
    mine = daemon.start_run("quick", user="dave")["id"]
    for run_id in [*theirs, mine]:
        daemon.wait_end(run_id)
    seen = listed(daemon, "dave", flow="quick")
    assert mine in seen and not set(theirs) & set(seen)
    assert all(daemon.run(run_id)["started_by"] == "dave" for run_id in listed(daemon, "dave"))
    for run_id in theirs:
        not_found(daemon.api("dave").get(f"/api/v1/runs/{run_id}"))
    # a group named as approvers lets its members with the approve role see the flow's runs, not dave
    gated = daemon.start_run("ops-reviews", user="carol")["id"]
    daemon.wait_step(gated, "review", "waiting")
    assert gated in listed(daemon, "alice") and gated not in listed(daemon, "dave")
    assert status_of(daemon.api("root").post(f"/api/v1/runs/{gated}/cancel")) == 200


def test_the_run_list_pages_over_what_the_user_may_see(daemon: DaemonProcess) -> None:
    ids = []
    for user in ("alice", "dave", "alice", "alice", "dave", "alice"):
        ids.append(daemon.start_run("quick", user=user)["id"])
    for run_id in ids:
        daemon.wait_end(run_id)
    daves = [run_id for run_id, user in zip(ids, ("alice", "dave", "alice", "alice", "dave", "alice"))
             if user == "dave"][::-1]  # newest first
    first = daemon.api("dave").get("/api/v1/runs", params={"flow": "quick", "limit": 1}).json()
    assert [r["id"] for r in first["runs"]] == daves[:1] and first["next"]
    second = daemon.api("dave").get("/api/v1/runs", params={"flow": "quick", "limit": 1,
                                                           "before": first["next"]}).json()
    assert [r["id"] for r in second["runs"]] == daves[1:2]


def test_a_resource_is_seen_by_those_who_may_see_a_run_that_stored_it(daemon: DaemonProcess) -> None:
    text = "a note only some may read"
    run = daemon.wait_end(daemon.start_run("note", {"text": text}, user="alice")["id"])
    assert run["status"] == "succeeded", run
    ref = run["steps"]["make"]["outputs"]["artifacts"]["note.txt"]
    sha = ref.removeprefix("res://")
    assert sha == hashlib.sha256(f"{text}\n".encode()).hexdigest()
    route = f"/api/v1/resources/{sha}"
    for user in ("alice", "root"):
        response = daemon.api(user).get(route)
        assert response.status_code == 200 and response.content == f"{text}\n".encode(), user
    unknown = not_found(daemon.api("dave").get(f"/api/v1/resources/{'0' * 64}"))
    for user in ("bob", "dave"):
        error = not_found(daemon.api(user).get(route))
        assert error == {**unknown, "message": unknown["message"].replace("0" * 64, sha)}

    # dave's own run stores the same bytes: the resource is now his to read too, and still not bob's
    again = daemon.wait_end(daemon.start_run("note", {"text": text}, user="dave")["id"])
    assert again["steps"]["make"]["outputs"]["artifacts"]["note.txt"] == ref
    assert daemon.api("dave").get(route).content == f"{text}\n".encode()
    not_found(daemon.api("bob").get(route))


def test_the_cli_through_the_daemon_follows_the_same_rule(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("bob-reviews", user="dave")["id"]
    daemon.wait_step(run_id, "review", "waiting")
    refused = daemon.cli("cancel", run_id, "--json", user="alice")
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["error"]["message"] == f"no run {run_id}"
    assert daemon.run(run_id)["status"] == "waiting"
    cancelled = daemon.cli("cancel", run_id, "--json", user="dave")
    assert cancelled.returncode == 0, cancelled.stderr
    assert json.loads(cancelled.stdout)["status"] == "cancelled"

    followed = daemon.cli("run", "quick", "--json", user="dave")  # follows its own run's events
    assert followed.returncode == 0, followed.stderr
    assert json.loads(followed.stdout)["started_by"] == "dave"
