"""Run and step statuses and the types of run events: stored and printed as these lowercase strings.

They are `StrEnum`s, so a member is the very string it stands for: it compares
equal to what is read back from disk, and it is written as that string.
"""

from __future__ import annotations

from enum import StrEnum


class RunStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"


class StepStatus(StrEnum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"


class EventType(StrEnum):
    """The `type` of each line of a run's events.jsonl (runner.runs.events folds them into run.json).

    It lives here, beside the statuses, because step kinds (below runs/ in the layering) make
    events too; `runner.runs.events.EventType` is the same class.
    """

    RUN_CREATED = "run_created"
    RUN_STARTED = "run_started"
    RUN_FINISHED = "run_finished"
    STEP_STARTED = "step_started"
    STEP_OUTPUT = "step_output"
    STEP_WAITING = "step_waiting"
    STEP_RETRYING = "step_retrying"
    STEP_INTERRUPTED = "step_interrupted"
    STEP_FINISHED = "step_finished"
    STEP_SKIPPED = "step_skipped"
    JUMP = "jump"
    ROUTING_CLEARED = "routing_cleared"
    DECISION = "decision"
    CALLBACK_RECEIVED = "callback_received"
    NOTIFICATION = "notification"
    CANCEL_REQUESTED = "cancel_requested"
    SSH_JOB_STARTED = "ssh_job_started"
    DETACHED_KILL_REQUESTED = "detached_kill_requested"
    DETACHED_KILLED = "detached_killed"


ACTIVE_RUN = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING})
TERMINAL_RUN = frozenset(set(RunStatus) - ACTIVE_RUN)
TERMINAL_STEP = frozenset({
    StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED,
    StepStatus.REJECTED, StepStatus.TIMED_OUT, StepStatus.CANCELLED,
})


def is_terminal(status: str) -> bool:
    """Whether a run with this status has ended (a member hashes as its string, so a plain one is found)."""
    return status in TERMINAL_RUN
