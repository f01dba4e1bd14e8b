"""A recorded run as a replay reads it: its record, its own flow copy, and what each visit of each step did.

A visit is one `step_started` with attempt 1 (a first try, or a new one after a
jump back); what it ended with is its last `step_finished`, retries included.
Skips are counted apart. Only a visit that ended (succeeded, failed, rejected,
timed out) has an outcome a replay can feed again; one cut short (cancelled,
still running or waiting) has none.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from runner.flows.load import load_flow_bytes
from runner.flows.model import Flow
from runner.runs.store import Store
from runner.status import EventType, StepStatus

ANSWERED = frozenset({StepStatus.SUCCEEDED.value, StepStatus.FAILED.value, StepStatus.REJECTED.value,
                      StepStatus.TIMED_OUT.value})


@dataclass
class Recording:
    run: dict[str, Any]
    flow: Flow
    visits: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # step id -> its visits, in order
    skips: dict[str, int] = field(default_factory=dict)                    # step id -> times it was skipped

    @classmethod
    def read(cls, store: Store, run_id: str) -> "Recording":
        """The run `run_id` of `store`: NotFound if there is none."""
        run = store.read_run(run_id)
        source = store.flow_source(run_id).encode()
        recording = cls(run, load_flow_bytes(source, f"runs/{run_id}/flow.yaml", limit=None))
        for event in store.read_events(run_id):
            recording._take(event)
        return recording

    def _take(self, event: dict[str, Any]) -> None:
        kind, step = event["type"], event.get("step")
        if kind == EventType.STEP_STARTED and event.get("attempt") == 1:
            self.visits.setdefault(step, []).append({"status": StepStatus.RUNNING.value, "outputs": {},
                                                     "error": None})
        elif kind == EventType.STEP_SKIPPED:
            self.skips[step] = self.skips.get(step, 0) + 1
        elif kind in (EventType.STEP_WAITING, EventType.STEP_FINISHED) and self.visits.get(step):
            visit = self.visits[step][-1]
            if kind == EventType.STEP_WAITING:
                visit["status"] = StepStatus.WAITING.value
            else:
                visit.update(status=event["status"], outputs=event.get("outputs") or {}, error=event.get("error"))

    def kind_of(self, step_id: str) -> str | None:
        """The step's kind in the recorded flow; None when it had no such step."""
        return next((step.kind for step in self.flow.steps if step.id == step_id), None)

    def visit(self, step_id: str, number: int) -> dict[str, Any] | None:
        """Visit `number` (from 1) of the step, or None when the recording has no such visit."""
        visits = self.visits.get(step_id) or []
        return visits[number - 1] if 0 < number <= len(visits) else None

    def answered(self, step_id: str, number: int) -> dict[str, Any] | None:
        """That visit if it ended with an outcome a replay can feed again, else None."""
        visit = self.visit(step_id, number)
        return visit if visit is not None and visit["status"] in ANSWERED else None
