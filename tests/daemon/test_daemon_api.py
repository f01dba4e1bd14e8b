"""The daemon's JSON API (DESIGN §5), through real HTTP to the real `signoff serve` subprocess.

One daemon serves the whole module: every test starts runs of its own and
looks only at those, so they do not interfere.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import httpx
import pytest

from daemon_support import DaemonProcess, event_types
from support import git, pid_alive, wait_until

pytestmark = pytest.mark.usefixtures("running")  # a daemon left down by a failed test is started again

GATE = """
name: gate
description: one approval, then a set step
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    context: please look
    timeout: 1h
    on_timeout: reject
  - id: after
    kind: set
    values: {done: true}
"""

NEEDS_INPUT = """
name: needs-input
inputs:
  order_id: {type: string, required: true}
  amount: {type: number, default: 0}
steps:
  - id: echo
    kind: set
    values: {order: "${{ inputs.order_id }}", amount: "${{ inputs.amount }}"}
"""

PAGER = """
name: pager
inputs:
  n: {type: integer, default: 0}
steps:
  - id: one
    kind: set
    values: {n: "${{ inputs.n }}"}
"""

SLEEPER = """
name: sleeper
inputs:
  pidfile: {type: string, required: true}
steps:
  - id: nap
    kind: shell
    run: |
      sleep 60 &
      echo $! > ${{ inputs.pidfile }}
      wait
    timeout: 5m
  - id: never
    kind: set
    values: {reached: true}
"""

NAPPER = """
name: napper
steps:
  - id: nap
    kind: wait
    duration: 2s
  - id: after
    kind: set
    values: {woke: true}
"""

RESUMABLE = """
name: resumable
inputs:
  dir: {type: string, required: true}
steps:
  - id: work
    kind: shell
    run: |
      if [ -e ${{ inputs.dir }}/first-attempt.pid ]; then echo second attempt; exit 0; fi
      sleep 60 &
      echo $! > ${{ inputs.dir }}/first-attempt.pid
      wait
    retry: {attempts: 2, backoff: 1s}
    timeout: 5m
  - id: after
    kind: set
    values: {said: "${{ steps.work.outputs.stdout }}"}
"""

ARTIFACT = """
name: artifact
steps:
  - id: make
    kind: shell
    run: |
      printf 'hello resource\\n' > "$SIGNOFF_ARTIFACTS/note.txt"
      echo made
    timeout: 1m
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("daemon-api")
    flows = {"gate": GATE, "needs-input": NEEDS_INPUT, "pager": PAGER, "sleeper": SLEEPER, "artifact": ARTIFACT,
             "napper": NAPPER, "resumable": RESUMABLE}
    with DaemonProcess(root, flows=flows, copy=["hello"]) as process:
        yield process


