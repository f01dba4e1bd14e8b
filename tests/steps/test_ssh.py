"""The `ssh` step against a real OpenSSH server on loopback (tests/sshd_support.py).

Flows run through `runner.runs.engine.Engine` over a real Store (support.Harness),
or through the real daemon (daemon_support.DaemonProcess). The server runs on
this machine, so the tests look at remote processes and files directly: a pid
written on the "host" is a pid here. Nothing is mocked.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from yamlcompat import YAML

import sshd_support
from sshd_support import Sshd

if not sshd_support.available():
    pytest.skip(f"{sshd_support.SSHD} is not installed (Debian: apt-get install openssh-server)",
                allow_module_level=True)

from daemon_support import DaemonProcess  # noqa: E402
from runner.steps.ssh.hosts import fingerprint  # noqa: E402
from runner.steps.ssh.step import detached_workers, kill_detached  # noqa: E402
from support import (Harness, free_port, harness_with_config, kill_quietly, pid_alive, read_pid,  # noqa: E402
                     wait_pid_gone, wait_until)
from postgres_support import files_only  # noqa: E402


@pytest.fixture(scope="module")
def sshd(tmp_path_factory: pytest.TempPathFactory):
    with Sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


def ssh_harness(tmp_path: Path, sshd: Sshd, **connections: dict) -> Harness:
    conns = {"vm": sshd.connection(), **connections}
    return harness_with_config(tmp_path, {"connections": conns})


def jobs_left(sshd: Sshd) -> list[str]:
    jobs = sshd.home / ".signoff" / "jobs"
    return sorted(p.name for p in jobs.iterdir()) if jobs.is_dir() else []


def kill_left_over(*pids: int | None) -> None:
    """kill_quietly for the pids a test found; a missing one (None) is skipped, never taken as 0 (our own group)."""
    for pid in pids:
        if pid:
            kill_quietly(pid)


def host_fingerprint(sshd: Sshd) -> str:
    listed = subprocess.run(["ssh-keygen", "-l", "-f", f"{sshd.host_key}.pub"], capture_output=True, text=True,
                            check=True).stdout
    return listed.split()[1]


# ---- commands, output, exit codes -----------------------------------------------------


def test_a_command_its_output_streamed_and_its_outputs(tmp_path, sshd):
    harness = ssh_harness(tmp_path, sshd)
    record = harness.run("""\
name: ssh-basics
steps:
  - id: hello
    kind: ssh
    connection: vm
    run: |
      echo "hello from $(hostname)"
      echo warning >&2
      echo "where=$SIGNOFF_STEP" >> "$SIGNOFF_OUTPUT"
    timeout: 30s
  - id: big
    kind: ssh
    connection: vm
    run: head -c 200000 /dev/zero | tr '\\0' a; echo; echo last line
  - id: data
    kind: ssh
    connection: vm
    output: json
    run: |
      echo '{"items": [1, 2, 3]}'
""")
    assert record["status"] == "succeeded", record["error"]
    hello = record["steps"]["hello"]["outputs"]
    assert hello["exit_code"] == 0
    assert hello["stdout"].startswith("hello from ")
    assert hello["stderr"] == "warning\n"
    assert hello["where"] == "hello"
    streamed = "".join(text for step, stream, text in harness.outputs if step == "hello" and stream == "stdout")
    assert streamed == hello["stdout"]
    big = record["steps"]["big"]["outputs"]
    assert big["stdout"].startswith("res://") and big["stdout_bytes"] == 200000 + len("\nlast line\n")
    assert big["stdout_tail"].endswith("aaa\nlast line\n")
    assert harness.store.resource_path(big["stdout"]).read_bytes().count(b"a") == 200000 + 1
    assert record["steps"]["data"]["outputs"]["json"] == {"items": [1, 2, 3]}
    live = [e for e in harness.history(record["id"]) if e["type"] == "step_output" and e["step"] == "hello"]
    assert "".join(e["text"] for e in live if e["stream"] == "stdout") == hello["stdout"]  # for --follow
    assert jobs_left(sshd) == []  # each command's job directory on the host is removed


def test_a_non_zero_exit_code_fails_the_step(tmp_path, sshd):
    harness = ssh_harness(tmp_path, sshd)
    record = harness.run("""\
name: ssh-exit
steps:
  - id: broken
    kind: ssh
    connection: vm
    run: echo partial; echo "it broke" >&2; exit 3
  - id: never
    kind: set
    values: {reached: true}
