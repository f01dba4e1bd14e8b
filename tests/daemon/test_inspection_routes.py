"""The inspection routes, through the real daemon (a subprocess on loopback): verify, logs, releases, diff.

Each answers the document the CLI prints when it reads the daemon's files itself
(its LocalReader over the daemon's data directory and repository; tests/cli/test_remote_inspection.py
runs the commands);
a run the user may not see is 404, as for GET /api/v1/runs/{id}.
"""

from __future__ import annotations

import json

import pytest

from daemon_support import DaemonProcess
from inspection_support import inspection_daemon
from runner.cli.app import Env
from runner.cli.remote import LocalReader
from postgres_support import files_only

pytestmark = pytest.mark.usefixtures("running")

NEVER = "20200101t000000z-00000000"


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    yield from inspection_daemon(tmp_path_factory.mktemp("inspection-routes"))


@pytest.fixture(scope="module")
def finished(daemon: DaemonProcess) -> dict:
    """A run of speak started by alice, ended."""
    run = daemon.start_run("speak", user="alice")
    return daemon.wait_end(run["id"])


@pytest.fixture(scope="module")
def waiting(daemon: DaemonProcess) -> dict:
    """A run of bob-reviews started by alice, waiting on bob."""
    run = daemon.start_run("bob-reviews", user="alice")
    return daemon.wait_step(run["id"], "review", "waiting")


def local(daemon: DaemonProcess) -> LocalReader:
    """What the CLI reads from the daemon's own files and repository (no daemon involved), in this process."""
    return LocalReader(Env(str(daemon.data), str(daemon.repo), None))


def ok(response) -> dict:
    assert response.status_code == 200, response.text
    return response.json()


def not_found(response) -> dict:
    assert response.status_code == 404, f"expected 404, got {response.status_code}: {response.text}"
    return response.json()["error"]


@files_only
def test_verify_answers_the_documents_of_runs_verify(daemon: DaemonProcess, finished: dict, waiting: dict) -> None:
    for run in (finished, waiting):
        answer = ok(daemon.api("alice").get(f"/api/v1/runs/{run['id']}/verify"))
        assert set(answer) == {"run", "ok", "events", "problems"} and answer["ok"] is True
        assert answer == local(daemon).verify(run["id"])
    assert ok(daemon.api("bob").get(f"/api/v1/runs/{waiting['id']}/verify"))["ok"]  # its approver sees it
    for user, run_id in (("carol", waiting["id"]), ("dave", finished["id"]), ("alice", NEVER)):
        assert not_found(daemon.api(user).get(f"/api/v1/runs/{run_id}/verify"))["code"] == "not_found"
    assert daemon.api(None).get(f"/api/v1/runs/{finished['id']}/verify").status_code == 401


@files_only
def test_logs_give_each_steps_recorded_output_with_small_resources_as_text(daemon: DaemonProcess,
                                                                            finished: dict) -> None:
    path = f"/api/v1/runs/{finished['id']}/logs"
    answer = ok(daemon.api("alice").get(path))
    assert answer == local(daemon).logs(finished["id"], None)
    assert answer["run"] == finished["id"] and [s["step"] for s in answer["steps"]] == ["talk", "loud", "note"]
    talk, loud, note = answer["steps"]
    assert talk == {"step": "talk", "status": "succeeded", "attempts": 1, "stdout": "hello out\n",
                    "stderr": "hello err\n"}
    assert finished["steps"]["loud"]["outputs"]["stdout"].startswith("res://")  # kept as a resource ...
    assert loud["stdout"] == "x" * 70000  # ... and given back as its text
    assert note["stdout"] == "" and note["stderr"] == ""  # a set step has no streams
    one = ok(daemon.api("alice").get(path, params={"step": "talk"}))
    assert one == {"run": finished["id"], "steps": [talk]}
    error = not_found(daemon.api("alice").get(path, params={"step": "nope"}))
    assert "no step 'nope'" in error["message"] and "talk" in error["hint"]
    not_found(daemon.api("dave").get(path))  # dave may not see alice's run
    not_found(daemon.api("alice").get(f"/api/v1/runs/{NEVER}/logs"))


@files_only
def test_releases_answers_the_document_of_signoff_releases(daemon: DaemonProcess) -> None:
    answer = ok(daemon.api("dave").get("/api/v1/releases"))
    assert answer == local(daemon).releases(None)
    flows = {entry["flow"]: entry for entry in answer["flows"]}
    assert answer["tagged"] is True and flows["speak"]["live"]["tag"] == "v1.0.0"
    assert [d["branch"] for d in flows["speak"]["drafts"]] == ["refs/heads/feature"]
    assert daemon.api(None).get("/api/v1/releases").status_code == 401


def test_diff_answers_the_document_of_signoff_diff(daemon: DaemonProcess) -> None:
    answer = ok(daemon.api("dave").get("/api/v1/flows/speak/diff", params={"ref": "feature"}))
    assert answer == local(daemon).diff("speak", "feature")
    assert answer["steps"] == {"added": ["remark"], "removed": ["note"], "changed": []}
    assert answer["live"]["tag"] == "v1.0.0" and answer["draft"]["ref"] == "refs/heads/feature"
    tree = ok(daemon.api("dave").get("/api/v1/flows/speak/diff"))  # no ref: the daemon's working tree
    assert tree["draft"] == {"ref": "working tree", "commit": None} and tree["diff"] == ""
    assert tree == local(daemon).diff("speak", None)
    assert "no branch, tag or commit" in not_found(
        daemon.api("dave").get("/api/v1/flows/speak/diff", params={"ref": "no-such-branch"}))["message"]
    assert not_found(daemon.api("dave").get("/api/v1/flows/nothing-here/diff"))["code"] == "not_found"
    assert not_found(daemon.api("dave").get("/api/v1/flows/Bad.Name/diff"))["code"] == "not_found"


@files_only
def test_a_resource_carries_its_metadata_in_a_header(daemon: DaemonProcess, finished: dict) -> None:
    ref = finished["steps"]["loud"]["outputs"]["stdout"]
    response = daemon.api("alice").head(f"/api/v1/resources/{ref.removeprefix('res://')}")
    assert response.status_code == 200 and response.content == b""
    meta = json.loads(response.headers["x-signoff-resource"])
    assert meta == local(daemon).resource_meta(ref)
    assert meta["size"] == 70000 and meta["run"] == finished["id"]

