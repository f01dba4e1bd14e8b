"""run.json as a fold of the run's events.

The engine changes a run only by appending an event and applying it here, so
the snapshot can always be rebuilt from events.jsonl: after a crash that left
the snapshot behind, and by `signoff runs verify` to prove the two agree.

Each event type has one applier; a type without one (plain jumps, most
notifications, cancel_requested) is history only.
"""

from __future__ import annotations

from typing import Any, Callable

from runner.status import EventType, RunStatus, StepStatus

__all__ = ["EventType", "apply", "fold", "new_step_state"]

RUN_FIELDS = ("id", "flow", "draft", "ref", "version", "commit", "dirty", "inputs", "started_by", "flow_sha256")
JOB_FIELDS = ("name", "connection", "host", "attempt", "detach")  # an ssh step's job (runner.steps.ssh.jobs)
KILL_FIELDS = ("step", "dir", "connection", "host", "pid", "detach", "reason")
# the values, read once: an enum member's attribute lookup costs more than the fold of a simple event
_PENDING, _RUNNING, _WAITING = StepStatus.PENDING.value, StepStatus.RUNNING.value, StepStatus.WAITING.value
_SKIPPED, _SUCCEEDED = StepStatus.SKIPPED.value, StepStatus.SUCCEEDED.value
_RUN_QUEUED, _RUN_RUNNING, _RUN_WAITING = RunStatus.QUEUED.value, RunStatus.RUNNING.value, RunStatus.WAITING.value

Applier = Callable[[dict[str, Any], dict[str, Any], Any, str], None]  # (run, event, its step's state, at)


def new_step_state() -> dict[str, Any]:
    return {"status": _PENDING, "attempts": 0, "started_at": None, "finished_at": None, "outputs": {}, "error": None}


def apply(run: dict[str, Any], event: dict[str, Any]) -> None:
    """Apply one event to the run record in place."""
    at = event["at"]
    step = run["steps"].get(event["step"]) if "step" in event and run.get("steps") else None
    run["updated_at"] = at
    applier = _APPLIERS.get(event["type"])
    if applier is not None:
        applier(run, event, step, at)


def fold(events: list[dict[str, Any]]) -> dict[str, Any]:
    run: dict[str, Any] = {}
    for event in events:
        apply(run, event)
    return run


def _run_created(run: dict, event: dict, step: Any, at: str) -> None:
    run.update({name: event["run"].get(name) for name in RUN_FIELDS})
    run["dirty"] = bool(run["dirty"])  # logs written before the field existed: the content was the commit's
    run.update({"status": _RUN_QUEUED, "created_at": at, "finished_at": None, "error": None,
                "current_step": None, "steps_executed": 0, "routed": None,
                "steps": {step_id: new_step_state() for step_id in event["run"]["step_ids"]}})
    if event["run"].get("callbacks"):
        run["callbacks"] = dict(event["run"]["callbacks"])


def _run_started(run: dict, event: dict, step: Any, at: str) -> None:
    run["status"] = _RUN_RUNNING


def _step_started(run: dict, event: dict, step: Any, at: str) -> None:
    if event["attempt"] == 1:  # a new visit (first, or after a jump back): forget the last one
        step.clear()
        step.update(new_step_state())
        step["started_at"] = at
        run["steps_executed"] += 1
    step.update({"status": _RUNNING, "attempts": event["attempt"], "error": None})
    step.pop("retry_at", None)  # the wait between attempts is over
    run["current_step"] = event["step"]
    run["status"] = _RUN_RUNNING


def _step_waiting(run: dict, event: dict, step: Any, at: str) -> None:
    step.update({"status": _WAITING, "wake_at": event["wake_at"], **event.get("state", {})})
    run["status"] = _RUN_WAITING


def _decision(run: dict, event: dict, step: Any, at: str) -> None:
    if event["decision"] == "approve":
        step.setdefault("approvals", []).append(
            {"by": event["by"], "at": at, "comment": event.get("comment"), "inputs": event.get("inputs") or {}})
    if event.get("final"):
        step.update({"decision": event["decision"], "decided_by": event["decided_by"],
                     "comment": event.get("comment"), "inputs": event.get("inputs") or {}})


def _callback_received(run: dict, event: dict, step: Any, at: str) -> None:
    run.setdefault("callbacks_received", {})[event["step"]] = {
        "payload": event["payload"], "sha256": event["sha256"], "at": event.get("accepted_at", at)}


