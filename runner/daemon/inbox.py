"""The daemon's callback inbox: durable before the 202, consumed by the run later.

One append-only journal per daemon (`<data>/inbox.jsonl`). Callbacks that arrive
together are written and fsynced together (group commit): a burst costs one
fsync per batch, not a new file and two fsyncs per callback. The first body
accepted for a (run, step) wins; a second request for the same step waits for
the first one's commit and is then answered with it, so nobody is told "already
accepted" about something that is not on disk yet.

An entry stays in memory until its run records it (`callback_received`) or
ends, its body only up to `MEMORY_BYTES` in all: beyond that, a body is read
back from its journal line when asked for. The journal is rewritten without
consumed entries when the daemon starts, when it stops, and once
`COMPACT_AFTER` of them or `COMPACT_AFTER_BYTES` of their lines have piled up,
whichever comes first; a start-up reads the journal line by line and keeps
only the entries still wanted, so neither the file nor what is read of it
grows with the callbacks already recorded.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from concurrent.futures import Executor
from pathlib import Path
from typing import Any, Callable

from runner import jsonvalue
from runner.daemon.pools import in_pool
from runner.daemon.journal import JournalFile
from runner.errors import Conflict, StoreError
from runner.secrets import Masker
from runner.runs.store import Store

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (run id, step id)
INLINE_LIMIT = 64 * 1024  # bodies up to this size live in the journal; larger ones become res:// resources
COMPACT_AFTER = 20_000  # consumed entries in the journal before it is rewritten...
COMPACT_AFTER_BYTES = 64 * 1024 * 1024  # ...or consumed bytes of it, whichever comes first
MEMORY_BYTES = 64 * 1024 * 1024  # bodies held in memory; past this, a body stays on disk until asked for


class Inbox:
    def __init__(self, path: Path, *, fsync: bool = True, pool: Executor | None = None) -> None:
        self.path = path
        self.fsync = fsync
        self.pool = pool  # where the journal is written (None: the loop's default executor)
        self._entries: dict[Key, dict[str, Any]] = {}  # durable, not yet consumed (without body if spilled)
        self._lines: dict[Key, tuple[int, int]] = {}  # (offset, length) of each entry's line in the journal
        self._spilled: set[Key] = set()  # entries whose body is read back from the journal
        self._held = 0  # characters of bodies in memory
        self._inflight: dict[Key, tuple[dict[str, Any], asyncio.Future]] = {}
        self._closed: set[Key] = set()  # steps that take no callback any more (timed out, run ended)
        self._batch: list[Key] = []
        self._committer: asyncio.Task | None = None
        self._consumed = 0  # journal lines whose entries are no longer needed
        self._consumed_bytes = 0  # and their bytes
        self.journal = JournalFile(path, fsync=fsync)
        self._loaded = False

    def __len__(self) -> int:
        return len(self._entries)

    # ---- start and stop ---------------------------------------------------------

    def load(self, wanted: Callable[[str, str], bool]) -> int:
        """Read the journal, keep the entries `wanted(run, step)` still needs, rewrite it with only those.

        Line by line: an entry no longer wanted is never held. A torn last line (a crash in
        the middle of a write) was never acknowledged and is dropped.
        """
        self._forget()
        seen: set[Key] = set()
        if self.path.exists():
            with open(self.path, "rb") as handle:
                offset = 0
                for line in handle:
                    if not line.endswith(b"\n"):
                        break
                    entry = json.loads(line)
                    key = (entry.pop("run"), entry.pop("step"))
                    if key not in seen:  # the first one won
                        seen.add(key)
                        if wanted(*key):
                            self._keep(key, entry, offset, len(line))
                    offset += len(line)
        del seen
        self._adopt(self._rewrite(self._copy()))
        self._loaded = True
        return len(self._entries)

    def close(self) -> None:
        """Rewrite the journal without consumed entries (so the next start reads little) and close it.

        Only once loaded: before that, the entries in memory are not all there is.
        """
        if self._loaded and not self._inflight and self._committer is None:
            self._adopt(self._rewrite(self._copy()))
        self._close_file()
        self._close_reader()

    # ---- accepting and consuming -------------------------------------------------

    def get(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        """The durable entry for a step, if one was accepted and the run has not recorded it yet."""
        key = (run_id, step_id)
        if key in self._spilled:
            return self._read_back(key)
        return self._entries.get(key)

    def busy(self, run_id: str, step_id: str) -> bool:
        """Whether a callback for the step is being committed right now."""
        return (run_id, step_id) in self._inflight

    async def accept(self, run_id: str, step_id: str, entry: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        """(True, entry) once this entry is on disk; (False, the first entry) if another one won.

        The commit goes on even if the caller is cancelled (a client that hangs up), so what
        was written is always either acknowledged or replayable.
        """
        key = (run_id, step_id)
        if key in self._entries:
            return False, self.get(run_id, step_id)
        if key in self._inflight:
            first, committed = self._inflight[key]
            await asyncio.shield(committed)
            return False, first
        if key in self._closed:
            raise Conflict(f"step '{step_id}' of run {run_id} is no longer waiting for a callback",
                           hint="its deadline passed or its run ended before the callback came")
        committed = asyncio.get_running_loop().create_future()
        self._inflight[key] = (entry, committed)
        self._batch.append(key)
        if self._committer is None:
            self._committer = asyncio.create_task(self._commit(), name="inbox-commit")
        await asyncio.shield(committed)
        return True, entry

    async def close_step(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        """Take no new callback for the step; wait for one being committed. The entry, if one won.

        Called by the run's writer before it ends a wait without an answer, so a callback is
        either in the run's record or refused (409), never acknowledged and then dropped.
        """
        key = (run_id, step_id)
        self._closed.add(key)
        if key in self._inflight:
            try:
                await asyncio.shield(self._inflight[key][1])
            except StoreError:
                pass  # it was not written, and its sender was told so
        return self.get(run_id, step_id)

    def consumed(self, run_id: str, step_id: str) -> None:
        """The run recorded this callback (or ended): the entry is no longer needed."""
        key = (run_id, step_id)
        self._closed.discard(key)
        entry = self._entries.pop(key, None)
        if entry is not None:
            self._consumed += 1
            self._consumed_bytes += self._lines.pop(key)[1]
            if key in self._spilled:
                self._spilled.discard(key)
            else:
                self._held -= len(entry.get("body", ""))
            if self._compaction_due() and self._committer is None:
                self._committer = asyncio.create_task(self._commit(), name="inbox-commit")

    def _compaction_due(self) -> bool:
        return self._consumed >= COMPACT_AFTER or self._consumed_bytes >= COMPACT_AFTER_BYTES

    # ---- the journal ---------------------------------------------------------------

    async def _commit(self) -> None:
        """Write and fsync everything waiting, one batch at a time; compact between batches when due."""
        try:
            while self._batch or self._compaction_due():
                if not self._batch:
                    await self._compact()
                    continue
                keys, self._batch = self._batch, []
                lines = [_line(key, self._inflight[key][0]) for key in keys]
                try:
                    offset = await in_pool(self.pool, self._append, b"".join(lines))
                except BaseException as exc:
                    refuse_batch(self._inflight, keys, StoreError(f"could not record the callback in {self.path}: {exc}"))
                    if not isinstance(exc, OSError):
                        raise
                    continue
                for key, line in zip(keys, lines):
                    entry, committed = self._inflight.pop(key)
                    self._keep(key, entry, offset, len(line))
                    offset += len(line)
                    committed.set_result(None)
        finally:
            self._committer = None
            if self._batch:  # left by an unexpected error: a new committer answers them
                self._committer = asyncio.create_task(self._commit(), name="inbox-commit")

    async def _compact(self) -> None:
        consumed, consumed_bytes = self._consumed, self._consumed_bytes
        try:
            self._adopt(await in_pool(self.pool, self._rewrite, self._copy()))
        except OSError as exc:
            log.warning("could not compact %s: %s; trying again later", self.path, exc,
                        extra={"event": "inbox_compaction_failed"})
        # those consumed meanwhile count towards the next compaction
        self._consumed -= consumed
        self._consumed_bytes -= consumed_bytes

    # ---- entries in memory, bodies on disk ----------------------------------------------

    def _keep(self, key: Key, entry: dict[str, Any], offset: int, length: int) -> None:
        """A durable entry, its line at `offset`; its body stays on disk once MEMORY_BYTES are held."""
        self._lines[key] = (offset, length)
        body = len(entry.get("body", ""))
        if body and self._held + body > MEMORY_BYTES:
            self._entries[key] = {name: value for name, value in entry.items() if name != "body"}
            self._spilled.add(key)
        else:
            self._entries[key] = entry
            self._held += body

    def _read_back(self, key: Key) -> dict[str, Any]:
        entry = json.loads(self.journal.read_line(*self._lines[key]))
        del entry["run"], entry["step"]
        return entry

    def _copy(self) -> list[tuple[Key, dict[str, Any], tuple[int, int] | None]]:
        """What a rewrite writes, taken on the loop: each entry, and where a spilled one's line is now."""
        if self._spilled:
            self.journal.open_reader()  # the file being replaced, kept open for the copy
        return [(key, entry, self._lines[key] if key in self._spilled else None)
                for key, entry in self._entries.items()]

    def _adopt(self, lines: dict[Key, tuple[int, int]]) -> None:
        """After a rewrite: the new file's line positions (of the entries still here), read from the new file."""
        self._close_reader()
        for key, where in lines.items():
            if key in self._lines:
                self._lines[key] = where

    def _forget(self) -> None:
        self._entries, self._lines, self._spilled, self._held = {}, {}, set(), 0

    def _append(self, lines: bytes) -> int:
        return self.journal.append(lines)

    def _rewrite(self, entries: list[tuple[Key, dict[str, Any], tuple[int, int] | None]]) -> dict[Key, tuple[int, int]]:
        return self.journal.rewrite(entries, _line)

    def _close_file(self) -> None:
        self.journal.close_writer()

    def _close_reader(self) -> None:
        self.journal.close_reader()


