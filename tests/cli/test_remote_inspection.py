"""Every inspection command through a daemon's API (--server and a token, from a directory with no data):
the same JSON documents as the same command reading the daemon's own files.

The daemon is real (a subprocess on loopback, tests/daemon_support.py) with a run that
ended with output and one waiting on bob's approval. The matrix of documents runs the
real `signoff` command group in this process (click's runner: each command is
milliseconds instead of an interpreter start); exit codes, messages and `runs follow`
run `python -m runner` as a subprocess, as a user would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from daemon_support import DaemonProcess
from inspection_support import inspection_daemon
from runner.cli import build
from runner.errors import NotFound
from support import run_cli, signoff_env
from postgres_support import files_only

pytestmark = pytest.mark.usefixtures("running")

@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    yield from inspection_daemon(tmp_path_factory.mktemp("remote-inspection"))


@pytest.fixture(scope="module")
def runs(daemon: DaemonProcess) -> dict[str, dict]:
    finished = daemon.start_run("speak", user="alice")
    waiting = daemon.start_run("bob-reviews", user="alice")
    return {"finished": daemon.wait_end(finished["id"]),
            "waiting": daemon.wait_step(waiting["id"], "review", "waiting")}


@pytest.fixture
def nowhere(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty directory, the current one, with no SIGNOFF_* in the environment: no data, no repo, no config."""
    for name in [name for name in os.environ if name.startswith("SIGNOFF_")]:
        monkeypatch.delenv(name)
    place = tmp_path / "elsewhere"
    place.mkdir()
    monkeypatch.chdir(place)
    return place


def invoke(args: list[str], env: dict[str, str] | None = None) -> tuple[int, bytes]:
    result = CliRunner().invoke(build(), args, env=env, catch_exceptions=False)
    return result.exit_code, result.stdout_bytes


def both(daemon: DaemonProcess, *args: str, user: str = "root") -> tuple[tuple[int, bytes], tuple[int, bytes]]:
    """(through the daemon as `user`, from the daemon's files): exit code and stdout of each."""
    remote = invoke([*args, "--server", daemon.url], env={"SIGNOFF_TOKEN": daemon.tokens[user]})
    local = invoke([*args, "--data", str(daemon.data), "--repo", str(daemon.repo)])
    return remote, local


@files_only
def test_every_inspection_command_prints_the_same_document_through_the_daemon(daemon: DaemonProcess, runs: dict,
                                                                               nowhere: Path) -> None:
    finished, waiting = runs["finished"]["id"], runs["waiting"]["id"]
    ref = runs["finished"]["steps"]["loud"]["outputs"]["stdout"]
    commands = [
        ["runs", "list", "--json"], ["runs", "list", "--flow", "speak", "--limit", "1", "--json"],
        ["runs", "list", "--status", "waiting", "--json"], ["runs", "show", finished, "--json"],
        ["runs", "show", waiting, "--events", "--json"], ["runs", "verify", finished, "--json"],
        ["logs", finished, "--json"], ["logs", finished, "talk", "--json"], ["resource", "get", ref, "--json"],
        ["releases", "--json"], ["releases", "--flow", "speak", "--json"], ["diff", "speak", "--ref", "feature", "--json"],
        ["runs", "show", finished], ["logs", finished], ["releases"], ["resource", "get", ref],
    ]
    for command in commands:
        remote, local = both(daemon, *command)
        assert remote == local, f"{command}:\nremote {remote[0]}: {remote[1][:600]!r}\nlocal {local[0]}: {local[1][:600]!r}"
        assert remote[0] == 0, command
    listed = json.loads(both(daemon, "runs", "list", "--json")[0][1])["runs"]
    assert {run["id"] for run in listed} >= {finished, waiting}
    logs = json.loads(both(daemon, "logs", finished, "--json")[0][1])
    assert logs["steps"][0]["stdout"] == "hello out\n" and logs["steps"][1]["stdout"] == "x" * 70000
    assert not (nowhere / ".signoff").exists()  # the remote reads made no data directory here


def test_resource_get_writes_the_same_bytes_through_the_daemon(daemon: DaemonProcess, runs: dict,
                                                               nowhere: Path) -> None:
    ref = runs["finished"]["steps"]["loud"]["outputs"]["stdout"]
    code, out = invoke(["resource", "get", ref, "-o", "copy.txt", "--json", "--server", daemon.url],
                       env={"SIGNOFF_TOKEN": daemon.tokens["alice"]})
    assert code == 0 and json.loads(out)["written_to"] == "copy.txt"
    assert (nowhere / "copy.txt").read_bytes() == b"x" * 70000


