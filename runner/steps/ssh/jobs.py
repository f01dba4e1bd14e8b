"""Jobs the ssh step leaves on hosts, and their durable kills.

A detached job outlives its step by design, and any ssh job outlives a daemon
that dies while its step runs: closing a connection kills nothing on the host.
So the ssh step records each job before it starts it there (`ssh_job_started`:
job name, connection, host, attempt, detach; fsynced), and the run's record
(runner.runs.events) keeps:

- `steps.<id>.job`: the step's latest job and its `state`: `starting` (its
  attempt is running), `interrupted` (a restart cut that attempt short, so
  nobody watches the job), `detached` (a detached job that started: it works
  on its own) or `ended` (the step saw it end, or killed it).
- `kills`: by job name, each kill requested, and its result once done.

`leftovers` (the engine asks it for every event it records) turns what an
event leaves behind into `detached_kill_requested` events, which the engine
writes in the same batch as that event, after it has put the run on the
store's short list of runs with outstanding kills:

- a run that ends other than `succeeded`: its detached workers whose callback
  has not arrived;
- a callback step that times out: the detached workers reporting to it;
- a step (or a run) that ends with a job a restart cut short: that job.

The daemon carries each request out (`kill`) and records `detached_killed`;
at start-up it sweeps that short list (runner.runs.kills), so a crash or a stop
between the request and the kill loses nothing, and a kill is recorded once.
A kill that cannot reach the host is recorded with `result: failed: ...` and
tried again at the next start-up, MAX_KILL_TRIES in all. `run --local` has
no daemon: it carries its run's requests out itself as the run ends (runner.runs.kills).

A retried ssh step first settles the job of the attempt a restart cut short
(`cut_short`; the kind calls `claim_job` / `kill_job`): a
detached job that started is adopted (the step returns its pid and log, with
`adopted: true`) instead of starting a second one; one that never started is
fenced so that it never does; a command that was not detached is killed.
Only then does the new attempt start a job of its own.

`kill_job` and `claim_job` always talk to the host over a new connection (never
a pooled one), with the scripts of runner.steps.ssh.scripts. The blocking calls
run on the threads of the caller's SshPool.
"""

from __future__ import annotations

import posixpath
import shlex
from typing import Any

from runner.errors import SignoffError, StepFailed
from runner.steps.ssh.hosts import Hop, route
from runner.steps.ssh.pool import SshPool, settled
from runner.steps.ssh.scripts import claim_script, job_dir, kill_script
from runner.steps.ssh.session import Session, capture
from runner.status import RunStatus, StepStatus

MAX_KILL_TRIES = 3


def cut_short(state: dict[str, Any]) -> dict[str, Any] | None:
    """The job of an attempt of this step that a restart cut short, if one may still be on its host."""
    job = state.get("job") or {}
    return job if job.get("state") == "interrupted" else None


