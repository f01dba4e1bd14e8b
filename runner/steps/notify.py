"""`notify`: send a message to a channel from the config. Never fails the run:
a channel that keeps failing is recorded in the outputs (`delivered: false`).
A `res://` link becomes a signed, expiring link to the artifact's page where the
engine's owner makes them (the daemon), its token delivered but never logged."""

from __future__ import annotations

from typing import Any

from runner.notify import Message, Notifier
from runner.steps.base import BaseKind, Done, StepContext

RES_PREFIX = "res://"


class NotifyKind(BaseKind):
    name = "notify"

    def rendered_effect(self, ctx: StepContext) -> dict[str, Any]:
        """The message as it would be sent: channel, text and links."""
        return {"channel": ctx.spec["channel"], "message": str(ctx.spec["message"]),
                "links": list(ctx.spec.get("links") or [])}

    def describe_effect(self, effect: dict[str, Any]) -> str:
        return f"notify {effect['channel']}: {effect['message']}"

    async def execute(self, ctx: StepContext) -> Done:
        channels = ctx.config.channels if ctx.config is not None else {}
        links, tokens = [], []
        for link in ctx.spec.get("links") or []:
            link = dict(link)
            url = str(link.get("url") or "")
            if url.startswith(RES_PREFIX) and ctx.artifact_link is not None:
                link["href"], token = ctx.artifact_link(ctx.run["id"], url[len(RES_PREFIX):])
                tokens.append(token)
            links.append(link)
        run_link = ctx.run_link()
        if run_link:
            links.append({"title": "run", "url": run_link})
        message = Message(subject=f"{ctx.run['flow']}: {ctx.step.title}", text=str(ctx.spec["message"]),
                          links=links, run_id=ctx.run["id"], flow=ctx.run["flow"], step=ctx.step.id,
                          private=tuple(tokens))
        delivery = await Notifier(channels).send(ctx.spec["channel"], message)
        return Done({"delivered": delivery.ok, "attempts": delivery.attempts, "error": delivery.error})


KIND = NotifyKind()