def _step_retrying(run: dict, event: dict, step: Any, at: str) -> None:
    step.update({"status": _RUNNING, "error": event["error"], "retry_at": event["retry_at"]})
    _job_seen_through(step, succeeded=False)


def _step_interrupted(run: dict, event: dict, step: Any, at: str) -> None:
    step["error"] = event["reason"]
    _job_seen_through(step, interrupted=True)


def _step_finished(run: dict, event: dict, step: Any, at: str) -> None:
    step.update({"status": event["status"], "finished_at": at, "outputs": event.get("outputs") or {},
                 "error": event.get("error")})
    _job_seen_through(step, succeeded=event["status"] == _SUCCEEDED, interrupted=bool(event.get("interrupted")))
    if "payload" in step["outputs"]:
        step["payload"] = step["outputs"]["payload"]
    step.pop("wake_at", None)
    step.pop("retry_at", None)
    if run["status"] == _RUN_WAITING:
        run["status"] = _RUN_RUNNING


def _step_skipped(run: dict, event: dict, step: Any, at: str) -> None:
    step.update({"status": _SKIPPED, "finished_at": at, "error": None, "skip_reason": event["reason"]})


def _run_finished(run: dict, event: dict, step: Any, at: str) -> None:
    run.update({"status": event["status"], "error": event.get("error"), "finished_at": at, "current_step": None})


def _jump(run: dict, event: dict, step: Any, at: str) -> None:
    if "outcome" in event:
        # on_reject / on_timeout routed the run: its handler path ends with this outcome (None clears it)
        run["routed"] = ({"outcome": event["outcome"], "step": event["step"], "error": event.get("error"), "at": at}
                         if event["outcome"] else None)


def _routing_cleared(run: dict, event: dict, step: Any, at: str) -> None:
    run["routed"] = None


def _ssh_job_started(run: dict, event: dict, step: Any, at: str) -> None:
    step["job"] = {**{key: event.get(key) for key in JOB_FIELDS}, "state": "starting"}


def _detached_kill_requested(run: dict, event: dict, step: Any, at: str) -> None:
    run.setdefault("kills", {})[event["job"]] = {
        **{key: event.get(key) for key in KILL_FIELDS}, "requested_at": at, "tries": 0, "result": None,
        "done_at": None}


def _detached_killed(run: dict, event: dict, step: Any, at: str) -> None:
    kill = (run.get("kills") or {}).get(event.get("job"))  # older records have no requests
    if kill is not None:
        kill.update({"tries": event.get("tries", kill["tries"] + 1), "result": event["result"]})
        if event.get("final", True):
            kill["done_at"] = at


def _notification(run: dict, event: dict, step: Any, at: str) -> None:
    if event.get("reminder") and step is not None:
        step["reminded_at"] = at  # the reminder of this wait went out: never again for it


def _job_seen_through(step: dict[str, Any], *, succeeded: bool = False, interrupted: bool = False) -> None:
    """The state of the step's ssh job (runner.steps.ssh.jobs) once its attempt is over."""
    job = step.get("job")
    if not job or job["state"] != "starting":
        return  # no job, or one a restart cut short that the next attempt settles (or a kill request)
    if interrupted:
        job["state"] = "interrupted"
    else:
        job["state"] = "detached" if succeeded and job.get("detach") else "ended"


_APPLIERS: dict[str, Applier] = {
    EventType.RUN_CREATED: _run_created,
    EventType.RUN_STARTED: _run_started,
    EventType.STEP_STARTED: _step_started,
    EventType.STEP_WAITING: _step_waiting,
    EventType.DECISION: _decision,
    EventType.CALLBACK_RECEIVED: _callback_received,
    EventType.STEP_RETRYING: _step_retrying,
    EventType.STEP_INTERRUPTED: _step_interrupted,
    EventType.STEP_FINISHED: _step_finished,
    EventType.STEP_SKIPPED: _step_skipped,
    EventType.RUN_FINISHED: _run_finished,
    EventType.JUMP: _jump,
    EventType.ROUTING_CLEARED: _routing_cleared,
    EventType.SSH_JOB_STARTED: _ssh_job_started,
    EventType.DETACHED_KILL_REQUESTED: _detached_kill_requested,
    EventType.DETACHED_KILLED: _detached_killed,
    EventType.NOTIFICATION: _notification,
}
