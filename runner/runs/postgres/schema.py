"""The database's schema: versioned migrations, applied by `migrate`, checked by `check_schema`.

Migrations are the files `migrations/NNNN_name.sql`, applied in order, each in
its own transaction with its row in `schema_version`; `migrate` takes an
advisory lock first, so two at once apply each migration once. A database is
used only at exactly the version this build knows (`SCHEMA_VERSION`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import cache
from importlib import resources

import psycopg

from runner.errors import StoreError
from runner.runs.postgres import queries as q

MIGRATION_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")
MIGRATION_LOCK_KEY = 0x5160FF  # pg_advisory_xact_lock key while migrating


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str


@cache
def migrations() -> tuple[Migration, ...]:
    """The migrations shipped with this build, in order; their versions are 1, 2, 3 ... with no gap."""
    found = []
    for entry in resources.files(__package__).joinpath("migrations").iterdir():
        match = MIGRATION_NAME.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    if [m.version for m in found] != list(range(1, len(found) + 1)):
        raise StoreError(f"the migrations of this build are not numbered 1..{len(found)}: "
                         f"{[m.version for m in found]}")
    return tuple(found)


SCHEMA_VERSION = len(migrations())


def schema_version(conn: psycopg.Connection) -> int:
    """The version the database is at (0: no signoff schema yet)."""
    if not conn.execute(q.SCHEMA_VERSION_EXISTS).fetchone()[0]:
        return 0
    return conn.execute(q.SCHEMA_VERSION).fetchone()[0]


def check_schema(conn: psycopg.Connection) -> int:
    """The database's version, if it is the one this build understands; else StoreError saying what to run."""
    found = schema_version(conn)
    if found == SCHEMA_VERSION:
        return found
    if found == 0:
        raise StoreError("the database has no signoff schema yet",
                         hint="create it with `signoff db migrate --config <the config>`")
    if found < SCHEMA_VERSION:
        raise StoreError(f"the database's schema is at version {found}, older than this signoff's "
                         f"({SCHEMA_VERSION})", hint="upgrade it with `signoff db migrate`")
    raise StoreError(f"the database's schema is at version {found}, newer than this signoff understands "
                     f"({SCHEMA_VERSION})", hint="upgrade signoff to the version that migrated it, or newer")


def migrate(dsn: str, *, upto: int | None = None) -> tuple[int, int]:
    """Bring the database to this build's version (or `upto`); (version before, version after).

    Idempotent: a database at the version already is left as it is. One newer than this build is refused.
    """
    target = SCHEMA_VERSION if upto is None else upto
    try:
        conn = psycopg.connect(dsn, autocommit=True)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the database: {_reason(exc)}",
                         hint="check the store's dsn in the config, and that the server is up") from None
    with conn:
        with conn.transaction():
            conn.execute(q.MIGRATION_LOCK, {"key": MIGRATION_LOCK_KEY})
            conn.execute(q.CREATE_SCHEMA_VERSION)
            before = schema_version(conn)
        if before > SCHEMA_VERSION:
            check_schema(conn)  # raises, saying so
        for migration in migrations()[before:target]:
            with conn.transaction():
                conn.execute(q.MIGRATION_LOCK, {"key": MIGRATION_LOCK_KEY})
                if schema_version(conn) >= migration.version:
                    continue  # another migrate applied it meanwhile
                conn.execute(migration.sql)
                conn.execute(q.RECORD_MIGRATION, {"version": migration.version, "name": migration.name})
        return before, schema_version(conn)


def database_status(dsn: str) -> dict[str, object]:
    """Where the database is (never its password), its server's version and its schema version, checked
    against this build's (StoreError if it cannot be reached or is not at this build's version)."""
    try:
        conn = psycopg.connect(dsn, autocommit=True, connect_timeout=10)
    except psycopg.Error as exc:
        raise StoreError(f"cannot connect to the database: {_reason(exc)}",
                         hint="check the store's dsn in the config, and that the server is up") from None
    with conn:
        info = conn.info
        found = {"database": f"{info.host}:{info.port}/{info.dbname}", "server_version": _server(info.server_version),
                 "schema_version": schema_version(conn), "expected_version": SCHEMA_VERSION}
        check_schema(conn)
    return found


def _server(number: int) -> str:
    """libpq's server version number (150018) as PostgreSQL writes it (15.18)."""
    return f"{number // 10000}.{number % 10000}"


def _reason(exc: psycopg.Error) -> str:
    """The server's or libpq's message, first line only (a DSN with a password is never in it)."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]
