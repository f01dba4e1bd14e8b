"""A run's logs: each step's stdout and stderr as its outputs recorded them (`signoff logs`, GET .../logs).

A step's output over the store's threshold was kept as a resource (`res://<sha256>`);
the logs give its text when it is at most `TEXT_LIMIT` bytes, and otherwise the
reference, which `signoff resource get` (or GET /api/v1/resources/{sha256}) reads whole.
"""

from __future__ import annotations

import io
from typing import Any

from runner.errors import NotFound
from runner.runs.store import RES_PREFIX, Store

TEXT_LIMIT = 1024 * 1024
STREAMS = ("stdout", "stderr")


def step_logs(store: Store, run: dict[str, Any], step: str | None = None) -> dict[str, Any]:
    """{run, steps: [{step, status, attempts, stdout, stderr}]}, in the record's step order; `step` for one.

    A stream a step did not produce (an approval, a set) is empty text.
    """
    steps = run.get("steps") or {}
    if step is not None and step not in steps:
        raise NotFound(f"run {run['id']} has no step {step!r}",
                       hint=f"its steps: {', '.join(steps) or 'none yet'}")
    chosen = [step] if step is not None else list(steps)
    return {"run": run["id"], "steps": [_step_entry(store, name, steps[name]) for name in chosen]}


def _step_entry(store: Store, name: str, state: dict[str, Any]) -> dict[str, Any]:
    outputs = state.get("outputs") if isinstance(state.get("outputs"), dict) else {}
    entry: dict[str, Any] = {"step": name, "status": state.get("status"), "attempts": state.get("attempts", 0)}
    for stream in STREAMS:
        entry[stream] = _text(store, outputs.get(stream) or "")
    return entry


def _text(store: Store, value: Any) -> Any:
    """A recorded stream: its text, a small resource's text, or (too large, or gone) the reference as it was."""
    if not (isinstance(value, str) and value.startswith(RES_PREFIX)):
        return value
    try:
        if int(store.resource_meta(value).get("size") or 0) > TEXT_LIMIT:
            return value
        buffer = io.BytesIO()
        store.copy_resource(value, buffer)
    except (NotFound, OSError):
        return value
    return buffer.getvalue().decode("utf-8", errors="replace")
