"""A file store moved into PostgreSQL, once: `import_file_store(files, store)` -> `ImportReport`.

What moves: each run (its flow copy, every event line byte for byte, so its
hash chain verifies as it did, and its snapshot), the resources (bytes,
metadata, and which runs hold them), the callback index and the kill list. A
run's scratch folders (`work/`) and dead writers' temp files stay behind.
With them the daemon's shared state: the release state (`<data>/releases/`:
its documents, unless the database has one of that name already, and its
history, when the database has none yet), the link secret (so links already
sent keep working) and the schedule slots claimed.

The data dir's daemon lock is held throughout, so no daemon serves it (or
starts) meanwhile. It is safe to run again: a run already in the database with
the same events is skipped (also when the database has more events after
them: it went on there); one whose events differ is a conflict and is left as
it is. Each imported run is checked with the store's `verify`; one that does
not verify is taken back out and reported.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from runner.errors import NotFound
from runner.runs.chain import GENESIS
from runner.runs.files import FileStore
from runner.runs.postgres import queries as q
from runner.runs.postgres.store import PostgresStore
from runner.runs.store import RUN_ID, SHA256

EVENT_BATCH = 1000  # event lines per INSERT
RELEASES_NOTE = ("the database had release state already: its documents {kept} were kept, not replaced by "
                 "those of {path}")
INBOX_NOTE = ("{path} is not empty: it may hold callbacks the daemon accepted and has not recorded yet, which "
              "were not imported: start the daemon on the data dir once so it records them, stop it, then import again")


@dataclass
class ImportReport:
    source: str
    imported: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    conflicting: list[dict[str, str]] = field(default_factory=list)  # {run, reason}
    failed: list[dict[str, Any]] = field(default_factory=list)       # {run | resource, problems}
    unborn: list[str] = field(default_factory=list)   # a folder whose log holds no event: never acknowledged
    events: int = 0
    event_bytes: int = 0
    resources_imported: int = 0
    resources_skipped: int = 0
    resource_bytes: int = 0
    callbacks: int = 0
    kills: int = 0
    releases_found: bool = False
    releases_imported: bool = False
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.conflicting and not self.failed

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source, "ok": self.ok,
            "runs": {"imported": len(self.imported), "skipped": len(self.skipped),
                     "conflicting": len(self.conflicting), "failed": len(self.failed), "unborn": len(self.unborn)},
            "events": self.events,
            "resources": {"imported": self.resources_imported, "skipped": self.resources_skipped},
            "bytes": {"events": self.event_bytes, "resources": self.resource_bytes,
                      "total": self.event_bytes + self.resource_bytes},
            "callbacks": self.callbacks, "kills": self.kills,
            "releases": {"found": self.releases_found, "imported": self.releases_imported},
            "imported": self.imported, "skipped": self.skipped, "conflicts": self.conflicting,
            "failures": self.failed, "notes": self.notes,
        }


def import_file_store(files: FileStore, store: PostgresStore) -> ImportReport:
    """Move `files` into `store` (whose schema `PostgresStore` checked as it opened); StoreError while a
    daemon serves the data dir, NotFound if there is none."""
    if not files.data_dir.is_dir():
        raise NotFound(f"no data dir at {files.data_dir}", hint="give the file store's data dir with --from")
    with files.daemon_lock():
        return _Import(files, store).run()


class _Import:
    def __init__(self, files: FileStore, store: PostgresStore) -> None:
        self.files = files
        self.store = store
        self.report = ImportReport(str(files.data_dir))
        self.present: set[str] = set()  # runs the database now holds as the data dir has them

    def run(self) -> ImportReport:
        names = sorted(n for n in _listdir(self.files.runs_dir) if RUN_ID.match(n))
        for run_id in names:
            self._run(run_id)
        self._resources()
        self._callbacks()
        self._kills()
        self._shared_state()
        inbox = self.files.data_dir / "inbox.jsonl"
        if inbox.is_file() and inbox.stat().st_size:
            self.report.notes.append(INBOX_NOTE.format(path=inbox))
        return self.report

    def _shared_state(self) -> None:
        """The release state, the link secret and the schedule slots, where the database has none yet."""
        data = self.files.data_dir
        releases = data / "releases"
        names = sorted(n for n in _listdir(releases) if n.endswith(".json"))
        self.report.releases_found = bool(names) or (releases / "history.jsonl").is_file()
        kept = []
        for name in names:
            if self.store.release_value(name[:-5]) is not None:
                kept.append(name[:-5])
            else:
                self.store.save_release_value(name[:-5], json.loads((releases / name).read_text()))
        if (releases / "history.jsonl").is_file() and not self.store.release_history():
            for line in (releases / "history.jsonl").read_text().splitlines():
                if line.strip():
                    self.store.append_release_history(json.loads(line))
        self.report.releases_imported = self.report.releases_found
        if kept:
            self.report.notes.append(RELEASES_NOTE.format(kept=kept, path=releases))
        secret = data / "link_secret"
        if secret.is_file() and secret.read_text().strip():
            with self.store.pool.connection() as conn:
                conn.execute(q.KEEP_SETTING, {"name": "link_secret", "value": secret.read_text().strip()})
        try:
            claims = json.loads((data / "schedules.json").read_text())
        except (OSError, ValueError):
            claims = {}
        for key, claim in claims.items() if isinstance(claims, dict) else ():
            if isinstance(claim, dict) and claim.get("slot"):
                self.store.claim_slot(key, datetime.fromisoformat(claim["slot"]), claim.get("run"))
                if not claim.get("creating"):
                    self.store.slot_created(key)


    # ---- runs ---------------------------------------------------------------------------

    def _run(self, run_id: str) -> None:
        folder = self.files.runs_dir / run_id
        try:
            data = (folder / "events.jsonl").read_bytes()
        except FileNotFoundError:
            data = b""
        data = data[:data.rfind(b"\n") + 1]  # a torn last line was never acknowledged: the file log cuts it too
        if not data:
            self.report.unborn.append(run_id)
            return
        lines = data.split(b"\n")[:-1]
        conflict = self._compare(run_id, data, len(lines))
        if conflict == "":
            self.report.skipped.append(run_id)
            self.present.add(run_id)
            return
        if conflict is not None:
            self.report.conflicting.append({"run": run_id, "reason": conflict})
            return
        snapshot_text, snapshot = _snapshot(folder)
        row = {"run": run_id, "source": self.files.flow_source(run_id), "snapshot": snapshot_text,
               "flow": snapshot.get("flow"), "status": snapshot.get("status"),
               "draft": bool(snapshot.get("draft")) if snapshot_text else None, "count": len(lines),
               "last": hashlib.sha256(lines[-1]).hexdigest() if lines else GENESIS, "bytes": len(data)}
        with self.store.pool.connection() as conn, conn.transaction():
            if not conn.execute(q.IMPORT_RUN, row).rowcount:
                conflict = "another writer created it in the database meanwhile"
            else:
                for start in range(0, len(lines), EVENT_BATCH):
                    batch = lines[start:start + EVENT_BATCH]
                    conn.execute(q.IMPORT_EVENTS, {"run": run_id, "lines": batch,
                                                   "seqs": list(range(start, start + len(batch)))})
        if conflict is not None:
            self.report.conflicting.append({"run": run_id, "reason": conflict})
            return
        verified = self.store.verify(run_id, grace=0)
        if not verified.ok:
            with self.store.pool.connection() as conn:
                conn.execute(q.UNDO_IMPORT, {"run": run_id, "count": len(lines)})
            self.report.failed.append({"run": run_id, "problems": verified.problems})
            return
        self.report.imported.append(run_id)
        self.report.events += len(lines)
        self.report.event_bytes += len(data)
        self.present.add(run_id)

    def _compare(self, run_id: str, data: bytes, count: int) -> str | None:
        """None: not in the database; "": there with these events (and perhaps more after them); else why not."""
        with self.store.pool.connection() as conn:
            found = conn.execute(q.RUN_LOG_DIGEST, {"run": run_id, "count": count}).fetchone()
        if found is None:
            return None
        held, digest = found
        if held >= count and digest == hashlib.sha256(data).hexdigest():
            return ""
        if held < count:
            return (f"the database holds {held} events of it, the data dir {count}: it went on in the data dir "
                    f"after it was imported, or it is another run")
        return f"its events in the database differ from the data dir's ({held} there, {count} here)"

    # ---- resources ----------------------------------------------------------------------

    def _resources(self) -> None:
        for sha in sorted(n for n in _listdir(self.files.resources_dir) if SHA256.match(n)):
            meta = self.files.resource_meta(sha)
            try:
                self.store.resource_meta(sha)
                self.report.resources_skipped += 1
            except NotFound:
                if not self._put(sha, meta):
                    continue
            with self.store.pool.connection() as conn, conn.transaction():
                for run_id in self.files.resource_runs(sha):
                    conn.execute(q.NOTE_RESOURCE_RUN, {"sha": sha, "run": run_id})

    def _put(self, sha: str, meta: dict[str, Any]) -> bool:
        path = self.files.resources_dir / sha
        if _sha256_of(path) != sha:
            self.report.failed.append({"resource": sha, "problems": ["its bytes do not match its address"]})
            return False
        self.store.put_resource(path, media_type=meta.get("media_type") or "application/octet-stream",
                                name=meta.get("name"), run_id=meta.get("run"), step=meta.get("step"),
                                created_at=meta.get("created_at"))
        self.report.resources_imported += 1
        self.report.resource_bytes += path.stat().st_size
        return True

    # ---- the callback index and the kill list ------------------------------------------------

    def _callbacks(self) -> None:
        folder = self.files.data_dir / "callbacks"
        for name in sorted(_listdir(folder)):
            digest = name.removesuffix(".json")
            if not name.endswith(".json") or not SHA256.match(digest):
                continue
            try:
                entry = json.loads((folder / name).read_text())
            except (OSError, ValueError):
                continue
            if entry.get("run") not in self.present:
                continue  # its run is not in the database as the data dir has it
            params = {"digest": digest, "run": entry["run"], "step": entry["step"]}
            with self.store.pool.connection() as conn:
                if conn.execute(q.INDEX_CALLBACK, params).rowcount:
                    self.report.callbacks += 1
                    continue
                held = conn.execute(q.FIND_CALLBACK, {"digest": digest}).fetchone()
            if held and tuple(held) != (entry["run"], entry["step"]):
                self.report.conflicting.append({"run": entry["run"], "reason": (
                    f"its callback token {digest[:12]}... of step {entry['step']} is indexed to "
                    f"{held[0]} / {held[1]} in the database")})

    def _kills(self) -> None:
        for run_id in self.files.runs_with_kills():
            if run_id in self.present:
                with self.store.pool.connection() as conn:
                    self.report.kills += conn.execute(q.NOTE_KILLS, {"run": run_id}).rowcount


def _listdir(folder) -> list[str]:
    try:
        return [entry.name for entry in folder.iterdir()]
    except (FileNotFoundError, NotADirectoryError):
        return []


def _snapshot(folder) -> tuple[str | None, dict[str, Any]]:
    """run.json's text as it is (without its newline) and what it says; (None, {}) if missing or unreadable."""
    try:
        text = (folder / "run.json").read_text(encoding="utf-8").rstrip("\n")
        found = json.loads(text)
    except (OSError, ValueError):
        return None, {}
    return (text, found) if isinstance(found, dict) else (None, {})


def _sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as source:
        while chunk := source.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()
