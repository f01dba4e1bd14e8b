"""`store: {kind: postgres}` from the CLI: `signoff db migrate`, what `doctor` says of the database, `serve` refusing.

Real PostgreSQL (tests/postgres_support.py), the real `signoff` in a subprocess.
"""

from __future__ import annotations

from pathlib import Path

import psycopg

CONFIG = "store:\n  kind: postgres\n  dsn: {env: SIGNOFF_TEST_STORE_DSN}\n"


def store_check(document: dict) -> dict:
    return {c["check"]: c for c in document["checks"]}["store"]


def test_db_migrate_creates_the_schema_then_finds_it_current(cli, repo: Path, pg_empty_dsn: str) -> None:
    config = repo / "signoff.yaml"
    config.write_text(CONFIG)
    env = {"SIGNOFF_TEST_STORE_DSN": pg_empty_dsn}
    before = cli(["doctor", "--config", str(config), "--json"], env=env)
    assert before.code == 1
    assert store_check(before.json)["ok"] is False
    assert "no signoff schema" in store_check(before.json)["detail"]
    assert "signoff db migrate" in store_check(before.json)["hint"]
    first = cli(["db", "migrate", "--config", str(config), "--json"], env=env)
    assert first.code == 0, first.err
    assert first.json["before"] == 0 and first.json["version"] >= 1 and first.json["changed"] is True
    again = cli(["db", "migrate", "--config", str(config)], env=env)
    assert again.code == 0 and f"schema already at version {first.json['version']}" in again.out
    after = cli(["doctor", "--config", str(config), "--json"], env=env)
    check = store_check(after.json)
    assert check["ok"] is True, check
    assert f"schema version {first.json['version']} (this signoff's)" in check["detail"]
    assert "reachable" in check["detail"]
    with psycopg.connect(pg_empty_dsn) as conn:
        assert conn.execute("SELECT count(*) FROM runs").fetchone() == (0,)


def test_serve_refuses_a_database_without_the_schema_saying_what_to_run(cli, repo: Path, pg_empty_dsn: str) -> None:
    config = repo / "signoff.yaml"
    config.write_text(CONFIG)
    done = cli(["serve", "--config", str(config), "--port", "9"], env={"SIGNOFF_TEST_STORE_DSN": pg_empty_dsn})
    assert done.code != 0 and "Traceback" not in done.err
    assert "has no signoff schema yet" in done.err and "signoff db migrate" in done.err


def test_the_store_config_is_checked_by_the_schema(cli, repo: Path) -> None:
    config = repo / "signoff.yaml"
    config.write_text("store: {kind: postgres}\n")  # no dsn
    done = cli(["db", "migrate", "--config", str(config)])
    assert done.code != 0 and "invalid config" in done.err and "dsn" in done.err
    config.write_text("store: {kind: postgres, dsn: 'postgresql://u:pw@h/db'}\n")  # a literal: not a secret reference
    assert cli(["db", "migrate", "--config", str(config)]).code != 0
    config.write_text("store: {kind: files}\n")
    done = cli(["db", "migrate", "--config", str(config)])
    assert done.code != 0 and "the config names no PostgreSQL store" in done.err