""")
    assert record["status"] == "failed"
    step = record["steps"]["broken"]
    assert step["status"] == "failed" and step["attempts"] == 1
    assert step["outputs"]["exit_code"] == 3 and step["outputs"]["stdout"] == "partial\n"
    assert step["error"] == "exit code 3: it broke"
    assert record["steps"]["never"]["status"] == "pending"


def test_env_cwd_and_an_input_with_quotes_substitutions_and_newlines(tmp_path, sshd):
    marker = tmp_path / "injected"
    remote = tmp_path / "remote-dir"
    remote.mkdir()
    nasty = f"it's \"quoted\" $(touch {marker}) `touch {marker}` ; touch {marker}\nsecond line $HOME"
    harness = ssh_harness(tmp_path, sshd)
    flow = harness.flow(f"""\
name: ssh-quoting
inputs:
  x: {{type: string}}
env:
  FROM_FLOW: flow level
steps:
  - id: echo
    kind: ssh
    connection: vm
    cwd: {remote}
    env:
      WEIRD: ${{{{ inputs.x }}}}
      LITERAL: "$HOME and 'single' quotes"
    run: |
      printf '[%s]' ${{{{ inputs.x }}}} > args.txt
      printf '%s' "$WEIRD" > env.txt
      printf '%s|%s' "$LITERAL" "$FROM_FLOW" > literal.txt
      pwd > cwd.txt
""")
    record = asyncio.run(harness.engine.advance(harness.start(flow, {"x": nasty})))
    assert record["status"] == "succeeded", record["error"]
    assert (remote / "args.txt").read_text() == f"[{nasty}]"  # one argument, byte for byte
    assert (remote / "env.txt").read_text() == nasty
    assert (remote / "literal.txt").read_text() == "$HOME and 'single' quotes|flow level"
    assert (remote / "cwd.txt").read_text().strip() == str(remote)
    assert not marker.exists()


# ---- killing remote processes ----------------------------------------------------------


def test_a_timeout_kills_the_remote_process_group(tmp_path, sshd):
    pid_file, shell_pid_file, stubborn_file = tmp_path / "sleep.pid", tmp_path / "shell.pid", tmp_path / "stubborn.pid"
    harness = ssh_harness(tmp_path, sshd)
    record = harness.run(f"""\
name: ssh-timeout
steps:
  - id: slow
    kind: ssh
    connection: vm
    run: |
      echo $$ > {shell_pid_file}
      sleep 300 & echo $! > {pid_file}
      sh -c 'trap "" TERM; echo $$ > {stubborn_file}; while :; do sleep 1; done' &
      wait
    timeout: 2s
""")
    pids = [read_pid(pid_file), read_pid(shell_pid_file), read_pid(stubborn_file)]  # the last one ignores SIGTERM
    try:
        assert record["status"] == "failed"
        assert record["steps"]["slow"]["status"] == "timed_out"
        assert None not in pids
        for pid in pids:
            wait_pid_gone(pid)
        wait_until(lambda: jobs_left(sshd) == [], what="the job directory to be removed")
    finally:
        for pid in filter(None, pids):
            kill_quietly(pid)


def test_cancelling_a_run_through_the_daemon_kills_the_remote_command(daemon, tmp_path):
    pid_file = tmp_path / "sleep.pid"
    run = daemon.start_run("ssh-sleeper", {"pid_file": str(pid_file)})
    try:
        wait_until(lambda: read_pid(pid_file), what="the remote command to start")
        response = daemon.api("alice").post(f"/api/v1/runs/{run['id']}/cancel")
        assert response.status_code == 200, response.text
        ended = daemon.wait_end(run["id"])
        assert ended["status"] == "cancelled"
        assert ended["steps"]["sleep"]["status"] == "cancelled"
        wait_pid_gone(read_pid(pid_file))
    finally:
        kill_left_over(read_pid(pid_file))


def test_kill_detached_stops_a_detached_worker(tmp_path, sshd):
    pid_file = tmp_path / "worker.pid"
    harness = ssh_harness(tmp_path, sshd)
    flow = harness.flow(f"""\
name: ssh-detached
steps:
  - id: start
    kind: ssh
    connection: vm
    detach: true
    run: echo started; sleep 300 & echo $! > {pid_file}; wait
