"""A real PostgreSQL server for the tests, started by the tests themselves.

`postgres_server` (session-scoped) is `SIGNOFF_TEST_DSN` when it is set (a
server someone runs; its role may create databases), else a cluster of its
own: `initdb` into a temp dir and `pg_ctl start` on a free loopback port
(`listen_addresses=127.0.0.1`, its unix socket in the same temp dir, fsync on),
stopped (and the dir removed) at the end of the session. PostgreSQL refuses
to run as root: then the cluster belongs to `nobody`, who owns the temp dir.

`Postgres.database(migrated=...)` makes a fresh database for one test: empty,
or copied from a template with the schema in place (CREATE DATABASE ...
TEMPLATE, a file copy, far faster than migrating every time); `drop` removes
it. `pg_dsn` / `pg_empty_dsn` are those as function fixtures.

Bounded waits only: `pg_ctl -w -t` for start and stop, then SIGKILL of the
postmaster if it is still there.
"""

from __future__ import annotations

import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Iterator
from urllib.parse import urlsplit, urlunsplit

import pytest

from support import free_port

BIN_DIRS = ("/usr/lib/postgresql/15/bin", "/usr/local/bin", "/usr/bin")
START_DEADLINE = 30
STOP_DEADLINE = 20
UNPRIVILEGED = "nobody"
TEMPLATE = "signoff_template"


def binary(name: str) -> str:
    for folder in BIN_DIRS:
        path = Path(folder) / name
        if os.access(path, os.X_OK):
            return str(path)
    found = shutil.which(name)
    if not found:
        raise AssertionError(f"PostgreSQL's {name} is not installed (apt-get install postgresql), "
                             "or set SIGNOFF_TEST_DSN to a server the tests may create databases on")
    return found


def with_database(dsn: str, name: str) -> str:
    """`dsn` naming the database `name` instead (URL form)."""
    parts = urlsplit(dsn)
    return urlunsplit((parts.scheme, parts.netloc, f"/{name}", parts.query, parts.fragment))


