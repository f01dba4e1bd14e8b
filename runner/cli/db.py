"""CLI commands for the PostgreSQL store: `signoff db migrate`."""

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
    """The PostgreSQL store's database: its schema."""


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


def register(group: click.Group) -> None:
    group.add_command(db)
