"""`wait`: a durable timer. Parks the run until `duration` from now, or `until`."""

from __future__ import annotations

from datetime import datetime, timedelta

from runner.errors import StepFailed
from runner.steps.base import BaseKind, Done, Park, StepContext
from runner.timeutil import parse_rfc3339, rfc3339


class WaitKind(BaseKind):
    name = "wait"
    pure = True  # computes its result (or its park) from the run alone

    async def execute(self, ctx: StepContext) -> Park:
        if ctx.spec.get("duration"):
            wake_at = ctx.clock.now() + timedelta(seconds=ctx.duration("duration"))
            return Park(wake_at, f"wait {ctx.duration_text('duration')}")
        until = ctx.spec.get("until")
        try:
            wake_at = until if isinstance(until, datetime) else parse_rfc3339(str(until))
        except ValueError as exc:
            raise StepFailed(f"until: {exc}", retryable=False) from None
        return Park(wake_at, f"wait until {rfc3339(wake_at)}")

    async def wake(self, ctx: StepContext) -> Done:
        return Done({"woke_at": rfc3339(ctx.clock.now())})


KIND = WaitKind()