def test_a_user_sees_through_the_daemon_only_the_runs_they_may_see(daemon: DaemonProcess, runs: dict,
                                                                   nowhere: Path) -> None:
    waiting = runs["waiting"]["id"]
    (code, out), _ = both(daemon, "runs", "list", "--json", user="carol")
    assert code == 0 and waiting not in {run["id"] for run in json.loads(out)["runs"]}
    (code, out), _ = both(daemon, "runs", "list", "--json", user="bob")  # bob approves it: he sees it
    assert waiting in {run["id"] for run in json.loads(out)["runs"]}
    done = run_cli(["runs", "show", waiting, "--json", "--server", daemon.url], cwd=nowhere,
                   env={"SIGNOFF_TOKEN": daemon.tokens["carol"]})
    assert done.code == 1 and done.json["error"]["code"] == "not_found", done.err
    assert f"no run {waiting}" in done.err and "Traceback" not in done.err
    for command in (["runs", "verify", waiting], ["logs", waiting], ["runs", "show", waiting, "--events"]):
        with pytest.raises(NotFound, match=f"no run {waiting}"):
            invoke([*command, "--server", daemon.url], env={"SIGNOFF_TOKEN": daemon.tokens["carol"]})
    ref = runs["finished"]["steps"]["loud"]["outputs"]["stdout"]  # of alice's run, which carol may not see
    for target in (ref, "res://" + "0" * 64):
        for extra in ([], ["--json"], ["-o", "never.txt"]):
            with pytest.raises(NotFound, match="no resource"):
                invoke(["resource", "get", target, *extra, "--server", daemon.url],
                       env={"SIGNOFF_TOKEN": daemon.tokens["carol"]})
    assert not (nowhere / "never.txt").exists()


def test_a_local_read_with_no_data_directory_says_so_and_how_to_ask_a_daemon(nowhere: Path) -> None:
    done = run_cli(["runs", "list", "--json"], cwd=nowhere)
    assert done.code == 1, done.out
    assert done.json["error"]["code"] == "not_found"
    assert "no data directory at .signoff" in done.err and "--server" in done.err
    missing = nowhere / "not-here"
    for command in (["logs", "20200101t000000z-00000000"], ["runs", "verify", "20200101t000000z-00000000"],
                    ["resource", "get", "res://" + "0" * 64], ["runs", "show", "20200101t000000z-00000000"]):
        with pytest.raises(NotFound, match=f"no data directory at {missing}"):
            invoke([*command, "--data", str(missing)])
    assert not missing.exists() and not (nowhere / ".signoff").exists()


@files_only
def test_the_most_explicit_source_wins(daemon: DaemonProcess, runs: dict, nowhere: Path) -> None:
    finished = runs["finished"]["id"]
    # --data on the command line beats SIGNOFF_SERVER: the files, with no token at all
    code, out = invoke(["runs", "show", finished, "--json", "--data", str(daemon.data)],
                       env={"SIGNOFF_SERVER": "http://127.0.0.1:9"})
    assert code == 0 and json.loads(out)["id"] == finished
    # a config that names the daemon, whose data directory is not on this machine: its daemon
    config = nowhere / "signoff.yaml"
    config.write_text(f"server: {{host: 127.0.0.1, port: {daemon.port}}}\ndata: no-such-data\n")
    code, out = invoke(["runs", "show", finished, "--json", "--config", str(config)],
                       env={"SIGNOFF_TOKEN": daemon.tokens["alice"]})
    assert code == 0 and json.loads(out) == daemon.run(finished)


def test_runs_follow_and_pending_work_through_the_daemon(daemon: DaemonProcess, nowhere: Path) -> None:
    run_id = daemon.start_run("bob-reviews", user="alice")["id"]
    daemon.wait_step(run_id, "review", "waiting")
    environ = signoff_env(SIGNOFF_SERVER=daemon.url, SIGNOFF_TOKEN=daemon.tokens["alice"])
    follower = subprocess.Popen([sys.executable, "-m", "runner", "runs", "follow", run_id, "--json"], cwd=nowhere,
                                env=environ, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pending = run_cli(["pending", "--json"], cwd=nowhere,
                          env={"SIGNOFF_SERVER": daemon.url, "SIGNOFF_TOKEN": daemon.tokens["bob"]})
        assert pending.code == 0 and run_id in {item["run"] for item in pending.json["pending"]}
        assert daemon.decide(run_id, "review", "bob").status_code == 200
        out, err = follower.communicate(timeout=30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.communicate()
    assert follower.returncode == 0, err
    followed = json.loads(out)
    assert followed["id"] == run_id and followed["status"] == "succeeded"
    assert followed["steps"]["review"]["outputs"]["decided_by"] == "bob"
