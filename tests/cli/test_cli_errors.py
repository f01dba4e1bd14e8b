"""Clear errors from the real CLI (a subprocess): every option that names a file, and the hints it gives.

A wrong file name is a usage error (exit 2) with a message naming the option and
a hint; a failure to do the thing is exit 1. Never a traceback (DESIGN section 6).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from daemon_support import DaemonProcess
from support import PROJECT_FLOWS

MISSING = "/nonexistent/signoff-test/dir"


@pytest.fixture
def files(repo: Path, tmp_path: Path) -> dict[str, str]:
    """Things on disk a wrong argument can point at (and hello.yaml in the repo, for `run hello --local`)."""
    shutil.copy(PROJECT_FLOWS / "hello.yaml", tmp_path / "flows" / "hello.yaml")
    (tmp_path / "adir").mkdir()
    (tmp_path / "private-dir").mkdir(mode=0o700)
    (tmp_path / "a-file").write_text("plain text\n")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    (tmp_path / "latin1.yaml").write_bytes("who: caf\xe9\n".encode("latin-1"))
    (tmp_path / "secret-dir.yaml").write_text(f"secrets:\n  tok: {{file: {tmp_path / 'private-dir'}}}\n")
    return {"dir": str(tmp_path / "adir"), "file": str(tmp_path / "a-file"), "list": str(tmp_path / "list.yaml"),
            "latin1": str(tmp_path / "latin1.yaml"), "secret-dir": str(tmp_path / "secret-dir.yaml")}


RES = "res://" + "0" * 64

USAGE_CASES = [
    (["callback", "tok", "--data", f"@{MISSING}/body.json"], "--data", "No such file or directory"),
    (["callback", "tok", "--data", "@{dir}"], "--data", "Is a directory"),
    (["resource", "get", RES, "-o", f"{MISSING}/file"], "--output", "does not exist"),
    (["resource", "get", RES, "-o", "{dir}"], "--output", "is a directory"),
    (["run", "hello", "--local", "--inputs-file", f"{MISSING}/inputs.json"], "--inputs-file", "No such file"),
    (["run", "hello", "--local", "--inputs-file", "{dir}"], "--inputs-file", "directory"),
    (["run", "hello", "--local", "--inputs-file", "{list}"], "--inputs-file", "not a mapping"),
    (["run", "hello", "--local", "--inputs-file", "{latin1}"], "--inputs-file", "not UTF-8"),
    (["validate", "--config", f"{MISSING}/signoff.yaml"], "--config", "does not exist"),
    (["validate", "--config", "{dir}"], "--config", "is a directory"),
    (["runs", "list", "--repo", MISSING], "--repo", "does not exist"),
    (["runs", "list", "--repo", "{file}"], "--repo", "is a file"),
    (["runs", "list", "--data", "{file}"], "--data", "is a file"),
    (["doctor", "--data", "{file}"], "--data", "is a file"),
]


@pytest.mark.parametrize("args, option, reason", USAGE_CASES, ids=[" ".join(c[0][:2]) + " " + c[1] + " " + c[2]
                                                                   for c in USAGE_CASES])
def test_a_file_option_that_names_a_wrong_file_is_a_usage_error(cli, repo, files, args, option, reason):
    args = [a.format(**files) for a in args]
    code, out, err, _ = cli(args, cwd=repo)
    assert "Traceback" not in out + err, err
    assert code == 2, (code, out, err)
    assert err.startswith("error: "), err
    assert option in err and reason in err, err
    assert "\n  hint: " in err, err
    code, _, _, document = cli([*args, "--json"] if args[0] != "callback" else args, cwd=repo)
    if document is not None:
        assert code == 2 and document["error"]["code"] == "usage" and document["error"]["hint"]


def test_a_wrong_file_from_the_environment_names_the_variable(cli, repo):
    code, _, err, _ = cli(["runs", "list"], cwd=repo, env={"SIGNOFF_CONFIG": f"{MISSING}/signoff.yaml"})
    assert code == 2, err
    assert "--config" in err and "does not exist" in err
    assert "SIGNOFF_CONFIG" in err.split("hint:", 1)[1]


def test_a_secret_file_that_is_a_directory_is_a_config_error(cli, repo, files):
    code, out, err, _ = cli(["validate", "--config", files["secret-dir"]], cwd=repo)
    assert "Traceback" not in out + err, err
    assert code == 1, err
    assert "secrets.tok: cannot read secret file" in err


def test_init_where_a_directory_cannot_be_made_fails_cleanly(cli, tmp_path, files):
    code, out, err, document = cli(["init", f"{files['file']}/sub", "--json"], cwd=tmp_path)
    assert "Traceback" not in out + err, err
    assert code == 1, err
    assert err.startswith("error: cannot make ") and "Not a directory" in err
    assert document["error"]["hint"]


def test_callback_reads_its_body_from_stdin_with_at_dash(cli, tmp_path):
    # `@-` is read before the daemon is called: a closed port shows the body was taken and the call attempted
    code, _, err, _ = cli(["callback", "http://127.0.0.1:9/callbacks/tok", "--data", "@-"], cwd=tmp_path)
    assert code == 1, err
    assert "cannot reach the daemon at http://127.0.0.1:9" in err


# ---- doctor checks what serve checks ------------------------------------------------------------


def test_doctor_fails_the_config_when_a_user_token_variable_is_unset(cli, repo, tmp_path):
    config = tmp_path / "signoff.yaml"
    config.write_text("users:\n  ann: {token: {env: SIGNOFF_TEST_ANN_TOKEN}, roles: [run]}\n")
    code, out, err, document = cli(["doctor", "--config", str(config), "--json"], cwd=repo)
    assert code == 1, out + err
    checks = {c["check"]: c for c in document["checks"]}
    assert checks["config"]["ok"] is False
    assert "SIGNOFF_TEST_ANN_TOKEN is not set" in checks["config"]["detail"]
    assert "export SIGNOFF_TEST_ANN_TOKEN" in checks["config"]["hint"]
    serve = cli(["serve", "--config", str(config), "--port", "9"], cwd=repo)  # serve refuses the same way
    assert serve.code == 1 and "SIGNOFF_TEST_ANN_TOKEN is not set" in serve.err
    human = cli(["doctor", "--config", str(config)], cwd=repo)
    assert "FAIL  config" in human.out and "hint (config): export SIGNOFF_TEST_ANN_TOKEN" in human.out
    code, _, _, document = cli(["doctor", "--config", str(config), "--json"], cwd=repo,
                               env={"SIGNOFF_TEST_ANN_TOKEN": "a-token-for-ann"})
    assert {c["check"]: c["ok"] for c in document["checks"]}["config"] is True


# ---- through the daemon: the API's refusals, and hints for the CLI user ----------------------------

STRICT = """
name: strict
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    require_comment: reject
    inputs:
      amount: {type: number, required: true}
      note: {type: string}
    timeout: 1h
    on_timeout: reject
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    with DaemonProcess(tmp_path_factory.mktemp("cli-errors"), flows={"strict": STRICT}) as process:
        yield process


