"""Secrets stay secret (issue 10 items 11, 12 and 13), through the real daemon.

The secrets are the URLs of two webhook channels, `{env: ...}` values of the config: one
channel answers 200, the other 500. A secret must reach neither a step's environment, nor
the daemon's log (httpx logs request lines; a failed delivery's error names its URL), nor
a stored artifact, nor the callback journal: nothing in the data directory holds one.
"""

from __future__ import annotations

import io
import json
import logging
import re
import secrets

import pytest

from daemon_support import DaemonProcess
from runner.secrets import Masker, mask_logs
from support import HttpServer, all_file_bytes, json_reply

pytestmark = pytest.mark.usefixtures("running")

BASH_OWN = {"PWD", "SHLVL", "_", "OLDPWD"}  # what bash itself exports to the commands it runs
PASSED = {"PATH", "HOME", "LANG", "TZ"}


def flows(leak: str) -> dict[str, str]:
    """`leak` is a file outside the data dir holding a secret: a step may learn one by other means."""
    return {
        "env-dump": """
            name: env-dump
            env: {FLOW_VAR: from-the-flow}
            steps:
              - id: dump
                kind: shell
                env: {STEP_VAR: from-the-step}
                run: env -0 > "$SIGNOFF_ARTIFACTS/env.txt"; echo "ok=$OK_HOOK_URL$BAD_HOOK_URL$ALICE_TOKEN"
            """,
        "announce": """
            name: announce
            steps:
              - id: good
                kind: notify
                channel: hook-ok
                message: all is well
              - id: bad
                kind: notify
                channel: hook-bad
                message: this one fails
            """,
        "report": f"""
            name: report
            steps:
              - id: write
                kind: shell
                run: |
                  printf 'endpoint: %s\\n' "$(cat {leak})" > "$SIGNOFF_ARTIFACTS/report.txt"
                  echo plain > "$SIGNOFF_ARTIFACTS/plain.txt"
            """,
        "blob": f"""
            name: blob
            steps:
              - id: write
                kind: shell
                run: |
                  {{ printf '\\000\\377'; cat {leak}; }} > "$SIGNOFF_ARTIFACTS/blob.bin"
            """,
        "answer": """
            name: answer
            steps:
              - id: done
                kind: callback
                max_bytes: 1000000
                timeout: 1h
                on_timeout: fail
            """,
    }


@pytest.fixture(scope="module")
def hooks():
    ok_path, bad_path = f"/ok/{secrets.token_hex(12)}", f"/bad/{secrets.token_hex(12)}"
    server = HttpServer({f"POST {ok_path}": lambda request, nth: json_reply(200, {"ok": True}),
                         f"POST {bad_path}": lambda request, nth: json_reply(500, {"ok": False})})
    with server:
        yield server, server.url + ok_path, server.url + bad_path


@pytest.fixture(scope="module")
def daemon(tmp_path_factory, hooks):
    _, ok_url, bad_url = hooks
    root = tmp_path_factory.mktemp("secrets")
    leak = root / "leak.txt"
    leak.write_text(ok_url)
    channels = {"hook-ok": {"kind": "webhook", "url": {"env": "OK_HOOK_URL"}},
                "hook-bad": {"kind": "webhook", "url": {"env": "BAD_HOOK_URL"}}}
    with DaemonProcess(root, flows=flows(str(leak)), channels=channels,
                       env={"OK_HOOK_URL": ok_url, "BAD_HOOK_URL": bad_url}) as process:
        yield process


@pytest.fixture
def secret_values(hooks) -> list[str]:
    _, ok_url, bad_url = hooks
    return [ok_url, bad_url, ok_url.rsplit("/", 1)[1], bad_url.rsplit("/", 1)[1]]


def assert_nowhere(daemon: DaemonProcess, values: list[str]) -> None:
    """No file of the data dir, and not the daemon's log, holds any of `values`."""
    places = {**all_file_bytes(daemon.data), daemon.log_path: daemon.log_path.read_bytes()}
    for path, data in places.items():
        for value in values:
            assert value.encode() not in data, f"{path} holds a secret"


def resource(daemon: DaemonProcess, ref: str) -> bytes:
    response = daemon.api("alice").get(f"/api/v1/resources/{ref.removeprefix('res://')}")
    assert response.status_code == 200, response.text
    return response.content


# ---- item 11: the environment of a step ----------------------------------------------------------


def test_a_step_sees_a_clean_environment_never_the_daemons(daemon: DaemonProcess, secret_values) -> None:
    run = daemon.start_run("env-dump")
    record = daemon.wait_end(run["id"])
    assert record["status"] == "succeeded", record["error"]
    outputs = record["steps"]["dump"]["outputs"]
    assert outputs["stdout"] == "ok=\n"  # neither a channel's secret URL nor a user's token variable
    entries = [e for e in resource(daemon, outputs["artifacts"]["env.txt"]).decode().split("\0") if e]
    env = dict(entry.split("=", 1) for entry in entries)
    assert env["FLOW_VAR"] == "from-the-flow" and env["STEP_VAR"] == "from-the-step"
    assert env["SIGNOFF_RUN_ID"] == run["id"] and env["SIGNOFF_FLOW"] == "env-dump" and env["SIGNOFF_STEP"] == "dump"
    assert env["SIGNOFF_ATTEMPT"] == "1"
    unexpected = {name for name in env if name not in PASSED | BASH_OWN | {"FLOW_VAR", "STEP_VAR"}
                  and not name.startswith(("LC_", "SIGNOFF_"))}
    assert not unexpected, f"the daemon's environment leaked into the step: {sorted(unexpected)}"
    assert set(n for n in env if n.startswith("SIGNOFF_")) == {
        "SIGNOFF_RUN_ID", "SIGNOFF_FLOW", "SIGNOFF_STEP", "SIGNOFF_ATTEMPT", "SIGNOFF_OUTPUT", "SIGNOFF_ARTIFACTS"}
    assert_nowhere(daemon, secret_values)


