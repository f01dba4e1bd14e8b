"""What a step's command inherits from the daemon: three descriptors and a clean environment
(issue 10 items 7 and 11, issue 9 item 11), through the real daemon (which runs on uvloop).

A background job a step starts (`nohup worker &`) must not keep the step, the run's lock or
any file of the data directory: the step ends when its shell does, another process can take
the run's lock, and the job's open descriptors are stdin, stdout and stderr only.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest

from daemon_support import DaemonProcess
from runner.children import child_environment
from runner.errors import RunLocked
from runner.runs.files import FileStore
from support import kill_quietly, pid_alive, wait_until

pytestmark = pytest.mark.usefixtures("running")

HOLDER = """
    name: holder
    steps:
      - id: start
        kind: shell
        run: |
          sleep 600 < /dev/null > /dev/null 2>&1 &
          echo "pid=$!" >> "$SIGNOFF_OUTPUT"
        timeout: 30s
      - id: done
        kind: callback
        timeout: 1h
        on_timeout: fail
    """


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    with DaemonProcess(tmp_path_factory.mktemp("children"), flows={"holder": HOLDER},
                       copy=["wait-for-worker"]) as process:
        yield process


@pytest.fixture
def leftovers():
    """Run ids whose background jobs the test started; they are killed afterwards."""
    run_ids: list[str] = []
    yield run_ids
    for run_id in run_ids:
        for pid in processes_of_run(run_id):
            kill_quietly(pid)


def processes_of_run(run_id: str) -> list[int]:
    """The live processes whose environment names the run (what its steps started)."""
    found = []
    needle = f"SIGNOFF_RUN_ID={run_id}".encode()
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            environ = Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if needle in environ.split(b"\0") and pid_alive(int(name)):
            found.append(int(name))
    return found


def open_files(pid: int) -> dict[int, str]:
    """`ls -l /proc/<pid>/fd`: descriptor number -> what it points at."""
    found = {}
    for name in os.listdir(f"/proc/{pid}/fd"):
        try:
            found[int(name)] = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
    return found


def test_the_wait_for_worker_example_returns_from_its_start_step_at_once(daemon: DaemonProcess, leftovers) -> None:
    run = daemon.start_run("wait-for-worker", {"seconds": 600})  # the worker sleeps ten minutes first
    leftovers.append(run["id"])
    daemon.wait_step(run["id"], "done", "waiting")
    record = daemon.run(run["id"])
    assert record["steps"]["start"]["status"] == "succeeded", record["steps"]["start"]
    assert record["steps"]["start"]["outputs"]["stdout"] == "worker started\n"
    workers = processes_of_run(run["id"])
    assert workers, "the worker should still be sleeping: the step did not wait for it"
    response = daemon.post_callback(daemon.callback_url(run, "done"), {"ok": True, "lines": 7})
    assert response.status_code == 202, response.text
    assert daemon.wait_end(run["id"])["status"] == "succeeded"


def test_a_background_job_holds_no_descriptor_of_the_daemon_or_the_run(daemon: DaemonProcess, leftovers) -> None:
    run = daemon.start_run("holder")
    leftovers.append(run["id"])
    record = daemon.wait_step(run["id"], "done", "waiting")
    job = int(record["steps"]["start"]["outputs"]["pid"])
    assert pid_alive(job)
    files = open_files(job)
    assert sorted(files) == [0, 1, 2], files
    data = str(daemon.data.resolve())
    assert not [target for target in files.values() if target.startswith(data)], files

    def take_the_lock():  # the daemon lets go of a parked run; the job must not keep it
        try:
            log = FileStore(daemon.data).open_log(run["id"])
        except RunLocked:
            return None
        log.close()
        return True

    wait_until(take_the_lock, timeout=20, what="the run's lock to be free while its background job lives")
    assert pid_alive(job)
    response = daemon.post_callback(daemon.callback_url(run, "done"), {"ok": True})
    assert response.status_code == 202, response.text
    assert daemon.wait_end(run["id"])["status"] == "succeeded"


# ---- the environment ------------------------------------------------------------------------------


def test_a_child_gets_the_passed_variables_then_the_steps_env_then_signoffs() -> None:
    parent = {"PATH": "/usr/bin", "HOME": "/home/x", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "UTC",
              "PAY_AUTH": "Bearer secret", "SIGNOFF_TOKEN": "t0ken", "USER": "x", "PYTHONPATH": "/p"}
    env = child_environment({"PATH": "/opt/bin", "GREETING": "hi", "SIGNOFF_STEP": "mine"},
                            {"SIGNOFF_STEP": "build", "SIGNOFF_RUN_ID": "r"}, parent=parent)
    assert env == {"PATH": "/opt/bin", "HOME": "/home/x", "LANG": "C.UTF-8", "LC_TIME": "en_GB.UTF-8", "TZ": "UTC",
                   "GREETING": "hi", "SIGNOFF_STEP": "build", "SIGNOFF_RUN_ID": "r"}


def test_a_child_of_a_bare_environment_still_has_a_path() -> None:
    assert child_environment({}, {}, parent={}) == {"PATH": os.defpath}


def test_commands_started_on_the_loop_never_close_a_descriptor_another_thread_opened() -> None:
    """Under uvloop, with git started from worker threads meanwhile (as the daemon's release reads do)."""
    import subprocess
    import threading

    import uvloop

    from runner.children import spawn
    from runner.steps.shell import kill_group

    errors: list[str] = []
    done = threading.Event()

    def start_processes() -> None:
        while not done.is_set():
            try:
                subprocess.run(["true"], check=True)
            except OSError as exc:  # EBADF on its own pipe: someone closed a descriptor twice
                errors.append(repr(exc))

    async def one(cut_short: bool) -> None:
        child = await spawn(["/bin/sh", "-c", "exec sleep 5" if cut_short else "echo hi"], cwd=Path("/"),
                            env={"PATH": os.defpath})
        try:
            if cut_short:
                await kill_group(child)
            else:
                await asyncio.gather(child.stdout.read(), child.stderr.read())
                await child.wait()
        finally:
            child.close()

    async def main() -> None:
        for _ in range(30):
            await asyncio.gather(*(one(k % 4 == 0) for k in range(10)))

    threads = [threading.Thread(target=start_processes) for _ in range(3)]
    for thread in threads:
        thread.start()
    try:
        uvloop.run(main())
    finally:
        done.set()
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
