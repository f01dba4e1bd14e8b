"""The hash chain of a run's events, shared by every store.

Each event is one line of strict JSON carrying its `seq` and the sha256 of the
line before it (`prev`; the first chains to GENESIS), so an edit, a removal or
a reordering is seen by `check`, which also proves the snapshot is the fold of
the events it claims.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from runner.runs import events as record
from runner.errors import IntegrityError, NotFound
from runner.runs.store import Verification

GENESIS = "0" * 64


def dumps(data: Any) -> str:
    """Strict JSON (NaN or Infinity: ValueError; a lone surrogate fails as it is encoded), before any write."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=str)


def chain(events: list[dict[str, Any]], count: int, last: str) -> tuple[bytes, int, str]:
    """The lines of a batch after `count` events ending in `last`: (the bytes, the new count, the new head).

    Every event is encoded before anything is written, so a value that cannot be leaves the chain as it was.
    """
    lines = []
    for event in events:
        event["seq"] = count
        event["prev"] = last
        line = dumps(event).encode()
        last = hashlib.sha256(line).hexdigest()
        count += 1
        lines.append(line + b"\n")
    return b"".join(lines), count, last


def snapshot_marks(count: int, last_sha256: str, size: int) -> dict[str, Any]:
    """What a snapshot records of the log it reflects (run.json's `events`)."""
    return {"count": count, "last_sha256": last_sha256, "bytes": size}


def check(result: Verification, data: bytes, snapshot: dict[str, Any] | None, snapshot_problem: str | None) -> None:
    """Check the chain of `data` (the whole log) and that `snapshot` is the fold of the events it claims."""
    prev, events = GENESIS, []
    hashes: list[str] = []
    if data and not data.endswith(b"\n"):
        result.problems.append("events.jsonl ends in a partial line (truncated or torn write)")
    for number, line in enumerate(data.split(b"\n")[:-1] if data else [], start=1):
        try:
            event = json.loads(line)
        except ValueError:
            result.problems.append(f"events.jsonl line {number} is not valid JSON")
            break
        if event.get("prev") != prev or event.get("seq") != number - 1:
            result.problems.append(f"events.jsonl line {number} does not chain to line {number - 1} "
                                   "(an event was edited, removed or reordered)")
            break
        prev = hashlib.sha256(line).hexdigest()
        hashes.append(prev)
        events.append(event)
    result.events = len(events)
    if snapshot is None:
        result.problems.append(snapshot_problem or "no snapshot")
        return
    claimed = snapshot.get("events", {})
    count = claimed.get("count", 0)
    if count > len(hashes) or (count and hashes[count - 1] != claimed.get("last_sha256")):
        result.problems.append(f"run.json records {count} events ending in {claimed.get('last_sha256', '')[:12]}, "
                               f"but events.jsonl has {len(hashes)} valid ones (truncated or altered)")
        return
    if count < len(events) and record.fold(events).get("finished_at"):
        # a run that has ended is advanced by nobody, so its snapshot must be current: a lag is a
        # crash between the last event and the snapshot that start-up did not repair (yet)
        result.problems.append(f"run.json lags its log: it reflects {count} of {len(events)} events "
                               f"(the daemon rewrites it from the log at start-up)")
        result.lagging = True
    rebuilt = record.fold(events[:count])
    rebuilt["events"] = claimed
    if json.loads(dumps(rebuilt)) != snapshot:
        differing = sorted(k for k in set(rebuilt) | set(snapshot) if rebuilt.get(k) != snapshot.get(k))
        result.problems.append(f"run.json does not match its events (differs in: {', '.join(differing)})")


def verified(store: Any, run_id: str, log: bytes) -> Verification:
    """`verify` for any store, once: the chain of `log` (the run's event lines as written), and that its
    snapshot is exactly the fold of the events it claims (runner.runs.chain.check)."""
    result = Verification(run_id)
    try:
        snapshot: dict[str, Any] | None = store.read_snapshot(run_id)
        problem = None
    except (NotFound, IntegrityError) as exc:
        snapshot, problem = None, exc.message
    check(result, log, snapshot, problem)
    return result
