"""`notify`: send a message to a channel from the config. Never fails the run:
a channel that keeps failing is recorded in the outputs (`delivered: false`)."""

from __future__ import annotations

from runner.notify import Message, Notifier
from runner.steps.base import BaseKind, Done, StepContext


class NotifyKind(BaseKind):
    name = "notify"

    async def execute(self, ctx: StepContext) -> Done:
        channels = ctx.config.channels if ctx.config is not None else {}
        links = list(ctx.spec.get("links") or [])
        run_link = ctx.run_link()
        if run_link:
            links.append({"title": "run", "url": run_link})
        message = Message(subject=f"{ctx.run['flow']}: {ctx.step.title}", text=str(ctx.spec["message"]),
                          links=links, run_id=ctx.run["id"], flow=ctx.run["flow"], step=ctx.step.id)
        delivery = await Notifier(channels).send(ctx.spec["channel"], message)
        return Done({"delivered": delivery.ok, "attempts": delivery.attempts, "error": delivery.error})


KIND = NotifyKind()
