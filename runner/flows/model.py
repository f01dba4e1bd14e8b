"""Flows and steps as read from a validated flow file (frozen, plain data)."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass, field
from typing import Any

from runner.timeutil import parse_duration

DEFAULT_MAX_STEPS = 10_000


@dataclass(frozen=True)
class RetryPolicy:
    """`attempts` counts every try, the first included; delays grow x2 with jitter."""

    attempts: int = 1
    backoff: float = 1.0
    max_backoff: float | None = None

    @classmethod
    def from_spec(cls, spec: dict | None) -> "RetryPolicy":
        if not spec:
            return cls()
        return cls(
            attempts=int(spec.get("attempts", 1)),
            backoff=parse_duration(spec.get("backoff", "1s")),
            max_backoff=parse_duration(spec["max_backoff"]) if spec.get("max_backoff") else None,
        )

    def delay(self, failed_attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait after attempt number `failed_attempt` (1-based) failed."""
        base = self.backoff * (2 ** (failed_attempt - 1))
        if self.max_backoff is not None:
            base = min(base, self.max_backoff)
        # "equal jitter": at least half the delay, so retries never bunch at zero
        return base / 2 + (rng or random).uniform(0, base / 2)


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    index: int
    spec: dict[str, Any]

    @property
    def title(self) -> str:
        return self.spec.get("name") or self.id

    @property
    def condition(self) -> Any:
        return self.spec.get("if")

    @property
    def timeout(self) -> float | None:
        """Seconds of a literal timeout; None without one or for an expression (rendered when the step starts)."""
        value = self.spec.get("timeout")
        return parse_duration(value) if value and "${{" not in str(value) else None

    @property
    def retry(self) -> RetryPolicy:
        return RetryPolicy.from_spec(self.spec.get("retry"))

    @property
    def on_error(self) -> str:
        return self.spec.get("on_error", "fail")


@dataclass(frozen=True)
class Flow:
    name: str
    steps: tuple[Step, ...]
    source: str
    file: str
    description: str = ""
    inputs: dict[str, dict] = field(default_factory=dict)
    triggers: tuple[dict, ...] = ()
    concurrency: int | None = None
    max_steps: int = DEFAULT_MAX_STEPS
    env: dict[str, str] = field(default_factory=dict)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.source.encode()).hexdigest()

    def step(self, step_id: str) -> Step:
        for step in self.steps:
            if step.id == step_id:
                return step
        raise KeyError(step_id)

    def index_of(self, step_id: str) -> int:
        return self.step(step_id).index

    @classmethod
    def from_dict(cls, data: dict[str, Any], *, source: str, file: str) -> "Flow":
        steps = tuple(Step(id=s["id"], kind=s["kind"], index=i, spec=s) for i, s in enumerate(data["steps"]))
        return cls(
            name=data["name"],
            description=data.get("description", ""),
            inputs=dict(data.get("inputs") or {}),
            triggers=tuple(data.get("triggers") or ()),
            concurrency=data.get("concurrency"),
            max_steps=int(data.get("max_steps", DEFAULT_MAX_STEPS)),
            env=dict(data.get("env") or {}),
            steps=steps,
            source=source,
            file=file,
        )
