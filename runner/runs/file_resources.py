"""The file store's content-addressed resources: `<data>/resources/<sha256>` with `<sha256>.json` metadata.

A blob another run stores again is indexed beside its metadata (`<sha256>.runs`,
a line per run), so whoever may see any of those runs may read it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, BinaryIO

from runner.datadir import make_dir, open_append, publish, write_atomic
from runner.errors import NotFound
from runner.runs.chain import dumps
from runner.runs.store import RES_PREFIX, SHA256


class FileResources:
    """Resources on disk; a part of `runner.runs.files.FileStore`, which sets `data_dir`, `resources_dir`, `fsync`."""

    data_dir: Path
    resources_dir: Path
    fsync: bool

    def put_resource(self, data: bytes | Path, *, media_type: str = "application/octet-stream",
                     name: str | None = None, run_id: str | None = None, step: str | None = None,
                     created_at: str | None = None) -> str:
        """Store bytes (or a file's bytes, streamed) by content; return `res://<sha256>`."""
        make_dir(self.resources_dir, fsync=self.fsync)
        digest = hashlib.sha256()
        # named like every temp file (.<name>.<pid>.tmp), so start-up knows a dead writer's
        fd, tmp_name = tempfile.mkstemp(dir=self.resources_dir, prefix=".incoming-", suffix=f".{os.getpid()}.tmp")
        size = 0
        with os.fdopen(fd, "wb") as out:
            if isinstance(data, Path):
                with open(data, "rb") as source:
                    while chunk := source.read(1 << 20):
                        digest.update(chunk)
                        out.write(chunk)
                        size += len(chunk)
            else:
                digest.update(data)
                out.write(data)
                size = len(data)
            out.flush()
            if self.fsync:
                os.fsync(out.fileno())
        sha = digest.hexdigest()
        target = self.resources_dir / sha
        meta_path = self.resources_dir / f"{sha}.json"
        if not meta_path.exists():
            meta = {"sha256": sha, "size": size, "media_type": media_type, "name": name, "run": run_id,
                    "step": step, "created_at": created_at}
            write_atomic(meta_path, (dumps(meta) + "\n").encode(), fsync=self.fsync, durable_name=False)
        elif run_id:
            self._note_resource_run(sha, run_id)
        publish(Path(tmp_name), target, fsync=self.fsync)  # its directory fsync covers the metadata too
        return RES_PREFIX + sha

    def _note_resource_run(self, sha: str, run_id: str) -> None:
        """Another run stored the same bytes: index it beside the metadata (`<sha256>.runs`, a line per run)."""
        if run_id in self.resource_runs(sha):
            return
        with open_append(self.resources_dir / f"{sha}.runs", fsync=self.fsync) as handle:
            handle.write(run_id.encode() + b"\n")
            handle.flush()
            if self.fsync:
                os.fsync(handle.fileno())

    def resource_runs(self, ref: str) -> list[str]:
        """The runs that stored this resource: the one its metadata names, then the others, in order."""
        meta = self.resource_meta(ref)
        try:
            others = (self.resources_dir / f"{meta['sha256']}.runs").read_text().split()
        except OSError:
            others = []
        return list(dict.fromkeys(r for r in [meta.get("run"), *others] if r))

    def resource_path(self, ref: str) -> Path:
        sha = ref[len(RES_PREFIX):] if ref.startswith(RES_PREFIX) else ref
        if not SHA256.match(sha):
            raise NotFound(f"{ref!r} is not a resource reference", hint="resources look like res://<64 hex digits>")
        path = self.resources_dir / sha
        if not path.is_file():
            raise NotFound(f"no resource {sha} in {self.data_dir}")
        return path

    def resource_meta(self, ref: str) -> dict[str, Any]:
        path = self.resource_path(ref)
        try:
            return json.loads(path.with_name(path.name + ".json").read_text())
        except (OSError, ValueError):
            return {"sha256": path.name, "size": path.stat().st_size, "media_type": "application/octet-stream"}

    def copy_resource(self, ref: str, out: BinaryIO) -> int:
        with open(self.resource_path(ref), "rb") as source:
            shutil.copyfileobj(source, out)
            return source.tell()
