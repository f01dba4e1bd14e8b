"""Step kinds: one module per kind, found by name (`runner.steps.<kind>`).

A kind module exposes `KIND`, an object with:

    instant: bool                 finishes at once with no I/O (lets the engine batch writes)
    shell_fields: tuple[str, ...] fields whose interpolations are shell-quoted
    async execute(ctx) -> Done | Park
    async wake(ctx) -> Done       (kinds that Park) called when the parked time comes

A kind raises StepFailed for its own failures; the engine does every piece of
bookkeeping (events, retries, timeouts, outputs to resources, masking), so a
new kind is one new module here and nothing else.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Protocol

from runner.model import Step
from runner.timeutil import Clock


@dataclass
class Done:
    outputs: dict[str, Any] = field(default_factory=dict)


@dataclass
class Park:
    """Wait without holding anything until `wake_at` (or an outside event)."""

    wake_at: datetime
    reason: str


@dataclass
class StepContext:
    run: dict[str, Any]
    step: Step
    spec: dict[str, Any]
    attempt: int
    run_dir: Path
    work_dir: Path
    env: dict[str, str]
    clock: Clock
    store: Any
    config: Any
    on_output: Callable[[str, str], None] = lambda stream, text: None

    @property
    def draft(self) -> bool:
        return bool(self.run.get("draft"))


class StepKind(Protocol):
    instant: bool
    shell_fields: tuple[str, ...]

    async def execute(self, ctx: StepContext) -> Done | Park: ...


def load_kind(name: str) -> StepKind | None:
    """The kind named `name`, or None when this build has no module for it."""
    if not name.isidentifier():
        return None
    try:
        module = importlib.import_module(f"{__name__}.{name}")
    except ModuleNotFoundError as exc:
        if exc.name == f"{__name__}.{name}":
            return None
        raise
    return module.KIND
