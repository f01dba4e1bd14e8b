"""What the real CLI prints for a person, and what its records say (a subprocess; the real daemon where it talks to one).

Values are JSON, never Python reprs; res:// references are whole; a refused
whole-repository tag is printed once; `run --local` ends with the run's summary;
`pending` shows the quorum, the reviewer inputs and whether changes may be
requested; ^C while following a daemon run leaves the run going. Records say
whether a working-tree flow was committed; `init` ships the schemas its files
point at; `--config` finds the daemon at the config's address.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from jsonschema import Draft202012Validator

from daemon_support import DaemonProcess
from support import PROJECT_ROOT, git, make_repo, run_schema_errors, wait_until
from yamlcompat import YAML

REF = re.compile(r"res://[0-9a-f]{64}(?![0-9a-f])")


@pytest.fixture
def hello_repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {}, copy=["hello"])


# ---- run --local, runs show -----------------------------------------------------------------


def test_a_local_run_ends_with_its_summary_in_json_values_with_whole_references(cli, hello_repo):
    code, out, err, _ = cli(["run", "hello", "--local", "-i", "who=you"], cwd=hello_repo)
    assert code == 0, err
    assert out.startswith("run      "), out  # the same summary a daemon run ends with
    assert "status   succeeded" in out
    assert 'inputs   {"who": "you"}' in out
    assert "greeted=true" in out
    assert "{'" not in out and "True" not in out and "None" not in out
    refs = REF.findall(out)
    assert refs and all(f"artifacts.report.md={ref}" in out for ref in refs)
    run_id = out.split()[1]
    shown = cli(["runs", "show", run_id], cwd=hello_repo)
    assert shown.out == out.rstrip("\n") + "\n"
    record = cli(["runs", "show", run_id, "--json"], cwd=hello_repo).json
    assert record["steps"]["report"]["outputs"]["artifacts"]["report.md"] in REF.findall(shown.out)


# ---- what a run records of an uncommitted flow ------------------------------------------------------


def test_a_local_run_of_an_uncommitted_flow_says_so(cli, hello_repo):
    head = git(hello_repo, "rev-parse", "HEAD")
    clean = cli(["run", "hello", "--local", "--json"], cwd=hello_repo).json
    assert clean["commit"] == head and clean["dirty"] is False
    hello = hello_repo / "flows" / "hello.yaml"
    hello.write_text(hello.read_text().replace("Hello, ", "Changed, "))
    changed = cli(["run", "hello", "--local", "--json"], cwd=hello_repo).json
    assert changed["commit"] == head and changed["dirty"] is True
    assert changed["flow_sha256"] != clean["flow_sha256"]
    assert run_schema_errors(changed) == []
    summary = cli(["runs", "show", changed["id"]], cwd=hello_repo).out
    assert f"commit {head[:12]} + uncommitted changes" in summary
    shutil.copy(hello, hello_repo / "flows" / "untracked.yaml")
    (hello_repo / "flows" / "untracked.yaml").write_text(hello.read_text().replace("name: hello", "name: untracked"))
    untracked = cli(["run", "untracked", "--local", "--json"], cwd=hello_repo).json
    assert untracked["dirty"] is True
    elsewhere = make_repo(hello_repo.parent / "elsewhere", {}, copy=["hello"])
    outside = cli(["run", str(elsewhere / "flows" / "hello.yaml"), "--local", "--json"], cwd=hello_repo)
    assert outside.code == 0, outside.err
    assert outside.json["commit"] is None and outside.json["ref"] is None and outside.json["dirty"] is False


# ---- releases: a refused whole-repository tag once ---------------------------------------------------


def test_a_refused_repository_tag_is_printed_once(cli, hello_repo):
    for name in ("one", "two", "three"):
        (hello_repo / "flows" / f"{name}.yaml").write_text(
            f"name: {name}\nsteps:\n  - id: a\n    kind: set\n    values: {{a: 1}}\n")
    (hello_repo / "flows" / "broken.yaml").write_text("name: broken\nsteps:\n  - id: a\n    kind: nosuchkind\n")
    git(hello_repo, "add", "-A")
    git(hello_repo, "commit", "-qm", "one broken flow")
    git(hello_repo, "tag", "v1.0.0")
    code, out, err, _ = cli(["releases"], cwd=hello_repo)
    assert code == 0, err
    refusals = [line for line in out.splitlines() if line.startswith("refused v1.0.0")]
    assert len(refusals) == 1, out
    assert "(the whole repository)" in refusals[0] and "broken.yaml" in refusals[0]


# ---- init ships the schemas its files point at -------------------------------------------------------


def test_init_ships_the_schemas_the_new_files_point_at(cli, tmp_path):
    code, out, err, document = cli(["init", "new-flows", "--json"], cwd=tmp_path)
    assert code == 0, err
    root = tmp_path / "new-flows"
    assert {"schema/flow.schema.json", "schema/config.schema.json"} <= set(document["created"])
    pointed = []
    for path in [*sorted((root / "flows").glob("*.yaml")), root / "signoff.yaml"]:
        first = path.read_text().splitlines()[0]
        assert first.startswith("# yaml-language-server: $schema="), (path, first)
        schema_path = (path.parent / first.split("$schema=", 1)[1]).resolve()
        assert schema_path.is_file(), f"{path} points at {schema_path}, which init did not create"
        schema = json.loads(schema_path.read_text())
        assert schema_path.read_text() == (PROJECT_ROOT / "schema" / schema_path.name).read_text()
        document = YAML(typ="safe", pure=True).load(path.read_text())
        assert not list(Draft202012Validator(schema).iter_errors(document)), path
        pointed.append(schema_path.name)
    assert {"flow.schema.json", "config.schema.json"} <= set(pointed)


# ---- through the daemon ----------------------------------------------------------------------------

QUORUM = """
name: quorum
steps:
  - id: draft
    kind: set
    values: {text: first draft}
  - id: review
    kind: approval
    approvers: [group:ops]
    min_approvals: 2
    context: "Is it ready? ${{ steps.draft.outputs.text }}"
    require_comment: reject
    rewind_to: draft
    inputs:
      amount: {type: number, required: true, description: what to pay}
      channel: {type: string, enum: [mail, chat], default: mail}
    timeout: 1h
    on_timeout: reject
