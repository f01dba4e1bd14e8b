"""Prometheus metrics, in a registry per daemon (no module-level globals)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.runs_started = Counter("signoff_runs_started", "Runs started", ["flow", "trigger"],
                                    registry=self.registry)
        self.runs_finished = Counter("signoff_runs_finished", "Runs that reached a final status",
                                     ["flow", "status"], registry=self.registry)
        self.steps_finished = Counter("signoff_steps_finished", "Step visits that ended", ["status"],
                                      registry=self.registry)
        self.notifications = Counter("signoff_notifications", "Notification deliveries", ["channel", "ok"],
                                     registry=self.registry)
        self.http_requests = Counter("signoff_http_requests", "HTTP requests answered", ["route", "status"],
                                     registry=self.registry)

    def render(self) -> bytes:
        return generate_latest(self.registry)
