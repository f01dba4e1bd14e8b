"""A run's waits: parking a step, waking it, and the answers that end it (decisions, callbacks).

A waiting step is recorded `step_waiting` with its deadline and left: the run
holds nothing until its timer fires or `deliver` hands it an answer. Answers
that are already durable (a callback in the mailbox, a decision recorded just
before a crash) end the wait at once (`settle`), and callbacks accepted for
steps the run never reached are recorded as unused when it ends.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from runner.errors import Conflict, NotFound, StepFailed
from runner.flows.model import Step
from runner.runs.transitions import PARKED, Transitions
from runner.status import EventType, StepStatus
from runner.steps.base import Expired, Park, Receipt, StepContext, StepKind
from runner.timeutil import rfc3339


class Waits(Transitions):
    """The waits of the per-run driver (runner.runs.driver.Driver, which adds `step_context`, `succeed`,
    `fail` and `compact`)."""

    async def park(self, step: Step, kind: StepKind, ctx: StepContext, parked: Park) -> StepStatus | str:
        settled = self.settle(step, kind, ctx)  # the answer came early: nothing to wait for
        if settled is not None:
            return settled
        self.record(EventType.STEP_WAITING, step=step.id, wake_at=rfc3339(parked.wake_at), reason=parked.reason,
                    state=self.engine.masker.mask(parked.state), flush=False)
        return await self.finish_wait(step, parked.wake_at, kind, ctx)

    async def finish_wait(self, step: Step, wake_at: datetime, kind: StepKind | None = None,
                          ctx: StepContext | None = None) -> StepStatus | str:
        kind = kind or self.engine.kind_named(step.kind)
        ctx = ctx or self.step_context(step, kind, self.run["steps"][step.id]["attempts"], render=False)
        settled = self.settle(step, kind, ctx)
        if settled is not None:
            return settled
        remaining = (wake_at - self.engine.clock.now()).total_seconds()
        if remaining > 0 and not self.hold:
            return PARKED  # drive() writes the park as it returns
        self.flush(force=True)
        await self.engine.clock.sleep(remaining)
        if self.engine.mailbox is not None:  # no callback may be accepted once the wait is over
            await self.engine.mailbox.close_step(self.run_id, step.id)
            settled = self.settle(step, kind, ctx)
            if settled is not None:
                return settled
        try:
            result = await kind.wake(ctx)
        except StepFailed as exc:
            return self.fail(step, exc.message)
        if isinstance(result, Expired):
            return self.fail(step, result.reason, status=StepStatus.TIMED_OUT)
        return self.succeed(step, result)

    def settle(self, step: Step, kind: StepKind, ctx: StepContext) -> StepStatus | None:
        """End a wait whose answer is already here (an inbox callback, a decision cut short by a crash)."""
        receipt = kind.settle(ctx)
        if receipt is None:
            return None
        # the answer is already durable (inbox, or a recorded decision): its events ride the next write
        self.conclude(step, receipt, flush=False)
        return StepStatus(receipt.outcome)

    def conclude(self, step: Step, receipt: Receipt, *, flush: bool = True) -> None:
        """Record what a receipt says in one batch: one write, one fsync."""
        masker = self.engine.masker
        if receipt.event:
            event = dict(receipt.event)
            self.record(event.pop("type"), step=step.id, flush=False, **masker.mask(event))
        if receipt.outcome:
            self.record(EventType.STEP_FINISHED, step=step.id, status=StepStatus(receipt.outcome).value, flush=False,
                        error=masker.mask(receipt.error), outputs=self.compact(step, masker.mask(receipt.outputs)))
        if flush:
            self.flush()

    def deliver(self, step_id: str, message: dict[str, Any]) -> Receipt:
        try:
            step = self.flow.step(step_id)
        except KeyError:
            raise NotFound(f"run {self.run_id} has no step '{step_id}'") from None
        kind = self.engine.kind_named(step.kind)
        if kind is None or not kind.takes_decisions:
            raise Conflict(f"step '{step_id}' is a {step.kind} step; it takes no decisions")
        self.engine.check_waiting(self.run, step_id)
        ctx = self.step_context(step, kind, self.run["steps"][step_id]["attempts"], render=False)
        receipt = kind.receive(ctx, message)
        if not receipt.duplicate:
            self.conclude(step, receipt)
        return receipt

    async def close_mailbox(self) -> None:
        """As the run ends: callbacks accepted for steps it never reached are recorded, not dropped."""
        mailbox = self.engine.mailbox
        if mailbox is None:
            return
        for step_id in self.run.get("callbacks") or {}:
            if step_id in (self.run.get("callbacks_received") or {}):
                continue
            entry = await mailbox.close_step(self.run_id, step_id)
            self.record_unused(step_id, entry)

    def record_unused(self, step_id: str, entry: dict[str, Any] | None) -> None:
        if entry is None or step_id in (self.run.get("callbacks_received") or {}):
            return
        kind = self.engine.kind_named(self.flow.step(step_id).kind)
        event = kind.unused(self.run, step_id, entry) if kind is not None else None
        if event is not None:
            self.record(event.pop("type"), step=step_id, flush=False, **self.engine.masker.mask(event))