"""

PLAIN = """
name: plain
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    on_timeout: reject
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    with DaemonProcess(tmp_path_factory.mktemp("cli-output"), flows={"quorum": QUORUM, "plain": PLAIN},
                       copy=["hello"]) as process:
        yield process


@pytest.mark.usefixtures("running")
def test_pending_shows_the_quorum_the_reviewer_inputs_and_request_changes(daemon):
    quorum = daemon.start_run("quorum", user="alice")
    plain = daemon.start_run("plain", user="alice")
    daemon.wait_step(quorum["id"], "review")
    daemon.wait_step(plain["id"], "review")
    assert daemon.decide(quorum["id"], "review", "carol", inputs={"amount": 5}).status_code == 200
    listed = daemon.cli("pending", "--json", user="bob")
    assert listed.returncode == 0, listed.stderr
    entry = next(p for p in json.loads(listed.stdout)["pending"] if p["run"] == quorum["id"])
    assert entry["reviewer_inputs"]["amount"] == {"type": "number", "required": True, "description": "what to pay"}
    assert entry["rewind_to"] == "draft" and entry["require_comment"] == "reject"
    human = daemon.cli("pending", user="bob").stdout
    block = next(b for b in human.split("\n\n") if b.startswith(quorum["id"]))
    assert "approvals 1/2" in block
    assert "amount (number, required): what to pay" in block
    assert "channel (string, one of mail|chat, default mail)" in block
    assert f"signoff approve {quorum['id']} review -i amount=..." in block
    assert "request-changes: allowed (reruns from draft)" in block
    assert "a comment is required to reject" in block
    other = next(b for b in human.split("\n\n") if b.startswith(plain["id"]))
    assert "approvals 0/1" in other and "request-changes: not allowed" in other
    assert "{'" not in human and "None" not in human


@pytest.mark.usefixtures("running")
def test_run_with_config_calls_the_daemon_at_the_configs_address(daemon, tmp_path):
    environ = {"SIGNOFF_SERVER": None, "SIGNOFF_DATA": str(tmp_path / "cli-data")}
    done = daemon.cli("run", "hello", "--config", str(daemon.config_path), "--json", env=environ)
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["status"] == "succeeded" and (daemon.data / "runs" / record["id"]).is_dir()
    wrong = daemon.cli("run", "hello", "--config", str(daemon.config_path), env={
        **environ, "SIGNOFF_SERVER": "http://127.0.0.1:9"})  # SIGNOFF_SERVER still wins
    assert wrong.returncode == 1 and "cannot reach the daemon at http://127.0.0.1:9" in wrong.stderr


@pytest.mark.usefixtures("running")
def test_ctrl_c_while_following_leaves_the_run_going_and_says_how_to_follow_it(daemon, tmp_path):
    err_path = tmp_path / "follow.err"
    with open(err_path, "wb") as err:
        # ^C's default action in the child even when this test runs with SIGINT ignored (a background
        # job of a shell ignores it, and children inherit that): the test is of what the CLI does with ^C
        proc = subprocess.Popen([sys.executable, "-m", "runner", "run", "plain"], cwd=daemon.root,
                                env=daemon.cli_env("alice"), stdout=subprocess.DEVNULL, stderr=err,
                                start_new_session=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        wait_until(lambda: "waiting until" in err_path.read_text(), timeout=30, what="the CLI to follow the run")
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    text = err_path.read_text()
    assert code == 130, text
    assert "Traceback" not in text
    run_id = re.search(r"run (\S+) of plain created", text).group(1)
    assert f"stopped following run {run_id}; the run goes on" in text
    assert f"signoff runs follow {run_id}" in text.split("hint:", 1)[1]
    assert daemon.run(run_id)["status"] == "waiting"
    assert daemon.decide(run_id, "review", "bob").status_code == 200
    followed = daemon.cli("runs", "follow", run_id, "--json")
    assert followed.returncode == 0, followed.stderr
    assert json.loads(followed.stdout)["status"] == "succeeded"


@pytest.mark.usefixtures("running")
def test_a_daemon_run_of_an_uncommitted_working_tree_flow_says_so(daemon):
    hello = daemon.repo / "flows" / "hello.yaml"
    original = hello.read_text()
    clean = daemon.start_run("hello", {"who": "clean"})
    assert clean["commit"] == git(daemon.repo, "rev-parse", "HEAD") and clean["dirty"] is False
    hello.write_text(original.replace("Hello, ", "Uncommitted, "))
    try:
        changed = daemon.start_run("hello", {"who": "changed"})
    finally:
        hello.write_text(original)
    assert changed["commit"] == clean["commit"] and changed["dirty"] is True
    for run in (clean, changed):
        daemon.wait_end(run["id"])
        daemon.assert_record_valid(run["id"])
    assert daemon.run(changed["id"])["steps"]["greeting"]["outputs"]["text"] == "Uncommitted, changed!"