""")
    record = asyncio.run(harness.engine.advance(harness.start(flow)))
    outputs = record["steps"]["start"]["outputs"]
    try:
        assert record["status"] == "succeeded", record["error"]
        assert outputs["host"] == sshd.host and outputs["connection"] == "vm"
        assert pid_alive(outputs["pid"])
        sleeper = wait_until(lambda: read_pid(pid_file), what="the worker to start")
        wait_until(lambda: "started" in Path(outputs["log"]).read_text(), what="the worker's log")
        assert detached_workers(record, flow) == [("start", outputs)]
        assert asyncio.run(kill_detached(harness.config, outputs)) in ("killed", "terminated")
        wait_pid_gone(sleeper)
        wait_pid_gone(outputs["pid"])
        assert Path(outputs["log"]).exists()  # the log stays for a post-mortem
        assert asyncio.run(kill_detached(harness.config, outputs)) in ("ended", "gone")
    finally:
        kill_left_over(read_pid(pid_file), outputs.get("pid"))


# ---- host keys, authentication, connections --------------------------------------------


def test_a_changed_host_key_is_refused_with_its_fingerprint_and_not_retried(tmp_path, sshd):
    wrong = tmp_path / "known_hosts_wrong"
    sshd.write_known_hosts((sshd.root / "other_ed25519.pub").read_text(), wrong)
    harness = ssh_harness(tmp_path, sshd, vm=sshd.connection(known_hosts=str(wrong)))
    record = harness.run("""\
name: ssh-mitm
steps:
  - id: probe
    kind: ssh
    connection: vm
    run: echo should not run
    retry: {attempts: 3, backoff: 1s}
""")
    step = record["steps"]["probe"]
    assert record["status"] == "failed"
    assert step["attempts"] == 1 and harness.clock.slept == []
    assert "CHANGED" in step["error"] and sshd.known_name in step["error"]
    assert host_fingerprint(sshd) in step["error"]


def test_an_unknown_host_is_refused_unless_accept_new_is_explicit(tmp_path, sshd):
    empty = tmp_path / "known_hosts_empty"
    empty.write_text("")
    learned = tmp_path / "learned" / "known_hosts"
    harness = ssh_harness(tmp_path, sshd, strict=sshd.connection(known_hosts=str(empty)),
                          tofu=sshd.connection(known_hosts=str(learned), insecure_accept_new=True),
                          after=sshd.connection(known_hosts=str(learned)))
    refused = harness.run("""\
name: ssh-unknown
steps:
  - {id: probe, kind: ssh, connection: strict, run: "true", retry: {attempts: 3, backoff: 1s}}
""")
    step = refused["steps"]["probe"]
    assert step["attempts"] == 1 and "unknown" in step["error"]
    assert sshd.known_name in step["error"] and host_fingerprint(sshd) in step["error"]
    assert empty.read_text() == ""

    accepted = harness.run("""\
name: ssh-tofu
steps:
  - {id: first, kind: ssh, connection: tofu, run: echo one}
  - {id: then-strict, kind: ssh, connection: after, run: echo two}
""")
    assert accepted["status"] == "succeeded", accepted["error"]
    assert learned.read_text().split() == [sshd.known_name, *sshd.host_public.split()[:2]]


def test_a_wrong_client_key_is_refused_without_retries(tmp_path, sshd):
    harness = ssh_harness(tmp_path, sshd, vm=sshd.connection(key_file=str(sshd.other_key)))
    before = sshd.connections_seen()
    record = harness.run("""\
name: ssh-badkey
steps:
  - id: probe
    kind: ssh
    connection: vm
    run: echo should not run
    retry: {attempts: 3, backoff: 1s}
""")
    step = record["steps"]["probe"]
    assert record["status"] == "failed"
    assert step["attempts"] == 1 and harness.clock.slept == []
    assert "authentication failed" in step["error"]
    wait_until(lambda: sshd.connections_seen() - before == 1, what="sshd to log the one connection")


def test_a_refused_connection_is_retried(tmp_path, sshd):
    closed = free_port()
    harness = ssh_harness(tmp_path, sshd, down=sshd.connection(port=closed))
    record = harness.run("""\
name: ssh-down
steps:
  - {id: probe, kind: ssh, connection: down, run: "true", retry: {attempts: 2, backoff: 1s}}
""")
    step = record["steps"]["probe"]
    assert step["status"] == "failed" and step["attempts"] == 2
    assert str(closed) in step["error"]


def test_a_live_only_connection_is_refused_for_a_draft_before_connecting(tmp_path, sshd):
    harness = ssh_harness(tmp_path, sshd, prod=sshd.connection(live_only=True))
    text = """\
