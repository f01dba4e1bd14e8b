"""The writer of one run: every change is an event, applied to the record and appended to the log.

Events are batched: `record(..., flush=False)` keeps one pending, `flush()`
appends the batch in one write and one fsync, and rewrites the snapshot when
the run's status changes (`force`) or at most every SNAPSHOT_INTERVAL in
between, so a transition costs O(1) however long the run gets. The listener
hears of each event once it is written. Live output of a step is batched and
capped here too (`step_output` events).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any, Callable

from runner.runs import events as record
from runner.runs.store import RunLog
from runner.status import EventType
from runner.steps.base import StepKind
from runner.timeutil import rfc3339

if TYPE_CHECKING:
    from runner.flows.model import Flow
    from runner.runs.engine import Engine

OUTPUT_BATCH_SECONDS = 0.25          # live output: at most ~4 appends a second per run
OUTPUT_BATCH_BYTES = 16 * 1024
OUTPUT_EVENT_LIMIT = 64 * 1024       # per step visit; the full output is in the step's outputs
SNAPSHOT_INTERVAL = 0.2
Listener = Callable[[dict, dict], None]


class Recorder:
    """Applies, batches and writes one run's events; holds its log (and so its writer lock)."""

    def __init__(self, engine: Engine, run_id: str, run: dict, flow: Flow, log_file: RunLog) -> None:
        self.engine = engine
        self.store = engine.store
        self.clock = engine.clock
        self.run_id = run_id
        self.run = run
        self.flow = flow
        self.log = log_file
        self.pending: list[dict] = []
        self.last_snapshot = engine.clock.monotonic() if run else float("-inf")  # a loaded snapshot is fresh
        self.behind = False  # events in the log that the snapshot does not reflect yet
        self.snapshot_interval = SNAPSHOT_INTERVAL
        self.outputs: dict[tuple[str, str], list[str]] = {}
        self.output_sent: dict[str, int] = {}
        self.output_flushed = float("-inf")
        self.cleaners: list[StepKind] | None = None  # the flow's kinds that may leave work behind (request_kills)

    def close(self) -> None:
        try:
            self.flush(force=True)
        finally:
            self.log.close()

    def record(self, kind: str, *, flush: bool = True, force: bool = False, **fields: Any) -> dict:
        event = {"type": kind, "at": rfc3339(self.clock.now()), **fields}
        record.apply(self.run, event)
        self.pending.append(event)
        self.request_kills(event)
        if flush:
            self.flush(force=force)
        return event

    def request_kills(self, event: dict) -> None:
        """What `event` leaves running on hosts (a kind's `leftovers`) becomes kill requests in the same batch.

        The run goes on the store's list of outstanding kills first, so the daemon's start-up finds them.
        """
        if self.cleaners is None:
            named = map(self.engine.kind_named, {s.kind for s in self.flow.steps})
            kinds = {id(kind): kind for kind in named if kind}
            self.cleaners = [kind for kind in kinds.values() if kind.leaves_work]
        if not self.cleaners:
            return
        requests = [request for kind in self.cleaners for request in kind.leftovers(self.run, self.flow, event)]
        if requests:
            self.store.note_kills(self.run_id)
        for request in requests:
            fields = dict(request)
            self.record(fields.pop("type"), flush=False, **fields)

    def flush(self, *, force: bool = False) -> None:
        """Append pending events (one write, one fsync); snapshot if forced or due."""
        batch, self.pending = self.pending, []
        snapshot = self._snapshot_due(batch, force)
        self._write(batch, snapshot)
        self._written(batch, snapshot)

    async def flush_off_loop(self) -> None:
        """flush(force=True), with the file work in a worker thread so the event loop serves others meanwhile.

        Only as the driver returns: nothing else touches this run until then (its locks are held).
        A cancellation waits for the thread, so the log is never closed under a write.
        """
        batch, self.pending = self.pending, []
        snapshot = self._snapshot_due(batch, True)
        if not batch and not snapshot:
            return
        writing = asyncio.get_running_loop().run_in_executor(None, self._write, batch, snapshot)
        try:
            await asyncio.shield(writing)
        except asyncio.CancelledError:
            while not writing.done():
                try:
                    await asyncio.wait([writing])
                except asyncio.CancelledError:
                    continue
            if writing.exception() is None:
                self._written(batch, snapshot)  # written: the listener hears of it all the same
            raise
        self._written(batch, snapshot)

    def _snapshot_due(self, batch: list[dict], force: bool) -> bool:
        if batch:
            self.behind = True
        return self.behind and (force or self.clock.monotonic() - self.last_snapshot >= self.snapshot_interval)

    def _write(self, batch: list[dict], snapshot: bool) -> None:
        if batch:
            self.log.append(batch)
        if snapshot:
            started = time.perf_counter()
            self.store.write_snapshot(self.run, self.log)
            # a big snapshot is rewritten less often, so it never costs more than ~5% of the loop
            self.snapshot_interval = max(SNAPSHOT_INTERVAL, 20 * (time.perf_counter() - started))

    def _written(self, batch: list[dict], snapshot: bool) -> None:
        if snapshot:
            self.last_snapshot, self.behind = self.clock.monotonic(), False
        listener = self.engine.listener
        if listener:
            for event in batch:
                listener(self.run, event)

    # ---- live output ----------------------------------------------------------

    def output(self, step_id: str, stream: str, text: str) -> None:
        """Live output of a step, as `step_output` events (batched, capped) that --follow shows."""
        buffer = self.outputs.setdefault((step_id, stream), [])
        buffer.append(text)
        now = self.clock.monotonic()
        if now - self.output_flushed >= OUTPUT_BATCH_SECONDS or sum(map(len, buffer)) >= OUTPUT_BATCH_BYTES:
            self.flush_output()

    def flush_output(self) -> None:
        self.output_flushed = self.clock.monotonic()
        for (step_id, stream), parts in list(self.outputs.items()):
            text, room = "".join(parts), OUTPUT_EVENT_LIMIT - self.output_sent.get(step_id, 0)
            if text and room > 0:
                self.output_sent[step_id] = self.output_sent.get(step_id, 0) + len(text)
                self.record(EventType.STEP_OUTPUT, step=step_id, stream=stream,
                            text=self.engine.masker.mask(text[:room]), truncated=len(text) > room)
        self.outputs.clear()
