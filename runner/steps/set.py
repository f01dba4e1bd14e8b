"""`set`: computes values from expressions; no I/O. Outputs are the values."""

from __future__ import annotations

from runner.steps.base import BaseKind, Done, StepContext


class SetKind(BaseKind):
    name = "set"
    pure = True  # computes its result (or its park) from the run alone
    instant = True

    async def execute(self, ctx: StepContext) -> Done:
        return Done(dict(ctx.spec["values"]))


KIND = SetKind()
