"""The file store's small indexes: callback tokens to their step, and the runs with kills still to carry out.

    <data>/callbacks/<sha256>.json     callback token sha256 -> {run, step}
    <data>/kills/<run-id>              empty: the run has kills of remote jobs still to carry out
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from runner.datadir import fsync_dir, make_dir, write_atomic
from runner.runs.chain import dumps
from runner.runs.store import RUN_ID


class FileIndexes:
    """A part of `runner.runs.files.FileStore`, which sets `data_dir` and `fsync`."""

    data_dir: Path
    fsync: bool

    # ---- callback tokens ------------------------------------------------------

    def index_callbacks(self, run_id: str, tokens: dict[str, str]) -> None:
        """token sha256 -> (run, step) for each step's token, so a callback finds its run in O(1).

        The tokens themselves are not stored here. Each entry is durable before the run that hands
        its URL out is created.
        """
        folder = self.data_dir / "callbacks"
        make_dir(folder, fsync=self.fsync)
        for step_id, token in tokens.items():
            digest = hashlib.sha256(token.encode()).hexdigest()
            write_atomic(folder / f"{digest}.json", dumps({"run": run_id, "step": step_id}).encode(),
                         fsync=self.fsync, durable_name=False)
        if tokens and self.fsync:
            fsync_dir(folder)  # one directory fsync for all of a run's entries

    def find_callback(self, token: str) -> tuple[str, str] | None:
        digest = hashlib.sha256(token.encode()).hexdigest()
        try:
            entry = json.loads((self.data_dir / "callbacks" / f"{digest}.json").read_text())
        except (OSError, ValueError):
            return None
        return entry["run"], entry["step"]

    # ---- runs with kills of remote jobs still to carry out (runner.runs.kills) --------------

    def note_kills(self, run_id: str) -> None:
        """Put the run on the short list the daemon's start-up sweeps (durably, before its requests are written)."""
        folder = self.data_dir / "kills"
        marker = folder / run_id
        if marker.exists():
            return
        make_dir(folder, fsync=self.fsync)
        write_atomic(marker, b"", fsync=self.fsync)

    def runs_with_kills(self) -> list[str]:
        """The runs on that list: O(outstanding), whatever the number of runs."""
        folder = self.data_dir / "kills"
        return sorted(name for name in os.listdir(folder) if RUN_ID.match(name)) if folder.is_dir() else []

    def kills_settled(self, run_id: str) -> None:
        """Take the run off that list: it has no kill left to carry out."""
        try:
            os.unlink(self.data_dir / "kills" / run_id)
        except FileNotFoundError:
            pass
