"""CLI commands that set things up, check them and start the daemon: init, doctor, serve."""

from __future__ import annotations

import os
import socket
import subprocess
import tempfile
from importlib import resources
from pathlib import Path
from urllib.parse import urlparse

import click

from runner.cli import render
from runner.cli.app import Env, common, emit
from runner.errors import SignoffError, UsageError
from runner.flows.load import check_file, expand_paths
from runner.schemas import SCHEMA_NAMES, schema_text

EXAMPLES = ("hello.yaml", "review-before-action.yaml")
CONFIG = """\
# yaml-language-server: $schema=schema/config.schema.json
# signoff serve --config signoff.yaml     (schema/config.schema.json documents every field)
server: {host: 127.0.0.1, port: 8080}
repo: {path: ., poll_interval: 15s}
data: .signoff
users:
  alice: {token: {env: ALICE_TOKEN}, groups: [ops], roles: [run, approve]}
  bob: {token: {env: BOB_TOKEN}, groups: [ops], roles: [run, approve, admin]}
channels:
  audit: {kind: log}
"""


@click.command()
@click.argument("directory", default=".", type=click.Path(file_okay=False))
@common
def init(directory, data, repo, config, as_json) -> None:
    """Make DIRECTORY a flows repository: git, flows/ with examples, schema/, signoff.yaml, .gitignore.

    Existing files are left alone. JSON: {directory, created: [paths]}.
    """
    root = Path(directory)
    try:
        created = _lay_out(root)
    except OSError as exc:
        raise SignoffError(f"cannot make {root} a flows repository: {exc.filename or root}: {exc.strerror}",
                           hint="pick a directory you may write (it is made if missing)") from None
    emit(as_json, {"directory": str(root.resolve()), "created": created},
         "\n".join([f"created {path}" for path in created] or ["nothing to create"])
         + f"\nnext: cd {directory} && signoff validate && signoff run hello --local")


@click.command()
@common
def doctor(data, repo, config, as_json) -> None:
    """Check the config, the repository, the data directory, the store's database and the connections.

    The config check is the one `serve` makes before it starts (every secret and user token resolved).
    JSON: {ok, checks: [{check, ok, detail, hint?}]}. Exit 1 if any check failed.
    """
    env = Env(data, repo, config)
    checks: list[dict] = []

    def check(name: str, func) -> None:
        try:
            detail = func()
            checks.append({"check": name, "ok": True, "detail": detail})
        except (SignoffError, OSError, subprocess.SubprocessError) as exc:
            failed = {"check": name, "ok": False, "detail": getattr(exc, "message", None) or str(exc)}
            if getattr(exc, "hint", None):
                failed["hint"] = exc.hint
            checks.append(failed)

    loaded = {}

    def load() -> str:
        from runner.daemon.serve import settings  # what `serve` checks before it starts: secrets, user tokens

        found = settings(env)
        loaded["config"], loaded["settings"] = found.config, found
        users = len(found.users.names())
        return (f"{env.config_path}: secrets resolved, {users} user{'s' if users != 1 else ''}"
                if env.config_path else "no config file: defaults")

    def repository() -> str:
        if not (env.repo / ".git").exists():
            raise UsageError(f"{env.repo} is not a git repository")
        reports = [check_file(p, config=loaded.get("config")) for p in expand_paths([env.flows_dir])]
        bad = [r.file for r in reports if not r.ok]
        if bad:
            raise UsageError(f"{len(bad)} of {len(reports)} flows invalid: {', '.join(bad)} (run signoff validate)")
        return f"{env.repo}: {len(reports)} flows valid"

    def data_dir() -> str:
        env.data.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=env.data) as probe:
            probe.write(b"ok")
            probe.flush()
            os.fsync(probe.fileno())
        return f"{env.data.resolve()} is writable"

    check("config", load)
    check("repository", repository)
    check("data directory", data_dir)
    if loaded.get("settings"):
        check("notification links", lambda: _links(loaded["settings"]))
    cfg = loaded.get("config")
    if cfg and cfg.store.postgres:
        check("store", lambda: _database(cfg.store.dsn))
    for name, conn in (cfg.connections.items() if cfg else []):
        check(f"connection {name}", lambda conn=conn: _reach(conn.spec))
    ok = all(c["ok"] for c in checks)
    rows = [["ok" if c["ok"] else "FAIL", c["check"], render.short(c["detail"], 90)] for c in checks]
    hints = [f"hint ({c['check']}): {c['hint']}" for c in checks if c.get("hint")]
    emit(as_json, {"ok": ok, "checks": checks}, "\n".join([render.table(rows, ["", "CHECK", "DETAIL"]), *hints]),
         exit_code=0 if ok else 1)