def refuse_batch(inflight: dict[Key, tuple[dict[str, Any], asyncio.Future]], keys: list[Key],
                 failure: StoreError) -> None:
    """A batch that could not be committed: each of its callers is told `failure` (none was acknowledged)."""
    for key in keys:
        _, committed = inflight.pop(key)
        committed.set_exception(failure)
        committed.exception()  # a caller that hung up never reads it


def entry_for(store: Store, run_id: str, step_id: str, body: bytes, *, at: str,
              masker: Masker | None = None) -> dict[str, Any]:
    """The journal entry of a callback body; a large body is stored as a resource first (file I/O).

    The body was parsed by `runner.jsonvalue.loads` before this (strict UTF-8 JSON), so the text
    kept reads back as what was acknowledged. The journal keeps no more than the run's record will
    show: the raw body's sha256 (which tells a replay from a different body) and the body with its
    secret values masked as the record masks the payload.
    """
    entry: dict[str, Any] = {"sha256": hashlib.sha256(body).hexdigest(), "at": at, "bytes": len(body)}
    kept = _as_recorded(body, masker)
    if len(body) <= INLINE_LIMIT:
        entry["body"] = kept.decode("utf-8")
    else:
        entry["resource"] = store.put_resource(kept, media_type="application/json", name=f"{step_id}.payload",
                                               run_id=run_id, step=step_id, created_at=at)
    return entry


def _as_recorded(body: bytes, masker: Masker | None) -> bytes:
    """The (checked, JSON) body with secret values in its payload masked; the body itself when there are none."""
    if masker is None or not masker.values:
        return body
    payload = json.loads(body)
    masked = masker.mask(payload)
    return body if masked == payload else json.dumps(masked, separators=(",", ":"), ensure_ascii=False).encode()


def _line(key: Key, entry: dict[str, Any]) -> bytes:
    return jsonvalue.dumps({"run": key[0], "step": key[1], **entry}) + b"\n"