def assert_error(response: httpx.Response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert isinstance(error.get("code"), str) and error["code"], body
    assert isinstance(error.get("message"), str) and error["message"], body
    if code is not None:
        assert error["code"] == code, body
    return error


# ---- health and authentication ----------------------------------------------------


def test_health_answers_without_a_token(daemon: DaemonProcess) -> None:
    response = daemon.api(None).get("/api/v1/health")
    assert response.status_code == 200
    body = response.json()
    assert body["ok"] is True
    assert body["stopping"] is False
    assert body["repo"]["error"] is None
    assert body["public_url"] == daemon.public_url


@pytest.mark.parametrize("route", ["/api/v1/flows", "/api/v1/runs", "/api/v1/pending"])
def test_missing_or_wrong_token_is_401(daemon: DaemonProcess, route: str) -> None:
    error = assert_error(daemon.api(None).get(route), 401, "unauthorized")
    assert "token" in error["message"]
    wrong = httpx.get(daemon.url + route, headers={"Authorization": "Bearer not-a-real-token"}, timeout=10)
    assert_error(wrong, 401, "unauthorized")
    basic = httpx.get(daemon.url + route, headers={"Authorization": f"Basic {daemon.tokens['alice']}"}, timeout=10)
    assert_error(basic, 401, "unauthorized")
    assert daemon.api("alice").get(route).status_code == 200


def test_starting_a_run_without_a_token_is_401_and_starts_nothing(daemon: DaemonProcess) -> None:
    before = daemon.api("alice").get("/api/v1/runs", params={"flow": "hello", "limit": 1000}).json()["runs"]
    assert_error(daemon.api(None).post("/api/v1/flows/hello/runs", json={"inputs": {}}), 401)
    after = daemon.api("alice").get("/api/v1/runs", params={"flow": "hello", "limit": 1000}).json()["runs"]
    assert len(after) == len(before)


# ---- flows and runs -----------------------------------------------------------------


def test_flows_lists_the_repository_flows(daemon: DaemonProcess) -> None:
    response = daemon.api("bob").get("/api/v1/flows")
    assert response.status_code == 200
    body = response.json()
    assert body["tagged"] is False  # no release tags yet: the working tree's flows, run as drafts
    flows = {f["flow"]: f for f in body["flows"]}
    assert {"gate", "needs-input", "pager", "sleeper", "hello", "artifact"} <= set(flows)
    assert all(f["live"] is None for f in flows.values())
    assert all(f["working_tree"]["ok"] for f in flows.values()), flows
    assert flows["needs-input"]["working_tree"]["inputs"]["order_id"]["required"] is True
    assert flows["gate"]["working_tree"]["description"] == "one approval, then a set step"
    assert flows["gate"]["working_tree"]["file"] == "gate.yaml"


def test_start_run_is_201_and_the_run_succeeds(daemon: DaemonProcess) -> None:
    response = daemon.api("alice").post("/api/v1/flows/needs-input/runs",
                                        json={"inputs": {"order_id": "A-1001", "amount": 12.5}})
    assert response.status_code == 201, response.text
    run = response.json()
    assert response.headers["location"] == f"/api/v1/runs/{run['id']}"
    assert run["flow"] == "needs-input"
    assert run["started_by"] == "alice"
    assert run["inputs"] == {"order_id": "A-1001", "amount": 12.5}
    assert run["commit"] == git(daemon.repo, "rev-parse", "HEAD")
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    assert final["steps"]["echo"]["outputs"] == {"order": "A-1001", "amount": 12.5}


def test_start_run_with_a_missing_required_input_is_422(daemon: DaemonProcess) -> None:
    error = assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs", json={"inputs": {}}), 422)
    assert "order_id" in error["message"]
    error = assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs",
                                                  json={"inputs": {"order_id": "x", "bogus": 1}}), 422)
    assert "bogus" in error["message"]
    assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs",
                                          json={"inputs": {"order_id": "x", "amount": "lots"}}), 422)
    assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs", json={"inputs": ["x"]}), 422)


def test_start_run_at_a_ref_is_a_draft_pinned_to_its_commit(daemon: DaemonProcess) -> None:
    head = git(daemon.repo, "rev-parse", "HEAD")
    run = daemon.start_run("pager", {"n": 3}, ref="main")
    assert run["draft"] is True
    assert run["ref"] == "refs/heads/main"
    assert run["commit"] == head
    assert daemon.wait_end(run["id"])["status"] == "succeeded"
    error = assert_error(daemon.api("alice").post("/api/v1/flows/pager/runs", json={"ref": "no-such-branch"}),
                         404, "not_found")
    assert "no-such-branch" in error["message"]


def test_a_run_of_the_working_tree_is_a_draft(daemon: DaemonProcess) -> None:
    run = daemon.start_run("pager", {"n": 4})
    assert run["version"] is None
    assert run["draft"] is True
    assert run["ref"] == "refs/heads/main"


def test_start_run_with_a_ref_that_is_not_a_string_is_422(daemon: DaemonProcess) -> None:
    assert_error(daemon.api("alice").post("/api/v1/flows/pager/runs", json={"ref": 5}), 422)


def test_start_run_of_an_unknown_flow_is_404(daemon: DaemonProcess) -> None:
    error = assert_error(daemon.api("alice").post("/api/v1/flows/no-such-flow/runs", json={}), 404, "not_found")
    assert "no-such-flow" in error["message"]


