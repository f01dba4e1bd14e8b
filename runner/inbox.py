"""The daemon's callback inbox: durable before the 202, consumed by the run later.

One append-only journal per daemon (`<data>/inbox.jsonl`). Callbacks that arrive
together are written and fsynced together (group commit): a burst costs one
fsync per batch, not a new file and two fsyncs per callback. The first body
accepted for a (run, step) wins; a second request for the same step waits for
the first one's commit and is then answered with it, so nobody is told "already
accepted" about something that is not on disk yet.

An entry stays in memory until its run records it (`callback_received`) or
ends; the journal is rewritten without such entries when the daemon starts,
when it stops, and when they make up most of the file.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any, Callable

from runner import jsonvalue
from runner.datadir import FILE_MODE, write_atomic
from runner.errors import Conflict, StoreError
from runner.secrets import Masker
from runner.store import Store

log = logging.getLogger(__name__)
Key = tuple[str, str]  # (run id, step id)
INLINE_LIMIT = 64 * 1024  # bodies up to this size live in the journal; larger ones become res:// resources
COMPACT_AFTER = 20_000  # consumed entries in the journal before it is rewritten


class Inbox:
    def __init__(self, path: Path, *, fsync: bool = True) -> None:
        self.path = path
        self.fsync = fsync
        self._entries: dict[Key, dict[str, Any]] = {}  # durable, not yet consumed
        self._inflight: dict[Key, tuple[dict[str, Any], asyncio.Future]] = {}
        self._closed: set[Key] = set()  # steps that take no callback any more (timed out, run ended)
        self._batch: list[Key] = []
        self._committer: asyncio.Task | None = None
        self._consumed = 0  # journal lines whose entries are no longer needed
        self._fd: int | None = None
        self._loaded = False

    def __len__(self) -> int:
        return len(self._entries)

    # ---- start and stop ---------------------------------------------------------

    def load(self, wanted: Callable[[str, str], bool]) -> int:
        """Read the journal, keep the entries `wanted(run, step)` still needs, rewrite it with only those.

        A torn last line (a crash in the middle of a write) was never acknowledged and is dropped.
        """
        entries: dict[Key, dict[str, Any]] = {}
        if self.path.exists():
            with open(self.path, "rb") as handle:
                for line in handle:
                    if not line.endswith(b"\n"):
                        break
                    entry = json.loads(line)
                    entries.setdefault((entry.pop("run"), entry.pop("step")), entry)  # the first one won
        self._entries = {key: entry for key, entry in entries.items() if wanted(*key)}
        self._rewrite(self._entries)
        self._loaded = True
        return len(self._entries)

    def close(self) -> None:
        """Rewrite the journal without consumed entries (so the next start reads little) and close it.

        Only once loaded: before that, the entries in memory are not all there is.
        """
        if self._loaded and not self._inflight and self._committer is None:
            self._rewrite(self._entries)
        self._close_file()

    # ---- accepting and consuming -------------------------------------------------

    def get(self, run_id: str, step_id: str) -> dict[str, Any] | None:
        """The durable entry for a step, if one was accepted and the run has not recorded it yet."""
        return self._entries.get((run_id, step_id))

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
            return False, self._entries[key]
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
        return self._entries.get(key)

    def consumed(self, run_id: str, step_id: str) -> None:
        """The run recorded this callback (or ended): the entry is no longer needed."""
        self._closed.discard((run_id, step_id))
        if self._entries.pop((run_id, step_id), None) is not None:
            self._consumed += 1
            if self._consumed >= COMPACT_AFTER and self._committer is None:
                self._committer = asyncio.create_task(self._commit(), name="inbox-commit")

    # ---- the journal ---------------------------------------------------------------

    async def _commit(self) -> None:
        """Write and fsync everything waiting, one batch at a time; compact between batches when due."""
        try:
            while self._batch or self._consumed >= COMPACT_AFTER:
                if not self._batch:
                    await self._compact()
                    continue
                keys, self._batch = self._batch, []
                lines = b"".join(_line(key, self._inflight[key][0]) for key in keys)
                try:
                    await asyncio.to_thread(self._append, lines)
                except BaseException as exc:
                    failure = StoreError(f"could not record the callback in {self.path}: {exc}")
                    for key in keys:
                        _, committed = self._inflight.pop(key)
                        committed.set_exception(failure)
                        committed.exception()  # a caller that hung up never reads it
                    if not isinstance(exc, OSError):
                        raise
                    continue
                for key in keys:
                    entry, committed = self._inflight.pop(key)
                    self._entries[key] = entry
                    committed.set_result(None)
        finally:
            self._committer = None
            if self._batch:  # left by an unexpected error: a new committer answers them
                self._committer = asyncio.create_task(self._commit(), name="inbox-commit")

    async def _compact(self) -> None:
        consumed = self._consumed
        try:
            await asyncio.to_thread(self._rewrite, dict(self._entries))
        except OSError as exc:
            log.warning("could not compact %s: %s; trying again later", self.path, exc,
                        extra={"event": "inbox_compaction_failed"})
        self._consumed -= consumed  # those consumed meanwhile count towards the next compaction

    def _append(self, lines: bytes) -> None:
        """Append with plain writes, so a failed batch leaves nothing buffered to reach the file later."""
        fd = self._open()
        offset = os.fstat(fd).st_size
        try:
            view = memoryview(lines)
            while view:
                view = view[os.write(fd, view):]
            if self.fsync:
                os.fsync(fd)
        except OSError:
            os.ftruncate(fd, offset)  # no torn line in front of the next batch
            raise

    def _rewrite(self, entries: dict[Key, dict[str, Any]]) -> None:
        """Replace the journal with `entries`, a copy taken on the loop (tmp + fsync + rename)."""
        self._close_file()
        write_atomic(self.path, b"".join(_line(key, entry) for key, entry in entries.items()), fsync=self.fsync)

    def _open(self) -> int:
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, FILE_MODE)
        return self._fd

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


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
