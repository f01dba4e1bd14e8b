"""Run and step statuses: stored and printed as these lowercase strings."""

from __future__ import annotations

from enum import Enum


class RunStatus(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    TIMED_OUT = "timed_out"

    def __str__(self) -> str:
        return self.value


class StepStatus(str, Enum):
    PENDING = "pending"
    RUNNING = "running"
    WAITING = "waiting"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    SKIPPED = "skipped"
    REJECTED = "rejected"
    TIMED_OUT = "timed_out"
    CANCELLED = "cancelled"

    def __str__(self) -> str:
        return self.value


ACTIVE_RUN = frozenset({RunStatus.QUEUED, RunStatus.RUNNING, RunStatus.WAITING})
TERMINAL_RUN = frozenset(set(RunStatus) - ACTIVE_RUN)
TERMINAL_STEP = frozenset({
    StepStatus.SUCCEEDED, StepStatus.FAILED, StepStatus.SKIPPED,
    StepStatus.REJECTED, StepStatus.TIMED_OUT, StepStatus.CANCELLED,
})


def is_terminal(status: str) -> bool:
    return status in {s.value for s in TERMINAL_RUN}