def test_unknown_route_and_unknown_run_are_404_in_the_error_shape(daemon: DaemonProcess) -> None:
    assert_error(daemon.api("alice").get("/api/v1/nothing-here"), 404)
    assert_error(daemon.api("alice").get("/api/v1/runs/20200101t000000z-00000000"), 404, "not_found")
    assert_error(daemon.api("alice").get("/api/v1/runs/not-a-run-id"), 404, "not_found")
    assert_error(daemon.api("alice").get("/api/v1/runs/..%2F..%2Fetc/events"), 404)


def test_a_malformed_body_is_422(daemon: DaemonProcess) -> None:
    response = daemon.api("alice").post("/api/v1/flows/hello/runs", content=b"{not json",
                                        headers={"Content-Type": "application/json"})
    assert_error(response, 422)
    response = daemon.api("alice").post("/api/v1/flows/hello/runs", json=[1, 2, 3])
    assert_error(response, 422)


def test_list_runs_filters_by_flow_and_status(daemon: DaemonProcess) -> None:
    client = daemon.api("alice")
    waiting = daemon.start_run("gate")["id"]
    done = daemon.start_run("pager", {"n": 1})["id"]
    daemon.wait_status(waiting, "waiting")
    daemon.wait_status(done, "succeeded")

    gates = client.get("/api/v1/runs", params={"flow": "gate"}).json()["runs"]
    assert waiting in [r["id"] for r in gates]
    assert {r["flow"] for r in gates} == {"gate"}

    waiting_runs = client.get("/api/v1/runs", params={"status": "waiting"}).json()["runs"]
    assert waiting in [r["id"] for r in waiting_runs]
    assert {r["status"] for r in waiting_runs} == {"waiting"}
    assert done not in [r["id"] for r in waiting_runs]

    both = client.get("/api/v1/runs", params={"flow": "pager", "status": "succeeded"}).json()["runs"]
    assert done in [r["id"] for r in both]
    assert all(r["flow"] == "pager" and r["status"] == "succeeded" for r in both)
    finished_gates = client.get("/api/v1/runs", params={"flow": "gate", "status": "succeeded"}).json()["runs"]
    assert waiting not in [r["id"] for r in finished_gates]
    assert_error(client.get("/api/v1/runs", params={"limit": "many"}), 422)


def test_list_runs_pages_with_limit_and_before(daemon: DaemonProcess) -> None:
    client = daemon.api("alice")
    started = [daemon.start_run("pager", {"n": n})["id"] for n in range(5)]
    for run_id in started:
        daemon.wait_status(run_id, "succeeded")
    everything = client.get("/api/v1/runs", params={"flow": "pager", "limit": 1000}).json()
    assert everything["next"] is None
    all_ids = [r["id"] for r in everything["runs"]]
    assert set(started) <= set(all_ids)
    assert all_ids == sorted(all_ids, reverse=True), "runs are listed newest first"

    seen: list[str] = []
    params = {"flow": "pager", "limit": 2}
    pages = 0
    while True:
        page = client.get("/api/v1/runs", params=params).json()
        pages += 1
        assert len(page["runs"]) <= 2
        seen.extend(r["id"] for r in page["runs"])
        if page["next"] is None:
            break
        assert page["next"] == page["runs"][-1]["id"]
        params = {"flow": "pager", "limit": 2, "before": page["next"]}
        assert pages < 100
    assert seen == all_ids, "paging returns every run exactly once, in order"
    assert pages == (len(all_ids) + 1) // 2, "no empty last page"