name: ssh-live-only
steps:
  - {id: deploy, kind: ssh, connection: prod, run: echo deployed, retry: {attempts: 3, backoff: 1s}}
"""
    before = sshd.connections_seen()
    draft = harness.run(text, draft=True)
    assert draft["status"] == "failed"
    assert draft["steps"]["deploy"]["attempts"] == 1
    assert "live_only" in draft["error"] and "nothing was sent" in draft["error"]
    assert sshd.connections_seen() == before
    live = harness.run(text, draft=False)
    assert live["status"] == "succeeded", live["error"]


def test_upload_download_and_a_jump_host(tmp_path, sshd):
    remote = tmp_path / "remote"
    remote.mkdir()
    harness = ssh_harness(tmp_path, sshd, inner=sshd.connection(jump="vm"))
    (harness.engine.work_dir / "in.txt").write_text("hello over sftp\n")
    record = harness.run(f"""\
name: ssh-files
steps:
  - id: shout
    kind: ssh
    connection: inner
    cwd: {remote}
    upload:
      - {{from: in.txt, to: {remote}/sub/in.txt}}
    download:
      - {{from: out.txt}}
      - {{from: {remote}/sub/in.txt, to: original.txt}}
    run: tr a-z A-Z < sub/in.txt > out.txt
""")
    assert record["status"] == "succeeded", record["error"]
    downloads = record["steps"]["shout"]["outputs"]["downloads"]
    assert set(downloads) == {"out.txt", "original.txt"}
    assert harness.store.resource_path(downloads["out.txt"]).read_text() == "HELLO OVER SFTP\n"
    assert harness.store.resource_path(downloads["original.txt"]).read_text() == "hello over sftp\n"
    assert "Accepted publickey" in sshd.log_tail(200)

    missing = harness.run("""\
name: ssh-missing-download
steps:
  - {id: get, kind: ssh, connection: vm, run: "true", download: [{from: /nonexistent/file}]}
""")
    assert missing["status"] == "failed" and "/nonexistent/file does not exist" in missing["error"]


def descendants(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def test_a_pooled_connection_that_stopped_answering_is_replaced(tmp_path, sshd, caplog):
    caplog.set_level(logging.INFO, logger="runner.steps.ssh.session")
    harness = ssh_harness(tmp_path, sshd, quick=sshd.connection(connect_timeout="2s"))
    flow = harness.flow("""\
name: ssh-pool
steps:
  - {id: probe, kind: ssh, connection: quick, run: echo $PPID}
""")
    first = asyncio.run(harness.engine.advance(harness.start(flow)))
    assert first["status"] == "succeeded", first["error"]
    frozen = descendants(sshd.process.pid)  # every open connection's sshd processes, the pooled one too
    assert frozen
    try:
        for pid in frozen:
            os.kill(pid, signal.SIGSTOP)
        again = asyncio.run(harness.engine.advance(harness.start(flow)))
        assert again["status"] == "succeeded", again["error"]
        assert again["steps"]["probe"]["attempts"] == 1
        assert "a pooled connection is gone" in caplog.text  # it was reused, found dead, and replaced
    finally:
        for pid in frozen:
            kill_quietly(pid)


def test_fingerprint_matches_ssh_keygen(sshd):
    import paramiko

    key = paramiko.Ed25519Key.from_private_key_file(str(sshd.host_key))
    assert fingerprint(key) == host_fingerprint(sshd)


# ---- detach + callback through the real daemon ------------------------------------------


SLEEPER = """\
name: ssh-sleeper
inputs:
  pid_file: {type: string}
steps:
  - id: sleep
    kind: ssh
    connection: vm
    run: sleep 300 & echo $! > ${{ inputs.pid_file }}; wait
    timeout: 5m
"""


def worker_flow(name: str, worker: str, *, callback_timeout: str = "5m") -> str:
    """A flow that detaches `worker` (shell, may use ${{ inputs.pid_file }} and ${{ inputs.release }})
    and then waits for the worker's callback at step `done`."""
    return f"""\
name: {name}
inputs:
  pid_file: {{type: string}}
  release: {{type: string, default: unused}}
steps:
  - id: start
    kind: ssh
    connection: vm
    detach: true
    run: |
{textwrap.indent(worker, "      ")}
  - id: done
    kind: callback
    timeout: {callback_timeout}
    on_timeout: fail
"""