@click.command()
@click.option("--host", help="Address to listen on [default: config server.host or 127.0.0.1].")
@click.option("--port", type=int, help="Port [default: config server.port or 8080].")
@common
def serve(host, port, data, repo, config, as_json) -> None:
    """Run the daemon: the API, the engine, timers and notifications, until SIGTERM."""
    from runner.daemon.serve import ServeOptions, load_settings, serve as run_daemon

    env = Env(data, repo, config)
    run_daemon(load_settings(ServeOptions(env.config_path, env.data, env.repo, env.data_given, host, port)))


def _lay_out(root: Path) -> list[str]:
    """Make what is missing under `root`; the paths made, relative to it."""
    root.mkdir(parents=True, exist_ok=True)
    created = []
    if not (root / ".git").exists():
        try:
            subprocess.run(["git", "init", "-q", str(root)], check=True, capture_output=True, text=True)
        except subprocess.CalledProcessError as exc:
            raise SignoffError(f"git init {root} failed: {exc.stderr.strip()}") from None
        created.append(".git/")
    (root / "schema").mkdir(exist_ok=True)
    for name in SCHEMA_NAMES:  # the flows' and the config's first lines point here: editors complete from the start
        target = root / "schema" / f"{name}.schema.json"
        if not target.exists():
            target.write_text(schema_text(name))
            created.append(f"schema/{name}.schema.json")
    (root / "flows").mkdir(exist_ok=True)
    for name in EXAMPLES:
        target = root / "flows" / name
        if not target.exists():
            target.write_bytes(_example(name))
            created.append(f"flows/{name}")
    for name, text in (("signoff.yaml", CONFIG), (".gitignore", ".signoff/\n")):
        if not (root / name).exists():
            (root / name).write_text(text)
            created.append(name)
    return created


def _example(name: str) -> bytes:
    """An example flow: from the checkout's flows/, else the copy shipped in the wheel."""
    local = Path(__file__).resolve().parent.parent / "flows" / name
    if local.is_file():
        return local.read_bytes()
    return resources.files("runner.examples").joinpath(name).read_bytes()


def _links(found) -> str:
    """How the links in notifications are made: their address, their secret (never its value), their expiry."""
    from runner.daemon.core import LINK_SECRET_FILE

    config = found.config
    server = config.data.get("server") or {}
    address = (f"{str(server['public_url']).rstrip('/')}/ui" if server.get("public_url")
               else f"http://{found.host}:{found.port}/ui (server.public_url is not set)")
    if config.link_secrets:
        count = len(config.link_secrets)
        secret = f"signed with server.link_secret ({count} secret{'s' if count != 1 else ''} in rotation)"
    else:
        kept = found.data_dir / LINK_SECRET_FILE
        secret = f"signed with the daemon's own secret ({kept} {'kept' if kept.exists() else 'made at first start'})"
    expiry = "expire with the step's deadline" + (f" or after {server['link_max_age']}" if server.get("link_max_age")
                                                   else "")
    return f"pages at {address}; {secret}; links {expiry}"


def _database(dsn: str) -> str:
    """The PostgreSQL store: reachable, and its schema at the version this signoff understands."""
    from runner.runs.postgres.schema import database_status

    found = database_status(dsn)
    return (f"PostgreSQL {found['server_version']} at {found['database']} reachable; schema version "
            f"{found['schema_version']} (this signoff's)")


def _reach(spec: dict) -> str:
    """A TCP connection to the connection's host and port (no request, no login)."""
    if spec["kind"] == "http":
        parsed = urlparse(spec["base_url"])
        host, port = parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80)
    else:
        host, port = spec["host"], int(spec.get("port", 22))
    with socket.create_connection((host, port), timeout=5):
        return f"{host}:{port} reachable"


def register(group: click.Group) -> None:
    for command in (init, doctor, serve):
        group.add_command(command)
