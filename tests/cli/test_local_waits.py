"""`signoff run --local` for flows that wait: the real CLI, on a pseudo-terminal (pexpect) or without one.

On a terminal the approval is asked for as the local user (`$USER`, here "ada"), with its
context and links shown; the self-approval rule holds, and a step that allows it still
needs `--allow-self-approval`. Without a terminal the decision route on the printed
loopback port decides, with the token printed when the approval began to wait. A
callback posted to the printed URL by a background "remote worker" ends the wait;
the callback route answers as the daemon's does (202/200/409/404/413/422). ^C while
waiting cancels the run cleanly; timers keep firing. The three example flows complete
on one machine with no daemon.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pexpect
import pytest

import sshd_support
from runner.runs.files import FileStore
from support import (ALL_PROJECT_FLOWS, cli_env, make_repo, run_schema_errors, signoff_cmd, wait_until,
                     write_config)

PERSON = "ada"
FLOWS = {
    "ask": """
        name: ask
        inputs:
          what: {type: string, default: the plan}
        steps:
          - id: prep
            kind: shell
            run: echo prepared ${{ inputs.what }}
          - id: review
            kind: approval
            approvers: [group:ops]
            allow_self_approval: true
            context: "Please check: ${{ steps.prep.outputs.stdout }}"
            links:
              - {title: the plan, url: "https://plans.example/${{ run.id }}"}
            inputs:
              ticket: {type: integer, required: true}
            timeout: 1h
            on_timeout: fail
          - id: after
            kind: set
            values:
              by: "${{ steps.review.outputs.decided_by }}"
              ticket: "${{ steps.review.outputs.inputs.ticket }}"
        """,
    # the shell step hands the callback URL to a background poster: the remote worker of the pattern
    "relay": """
        name: relay
        steps:
          - id: start
            kind: shell
            run: |
              python3 - ${{ callbacks.done.url }} > /dev/null 2>&1 <<'EOF' &
              import sys, urllib.request
              body, headers = b'{"ok": true, "from": "worker"}', {"Content-Type": "application/json"}
              urllib.request.urlopen(urllib.request.Request(sys.argv[1], body, headers), timeout=20).close()
              EOF
          - id: done
            kind: callback
            schema: {type: object, required: [ok]}
            timeout: 1m
            on_timeout: fail
          - id: hold
            kind: approval
            approvers: [group:ops]
            allow_self_approval: true
            timeout: 1h
            on_timeout: fail
          - id: later
            kind: callback
            max_bytes: 200
            schema:
              type: object
              required: [n]
              properties: {n: {type: integer}}
            timeout: 1m
            on_timeout: fail
          - id: use
            kind: set
            values:
              from: "${{ steps.done.outputs.payload.from }}"
              n: "${{ steps.later.outputs.payload.n }}"
        """,
    "timers": """
        name: timers
        steps:
          - id: nap
            kind: wait
            duration: 300ms
          - id: review
            kind: approval
            approvers: [group:ops]
            timeout: 1s
            on_timeout: reject
        """,
}


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("local-waits") / "repo", FLOWS, copy=ALL_PROJECT_FLOWS)


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return cli_env(tmp_path / "data", USER=PERSON, LOGNAME=PERSON)


def spawn(repo: Path, env: dict[str, str], *args: str) -> pexpect.spawn:
    """`signoff run ARGS --local` on a pseudo-terminal; ^C has its default action in the child (as in
    test_cli_output: a background job's children inherit an ignored SIGINT)."""
    return pexpect.spawn(sys.executable, ["-m", "runner", "run", *args, "--local"], cwd=str(repo), env=env,
                         encoding="utf-8", timeout=30, dimensions=(60, 300),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def created(child: pexpect.spawn) -> str:
    child.expect(r"run (\S+) of \S+ created")
    return child.match.group(1)


def ended(child: pexpect.spawn) -> int:
    child.expect(pexpect.EOF)
    child.close()
    assert "Traceback" not in child.before
    return child.exitstatus


def record_of(env: dict[str, str], run_id: str) -> dict:
    record = json.loads((Path(env["SIGNOFF_DATA"]) / "runs" / run_id / "run.json").read_text())
    assert run_schema_errors(record) == []
    return record


def verified(env: dict[str, str], run_id: str) -> None:
    """The run's event chain holds (as `runs verify` checks it), and its callback journal went with it."""
    data = Path(env["SIGNOFF_DATA"])
    result = FileStore(data).verify(run_id)
    assert result.ok, result.to_dict()
    assert not list((data / "local").iterdir()), "the run's callback journal outlived it"


class Background:
    """`signoff run ARGS --local` with no terminal (stdin /dev/null), its stdout and stderr in files."""

    def __init__(self, repo: Path, env: dict[str, str], tmp_path: Path, *args: str) -> None:
        self.out, self.err = tmp_path / "run.out", tmp_path / "run.err"
        with open(self.out, "wb") as stdout, open(self.err, "wb") as stderr:
            self.proc = subprocess.Popen(signoff_cmd("run", *args, "--local", "--json"), cwd=repo, env=env,
                                         stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr,
                                         start_new_session=True)

    def stderr_match(self, pattern: str, what: str) -> re.Match:
        return wait_until(lambda: re.search(pattern, self.err.read_text()), timeout=30, what=what,
                          message=lambda: f"{what}; stderr so far:\n{self.err.read_text()}")

    def finish(self) -> tuple[int, dict]:
        code = self.proc.wait(timeout=30)
        text = self.err.read_text()
        assert "Traceback" not in text, text
        return code, json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


# ---- on a terminal ---------------------------------------------------------------------------


def test_approve_on_the_terminal_shows_the_context_and_links_and_takes_reviewer_inputs(repo, env):
    child = spawn(repo, env, "ask", "-i", "what=the new index", "--allow-self-approval")
    run_id = created(child)
    child.expect(r"Please check: prepared the new index")
    child.expect(rf"link: the plan: https://plans.example/{run_id}")
    child.expect(r"reviewer input ticket: integer, required to approve")
    child.expect(r"decide: \[a\]pprove, \[r\]eject\? ")
    child.sendline("a")
    child.expect(r"comment \(enter for none\): ")
    child.sendline("looks right")
    child.expect(r"ticket \(integer, required\): ")
    child.sendline("not-a-number")
    child.expect(r"not recorded: reviewer inputs are not valid")  # the step's own check, as the route's 422
    child.expect(r"decide: ")
    child.sendline("approve")
    child.expect(r"comment \(enter for none\): ")
    child.sendline("looks right")
    child.expect(r"ticket \(integer, required\): ")
    child.sendline("4711")
    child.expect(rf"approved 'review' as {PERSON}")
    assert ended(child) == 0
    record = record_of(env, run_id)
    assert record["status"] == "succeeded"
    review = record["steps"]["review"]
    assert (review["decision"], review["decided_by"], review["comment"]) == ("approve", PERSON, "looks right")
    assert record["steps"]["after"]["outputs"] == {"by": PERSON, "ticket": 4711}
    verified(env, run_id)


def test_self_approval_is_refused_without_the_flag_and_the_route_says_the_same(repo, env):
    child = spawn(repo, env, "ask")
    run_id = created(child)
    child.expect(r"SIGNOFF_SERVER=(http://127\.0\.0\.1:\d+) SIGNOFF_TOKEN=(\S+) signoff approve")
    url, token = child.match.group(1), child.match.group(2)
    child.expect(rf"you cannot approve here: {PERSON} started this run; step 'review' allows self-approval, but "
                 r"a local run approves its own run only when started with --allow-self-approval")
    child.expect(r"decide: \[r\]eject\? ")
    child.sendline("a")
    child.expect(r"answer one of: \[r\]eject")
    with httpx.Client(base_url=url, headers={"Authorization": f"Bearer {token}"}) as http:
        refused = http.post(f"/api/v1/runs/{run_id}/steps/review/decision",
                            json={"decision": "approve", "inputs": {"ticket": 1}})
        assert refused.status_code == 403, refused.text
        assert "--allow-self-approval" in refused.json()["error"]["message"]
    child.expect(r"decide: ")
    child.sendline("r")
    child.expect(r"comment \(enter for none\): ")
    child.sendline("not my own")
    assert ended(child) == 1
    record = record_of(env, run_id)
    assert record["status"] == "rejected"
    assert record["steps"]["review"]["comment"] == "not my own"
    verified(env, run_id)


def test_ctrl_c_while_waiting_cancels_the_run_cleanly(repo, env):
    child = spawn(repo, env, "ask")
    run_id = created(child)
    child.expect(r"decide: ")
    child.sendintr()
    assert ended(child) == 1
    record = record_of(env, run_id)
    assert record["status"] == "cancelled" and "SIGINT" in record["error"]
    assert record["steps"]["review"]["status"] == "cancelled"
    assert record["steps"]["after"]["status"] == "pending"
    verified(env, run_id)


# ---- without a terminal: the routes ----------------------------------------------------------------


def test_without_a_terminal_the_decision_route_decides_with_the_printed_token(repo, env, tmp_path):
    run = Background(repo, env, tmp_path, "ask", "--allow-self-approval")
    try:
        found = run.stderr_match(r"SIGNOFF_SERVER=(\S+) SIGNOFF_TOKEN=(\S+) signoff approve (\S+) review",
                                 "the decision route's token")
        url, token, run_id = found.groups()
        assert "Please check: prepared the plan" in run.err.read_text()  # the context, for whoever reads stderr
        route = f"/api/v1/runs/{run_id}/steps/review/decision"
        body = {"decision": "approve", "comment": "via the route", "inputs": {"ticket": "12"}}
        with httpx.Client(base_url=url) as http:
            assert http.post(route, json=body).status_code == 401
            assert http.post(route, json=body, headers={"Authorization": "Bearer " + token[:-1]}).status_code == 401
            bearer = {"Authorization": f"Bearer {token}"}
            assert http.post(f"/api/v1/runs/{run_id}x/steps/review/decision", json=body,
                             headers=bearer).status_code == 404
            assert http.post(f"/api/v1/runs/{run_id}/steps/nope/decision", json=body,
                             headers=bearer).status_code == 404
            assert http.post(f"/api/v1/runs/{run_id}/steps/prep/decision", json=body,
                             headers=bearer).status_code == 409  # it does not wait
            bad = http.post(route, json={**body, "decision": "maybe"}, headers=bearer)
            assert bad.status_code == 422, bad.text
            answer = http.post(route, json=body, headers=bearer)
            assert answer.status_code == 200, answer.text
            assert answer.json()["final"] is True and answer.json()["decision"]["by"] == PERSON
        code, record = run.finish()
    finally:
        run.kill()
    assert code == 0
    assert record["status"] == "succeeded"
    assert record["steps"]["after"]["outputs"] == {"by": PERSON, "ticket": 12}
    verified(env, run_id)


def test_a_remote_worker_posts_to_the_printed_callback_url_and_the_route_answers_as_the_daemons(repo, env, tmp_path):
    run = Background(repo, env, tmp_path, "relay", "--allow-self-approval")
    try:
        urls = dict(re.findall(r"callback (\w+): (\S+)", run.stderr_match(r"callback later: \S+", "the URLs").string))
        found = run.stderr_match(r"SIGNOFF_SERVER=(\S+) SIGNOFF_TOKEN=(\S+) signoff approve (\S+) hold",
                                 "the run waiting at hold, after the worker's callback")
        url, token, run_id = found.groups()
        assert urls["done"].startswith(f"{url}/callbacks/")
        with httpx.Client(base_url=url, headers={"Content-Type": "application/json"}) as http:
            replay = http.post(urls["done"], content=b'{"ok": true, "from": "worker"}')
            assert replay.status_code == 200 and replay.json()["replay"] is True, replay.text
            assert http.post(urls["done"], content=b'{"ok": false}').status_code == 409
            assert http.post(f"{url}/callbacks/no-such-token", content=b"{}").status_code == 404
            assert http.post(urls["later"], content=json.dumps({"n": 1, "pad": "x" * 300})).status_code == 413
            invalid = http.post(urls["later"], content=b'{"n": "seven"}')
            assert invalid.status_code == 422 and invalid.json()["error"]["reasons"], invalid.text
            early = http.post(urls["later"], content=b'{"n": 7}')  # before the run gets there: kept for it
            assert early.status_code == 202, early.text
            decided = http.post(f"/api/v1/runs/{run_id}/steps/hold/decision", json={"decision": "approve"},
                                headers={"Authorization": f"Bearer {token}"})
            assert decided.status_code == 200, decided.text
        code, record = run.finish()
    finally:
        run.kill()
    assert code == 0, record
    assert record["steps"]["done"]["outputs"]["payload"] == {"ok": True, "from": "worker"}
    assert record["steps"]["use"]["outputs"] == {"from": "worker", "n": 7}
    verified(env, run_id)


def test_timers_keep_firing_while_a_local_run_waits(repo, env, tmp_path):
    run = Background(repo, env, tmp_path, "timers")
    try:
        code, record = run.finish()
    finally:
        run.kill()
    assert code == 1
    assert record["steps"]["nap"]["status"] == "succeeded"
    assert record["steps"]["review"]["status"] == "timed_out"
    assert record["status"] == "rejected"  # on_timeout: reject; a timeout never approves


# ---- the example flows, on one machine with no daemon ---------------------------------------------


def test_review_before_action_rejected_on_the_terminal_posts_its_note(repo, env, tmp_path):
    config = write_config(tmp_path, {"channels": {"audit": {"kind": "log"}}})
    child = spawn(repo, env, "review-before-action", "-i", "setting=workers = 8", "--config", str(config))
    run_id = created(child)
    child.expect(r"\+workers = 8")
    child.expect(rf"you cannot approve here: {PERSON} started this run and may not approve it")
    child.expect(r"decide: \[r\]eject\? ")
    child.sendline("r")
    child.expect(r"comment \(enter for none\): ")
    child.sendline("")
    child.expect(r"not recorded: a comment is required to reject step 'review'")
    child.expect(r"decide: ")
    child.sendline("r")
    child.expect(r"comment \(enter for none\): ")
    child.sendline("wrong file")
    assert ended(child) == 1
    record = record_of(env, run_id)
    assert record["status"] == "rejected" and "wrong file" in record["error"]
    assert record["steps"]["apply"]["status"] == "skipped"
    assert record["steps"]["note-rejection"]["status"] == "succeeded"
    verified(env, run_id)


def test_content_draft_to_publish_sent_back_on_the_terminal_reruns_the_draft(repo, env):
    child = spawn(repo, env, "content-draft-to-publish", "-i", "topic=signoff 1.0")
    run_id = created(child)
    child.expect(r"link: the draft: res://[0-9a-f]{64}")
    child.expect(r"decide: \[r\]eject, request \[c\]hanges \(back to draft\)\? ")
    child.sendline("c")
    child.expect(r"comment \(enter for none\): ")
    child.sendline("mention the docs")
    child.expect(r"▶ draft \(attempt|▶ draft")  # the draft step again, with the feedback
    child.expect(r"decide: ")
    child.sendline("r")
    child.expect(r"comment \(enter for none\): ")
    child.sendline("not this week")
    assert ended(child) == 1
    record = record_of(env, run_id)
    assert record["status"] == "rejected"
    draft = record["steps"]["draft"]["outputs"]["artifacts"]["announcement.md"]
    text = (Path(env["SIGNOFF_DATA"]) / "resources" / draft[len("res://"):]).read_text()
    assert "(revised after review: mention the docs)" in text
    assert record["steps"]["feedback"]["status"] == "succeeded"
    assert record["steps"]["publish"]["status"] == "skipped"
    verified(env, run_id)


@pytest.mark.skipif(not sshd_support.available(), reason="OpenSSH server not installed")
def test_remote_worker_callback_posts_to_the_local_run_over_ssh(repo, env, tmp_path):
    with sshd_support.Sshd(tmp_path / "sshd") as sshd:
        config = write_config(tmp_path, {"connections": {"build-vm": sshd.connection()},
                                         "channels": {"ops-chat": {"kind": "log"}}})
        run = Background(repo, env, tmp_path, "remote-worker-callback", "-i", "work_seconds=0",
                         "--config", str(config))
        try:
            code, record = run.finish()
        finally:
            run.kill()
    assert code == 0, record
    payload = record["steps"]["done"]["outputs"]["payload"]
    assert payload["ok"] is True and payload["summary"] == "summarize the host: done"
    assert f"run: {record['id']}" in payload["report"]
    assert record["steps"]["results"]["outputs"]["artifacts"]["report.md"].startswith("res://")
    assert record["steps"]["tell-ops"]["outputs"]["delivered"] is True
    verified(env, record["id"])


def test_the_self_approval_flag_is_refused_for_a_daemon_run(repo, env):
    done = subprocess.run(signoff_cmd("run", "ask", "--allow-self-approval"), cwd=repo, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "--allow-self-approval is for --local runs" in done.stderr
