"""Webhook triggers: a signed POST that starts a live flow, and the git push webhook that refreshes refs."""

from __future__ import annotations

from collections import deque
from typing import Any, Callable

from runner import jsonvalue
from runner.daemon.triggers import verify_signature, webhook_secret_name
from runner.errors import Forbidden, Invalid, NotFound
from runner.flows.inputs import resolve_inputs
from runner.runs.engine import Engine
from runner.runs.store import Store

REMEMBERED_DELIVERIES = 10_000  # push deliveries remembered, so a redelivery is dropped


class Hooks:
    def __init__(self, *, engine: Engine, store: Store, gitops: Any, config: Any, metrics: Any,
                 schedule_run: Callable[[str], None]) -> None:
        self.engine, self.store, self.gitops, self.config, self.metrics = engine, store, gitops, config, metrics
        self._schedule_run = schedule_run
        self._deliveries: deque[str] = deque(maxlen=REMEMBERED_DELIVERIES)

    async def hook(self, name: str, body: bytes, signature: str | None) -> dict[str, Any]:
        """A webhook trigger: only for a live flow that declares one, HMAC-signed with its secret."""
        if not self.gitops.tagged:
            raise NotFound(f"flow {name} is not live (the repository has no release tags)")
        origin = await self.gitops.origin(name, None)
        secret_name = webhook_secret_name(origin.flow)
        if secret_name is None:
            raise NotFound(f"flow {name} has no webhook trigger")
        secret = self.config.secrets.get(secret_name)
        if secret is None:
            raise Forbidden(f"the webhook secret '{secret_name}' is not configured on this daemon")
        verify_signature(secret, body, signature)
        inputs = jsonvalue.loads(body or b"{}", "the webhook body")
        if not isinstance(inputs, dict):
            raise Invalid("the webhook body must be a JSON object of inputs")
        values = resolve_inputs(origin.flow, inputs)
        run_id = self.engine.create_run(origin.flow, values, started_by="webhook", draft=False, ref=origin.ref,
                                        version=origin.version, commit=origin.commit)
        self.metrics.runs_started.labels(flow=name, trigger="webhook").inc()
        self._schedule_run(run_id)
        return self.store.read_run(run_id)

    def git_webhook(self, body: bytes, signature: str | None, delivery: str | None) -> dict[str, Any]:
        """A signed push notification: only a prompt to re-read the refs now (polling stays the backstop)."""
        secret_ref = (self.config.data.get("repo") or {}).get("webhook_secret")
        if not secret_ref:
            raise Forbidden("this daemon has no repo.webhook_secret configured, so it takes no push webhooks")
        verify_signature(self.gitops.webhook_secret or "", body, signature)
        if delivery and delivery in self._deliveries:
            return {"accepted": False, "duplicate": True}
        if delivery:
            self._deliveries.append(delivery)
        self.gitops.nudge()
        return {"accepted": True, "duplicate": False}