def test_get_run_shows_steps(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("hello", user="bob")["id"]
    final = daemon.wait_end(run_id)
    assert final["id"] == run_id
    assert final["status"] == "succeeded"
    assert final["started_by"] == "bob"
    assert set(final["steps"]) and all(s["status"] in ("succeeded", "skipped") for s in final["steps"].values())
    assert final["finished_at"] and final["created_at"] <= final["finished_at"]


# ---- events ---------------------------------------------------------------------


def test_events_are_the_run_history_in_order(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("needs-input", {"order_id": "B-7"})["id"]
    daemon.wait_end(run_id)
    events = daemon.events(run_id)
    types = event_types(events)
    assert types[0] == "run_created" and types[-1] == "run_finished"
    assert types.index("run_started") < types.index("step_started") < types.index("step_finished")
    assert [e["seq"] for e in events] == list(range(len(events)))
    later = daemon.api("alice").get(f"/api/v1/runs/{run_id}/events", params={"after": 1}).json()
    assert [e["seq"] for e in later["events"]] == list(range(2, len(events)))
    assert later["next"] == events[-1]["seq"]
    assert_error(daemon.api("alice").get(f"/api/v1/runs/{run_id}/events", params={"after": "x"}), 422)


def test_events_long_poll_returns_when_an_event_arrives(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("napper")["id"]
    daemon.wait_status(run_id, "waiting")
    last = daemon.events(run_id)[-1]["seq"]

    # the wait step's 2 s timer fires while this request is held; the read deadline (15 s) is
    # well under the requested wait (30 s), so only a poll that returns on the event passes
    with daemon.new_client("alice") as client:
        response = client.get(f"/api/v1/runs/{run_id}/events", params={"after": last, "wait": 30},
                              timeout=httpx.Timeout(15.0))
    assert response.status_code == 200
    page = response.json()
    assert page["events"] and page["events"][0]["seq"] == last + 1
    assert page["next"] == page["events"][-1]["seq"]
    assert any(e["type"] == "step_finished" and e["step"] == "nap" for e in page["events"])


def test_events_long_poll_with_nothing_new_comes_back_empty(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("gate")["id"]
    daemon.wait_status(run_id, "waiting")
    last = daemon.events(run_id)[-1]["seq"]
    idle = daemon.api("alice").get(f"/api/v1/runs/{run_id}/events", params={"after": last, "wait": 0.3}).json()
    assert idle == {"events": [], "next": last}
    assert daemon.run(run_id)["status"] == "waiting"


# ---- limits -----------------------------------------------------------------------


def test_a_body_over_one_mib_is_413(daemon: DaemonProcess) -> None:
    big = b'{"inputs": {"order_id": "' + b"x" * (1024 * 1024 + 10) + b'"}}'
    error = assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs", content=big,
                                                  headers={"Content-Type": "application/json"}), 413, "too_large")
    assert "limit" in error["message"]

    def chunks():  # no Content-Length: the cap must hold while streaming too
        yield b'{"inputs": {"order_id": "'
        for _ in range(20):
            yield b"y" * 65536
        yield b'"}}'

    assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs", content=chunks(),
                                          headers={"Content-Type": "application/json"}), 413, "too_large")
    runs = daemon.api("alice").get("/api/v1/runs", params={"flow": "needs-input", "limit": 1000}).json()["runs"]
    assert all(len(r["inputs"].get("order_id", "")) < 1000 for r in runs)


def test_json_nested_ten_thousand_deep_is_422_not_500(daemon: DaemonProcess) -> None:
    deep = b'{"inputs": {"order_id": "x", "amount": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}"
    assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs", content=deep,
                                          headers={"Content-Type": "application/json"}), 422)
    deep_objects = b'{"a":' * 10_000 + b"1" + b"}" * 10_000
    assert_error(daemon.api("alice").post("/api/v1/flows/needs-input/runs", content=deep_objects,
                                          headers={"Content-Type": "application/json"}), 422)
    assert daemon.api(None).get("/api/v1/health").status_code == 200


# ---- metrics and resources ----------------------------------------------------------