class Postgres:
    """One PostgreSQL server: ours (`start`/`stop`), or one named by a DSN."""

    def __init__(self, admin_dsn: str | None = None) -> None:
        self.admin_dsn = admin_dsn
        self.root: Path | None = None
        self.port = 0
        self._names = itertools.count(1)
        self._template_ready = False

    # ---- our own cluster --------------------------------------------------------

    def start(self) -> "Postgres":
        self.root = Path(tempfile.mkdtemp(prefix="signoff-pg-"))
        data = self.root / "data"
        user = pwd.getpwnam(UNPRIVILEGED) if os.geteuid() == 0 else None
        if user:
            os.chown(self.root, user.pw_uid, user.pw_gid)
        self.port = free_port()
        self._as_owner([binary("initdb"), "-D", str(data), "-U", "postgres", "-A", "trust", "-E", "UTF8",
                        "--locale=C", "--no-sync"], user)
        options = (f"-c listen_addresses=127.0.0.1 -p {self.port} -c unix_socket_directories={self.root} "
                   "-c fsync=on -c max_connections=200")
        try:
            self._as_owner([binary("pg_ctl"), "-D", str(data), "-l", str(self.root / "server.log"), "-o", options,
                            "-w", "-t", str(START_DEADLINE), "start"], user)
        except AssertionError:
            self.stop()
            raise
        self.admin_dsn = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        return self

    def _as_owner(self, argv: list[str], user: pwd.struct_passwd | None) -> None:
        owner = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []} if user else {}
        done = subprocess.run(argv, capture_output=True, text=True, timeout=START_DEADLINE + 30, cwd=self.root,
                              **owner)
        if done.returncode != 0:
            raise AssertionError(f"{' '.join(argv[:1] + argv[-1:])} failed ({done.returncode}):\n"
                                 f"{done.stdout}\n{done.stderr}\n{self.log_tail()}")

    def stop(self) -> None:
        if self.root is None:
            return
        data = self.root / "data"
        user = pwd.getpwnam(UNPRIVILEGED) if os.geteuid() == 0 else None
        if (data / "postmaster.pid").exists():
            try:
                self._as_owner([binary("pg_ctl"), "-D", str(data), "-m", "fast", "-w", "-t", str(STOP_DEADLINE),
                                "stop"], user)
            except (AssertionError, subprocess.TimeoutExpired):
                self._kill(data)
        shutil.rmtree(self.root, ignore_errors=True)
        self.root = None

    @staticmethod
    def _kill(data: Path) -> None:
        try:
            pid = int((data / "postmaster.pid").read_text().split()[0])
            os.kill(pid, signal.SIGKILL)
        except (OSError, ValueError, IndexError):
            pass

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join((self.root / "server.log").read_text(errors="replace").splitlines()[-lines:])
        except (OSError, TypeError):
            return "(no server log)"

    # ---- databases for the tests -------------------------------------------------------

    def _admin(self, *statements: str) -> None:
        import psycopg

        with psycopg.connect(self.admin_dsn, autocommit=True) as conn:
            for statement in statements:
                conn.execute(statement)

    def database(self, *, migrated: bool = True) -> str:
        """A fresh database's DSN: with the schema in place (from a migrated template) or empty."""
        name = f"signoff_test_{os.getpid()}_{next(self._names)}"
        if migrated and not self._template_ready:
            from runner.runs.postgres.schema import migrate

            self._admin(f"DROP DATABASE IF EXISTS {TEMPLATE}_{os.getpid()}",
                        f"CREATE DATABASE {TEMPLATE}_{os.getpid()}")
            migrate(with_database(self.admin_dsn, f"{TEMPLATE}_{os.getpid()}"))
            self._template_ready = True
        template = f"{TEMPLATE}_{os.getpid()}" if migrated else "template0"
        self._admin(f"CREATE DATABASE {name} TEMPLATE {template}")
        return with_database(self.admin_dsn, name)

    def drop(self, dsn: str) -> None:
        self._admin(f"DROP DATABASE IF EXISTS {urlsplit(dsn).path.lstrip('/')} WITH (FORCE)")

    def close(self) -> None:
        if self._template_ready and self.root is None:  # someone else's server: leave nothing of ours on it
            self._admin(f"DROP DATABASE IF EXISTS {TEMPLATE}_{os.getpid()} WITH (FORCE)")
        self.stop()


_shared: Postgres | None = None


def shared_server() -> Postgres:
    """The session's server, started on first use (by the fixture, or by the daemon helpers when the whole
    suite runs on PostgreSQL), closed by `close_shared` at the end of the session."""
    global _shared
    if _shared is None:
        given = os.environ.get("SIGNOFF_TEST_DSN")
        _shared = Postgres(given) if given else Postgres().start()
    return _shared


def close_shared() -> None:
    global _shared
    if _shared is not None:
        _shared.close()
        _shared = None


def on_postgres() -> bool:
    """SIGNOFF_TEST_STORE=postgres: every daemon the tests start keeps its runs in a fresh database."""
    return os.environ.get("SIGNOFF_TEST_STORE") == "postgres"


# a test that reads the file store's own files (run.json, events.jsonl, the journal, <data>/releases):
# it says so, and is skipped when every daemon runs on PostgreSQL
files_only = pytest.mark.skipif(on_postgres(), reason="reads the file store's own files (SIGNOFF_TEST_STORE=postgres)")


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[Postgres]:
    yield shared_server()


@pytest.fixture
def pg_dsn(postgres_server: Postgres) -> Iterator[str]:
    """A fresh database with the current schema, dropped after the test."""
    dsn = postgres_server.database()
    try:
        yield dsn
    finally:
        postgres_server.drop(dsn)


@pytest.fixture
def pg_empty_dsn(postgres_server: Postgres) -> Iterator[str]:
    """A fresh empty database (no schema), dropped after the test."""
    dsn = postgres_server.database(migrated=False)
    try:
        yield dsn
    finally:
        postgres_server.drop(dsn)