# ---- item 12: the daemon's log ---------------------------------------------------------------


def test_a_webhook_url_never_reaches_the_daemons_log(daemon: DaemonProcess, hooks, secret_values) -> None:
    server, ok_url, bad_url = hooks
    run = daemon.start_run("announce")
    record = daemon.wait_end(run["id"])
    assert record["status"] == "succeeded", record["error"]
    assert record["steps"]["good"]["outputs"]["delivered"] is True
    assert record["steps"]["bad"]["outputs"]["delivered"] is False
    paths = [request.path for request in server.requests]
    assert ok_url.removeprefix(server.url) in paths and bad_url.removeprefix(server.url) in paths
    log = daemon.log_path.read_text()
    assert re.search(r"notification to hook-bad failed .*\*\*\*", log), daemon.log_tail()
    assert_nowhere(daemon, secret_values)


# ---- item 13: artifacts and the callback journal ---------------------------------------------------


def test_a_secret_written_into_a_text_artifact_is_stored_and_served_masked(daemon: DaemonProcess,
                                                                         secret_values) -> None:
    run = daemon.start_run("report")
    record = daemon.wait_end(run["id"])
    assert record["status"] == "succeeded", record["error"]
    artifacts = record["steps"]["write"]["outputs"]["artifacts"]
    assert resource(daemon, artifacts["report.txt"]) == b"endpoint: ***\n"
    assert resource(daemon, artifacts["plain.txt"]) == b"plain\n"
    assert_nowhere(daemon, secret_values)


def test_a_binary_artifact_holding_a_secret_is_refused_not_stored(daemon: DaemonProcess, secret_values) -> None:
    run = daemon.start_run("blob")
    record = daemon.wait_end(run["id"])
    assert record["status"] == "failed"
    assert record["steps"]["write"]["error"] == ("artifact 'blob.bin' holds the value of a secret and is binary, "
                                                 "so it cannot be masked; it was not stored")
    assert_nowhere(daemon, secret_values)


def test_the_callback_journal_keeps_no_more_than_the_record_shows(daemon: DaemonProcess, hooks,
                                                                  secret_values) -> None:
    _, ok_url, _ = hooks
    run = daemon.start_run("answer")
    daemon.wait_step(run["id"], "done", "waiting")
    url = daemon.callback_url(run, "done")
    body = json.dumps({"note": f"posted to {ok_url}", "n": 1}).encode()
    assert daemon.post_callback(url, body).status_code == 202
    assert daemon.post_callback(url, body).status_code == 200  # the identical body: a replay
    assert daemon.post_callback(url, {"note": "***", "n": 1}).status_code == 409  # the masked one is not it
    record = daemon.wait_end(run["id"])
    assert record["status"] == "succeeded", record["error"]
    assert record["steps"]["done"]["outputs"]["payload"] == {"note": "posted to ***", "n": 1}
    journal = (daemon.data / "inbox.jsonl").read_text()
    assert run["id"] in journal  # the journal has not been rewritten since: what it keeps is masked
    assert_nowhere(daemon, secret_values)


def test_a_large_callback_body_is_stored_masked(daemon: DaemonProcess, hooks, secret_values) -> None:
    _, ok_url, _ = hooks
    run = daemon.start_run("answer")
    daemon.wait_step(run["id"], "done", "waiting")
    body = json.dumps({"note": ok_url, "padding": "x" * 100_000}).encode()
    assert daemon.post_callback(daemon.callback_url(run, "done"), body).status_code == 202
    record = daemon.wait_end(run["id"])
    assert record["status"] == "succeeded", record["error"]
    ref = record["steps"]["done"]["outputs"]["payload"]
    assert json.loads(resource(daemon, ref)) == {"note": "***", "padding": "x" * 100_000}
    assert_nowhere(daemon, secret_values)


# ---- the pieces, in process ------------------------------------------------------------------------


def test_a_secret_split_across_read_chunks_is_still_found_and_masked(tmp_path) -> None:
    masker = Masker(["s3cr3t-value"])
    source = tmp_path / "artifact.txt"
    source.write_bytes(b"x" * 5 + b"s3cr3t-value" + b"y" * 5)
    assert masker.found_in_file(source, chunk_size=8)
    assert masker.mask_file(source, tmp_path / "masked", chunk_size=8)
    assert (tmp_path / "masked").read_bytes() == b"xxxxx***yyyyy"
    assert (tmp_path / "masked").stat().st_mode & 0o777 == 0o600
    assert not Masker(["other-value"]).found_in_file(source, chunk_size=8)


def test_a_log_record_is_masked_in_its_arguments_and_its_traceback() -> None:
    masker = Masker(["s3cr3t-value"])
    stream = io.StringIO()
    logger = logging.getLogger("signoff-test-masking")
    logger.propagate = False
    handler = logging.StreamHandler(stream)
    logger.addHandler(handler)
    try:
        mask_logs(masker, logger)
        try:
            raise RuntimeError("refused by http://hooks/s3cr3t-value")
        except RuntimeError:
            logger.exception("posting to %s failed", "http://hooks/s3cr3t-value")
    finally:
        logger.removeHandler(handler)
    text = stream.getvalue()
    assert "s3cr3t-value" not in text
    assert "posting to http://hooks/*** failed" in text and "RuntimeError: refused by http://hooks/***" in text