def detached_workers(run: dict[str, Any], flow: Any, *,
                     callback: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(step id, outputs) of the run's detached ssh jobs that may still be running.

    Those that started and whose callback has not arrived; with `callback`, only
    the ones reporting to that callback step. Hand each outputs to kill_detached.
    """
    received = run.get("callbacks_received") or {}
    found = []
    for step in flow.steps:
        if step.kind != "ssh":
            continue
        state = (run.get("steps") or {}).get(step.id) or {}
        outputs = state.get("outputs") or {}
        if state.get("status") != StepStatus.SUCCEEDED or not outputs.get("job") or not outputs.get("pid"):
            continue
        target = outputs.get("callback")
        if (target and target in received) or (callback is not None and target != callback):
            continue
        found.append((step.id, outputs))
    return found


def leftovers(run: dict[str, Any], flow: Any, event: dict[str, Any]) -> list[dict[str, Any]]:
    """The kill requests (events to record with `event`, in its batch) for what `event` leaves running."""
    kind = event["type"]
    if kind == "run_finished":
        found = [_from_outputs(step_id, outputs, f"the run ended {event['status']}")
                 for step_id, outputs in detached_workers(run, flow)] if event["status"] != RunStatus.SUCCEEDED else []
        found += [_from_job(step_id, job) for step_id, job in _cut_short_jobs(run)]
    elif kind == "step_finished" and event["step"] in run.get("steps", {}):
        found = [_from_job(step_id, job) for step_id, job in _cut_short_jobs(run) if step_id == event["step"]]
        if event["status"] == StepStatus.TIMED_OUT and flow.step(event["step"]).kind == "callback":
            found += [_from_outputs(step_id, outputs, f"its callback '{event['step']}' timed out")
                      for step_id, outputs in detached_workers(run, flow, callback=event["step"])]
    else:
        return []
    requested, requests = set(run.get("kills") or {}), []
    for request in found:
        if request["job"] not in requested:
            requested.add(request["job"])
            requests.append({"type": "detached_kill_requested", **request})
    return requests


def _cut_short_jobs(run: dict[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    return [(step_id, state["job"]) for step_id, state in (run.get("steps") or {}).items() if cut_short(state)]


def _from_outputs(step_id: str, outputs: dict[str, Any], reason: str) -> dict[str, Any]:
    """A request for a detached worker, from its step's outputs."""
    path = str(outputs["job"])
    return {"step": step_id, "job": posixpath.basename(path.rstrip("/")), "dir": path,
            "connection": outputs.get("connection"), "host": outputs.get("host"), "pid": outputs.get("pid"),
            "detach": True, "reason": reason}


def _from_job(step_id: str, job: dict[str, Any]) -> dict[str, Any]:
    """A request for a job recorded by `ssh_job_started` whose attempt a restart cut short."""
    return {"step": step_id, "job": job["name"], "dir": None, "connection": job.get("connection"),
            "host": job.get("host"), "pid": None, "detach": bool(job.get("detach")),
            "reason": "a restart cut its step short"}


def kill_job(hops: list[Hop], dir_expr: str, remove: bool) -> str:
    """Kill a job's process group over a new connection; what happened (killed, ended, not-started...)."""
    session = Session(hops).open()
    try:
        code, out, err = capture(session, kill_script(dir_expr, remove=remove))
    finally:
        session.close()
    if code != 0:
        raise StepFailed(f"ssh {hops[-1].label}: killing the job failed ({code}): {err.strip()[:300]}")
    return out.strip() or "unknown"


def claim_job(hops: list[Hop], dir_expr: str) -> dict[str, str]:
    """Over a new connection: a detached job's `pid` and `job` (its directory) if it started, else {}.

    A job that has not started is fenced: it never will (a retry adopts or replaces, see above).
    """
    session = Session(hops).open()
    try:
        code, out, err = capture(session, claim_script(dir_expr))
    finally:
        session.close()
    if code != 0:
        raise StepFailed(f"ssh {hops[-1].label}: looking for the earlier job failed ({code}): {err.strip()[:300]}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


async def kill(config: Any, request: dict[str, Any], *, draft: bool, pool: SshPool) -> dict[str, Any]:
    """Carry out a kill request over a new connection; the fields of its `detached_killed` event.

    `result` is what happened on the host (killed, terminated, gone, ended or
    not-started), or `failed: ...` when the host could not be reached; `final`
    says whether the request is settled (a failed one is tried again at the
    next start-up, MAX_KILL_TRIES in all). The blocking part runs on `pool`'s threads.
    """
    tries = int(request.get("tries") or 0) + 1
    try:
        hops = route(config, str(request["connection"]), draft=draft)
        where = shlex.quote(request["dir"]) if request.get("dir") else job_dir(shlex.quote(request["job"]))
        result = await settled(pool.in_thread(kill_job, hops, where, not request.get("detach", True)))
        final = True
    except SignoffError as exc:  # an unreachable host is recorded, never fatal
        result, final = f"failed: {exc.message}", tries >= MAX_KILL_TRIES
    return {"step": request.get("step"), "job": request["job"], "host": request.get("host"),
            "pid": request.get("pid"), "result": result, "tries": tries, "final": final}
