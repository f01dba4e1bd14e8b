"""Bad input never breaks a run (issue 10 items 8 to 10), through the real daemon and the real CLI.

Every JSON entry (API bodies, callbacks, webhooks, `-i` and `--inputs-file`)
refuses what strict JSON cannot carry: NaN and Infinity (and `1e400`), lone
surrogates, a byte order mark, UTF-16, too deep nesting. The refusal is a 422
with a reason, nothing of it is recorded, and the run it was aimed at goes on
as if it had never come. Query values and git refs that cannot be used are a
422 or a 404 with a message, never a 500.

One daemon serves the module: a tagged repository (so the webhook trigger is
live) with a push webhook secret and the webhook's named secret.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import httpx
import pytest

from daemon_support import event_types
from gitops_support import GitOpsDaemon, signature
from support import PROJECT_ROOT, approval_step, callback_step, clean_environ, flow_doc, set_step
from postgres_support import files_only

pytestmark = pytest.mark.usefixtures("running")

FLOWS = {
    "numbers": """
        name: numbers
        inputs:
          n: {type: number, default: 1}
          who: {type: string, default: you}
          extra: {type: object, default: {}}
        steps:
          - id: show
            kind: set
            values: {n: "${{ inputs.n }}", who: "${{ inputs.who }}"}
        """,
    "gate": flow_doc("gate", approval_step(inputs={"score": {"type": "number"}})),
    "worker": flow_doc("worker", callback_step(), set_step("report", {"got": "${{ steps.done.outputs.payload }}"})),
    "nanout": """
        name: nanout
        steps:
          - id: emit
            kind: shell
            run: |
              printf '{"x": NaN}'
            output: json
        """,
    "overflow": """
        name: overflow
        steps:
          - id: big
            kind: set
            values: {big: "${{ 1e308 * 10 }}"}
        """,
    "hooked": """
        name: hooked
        inputs:
          order_id: {type: string, required: true}
        triggers:
          - webhook: {secret: hook-secret}
        steps:
          - id: show
            kind: set
            values: {order: "${{ inputs.order_id }}"}
        """,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("bad-input")
    process = GitOpsDaemon(root, flows=FLOWS, hook_secrets=("hook-secret",))
    process.tag("v1.0.0")
    with process:
        process.wait_live("hooked", "v1.0.0")
        yield process


def run_dirs(daemon: GitOpsDaemon) -> set[str]:
    folder = daemon.data / "runs"
    return set(os.listdir(folder)) if folder.is_dir() else set()


def post_raw(daemon: GitOpsDaemon, path: str, body: bytes, user: str | None = "alice",
             content_type: str = "application/json") -> httpx.Response:
    return daemon.api(user).post(path, content=body, headers={"Content-Type": content_type})


def refused(response: httpx.Response, status: int = 422) -> dict:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    error = response.json()["error"]
    assert error["code"] and error["message"], error
    return error


def assert_everything_readable(daemon: GitOpsDaemon, run_id: str | None = None) -> None:
    """What a bad request must never break: the list of runs, and the run it was aimed at."""
    listed = daemon.api().get("/api/v1/runs")
    assert listed.status_code == 200, listed.text
    if run_id:
        assert daemon.api("root").get(f"/api/v1/runs/{run_id}").status_code == 200  # an admin sees every run
        assert daemon.api().get(f"/api/v1/runs/{run_id}/events").status_code == 200


def waiting(daemon: GitOpsDaemon, flow: str, step: str) -> dict:
    run = daemon.start_run(flow)
    return daemon.wait_step(run["id"], step, "waiting")


# ---- item 8: NaN and Infinity ------------------------------------------------------------------


@pytest.mark.parametrize("body", [b'{"inputs": {"n": NaN}}', b'{"inputs": {"n": Infinity}}',
                                  b'{"inputs": {"n": -Infinity}}', b'{"inputs": {"n": 1e400}}',
                                  b'{"inputs": {"extra": {"deep": [NaN]}}}'])
def test_a_start_with_a_non_finite_number_is_refused_and_creates_no_run(daemon: GitOpsDaemon, body: bytes) -> None:
    before = run_dirs(daemon)
    error = refused(post_raw(daemon, "/api/v1/flows/numbers/runs", body))
    assert "number" in error["message"], error
    assert run_dirs(daemon) == before, "a refused start leaves no run directory"
    assert_everything_readable(daemon)


@pytest.mark.parametrize("text", ["nan", "NaN", "inf", "-Infinity", "1e400"])
def test_a_number_input_given_as_text_must_be_finite(daemon: GitOpsDaemon, text: str) -> None:
    before = run_dirs(daemon)
    refused(daemon.api().post("/api/v1/flows/numbers/runs", json={"inputs": {"n": text}}))
    refused(daemon.api().post("/api/v1/flows/numbers/runs", json={"inputs": {"extra": '{"x": NaN}'}}))
    assert run_dirs(daemon) == before


def test_a_decision_with_infinity_is_refused_and_the_approval_still_waits(daemon: GitOpsDaemon) -> None:
    run = waiting(daemon, "gate", "review")
    events = len(daemon.events(run["id"]))
    path = f"/api/v1/runs/{run['id']}/steps/review/decision"
    refused(post_raw(daemon, path, b'{"decision": "approve", "inputs": {"score": Infinity}}', user="bob"))
    refused(daemon.api("bob").post(path, json={"decision": "approve", "inputs": {"score": "inf"}}))
    assert len(daemon.events(run["id"])) == events, "nothing of a refused decision is recorded"
    assert_everything_readable(daemon, run["id"])

    accepted = daemon.decide(run["id"], "review", "bob", inputs={"score": 7.5})
    assert accepted.status_code == 200, accepted.text
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded" and final["steps"]["review"]["outputs"]["inputs"] == {"score": 7.5}


def test_a_callback_with_nan_is_refused_and_the_run_stays_readable_and_answerable(daemon: GitOpsDaemon) -> None:
    run = waiting(daemon, "worker", "done")
    token = run["callbacks"]["done"]
    error = refused(daemon.post_callback(token, b'{"x": NaN}'))
    assert "NaN" in json.dumps(error), error
    refused(daemon.post_callback(token, b'{"x": 1e999}'))
    assert_everything_readable(daemon, run["id"])
    assert "callback_received" not in event_types(daemon.events(run["id"]))

    assert daemon.post_callback(token, {"x": 1.5}).status_code == 202
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded" and final["steps"]["done"]["payload"] == {"x": 1.5}
    daemon.assert_record_valid(run["id"])


def test_a_webhook_with_nan_is_refused(daemon: GitOpsDaemon) -> None:
    before = run_dirs(daemon)
    error = refused(daemon.hook("hooked", None, raw=b'{"order_id": NaN}'))
    assert "number" in error["message"], error
    refused(daemon.hook("hooked", None, raw=b'{"order_id": "\\udfff"}'))
    refused(daemon.hook("hooked", None, raw=b'\xef\xbb\xbf{"order_id": "A-1"}'))
    assert run_dirs(daemon) == before
    started = daemon.hook("hooked", {"order_id": "A-1"})
    assert started.status_code == 201, started.text


def signoff(daemon: GitOpsDaemon, *args: str | bytes, user: str = "alice") -> subprocess.CompletedProcess:
    """The CLI against the daemon, with arguments that may be raw bytes (as a shell passes them)."""
    environ = clean_environ()
    environ["PYTHONPATH"] = str(PROJECT_ROOT)
    environ.update({"SIGNOFF_SERVER": daemon.url, "SIGNOFF_TOKEN": daemon.tokens[user],
                    "SIGNOFF_DATA": str(daemon.root / "cli-data")})
    argv = [os.fsencode(sys.executable), b"-m", b"runner", *(a if isinstance(a, bytes) else a.encode() for a in args)]
    return subprocess.run(argv, cwd=daemon.root, env=environ, capture_output=True, timeout=60)


def cli_run(daemon: GitOpsDaemon, *args: str | bytes) -> subprocess.CompletedProcess:
    return signoff(daemon, "run", *args)


@pytest.mark.parametrize("flow, step", [("nanout", "emit"), ("overflow", "big")])
def test_a_step_whose_outputs_are_not_finite_fails_clearly_and_the_run_ends(daemon: GitOpsDaemon, flow: str,
                                                                               step: str) -> None:
    run = daemon.start_run(flow)
    final = daemon.wait_end(run["id"])
    assert final["status"] == "failed"
    assert "not a JSON number" in final["steps"][step]["error"], final["steps"][step]
    assert_everything_readable(daemon, run["id"])
    daemon.assert_record_valid(run["id"])


@pytest.mark.parametrize("args", [
    ("-i", "n=nan"), ("-i", "n=Infinity"), ("-i", 'extra={"x": NaN}'), ("-i", b"who=\xff\xfe"),
    ("--inputs-file", "nan.yaml"), ("--inputs-file", "nan.json"), ("--inputs-file", "inf.json"),
], ids=["nan", "infinity", "object-nan", "not-utf8", "yaml-nan", "json-nan", "json-1e400"])
def test_cli_inputs_that_json_cannot_carry_are_a_clear_error(daemon: GitOpsDaemon, args: tuple) -> None:
    (daemon.root / "nan.yaml").write_text("n: .nan\n")
    (daemon.root / "nan.json").write_text('{"n": NaN}\n')
    (daemon.root / "inf.json").write_text('{"extra": {"x": 1e400}}\n')
    before = run_dirs(daemon)
    done = cli_run(daemon, "numbers", *args)
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0, done.stdout
    assert "Traceback" not in err and err.strip(), err
    assert run_dirs(daemon) == before
    good = cli_run(daemon, "numbers", "-i", "n=2.5", "--json")
    assert good.returncode == 0, good.stderr


@pytest.mark.parametrize("args", [("-i", "score=nan"), ("-i", b"score=1\xff"), ("--comment", b"ok \xed\xa0\x80")],
                         ids=["nan", "not-utf8-input", "surrogate-comment"])
def test_cli_decisions_that_json_cannot_carry_are_a_clear_error(daemon: GitOpsDaemon, args: tuple) -> None:
    run = waiting(daemon, "gate", "review")
    done = signoff(daemon, "approve", run["id"], "review", *args, user="bob")
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0 and err.strip() and "Traceback" not in err, err
    assert "decision" not in event_types(daemon.events(run["id"]))


def test_cli_callback_data_that_is_not_utf8_is_refused_by_the_daemon_not_a_traceback(daemon: GitOpsDaemon) -> None:
    run = waiting(daemon, "worker", "done")
    done = signoff(daemon, "callback", daemon.callback_url(run, "done"), "--data", b'{"x": "\xff"}')
    err = done.stderr.decode(errors="replace")
    assert done.returncode != 0 and "UTF-8" in err and "Traceback" not in err, err
    assert daemon.run(run["id"])["steps"]["done"]["status"] == "waiting"


# ---- item 9: lone surrogates, BOM, UTF-16 -------------------------------------------------------


def test_a_start_with_a_lone_surrogate_is_refused_and_leaves_no_run_directory(daemon: GitOpsDaemon) -> None:
    before = run_dirs(daemon)
    refused(post_raw(daemon, "/api/v1/flows/numbers/runs", b'{"inputs": {"who": "\\ud800"}}'))
    refused(post_raw(daemon, "/api/v1/flows/numbers/runs", b'{"inputs": {"extra": {"\\udc00": 1}}}'))
    refused(post_raw(daemon, "/api/v1/flows/numbers/runs", b'{"inputs": {"who": "\xed\xa0\x80"}}'))
    assert run_dirs(daemon) == before
    assert_everything_readable(daemon)
    paired = daemon.start_run("numbers", {"who": "\U0001F600"})  # a surrogate pair is a character
    assert daemon.wait_end(paired["id"])["steps"]["show"]["outputs"]["who"] == "\U0001F600"


def test_a_decision_with_a_lone_surrogate_is_refused(daemon: GitOpsDaemon) -> None:
    run = waiting(daemon, "gate", "review")
    path = f"/api/v1/runs/{run['id']}/steps/review/decision"
    refused(post_raw(daemon, path, b'{"decision": "reject", "comment": "no \\ud83d"}', user="bob"))
    assert "decision" not in event_types(daemon.events(run["id"]))
    assert daemon.decide(run["id"], "review", "bob", "reject", comment="no \U0001F44E").status_code == 200
    assert daemon.wait_end(run["id"])["status"] == "rejected"


@pytest.mark.parametrize("body", [
    b'{"x": "\\ud800"}',                                  # a lone high surrogate
    b'{"\\udfff": 1}',                                    # in a key
    b'\xef\xbb\xbf{"x": 1}',                              # a UTF-8 byte order mark
    '{"x": 1}'.encode("utf-16"),                          # UTF-16 with its BOM
    '{"x": 1}'.encode("utf-16-le"),                       # UTF-16 without one
    '{"x": 1}'.encode("utf-32"),
    b'{"x": "caf\xe9"}',                                  # Latin-1, not UTF-8
], ids=["surrogate", "surrogate-key", "utf8-bom", "utf16", "utf16le", "utf32", "latin1"])
def test_a_callback_strict_json_cannot_read_is_refused_and_the_run_still_completes(
        daemon: GitOpsDaemon, body: bytes) -> None:
    run = waiting(daemon, "worker", "done")
    token = run["callbacks"]["done"]
    refused(daemon.post_callback(token, body))
    assert_everything_readable(daemon, run["id"])
    assert daemon.post_callback(token, {"x": "caf\u00e9 \U0001F600"}).status_code == 202
    final = daemon.wait_end(run["id"])
    assert final["status"] == "succeeded", final.get("error")
    assert final["steps"]["done"]["payload"] == {"x": "caf\u00e9 \U0001F600"}


def test_a_deeply_nested_body_is_refused_everywhere(daemon: GitOpsDaemon) -> None:
    deep = b'{"x": ' + b"[" * 100 + b"]" * 100 + b"}"
    huge = b"[" * 200_000 + b"]" * 200_000
    run = waiting(daemon, "worker", "done")
    for body in (deep, huge):
        refused(daemon.post_callback(run["callbacks"]["done"], body))
        refused(post_raw(daemon, "/api/v1/flows/numbers/runs", body))
    assert_everything_readable(daemon, run["id"])


@files_only
def test_an_accepted_callback_the_journal_cannot_replay_fails_its_step_instead_of_hanging(
        daemon: GitOpsDaemon) -> None:
    """A journal written before bodies were checked (a lossy decode) no longer holds a run forever."""
    run = waiting(daemon, "worker", "done")
    daemon.stop()
    journal = daemon.data / "inbox.jsonl"
    entry = {"run": run["id"], "step": "done", "sha256": "0" * 64, "at": run["created_at"], "bytes": 10,
             "body": "\ufeff\ufffd\ufffd{"}
    with journal.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    daemon.start()
    final = daemon.wait_end(run["id"])
    assert final["status"] == "failed"
    assert "could not be read" in final["steps"]["done"]["error"], final["steps"]["done"]
    daemon.assert_record_valid(run["id"])


# ---- item 10: query values and refs -----------------------------------------------------------------


@pytest.mark.parametrize("query", [{"after": "1000000", "wait": "nan"}, {"wait": "inf"}, {"wait": "-1"},
                                   {"wait": "soon"}, {"after": "x"}, {"after": "1e3"}, {"after": "-5"},
                                   {"after": "9" * 5000}])
def test_event_query_values_that_are_not_numbers_in_range_are_a_422(daemon: GitOpsDaemon, query: dict) -> None:
    run = daemon.start_run("numbers")
    error = refused(daemon.api().get(f"/api/v1/runs/{run['id']}/events", params=query))
    assert "after" in error["message"] or "wait" in error["message"], error


def test_a_long_poll_after_the_end_of_the_history_returns_nothing(daemon: GitOpsDaemon) -> None:
    run = daemon.start_run("numbers")
    daemon.wait_end(run["id"])
    answer = daemon.api().get(f"/api/v1/runs/{run['id']}/events", params={"after": "1000000", "wait": "0.5"})
    assert answer.status_code == 200 and answer.json() == {"events": [], "next": 1000000}


@pytest.mark.parametrize("query", [{"limit": "lots"}, {"limit": "0"}, {"limit": "-3"}, {"limit": "nan"},
                                   {"before": "not-a-run-id"}, {"before": "../../etc"}])
def test_run_list_query_values_are_checked(daemon: GitOpsDaemon, query: dict) -> None:
    error = refused(daemon.api().get("/api/v1/runs", params=query))
    assert next(iter(query)) in error["message"], error


@pytest.mark.parametrize("ref", ["@{-1}", "@{upstream}", "HEAD~999", "--output=x",
                                 "refs/heads/../../x", "a" * 5000, "v1.0.0^{tree}", ":/no such commit",
                                 "main\nmain", " "])
def test_a_start_at_a_ref_git_cannot_resolve_is_a_clear_404_or_422(daemon: GitOpsDaemon, ref: str) -> None:
    before = run_dirs(daemon)
    response = daemon.api().post("/api/v1/flows/numbers/runs", json={"inputs": {}, "ref": ref})
    assert response.status_code in (404, 422), f"{response.status_code}: {response.text}"
    assert response.json()["error"]["message"]
    assert run_dirs(daemon) == before
