"""Where a run goes after a step: the next step, a jump, or its end (DESIGN §9, outcomes of a wait).

`Transitions` is the base of the per-run driver (runner.runs.driver): it
holds the run's state and its recorder, and decides, from a step's final
status, what follows: on_error, on_timeout, on_reject, a kind's rewind
(request_changes), an `end` step, or the outcome a handler path was routed
to. No I/O here beyond recording events.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from runner.flows.model import Flow, Step
from runner.runs.recorder import Recorder
from runner.runs.store import RunLog
from runner.status import EventType, RunStatus, StepStatus

if TYPE_CHECKING:
    from runner.runs.engine import Engine

PARKED = "parked"
_PENDING = StepStatus.PENDING.value


class Transitions:
    """One run's state (record, flow, recorder) and the moves between its steps."""

    def __init__(self, engine: Engine, run_id: str, run: dict, flow: Flow, log_file: RunLog) -> None:
        self.engine = engine
        self.run_id = run_id
        self.run = run
        self.flow = flow
        self.recorder = Recorder(engine, run_id, run, flow, log_file)
        self.record = self.recorder.record
        self.flush = self.recorder.flush
        self.hold = True

    def after(self, step: Step, status: StepStatus | str) -> int | str | None:
        """The index of the next step, PARKED, or None once the run has ended."""
        if status == PARKED:
            return PARKED
        state = self.run["steps"][step.id]
        kind = self.engine.kind_named(step.kind)
        if status == StepStatus.SUCCEEDED and kind is not None and kind.ends_run:
            return self.end_here(step, state["outputs"])
        if status in (StepStatus.SUCCEEDED, StepStatus.SKIPPED):
            return step.index + 1
        rewind = kind.rewind_to(step, state) if kind is not None else None
        if rewind:
            return self.jump(step, rewind, f"changes requested at '{step.id}'", outcome=None)
        if status == StepStatus.TIMED_OUT and kind is not None and kind.waits:
            target = step.spec.get("on_timeout", "fail")
            timed_out = f"step '{step.id}' timed out: {state.get('error')}"
            if target == "fail":
                self.finish(RunStatus.TIMED_OUT, timed_out)
                return None
            if target != "reject":
                return self.jump(step, target, f"on_timeout of '{step.id}'", outcome=RunStatus.TIMED_OUT,
                                 error=timed_out)
            status = StepStatus.REJECTED
        if status == StepStatus.REJECTED:
            rejected = (f"step '{step.id}' was rejected"
                        + (f" by {state['decided_by']}" if state.get("decided_by") else "")
                        + (f": {state['comment']}" if state.get("comment") else ""))
            if step.spec.get("on_reject"):
                return self.jump(step, step.spec["on_reject"], f"on_reject of '{step.id}'",
                                 outcome=RunStatus.REJECTED, error=rejected)
            self.finish(RunStatus.REJECTED, rejected)
            return None
        target = step.on_error
        if target == "continue":
            return step.index + 1
        if target == "fail":
            error = state.get("error") or str(status)
            self.finish(RunStatus.FAILED, f"step '{step.id}' {StepStatus(status).value}: {error}")
            return None
        return self.jump(step, target, f"on_error of '{step.id}'")

    def jump(self, step: Step, target_id: str, reason: str, **routing: Any) -> int:
        """Go on at `target_id`. `outcome` (with `error`) routes the run: see `finish_path`; None clears it."""
        target = self.flow.index_of(target_id)
        if "outcome" in routing and routing["outcome"] is None and not self.run.get("routed"):
            routing = {}  # nothing to clear
        if routing.get("outcome") is not None:
            routing = {"outcome": RunStatus(routing["outcome"]).value,
                       "error": self.engine.masker.mask(routing.get("error"))}
        self.record(EventType.JUMP, step=step.id, to=target_id, reason=reason, flush=False, **routing)
        for passed in self.flow.steps[step.index + 1:target]:
            if self.run["steps"][passed.id]["status"] == _PENDING:
                self.record(EventType.STEP_SKIPPED, step=passed.id, reason=f"passed over by a jump to '{target_id}'",
                            by_jump=True, flush=False)
        self.flush()
        return target

    def finish_path(self) -> None:
        """The last step is behind the run: it succeeded, unless a rejection or timeout routed it here.

        A run that `on_reject` or `on_timeout` sent to a handler path ends `rejected` or `timed_out`
        when that path completes (an `end` step states otherwise). The routing is part of the
        record (the `jump` event's `outcome`), so it survives a restart; see `clear_routing`.
        """
        routed = self.run.get("routed")
        if routed:
            self.finish(RunStatus(routed["outcome"]), routed.get("error"))
        else:
            self.finish(RunStatus.SUCCEEDED)

    def end_here(self, step: Step, outputs: dict[str, Any]) -> None:
        """An `end` step: the run ends with the status the flow states, whatever routed it."""
        status = RunStatus(outputs.get("status") or RunStatus.SUCCEEDED.value)
        message = outputs.get("message")
        if status == RunStatus.SUCCEEDED:
            self.finish(status)
        else:
            self.finish(status, message or f"ended {status.value} by step '{step.id}'")
        return None

    def clear_routing(self, step: Step, kind: Any) -> None:
        """A new decision is asked for: the outcome a rejection or timeout routed the run to no longer holds.

        That is when a kind that asks for a decision (approval) begins a new visit (its own outcome
        decides from then on), or the step that routed the run begins again (a loop back to it).
        """
        routed = self.run.get("routed")
        if routed and ((kind is not None and kind.asks_decision) or step.id == routed.get("step")):
            self.record(EventType.ROUTING_CLEARED, step=step.id, flush=False,
                        reason=f"'{step.id}' asks again; the {routed['outcome']} outcome of '{routed['step']}' "
                               "no longer holds")

    def finish(self, status: RunStatus, error: str | None = None) -> None:
        # nothing runs after this: the driver writes it as it returns
        self.record(EventType.RUN_FINISHED, status=status.value, error=self.engine.masker.mask(error), flush=False)
