"""CLI commands for the PostgreSQL store: `signoff db migrate`, `signoff db import`."""

from __future__ import annotations

import click

from runner.cli.app import Env, common, emit
from runner.errors import UsageError


def _dsn(env: Env) -> str:
    """The database the config's store names (its dsn resolved), or UsageError."""
    store = env.config().store
    if not store.postgres or not store.dsn:
        raise UsageError("the config names no PostgreSQL store" if env.config_path else "no config file given",
                         hint="add store: {kind: postgres, dsn: {env: SIGNOFF_DSN}} to the config and pass "
                              "--config (or SIGNOFF_CONFIG)")
    return store.dsn


@click.group()
def db() -> None:
    """The PostgreSQL store's database: its schema, and moving a file store into it."""


@db.command()
@common
def migrate(data, repo, config, as_json) -> None:
    """Create or upgrade the schema of the database the config's store names; say its version.

    Idempotent: a database at this signoff's version is left as it is; one newer is refused.
    JSON: {database, before, version, changed}.
    """
    from runner.runs.postgres.schema import database_status, migrate as run_migrations

    env = Env(data, repo, config)
    dsn = _dsn(env)
    before, after = run_migrations(dsn)
    where = database_status(dsn)["database"]
    if before == after:
        text = f"{where}: schema already at version {after}"
    elif before == 0:
        text = f"{where}: schema created at version {after}"
    else:
        text = f"{where}: schema upgraded from version {before} to {after}"
    emit(as_json, {"database": where, "before": before, "version": after, "changed": before != after}, text)


@db.command("import")
@click.option("--from", "source", required=True, metavar="DIR", type=click.Path(file_okay=False),
              help="The file store's data directory to move into the database.")
@click.option("--config", envvar="SIGNOFF_CONFIG", metavar="FILE", type=click.Path(exists=True, dir_okay=False),
              help="Config file (signoff.yaml) naming the PostgreSQL store [env: SIGNOFF_CONFIG].")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document (stable keys) on stdout.")
def import_(source, config, as_json) -> None:
    """Move a file store (its runs, events, snapshots, resources, callback index, kill list) into the database
    the config's store names, once.

    Refused while a daemon serves the data dir (it is locked meanwhile) and on a database whose schema is not
    current. Safe to run again: a run already there with the same events is skipped; one whose events differ
    is a conflict, left as it is. Every imported run is verified. Exit 1 if anything conflicted or failed.
    JSON: {source, ok, runs: {imported, skipped, conflicting, failed, unborn}, events, resources: {imported,
    skipped}, bytes: {events, resources, total}, callbacks, kills, releases: {found, imported}, imported,
    skipped, conflicts, failures, notes}.
    """
    import tempfile

    from runner.runs.files import FileStore
    from runner.runs.postgres import PostgresStore
    from runner.runs.postgres.importer import import_file_store

    dsn = _dsn(Env(None, None, config))
    with tempfile.TemporaryDirectory(prefix="signoff-import-") as cache:
        store = PostgresStore(dsn, cache)  # refuses a schema that is not this signoff's, saying what to run
        try:
            report = import_file_store(FileStore(source), store)
        finally:
            store.close()
    emit(as_json, report.to_dict(), _import_text(report), exit_code=0 if report.ok else 1)


def _import_text(report) -> str:
    runs = (f"runs: {len(report.imported)} imported, {len(report.skipped)} skipped (already there), "
            f"{len(report.conflicting)} conflicting, {len(report.failed)} failed")
    lines = [f"imported {report.source}", runs,
             f"events: {report.events} ({report.event_bytes} bytes)",
             f"resources: {report.resources_imported} imported ({report.resource_bytes} bytes), "
             f"{report.resources_skipped} skipped",
             f"callback index entries: {report.callbacks}, runs with kills: {report.kills}"]
    if report.unborn:
        lines.append(f"left out {len(report.unborn)} run folder(s) with no event (never started)")
    lines += [f"conflict: {c['run']}: {c['reason']}" for c in report.conflicting]
    lines += [f"failed: {f.get('run') or f.get('resource')}: {'; '.join(f['problems'])}" for f in report.failed]
    lines += [f"note: {note}" for note in report.notes]
    return "\n".join(lines)


def register(group: click.Group) -> None:
    group.add_command(db)