def test_metrics_count_started_runs(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("hello")["id"]
    daemon.wait_end(run_id)
    response = daemon.api(None).get("/metrics")
    assert response.status_code == 200
    text = response.text
    lines = [line for line in text.splitlines() if line.startswith("signoff_runs_started") and 'flow="hello"' in line]
    assert lines, text
    assert float(lines[0].rsplit(" ", 1)[1]) >= 1


def test_resources_are_served_to_authenticated_users_only(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("artifact")["id"]
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded", final
    ref = final["steps"]["make"]["outputs"]["artifacts"]["note.txt"]
    assert ref.startswith("res://")
    sha = ref[len("res://"):]
    assert sha == hashlib.sha256(b"hello resource\n").hexdigest()

    response = daemon.api("alice").get(f"/api/v1/resources/{sha}")  # alice started the run
    assert response.status_code == 200
    assert response.content == b"hello resource\n"

    assert_error(daemon.api(None).get(f"/api/v1/resources/{sha}"), 401)
    assert_error(httpx.get(f"{daemon.url}/api/v1/resources/{sha}", headers={"Authorization": "Bearer nope"},
                           timeout=10), 401)
    assert_error(daemon.api("carol").get(f"/api/v1/resources/{'0' * 64}"), 404)
    assert_error(daemon.api("carol").get("/api/v1/resources/..%2F..%2Fsignoff.yaml"), 404)
    assert_error(daemon.api("carol").get(f"/api/v1/resources/{sha}.json"), 404)


# ---- cancel -----------------------------------------------------------------------


def test_cancel_a_waiting_run(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("gate", user="alice")["id"]
    daemon.wait_status(run_id, "waiting")

    assert_error(daemon.api("bob").post(f"/api/v1/runs/{run_id}/cancel"), 403, "forbidden")
    assert daemon.run(run_id)["status"] == "waiting"

    response = daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "cancelled"
    final = daemon.run(run_id)
    assert final["status"] == "cancelled"
    assert final["steps"]["review"]["status"] == "cancelled"
    assert final["steps"]["after"]["status"] == "pending"
    events = daemon.events(run_id)
    finished = [e for e in events if e["type"] == "run_finished"]
    assert len(finished) == 1 and finished[0]["status"] == "cancelled"
    assert "alice" in finished[0]["error"]

    assert_error(daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel"), 409)
    assert_error(daemon.decide(run_id, "review", "bob"), 409)


def test_cancel_a_running_shell_step_kills_its_process_group(daemon: DaemonProcess, tmp_path: Path) -> None:
    pidfile = tmp_path / "sleep.pid"
    run_id = daemon.start_run("sleeper", {"pidfile": str(pidfile)})["id"]
    wait_until(lambda: pidfile.is_file() and pidfile.read_text().strip(), 20, message="the sleep's pid file")
    pid = int(pidfile.read_text())
    assert pid_alive(pid)
    assert daemon.run(run_id)["status"] == "running"

    response = daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id, timeout=15)
    assert final["status"] == "cancelled"
    assert final["steps"]["nap"]["status"] == "cancelled"
    assert final["steps"]["never"]["status"] == "pending"
    wait_until(lambda: not pid_alive(pid), 10, message=f"sleep (pid {pid}) to be gone")
    assert "run_finished" in event_types(daemon.events(run_id))


# ---- shutdown ---------------------------------------------------------------------


def test_sigterm_during_a_shell_step_leaves_the_run_resumable(daemon: DaemonProcess, tmp_path: Path) -> None:
    run_id = daemon.start_run("resumable", {"dir": str(tmp_path)})["id"]
    pidfile = tmp_path / "first-attempt.pid"
    wait_until(lambda: pidfile.is_file() and pidfile.read_text().strip(), 20, message="the first attempt's pid")
    pid = int(pidfile.read_text())

    daemon.stop()  # SIGTERM: the daemon stops the step, and neither fails nor cancels the run
    wait_until(lambda: not pid_alive(pid), 10, message=f"the step's sleep (pid {pid}) to be gone")
    on_disk = daemon.run_json(run_id)
    assert on_disk["status"] not in ("cancelled", "failed", "succeeded"), on_disk["status"]

    daemon.start()
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded", final.get("error")
    assert final["steps"]["work"]["attempts"] == 2
    assert final["steps"]["after"]["outputs"] == {"said": "second attempt\n"}
    types = event_types(daemon.events(run_id), "work")
    assert "step_interrupted" in types
    assert types.count("step_finished") == 1