# a long sleep in the worker's process group, its pid where the test can read it
SLEEPING_WORKER = "sleep 300 & echo $! > ${{ inputs.pid_file }}\nwait\n"
# calls back, then keeps running until the test creates the `release` file (at most a minute)
REPORTING_WORKER = """\
echo $$ > ${{ inputs.pid_file }}
python3 - <<'EOF'
import os, urllib.request
body, headers = b'{"ok": true}', {"Content-Type": "application/json"}
urllib.request.urlopen(urllib.request.Request(os.environ["SIGNOFF_CALLBACK_URL"], body, headers), timeout=30).close()
EOF
i=0
while [ ! -e ${{ inputs.release }} ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done
"""
WORKER_FLOWS = {
    "ssh-worker-cancelled": worker_flow("ssh-worker-cancelled", SLEEPING_WORKER),
    "ssh-worker-silent": worker_flow("ssh-worker-silent", SLEEPING_WORKER, callback_timeout="2s"),
    "ssh-worker-reports": worker_flow("ssh-worker-reports", REPORTING_WORKER),
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, sshd: Sshd):
    root = tmp_path_factory.mktemp("ssh-daemon")
    process = DaemonProcess(root, flows={"ssh-sleeper": SLEEPER, **WORKER_FLOWS}, copy=["remote-worker-callback"],
                            channels={"ops-chat": {"kind": "log"}})
    config = YAML(typ="safe", pure=True).load(process.config_path.read_text())
    config["connections"] = {"vm": sshd.connection(), "build-vm": sshd.connection()}
    process.config_path.write_text(json.dumps(config, indent=2))
    with process:
        yield process


@files_only
def test_remote_worker_callback_survives_a_daemon_restart(daemon, sshd):
    """DESIGN §7 pattern 2: detach, the worker posts to the callback URL, results kept, ops notified."""
    run = daemon.start_run("remote-worker-callback", {"task": "check the disks", "work_seconds": 3})
    waiting = daemon.wait_step(run["id"], "done", "waiting")
    started = waiting["steps"]["start"]["outputs"]
    worker = started["pid"]
    try:
        assert started["host"] == sshd.host and started["callback"] == "done"
        assert Path(started["log"]).parent == Path(started["job"])
        assert pid_alive(worker)
        daemon.restart()  # the worker keeps running on the host, the run keeps waiting on disk
        ended = daemon.wait_end(run["id"], timeout=60)
        assert ended["status"] == "succeeded", ended["error"]
        payload = ended["steps"]["done"]["outputs"]["payload"]
        assert payload["ok"] is True and payload["summary"] == "check the disks: done"
        assert f"run: {run['id']}" in payload["report"]
        report = ended["steps"]["results"]["outputs"]["artifacts"]["report.md"]
        assert report.startswith("res://")
        assert "task: check the disks" in (daemon.data / "resources" / report[len("res://"):]).read_text()
        assert ended["steps"]["tell-ops"]["outputs"]["delivered"] is True
        wait_pid_gone(worker)  # it ended after reporting
    finally:
        kill_quietly(worker)


