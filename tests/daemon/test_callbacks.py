"""Callback steps and durable timers (DESIGN §2, §4, §9; issue 3 items 5 and 6) through the real daemon.

One daemon serves the module; the restart tests stop, kill -9 and start it
again on the same data directory (an autouse fixture makes sure it is up for
every test). Its public_url is http://localhost:<port>, so a callback URL built
from public_url is told apart from the address the tests listen on.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import threading
from datetime import datetime, timezone

import httpx
import pytest

from daemon_support import DaemonProcess, event_types
from support import wait_until
from postgres_support import files_only

pytestmark = pytest.mark.usefixtures("running")  # a daemon left down by a failed test is started again

NOT_FOUND = {"error": {"code": "not_found", "message": "no such callback"}}

FLOWS_HERE = {
    "worker": """
        name: worker
        steps:
          - id: hand
            kind: set
            values: {url: "${{ callbacks.done.url }}"}
          - id: done
            kind: callback
            schema:
              type: object
              required: [ok]
              properties:
                ok: {type: boolean}
                n: {type: integer}
            timeout: 1h
            on_timeout: fail
          - id: report
            kind: set
            values: {ok: "${{ steps.done.outputs.payload.ok }}"}
        """,
    "early": """
        name: early
        steps:
          - id: first
            kind: wait
            duration: 2s
          - id: done
            kind: callback
            timeout: 1h
            on_timeout: fail
          - id: report
            kind: set
            values: {got: "${{ steps.done.outputs.payload.value }}"}
        """,
    "small": """
        name: small
        steps:
          - id: done
            kind: callback
            max_bytes: 100
            timeout: 1h
            on_timeout: fail
        """,
    "big": """
        name: big
        steps:
          - id: done
            kind: callback
            max_bytes: 1000000
            timeout: 1h
            on_timeout: fail
        """,
    "late": """
        name: late
        steps:
          - id: done
            kind: callback
            timeout: 1s
            on_timeout: fail
        """,
    "busy": """
        name: busy
        steps:
          - id: work
            kind: shell
            run: sleep 30
            timeout: 5m
          - id: done
            kind: callback
            timeout: 1h
            on_timeout: fail
        """,
    "nap": """
        name: nap
        steps:
          - id: nap
            kind: wait
            duration: 2s
          - id: after
            kind: set
            values: {woke: "${{ steps.nap.outputs.woke_at }}"}
        """,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("callbacks")
    with DaemonProcess(root, flows=FLOWS_HERE, copy=["wait-for-worker"],
                       public_url="http://localhost:{port}") as process:
        yield process


def waiting_run(daemon: DaemonProcess, flow: str, inputs: dict | None = None) -> dict:
    run = daemon.start_run(flow, inputs)
    return daemon.wait_step(run["id"], "done", "waiting")


# ---- the URL and the happy path ---------------------------------------------------------


def test_the_url_exists_from_run_start_and_a_worker_completes_the_run(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    token = run["callbacks"]["done"]
    assert len(token) >= 43, "256 random bits, URL-safe"
    url = run["steps"]["hand"]["outputs"]["url"]
    assert url == f"http://localhost:{daemon.port}/callbacks/{token}", "built from public_url"

    body = json.dumps({"ok": True, "n": 3}).encode()
    response = daemon.post_callback(url, body)  # through localhost, as the worker would
    assert response.status_code == 202, response.text
    answer = response.json()
    assert answer["accepted"] is True and answer["replay"] is False
    assert answer["run"] == run["id"] and answer["step"] == "done"
    assert answer["sha256"] == hashlib.sha256(body).hexdigest()

    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    assert final["steps"]["done"]["outputs"]["payload"] == {"ok": True, "n": 3}
    assert final["steps"]["done"]["payload"] == {"ok": True, "n": 3}
    assert final["steps"]["report"]["outputs"] == {"ok": True}
    received = [e for e in daemon.events(run["id"]) if e["type"] == "callback_received"]
    assert len(received) == 1 and received[0]["early"] is False
    daemon.assert_record_valid(run["id"])


def test_the_shipped_wait_for_worker_flow_end_to_end(daemon: DaemonProcess) -> None:
    run = daemon.start_run("wait-for-worker", {"seconds": 1})
    final = daemon.wait_end(run["id"], timeout=30)
    assert final["status"] == "succeeded", final.get("error")
    assert final["steps"]["report"]["outputs"] == {"ok": True, "lines": 42}
    assert final["steps"]["done"]["payload"] == {"ok": True, "lines": 42}


def test_the_cli_posts_a_callback(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    url = daemon.callback_url(run, "done")
    answer = daemon.cli("callback", url, "--data", '{"ok": false}', user=None)
    assert answer.returncode == 0, answer.stderr
    assert json.loads(answer.stdout)["status"] == 202
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    assert final["steps"]["report"]["outputs"] == {"ok": False}


def test_an_early_callback_is_stored_and_consumed_when_the_run_gets_there(daemon: DaemonProcess) -> None:
    run = daemon.start_run("early")
    response = daemon.post_callback(run["callbacks"]["done"], {"value": "before its time"})
    assert response.status_code == 202, response.text
    assert daemon.run(run["id"])["steps"]["done"]["status"] == "pending"

    final = daemon.wait_end(run["id"])
    received = [e for e in daemon.events(run["id"]) if e["type"] == "callback_received"]
    assert len(received) == 1 and received[0]["early"] is True
    assert received[0]["accepted_at"] == response.json()["at"]
    assert final["status"] == "succeeded"
    assert final["steps"]["first"]["status"] == "succeeded"
    assert final["steps"]["done"]["outputs"]["payload"] == {"value": "before its time"}
    assert final["steps"]["report"]["outputs"] == {"got": "before its time"}
    assert "step_waiting" not in event_types(daemon.events(run["id"]), "done"), "nothing left to wait for"
    daemon.assert_record_valid(run["id"])


# ---- replays, conflicts, unknown tokens ---------------------------------------------------


def test_the_identical_callback_again_is_200_and_changes_nothing(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    body = json.dumps({"ok": True, "n": 1}).encode()
    first = daemon.post_callback(run["callbacks"]["done"], body)
    assert first.status_code == 202
    daemon.wait_end(run["id"])
    count = len(daemon.events(run["id"]))
    snapshot = daemon.run(run["id"])

    again = daemon.post_callback(run["callbacks"]["done"], body)
    assert again.status_code == 200, again.text
    assert again.json()["replay"] is True
    assert again.json()["sha256"] == first.json()["sha256"]
    assert again.json()["at"] == snapshot["callbacks_received"]["done"]["at"], "the first acceptance"
    assert len(daemon.events(run["id"])) == count

    different = daemon.post_callback(run["callbacks"]["done"], {"ok": False, "n": 2})
    assert different.status_code == 409, different.text
    assert different.json()["error"]["code"] == "conflict"
    assert len(daemon.events(run["id"])) == count
    after = daemon.run(run["id"])
    assert after["steps"]["done"]["payload"] == {"ok": True, "n": 1}
    assert after["updated_at"] == snapshot["updated_at"]


def test_the_202_answer_says_when_the_callback_was_accepted(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    first = daemon.post_callback(run["callbacks"]["done"], {"ok": True})
    assert first.status_code == 202
    recorded = daemon.wait_end(run["id"])["callbacks_received"]["done"]["at"]
    assert first.json()["at"] == recorded


def test_the_same_callback_sent_ten_times_at_once_is_applied_once(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    body = json.dumps({"ok": True, "n": 10}).encode()

    async def burst() -> list[httpx.Response]:
        async with daemon.new_client(None, asynchronous=True) as client:
            url = f"/callbacks/{run['callbacks']['done']}"
            return list(await asyncio.gather(*(client.post(url, content=body) for _ in range(10))))

    codes = sorted(r.status_code for r in asyncio.run(burst()))
    assert codes == [200] * 9 + [202]
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    assert event_types(daemon.events(run["id"])).count("callback_received") == 1


def test_two_different_callbacks_raced_one_wins(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")

    async def race() -> list[httpx.Response]:
        async with daemon.new_client(None, asynchronous=True) as client:
            url = f"/callbacks/{run['callbacks']['done']}"
            return list(await asyncio.gather(client.post(url, json={"ok": True}), client.post(url, json={"ok": False})))

    answers = asyncio.run(race())
    assert sorted(r.status_code for r in answers) == [202, 409]
    winner = json.loads(next(r for r in answers if r.status_code == 202).request.content)
    final = daemon.wait_end(run["id"])
    assert final["steps"]["done"]["payload"] == winner
    assert event_types(daemon.events(run["id"])).count("callback_received") == 1


def test_an_unknown_token_is_404_and_reveals_nothing(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    token = run["callbacks"]["done"]
    for probe in (secrets.token_urlsafe(32), token[:-1], token[:20], token + "x", token.upper()):
        response = daemon.post_callback(probe, {"ok": True})
        assert response.status_code == 404, probe
        assert response.json() == NOT_FOUND
        assert run["id"] not in response.text and "done" not in response.text
    assert daemon.run(run["id"])["steps"]["done"]["status"] == "waiting"
    assert daemon.post_callback(token, {"ok": True}).status_code == 202


def test_a_callback_after_the_timeout_is_409(daemon: DaemonProcess) -> None:
    run = daemon.start_run("late")
    final = daemon.wait_end(run["id"])
    assert final["status"] == "timed_out"
    assert final["steps"]["done"]["status"] == "timed_out"
    response = daemon.post_callback(run["callbacks"]["done"], {"too": "late"})
    assert response.status_code == 409, response.text
    assert "callback_received" not in event_types(daemon.events(run["id"]))


# ---- bad payloads -------------------------------------------------------------------------


def test_a_body_over_max_bytes_is_413_and_the_step_keeps_waiting(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "small")
    response = daemon.post_callback(run["callbacks"]["done"], {"text": "x" * 200})
    assert response.status_code == 413, response.text
    assert response.json()["error"]["code"] == "too_large"

    def chunks():  # no Content-Length: the cap holds while streaming
        yield b'{"text": "'
        yield b"y" * 300
        yield b'"}'

    streamed = daemon.api(None).post(f"/callbacks/{run['callbacks']['done']}", content=chunks())
    assert streamed.status_code == 413
    assert daemon.run(run["id"])["steps"]["done"]["status"] == "waiting"
    assert daemon.post_callback(run["callbacks"]["done"], {"text": "short"}).status_code == 202
    assert daemon.wait_end(run["id"])["steps"]["done"]["payload"] == {"text": "short"}


def test_a_payload_against_the_schema_is_422_with_reasons_and_the_step_keeps_waiting(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    token = run["callbacks"]["done"]
    wrong_type = daemon.post_callback(token, {"ok": "yes", "n": 1.5})
    assert wrong_type.status_code == 422, wrong_type.text
    error = wrong_type.json()["error"]
    assert error["code"] == "invalid"
    assert any("ok" in reason for reason in error["reasons"]), error
    assert any("n" in reason for reason in error["reasons"]), error

    missing = daemon.post_callback(token, {"n": 1})
    assert missing.status_code == 422
    assert any("ok" in reason for reason in missing.json()["error"]["reasons"])

    assert daemon.post_callback(token, b"this is not json").status_code == 422
    assert daemon.post_callback(token, b"[" * 10_000 + b"]" * 10_000).status_code == 422
    assert daemon.post_callback(token, b'{"a":' * 10_000 + b"1" + b"}" * 10_000).status_code == 422

    run_now = daemon.run(run["id"])
    assert run_now["steps"]["done"]["status"] == "waiting"
    assert "callback_received" not in event_types(daemon.events(run["id"]))

    assert daemon.post_callback(token, {"ok": True}).status_code == 202
    assert daemon.wait_end(run["id"])["status"] == "succeeded"


@files_only
def test_a_large_payload_becomes_a_resource(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "big")
    payload = {"rows": [f"row {i:06d} " + "z" * 90 for i in range(1000)]}
    body = json.dumps(payload).encode()
    assert 64 * 1024 < len(body) < 1_000_000
    response = daemon.post_callback(run["callbacks"]["done"], body)
    assert response.status_code == 202, response.text
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    ref = final["steps"]["done"]["outputs"]["payload"]
    assert ref == f"res://{hashlib.sha256(body).hexdigest()}"
    fetched = daemon.api().get(f"/api/v1/resources/{ref.removeprefix('res://')}")  # alice started the run
    assert fetched.status_code == 200
    assert fetched.content == body
    assert len((daemon.data / "runs" / run["id"] / "run.json").read_bytes()) < 64 * 1024


def test_an_early_callback_during_a_long_shell_step_is_acknowledged_at_once(daemon: DaemonProcess) -> None:
    run = daemon.start_run("busy")
    daemon.wait_step(run["id"], "work", "running")
    try:
        # the deadline (6 s) is far below the shell step's 30 s: only a callback that does not wait for it passes
        response = daemon.post_callback(run["callbacks"]["done"], {"early": True}, timeout=httpx.Timeout(6.0))
        assert response.status_code == 202
    finally:
        daemon.api("alice").post(f"/api/v1/runs/{run['id']}/cancel")
        daemon.wait_end(run["id"])


# ---- restarts -----------------------------------------------------------------------------


def test_the_same_url_works_after_a_graceful_restart(daemon: DaemonProcess) -> None:
    run = waiting_run(daemon, "worker")
    url = run["steps"]["hand"]["outputs"]["url"]
    daemon.restart()
    assert daemon.run(run["id"])["status"] == "waiting"
    response = daemon.post_callback(url, {"ok": True, "n": 7})
    assert response.status_code == 202, response.text
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    assert final["steps"]["report"]["outputs"] == {"ok": True}
    daemon.assert_record_valid(run["id"])


@files_only
def test_kill_9_while_waiting_then_restart_still_completes(daemon: DaemonProcess) -> None:
    runs = [waiting_run(daemon, "worker") for _ in range(3)]
    daemon.restart(hard=True)
    for run in runs:
        assert daemon.run(run["id"])["status"] == "waiting"
        assert daemon.post_callback(run["callbacks"]["done"], {"ok": True}).status_code == 202
    for run in runs:
        final = daemon.wait_end(run["id"])
        assert final["status"] == "succeeded"
        assert event_types(daemon.events(run["id"])).count("callback_received") == 1
        verify = daemon.cli("runs", "verify", run["id"], "--data", str(daemon.data), "--json", user=None)
        assert verify.returncode == 0, verify.stdout + verify.stderr
        assert json.loads(verify.stdout)["ok"] is True


def test_kill_9_while_callbacks_are_posted_loses_no_acknowledged_callback(daemon: DaemonProcess) -> None:
    runs = [waiting_run(daemon, "worker") for _ in range(50)]
    answers: dict[str, int | str] = {}

    def poster() -> None:
        with daemon.new_client(None) as client:
            for run in runs:
                try:
                    answers[run["id"]] = client.post(f"/callbacks/{run['callbacks']['done']}",
                                                     json={"ok": True, "n": len(answers)}).status_code
                except httpx.HTTPError as exc:
                    answers[run["id"]] = type(exc).__name__

    thread = threading.Thread(target=poster)
    thread.start()
    try:
        wait_until(lambda: sum(code == 202 for code in answers.values()) >= 5, 20, message="five acknowledged callbacks")
        daemon.kill()
    finally:
        thread.join(60)
    acknowledged = [run_id for run_id, code in answers.items() if code == 202]
    assert acknowledged

    daemon.start()
    for run in runs:
        if run["id"] in acknowledged:
            continue
        retry = daemon.post_callback(run["callbacks"]["done"], {"ok": True, "n": -1})
        # not acknowledged: either never recorded (202 now) or recorded just before the kill (then a
        # different body is a conflict, and the first one stands)
        assert retry.status_code in (202, 409), retry.text
    for run in runs:
        final = daemon.wait_end(run["id"])
        assert final["status"] == "succeeded", final
        assert event_types(daemon.events(run["id"])).count("callback_received") == 1
        if run["id"] in acknowledged:
            assert final["steps"]["done"]["payload"]["n"] != -1, "an acknowledged callback was lost"


@files_only
def test_a_crash_between_recording_a_callback_and_finishing_the_step_is_recovered(daemon: DaemonProcess) -> None:
    # the exact event the daemon writes first, taken from a run it completed itself
    model = waiting_run(daemon, "worker")
    body = json.dumps({"ok": True, "n": 5}).encode()
    assert daemon.post_callback(model["callbacks"]["done"], body).status_code == 202
    daemon.wait_end(model["id"])
    template = next(e for e in daemon.events(model["id"]) if e["type"] == "callback_received")

    run = waiting_run(daemon, "worker")
    daemon.kill()
    # the state a kill -9 leaves after the daemon's first fsync and before its second one
    log = daemon.data / "runs" / run["id"] / "events.jsonl"
    lines = log.read_bytes().splitlines()
    event = {k: v for k, v in template.items() if k not in ("seq", "prev")}
    event.update(seq=len(lines), prev=hashlib.sha256(lines[-1]).hexdigest())
    with open(log, "ab") as handle:
        handle.write(json.dumps(event, separators=(",", ":"), ensure_ascii=False).encode() + b"\n")
    daemon.start()

    replay = daemon.post_callback(run["callbacks"]["done"], body)
    assert replay.status_code == 200 and replay.json()["replay"] is True
    final = daemon.wait_end(run["id"], timeout=5)
    assert final["status"] == "succeeded"
    assert final["steps"]["done"]["payload"] == {"ok": True, "n": 5}


def test_a_wait_whose_deadline_passes_while_the_daemon_is_down_fires_once_on_restart(daemon: DaemonProcess) -> None:
    run = daemon.start_run("nap")
    waiting = daemon.wait_step(run["id"], "nap", "waiting")
    wake_at = datetime.fromisoformat(waiting["steps"]["nap"]["wake_at"].replace("Z", "+00:00"))
    daemon.stop()
    wait_until(lambda: datetime.now(timezone.utc) > wake_at, 10, message="the wait's deadline to pass")
    assert daemon.run_json(run["id"])["status"] == "waiting", "nothing moved while the daemon was down"

    daemon.start()
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded"
    events = daemon.events(run["id"])
    assert event_types(events, "nap").count("step_started") == 1
    assert event_types(events, "nap").count("step_finished") == 1
    assert final["steps"]["after"]["outputs"]["woke"] == final["steps"]["nap"]["outputs"]["woke_at"]

    daemon.restart()  # and never again
    assert len(daemon.events(run["id"])) == len(events)
    assert daemon.run(run["id"])["status"] == "succeeded"