@pytest.mark.usefixtures("running")
def test_listing_runs_with_an_unknown_status_is_refused_with_the_statuses(daemon):
    response = daemon.api("alice").get("/api/v1/runs", params={"status": "bogus"})
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert "bogus" in error["message"]
    assert "queued, running, waiting, succeeded, failed, rejected, cancelled, timed_out" in error["reasons"][0]
    assert daemon.api("alice").get("/api/v1/runs", params={"status": "waiting"}).status_code == 200


@pytest.mark.usefixtures("running")
def test_a_wrong_token_says_where_the_cli_took_it_from(daemon, tmp_path):
    from_env = daemon.cli("pending", user=None, env={"SIGNOFF_TOKEN": "not-a-token"})
    assert from_env.returncode == 1, from_env.stderr
    assert "SIGNOFF_TOKEN" in from_env.stderr.split("hint:", 1)[1]
    data = tmp_path / "other-data"
    data.mkdir()
    (data / "token").write_text("a-stale-local-token\n")
    from_file = daemon.cli("pending", user=None, env={"SIGNOFF_DATA": str(data)})
    assert from_file.returncode == 1, from_file.stderr
    hint = from_file.stderr.split("hint:", 1)[1]
    assert str(data / "token") in hint and "--data" in hint


@pytest.mark.usefixtures("running")
def test_decision_errors_name_the_cli_flags(daemon):
    run = daemon.start_run("strict", user="alice")
    daemon.wait_step(run["id"], "review")
    missing_input = daemon.cli("approve", run["id"], "review", user="bob")
    assert missing_input.returncode == 1, missing_input.stderr
    assert "amount" in missing_input.stderr
    assert "-i amount=..." in missing_input.stderr.split("hint:", 1)[1]
    as_json = daemon.cli("approve", run["id"], "review", "--json", user="bob")
    assert json.loads(as_json.stdout)["error"]["fields"] == ["inputs.amount"]
    bad_number = daemon.cli("approve", run["id"], "review", "-i", "amount=lots", user="bob")
    assert "-i amount=..." in bad_number.stderr.split("hint:", 1)[1]
    no_comment = daemon.cli("reject", run["id"], "review", user="bob")
    assert no_comment.returncode == 1, no_comment.stderr
    assert "a comment is required" in no_comment.stderr
    assert "-m" in no_comment.stderr.split("hint:", 1)[1]
    api = daemon.decide(run["id"], "review", "bob", "reject")
    assert api.status_code == 422 and api.json()["error"]["fields"] == ["comment"]
    decided = daemon.cli("reject", run["id"], "review", "-m", "too much", user="bob")
    assert decided.returncode == 0, decided.stderr