def test_the_worker_gets_its_run_step_and_callback_url(daemon, tmp_path):
    """The detached job's environment, read back from the job's own log."""
    flow = """\
name: ssh-env-probe
steps:
  - id: launch
    kind: ssh
    connection: vm
    detach: true
    run: echo "run=$SIGNOFF_RUN_ID step=$SIGNOFF_STEP url=$SIGNOFF_CALLBACK_URL"
  - id: other
    kind: set
    values: {x: 1}
  - id: report
    kind: callback
    timeout: 1m
    on_timeout: fail
"""
    (daemon.repo / "flows" / "ssh-env-probe.yaml").write_text(flow)
    run = daemon.start_run("ssh-env-probe")
    waiting = daemon.wait_step(run["id"], "report", "waiting")
    log = Path(waiting["steps"]["launch"]["outputs"]["log"])
    url = daemon.callback_url(waiting, "report")
    wait_until(lambda: log.exists() and log.read_text().strip(), what="the job's log")
    assert log.read_text().strip() == f"run={run['id']} step=launch url={url}"
    done = subprocess.run([sys.executable, "-c", "import sys, urllib.request; urllib.request.urlopen("
                           "urllib.request.Request(sys.argv[1], b'{}', {'Content-Type': 'application/json'})).close()",
                           url], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done.stderr
    assert daemon.wait_end(run["id"])["status"] == "succeeded"
    os.unlink(daemon.repo / "flows" / "ssh-env-probe.yaml")


def detached_kills(daemon: DaemonProcess, run_id: str) -> list[dict]:
    return [e for e in daemon.events(run_id) if e["type"] == "detached_killed"]


def start_worker(daemon: DaemonProcess, flow: str, pid_file: Path) -> tuple[dict, dict]:
    """Start `flow`, wait for its callback step to wait; (the run, the detach step's outputs)."""
    run = daemon.start_run(flow, {"pid_file": str(pid_file)})
    waiting = daemon.wait_step(run["id"], "done", "waiting")
    assert waiting["steps"]["start"]["status"] == "succeeded"
    return run, waiting["steps"]["start"]["outputs"]


def test_cancelling_a_run_kills_its_detached_worker(daemon, tmp_path):
    pid_file = tmp_path / "sleep.pid"
    started: dict = {}
    try:
        run, started = start_worker(daemon, "ssh-worker-cancelled", pid_file)
        sleeper = wait_until(lambda: read_pid(pid_file), what="the worker's sleep to start")
        assert pid_alive(started["pid"]) and pid_alive(sleeper)
        response = daemon.api("alice").post(f"/api/v1/runs/{run['id']}/cancel")
        assert response.status_code == 200, response.text
        assert daemon.wait_end(run["id"])["status"] == "cancelled"
        wait_pid_gone(sleeper)
        wait_pid_gone(started["pid"])
        kills = wait_until(lambda: detached_kills(daemon, run["id"]), what="the detached_killed event")
        assert len(kills) == 1
        assert kills[0]["result"] in ("killed", "terminated")
        assert (kills[0]["step"], kills[0]["pid"], kills[0]["host"]) == ("start", started["pid"], started["host"])
        assert (Path(started["job"]) / "killed").exists()  # the kill's own mark in the job directory
    finally:
        kill_left_over(read_pid(pid_file), started.get("pid"))


def test_a_callback_timeout_kills_the_worker_that_never_reported(daemon, tmp_path):
    pid_file = tmp_path / "sleep.pid"
    started: dict = {}
    try:
        run, started = start_worker(daemon, "ssh-worker-silent", pid_file)
        sleeper = wait_until(lambda: read_pid(pid_file), what="the worker's sleep to start")
        ended = daemon.wait_end(run["id"], timeout=60)  # the callback's 2s timeout, on the daemon's own clock
        assert ended["status"] == "timed_out"
        assert ended["steps"]["done"]["status"] == "timed_out"
        wait_pid_gone(sleeper)
        wait_pid_gone(started["pid"])
        kills = wait_until(lambda: detached_kills(daemon, run["id"]), what="the detached_killed event")
        assert len(kills) == 1
        assert kills[0]["result"] in ("killed", "terminated")
        assert (kills[0]["step"], kills[0]["pid"]) == ("start", started["pid"])
    finally:
        kill_left_over(read_pid(pid_file), started.get("pid"))


def holds_for(predicate: Callable[[], object], seconds: float, what: str) -> None:
    """Fail as soon as `predicate` is false within the next `seconds` (a window to see something NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.05)


def test_a_worker_that_called_back_is_left_running(daemon, tmp_path):
    pid_file, release = tmp_path / "worker.pid", tmp_path / "release"
    run = daemon.start_run("ssh-worker-reports", {"pid_file": str(pid_file), "release": str(release)})
    started: dict = {}
    try:
        ended = daemon.wait_end(run["id"], timeout=60)
        assert ended["status"] == "succeeded", ended["error"]
        started = ended["steps"]["start"]["outputs"]
        worker = read_pid(pid_file)
        assert worker and pid_alive(worker) and pid_alive(started["pid"])  # still working after its report
        # the worker goes on until released: a kill on the run's end would land in this window
        holds_for(lambda: pid_alive(worker) and not detached_kills(daemon, run["id"]), 3.0,
                  "the daemon killed a worker whose callback had arrived")
        release.touch()
        exit_code = Path(started["job"]) / "exit_code"
        wait_until(exit_code.exists, what="the worker to end on its own")
        assert exit_code.read_text().strip() == "0"  # it ran to its end: no kill took it
        assert not (Path(started["job"]) / "killed").exists()
        wait_pid_gone(worker)
        assert detached_kills(daemon, run["id"]) == []
    finally:
        release.touch()
        kill_left_over(read_pid(pid_file), started.get("pid"))
