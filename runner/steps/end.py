"""`end`: ends the run here with the outcome the flow states.

`status` is succeeded, failed, rejected or cancelled; `message` (rendered like
any field) becomes the run's `error` unless the status is succeeded. The step
itself succeeds; the engine ends the run on it (`ends_run`), overriding the
outcome a rejection or timeout routed the run to.
"""

from __future__ import annotations

from runner.flows.expressions import to_text
from runner.steps.base import BaseKind, Done, StepContext

STATUSES = ("succeeded", "failed", "rejected", "cancelled")


class EndKind(BaseKind):
    name = "end"
    pure = True  # computes its result (or its park) from the run alone
    instant = True
    ends_run = True

    async def execute(self, ctx: StepContext) -> Done:
        message = ctx.spec.get("message")
        return Done({"status": ctx.spec["status"], "message": to_text(message) if message is not None else None})


KIND = EndKind()
