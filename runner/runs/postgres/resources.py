"""The PostgreSQL store's content-addressed resources: a metadata row and its bytes in chunks.

The row and every chunk are written in one transaction, so a resource that is
there is whole; a second writer of the same bytes finds the row (or waits for
the first one's commit) and only notes its run. `resource_path` gives a local
file: the bytes are materialised, once, into the store's cache directory.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from psycopg_pool import ConnectionPool

from runner.errors import NotFound, StoreError
from runner.runs.postgres import queries as q
from runner.runs.store import RES_PREFIX, SHA256

CHUNK_SIZE = 1 << 20


def _pieces(data: bytes | Path, size: int) -> Iterator[bytes]:
    if isinstance(data, Path):
        with open(data, "rb") as source:
            while chunk := source.read(size):
                yield chunk
    else:
        for start in range(0, len(data), size):
            yield bytes(data[start:start + size])


class PostgresResources:
    """A part of `runner.runs.postgres.store.PostgresStore`, which sets `pool`, `cache_dir` and `chunk_size`."""

    pool: ConnectionPool
    cache_dir: Path
    chunk_size: int

    def put_resource(self, data: bytes | Path, *, media_type: str = "application/octet-stream",
                     name: str | None = None, run_id: str | None = None, step: str | None = None,
                     created_at: str | None = None) -> str:
        """Store bytes (or a file's bytes, streamed in chunks) by content; return `res://<sha256>`."""
        digest, size, chunks = hashlib.sha256(), 0, 0
        for piece in _pieces(data, self.chunk_size):  # first the address: a known resource is not sent again
            digest.update(piece)
            size += len(piece)
            chunks += 1
        sha = digest.hexdigest()
        meta = {"sha": sha, "size": size, "media_type": media_type, "name": name, "run": run_id, "step": step,
                "created_at": created_at, "chunks": chunks}
        with self.pool.connection() as conn, conn.transaction():
            if conn.execute(q.INSERT_RESOURCE, meta).rowcount:
                again = hashlib.sha256()
                for n, piece in enumerate(_pieces(data, self.chunk_size)):
                    again.update(piece)
                    conn.execute(q.INSERT_CHUNK, {"sha": sha, "n": n, "data": piece})
                if again.hexdigest() != sha:
                    raise StoreError(f"{data} changed while it was stored as a resource; nothing was kept")
            elif run_id:
                conn.execute(q.NOTE_RESOURCE_RUN, {"sha": sha, "run": run_id})
        return RES_PREFIX + sha

    def _resource_row(self, ref: str) -> tuple[Any, ...]:
        sha = ref[len(RES_PREFIX):] if ref.startswith(RES_PREFIX) else ref
        if not SHA256.match(sha):
            raise NotFound(f"{ref!r} is not a resource reference", hint="resources look like res://<64 hex digits>")
        with self.pool.connection() as conn:
            row = conn.execute(q.RESOURCE, {"sha": sha}).fetchone()
        if row is None:
            raise NotFound(f"no resource {sha} in the database")
        return row

    def resource_meta(self, ref: str) -> dict[str, Any]:
        sha, size, media_type, name, run_id, step, created_at, _ = self._resource_row(ref)
        return {"sha256": sha, "size": size, "media_type": media_type, "name": name, "run": run_id, "step": step,
                "created_at": created_at}

    def resource_runs(self, ref: str) -> list[str]:
        """The runs that stored this resource: the one its metadata names, then the others, in order."""
        row = self._resource_row(ref)
        with self.pool.connection() as conn:
            others = [r for (r,) in conn.execute(q.RESOURCE_RUNS, {"sha": row[0]}).fetchall()]
        return list(dict.fromkeys(r for r in [row[4], *others] if r))

    def _chunks(self, sha: str, count: int) -> Iterator[bytes]:
        for n in range(count):  # one chunk in memory at a time
            with self.pool.connection() as conn:
                found = conn.execute(q.CHUNK, {"sha": sha, "n": n}).fetchone()
            if found is None:
                raise StoreError(f"resource {sha} is missing its chunk {n}")
            yield found[0]

    def copy_resource(self, ref: str, out: BinaryIO) -> int:
        sha, size, *_, count = self._resource_row(ref)
        written = 0
        for chunk in self._chunks(sha, count):
            out.write(chunk)
            written += len(chunk)
        return written

    def resource_path(self, ref: str) -> Path:
        """A local file of the resource's bytes, in the cache directory (made from the database once)."""
        sha, size, *_, count = self._resource_row(ref)
        path = self.cache_dir / "resources" / sha
        try:
            if path.stat().st_size == size:
                return path
        except FileNotFoundError:
            pass
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{sha}.", suffix=".tmp")
        try:
            digest = hashlib.sha256()
            with os.fdopen(fd, "wb") as handle:
                for chunk in self._chunks(sha, count):
                    digest.update(chunk)
                    handle.write(chunk)
            if digest.hexdigest() != sha:
                raise StoreError(f"resource {sha} does not match its address in the database")
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return path
