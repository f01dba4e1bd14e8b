"""The PostgreSQL store: `PostgresStore` (the `Store` protocol in a database), its schema and migrations.

    queries     every SQL statement, by name
    schema      versioned migrations (migrations/NNNN_name.sql): `migrate`, `check_schema`
    store       `PostgresStore`: runs, events, snapshots, the callback index, kills, start-up upkeep
    log         `PostgresLog`: a run's one writer, under a fenced lease
    resources   content-addressed resources in chunks
    indexes     the callback index and the runs with kills still to carry out
    importer    a file store moved into the database, once (`signoff db import`)
    shared      what several daemons share: once-only claims, schedule slots, settings, release state
"""

from runner.runs.postgres.schema import SCHEMA_VERSION, check_schema, migrate
from runner.runs.postgres.store import PostgresStore

__all__ = ["SCHEMA_VERSION", "PostgresStore", "check_schema", "migrate"]
