"""run.json as a fold of the run's events.

The engine changes a run only by appending an event and applying it here, so
the snapshot can always be rebuilt from events.jsonl: after a crash that left
the snapshot behind, and by `signoff runs verify` to prove the two agree.
"""

from __future__ import annotations

from typing import Any

from runner.status import RunStatus, StepStatus

RUN_FIELDS = ("id", "flow", "draft", "ref", "version", "commit", "dirty", "inputs", "started_by", "flow_sha256")
JOB_FIELDS = ("name", "connection", "host", "attempt", "detach")  # an ssh step's job (runner.steps.ssh.jobs)
KILL_FIELDS = ("step", "dir", "connection", "host", "pid", "detach", "reason")


def new_step_state() -> dict[str, Any]:
    return {"status": StepStatus.PENDING.value, "attempts": 0, "started_at": None, "finished_at": None,
            "outputs": {}, "error": None}


def apply(run: dict[str, Any], event: dict[str, Any]) -> None:
    """Apply one event to the run record in place."""
    kind, at = event["type"], event["at"]
    step = run["steps"].get(event["step"]) if "step" in event and run.get("steps") else None
    run["updated_at"] = at
    if kind == "run_created":
        run.update({name: event["run"].get(name) for name in RUN_FIELDS})
        run["dirty"] = bool(run["dirty"])  # logs written before the field existed: the content was the commit's
        run.update({"status": RunStatus.QUEUED.value, "created_at": at, "finished_at": None, "error": None,
                    "current_step": None, "steps_executed": 0, "routed": None,
                    "steps": {step_id: new_step_state() for step_id in event["run"]["step_ids"]}})
        if event["run"].get("callbacks"):
            run["callbacks"] = dict(event["run"]["callbacks"])
    elif kind == "run_started":
        run["status"] = RunStatus.RUNNING.value
    elif kind == "step_started":
        if event["attempt"] == 1:  # a new visit (first, or after a jump back): forget the last one
            step.clear()
            step.update(new_step_state())
            step["started_at"] = at
            run["steps_executed"] += 1
        step.update({"status": StepStatus.RUNNING.value, "attempts": event["attempt"], "error": None})
        step.pop("retry_at", None)  # the wait between attempts is over
        run["current_step"] = event["step"]
        run["status"] = RunStatus.RUNNING.value
    elif kind == "step_waiting":
        step.update({"status": StepStatus.WAITING.value, "wake_at": event["wake_at"], **event.get("state", {})})
        run["status"] = RunStatus.WAITING.value
    elif kind == "decision":
        if event["decision"] == "approve":
            step.setdefault("approvals", []).append(
                {"by": event["by"], "at": at, "comment": event.get("comment"), "inputs": event.get("inputs") or {}})
        if event.get("final"):
            step.update({"decision": event["decision"], "decided_by": event["decided_by"],
                         "comment": event.get("comment"), "inputs": event.get("inputs") or {}})
    elif kind == "callback_received":
        run.setdefault("callbacks_received", {})[event["step"]] = {
            "payload": event["payload"], "sha256": event["sha256"], "at": event.get("accepted_at", at)}
    elif kind == "step_retrying":
        step.update({"status": StepStatus.RUNNING.value, "error": event["error"], "retry_at": event["retry_at"]})
        _job_seen_through(step, succeeded=False)
    elif kind == "step_interrupted":
        step["error"] = event["reason"]
        _job_seen_through(step, interrupted=True)
    elif kind == "step_finished":
        step.update({"status": event["status"], "finished_at": at, "outputs": event.get("outputs") or {},
                     "error": event.get("error")})
        _job_seen_through(step, succeeded=event["status"] == StepStatus.SUCCEEDED.value,
                          interrupted=bool(event.get("interrupted")))
        if "payload" in step["outputs"]:
            step["payload"] = step["outputs"]["payload"]
        step.pop("wake_at", None)
        step.pop("retry_at", None)
        if run["status"] == RunStatus.WAITING.value:
            run["status"] = RunStatus.RUNNING.value
    elif kind == "step_skipped":
        step.update({"status": StepStatus.SKIPPED.value, "finished_at": at, "error": None,
                     "skip_reason": event["reason"]})
    elif kind == "run_finished":
        run.update({"status": event["status"], "error": event.get("error"), "finished_at": at,
                    "current_step": None})
    elif kind == "jump" and "outcome" in event:
        # on_reject / on_timeout routed the run: its handler path ends with this outcome (None clears it)
        run["routed"] = ({"outcome": event["outcome"], "step": event["step"], "error": event.get("error"), "at": at}
                         if event["outcome"] else None)
    elif kind == "routing_cleared":
        run["routed"] = None
    elif kind == "ssh_job_started":
        step["job"] = {**{key: event.get(key) for key in JOB_FIELDS}, "state": "starting"}
    elif kind == "detached_kill_requested":
        run.setdefault("kills", {})[event["job"]] = {
            **{key: event.get(key) for key in KILL_FIELDS}, "requested_at": at, "tries": 0, "result": None,
            "done_at": None}
    elif kind == "detached_killed":
        kill = (run.get("kills") or {}).get(event.get("job"))  # older records have no requests
        if kill is not None:
            kill.update({"tries": event.get("tries", kill["tries"] + 1), "result": event["result"]})
            if event.get("final", True):
                kill["done_at"] = at
    elif kind == "notification":
        if event.get("reminder") and step is not None:
            step["reminded_at"] = at  # the reminder of this wait went out: never again for it
    # other events (plain jumps, the other notifications, cancel_requested) are history only


def _job_seen_through(step: dict[str, Any], *, succeeded: bool = False, interrupted: bool = False) -> None:
    """The state of the step's ssh job (runner.steps.ssh.jobs) once its attempt is over."""
    job = step.get("job")
    if not job or job["state"] != "starting":
        return  # no job, or one a restart cut short that the next attempt settles (or a kill request)
    if interrupted:
        job["state"] = "interrupted"
    else:
        job["state"] = "detached" if succeeded and job.get("detach") else "ended"


def fold(events: list[dict[str, Any]]) -> dict[str, Any]:
    run: dict[str, Any] = {}
    for event in events:
        apply(run, event)
    return run
