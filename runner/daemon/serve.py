"""`signoff serve`: wire config, store, users, daemon and app, and run uvicorn."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn

from runner import secrets
from runner.auth import LOCAL_USER, TOKEN_FILE, Users, load_users
from runner.config import Config, load_config
from runner.daemon.core import Daemon
from runner.errors import ConfigError
from runner.releases.service import GitOps
from runner.daemon.http import create_app
from runner.releases.dbstate import release_state
from runner.runs.files import FileStore
from runner.timeutil import Clock, parse_duration
from runner.releases.mirror import RepoSource


@dataclass(frozen=True)
class ServeOptions:
    """Where `serve` finds its config, data and repository: what the CLI resolved from its options.

    `data_given`: the data directory was named on the command line (or SIGNOFF_DATA), so it wins over
    the config's `data`. `repo` is the repository served when the config names none.
    """

    config_path: str | None
    data: Path
    repo: Path
    data_given: bool = False
    host: str | None = None
    port: int | None = None

    @classmethod
    def of(cls, places: Any, *, host: str | None = None, port: int | None = None) -> "ServeOptions":
        """From anything with `config_path`, `data`, `data_given` and `repo` (the CLI's view of its options)."""
        if isinstance(places, ServeOptions):
            return places
        return cls(places.config_path, Path(places.data), Path(places.repo), bool(places.data_given), host, port)


@dataclass
class Settings:
    """What the daemon takes from its config and environment, every secret and token resolved."""

    config: Config
    host: str
    port: int
    base: Path
    data_dir: Path
    repo_spec: dict[str, Any]
    users: Users
    webhook_secret: str | None
    repo: Path  # the repository served when the config names none


def load_settings(options: ServeOptions) -> Settings:
    """Read and check everything `serve` needs before it starts (and `doctor` checks the same)."""
    config = load_config(options.config_path)
    server = config.data.get("server") or {}
    host = options.host or server.get("host", "127.0.0.1")
    port = options.port if options.port is not None else int(server.get("port", 8080))
    base = config.path.parent if config.path else Path.cwd()  # paths in a config are relative to it
    data_dir = base / config.data["data"] if config.data.get("data") and not options.data_given else options.data
    repo_spec = config.data.get("repo") or {}
    users = load_users(config.data, data_dir, config.path.parent if config.path else None)
    webhook_secret = (secrets.resolve(repo_spec["webhook_secret"], what="repo.webhook_secret", base_dir=base)
                      if repo_spec.get("webhook_secret") else None)
    return Settings(config, host, port, base, data_dir, repo_spec, users, webhook_secret, options.repo)


def settings(places: Any, *, host: str | None = None, port: int | None = None) -> Settings:
    """`load_settings` for ServeOptions, or for an object with their four places (see `ServeOptions.of`)."""
    return load_settings(ServeOptions.of(places, host=host, port=port))


def build(found: Settings | ServeOptions | Any, *, clock: Clock | None = None) -> tuple[Daemon, Any, str, int]:
    """The daemon and its app from typed settings (or options to load them from); with host and port."""
    if not isinstance(found, Settings):
        found = load_settings(ServeOptions.of(found))
    config, host, port, base = found.config, found.host, found.port, found.base
    data_dir, repo_spec, users, webhook_secret = found.data_dir, found.repo_spec, found.users, found.webhook_secret
    server = config.data.get("server") or {}
    if repo_spec.get("url"):
        source = RepoSource(url=repo_spec["url"], data_dir=data_dir)
        work_dir = data_dir / "workspace"
        work_dir.mkdir(parents=True, exist_ok=True)
    else:
        work_dir = (base / repo_spec["path"]).resolve() if repo_spec.get("path") else found.repo
        source = RepoSource(path=work_dir)
    public_url = server.get("public_url") or f"http://{host}:{port}"
    store = open_store(config, data_dir)
    if webhook_secret:
        config.masker.add(webhook_secret)
    gitops = GitOps(source=source, data_dir=release_state(store), config=config, webhook_secret=webhook_secret,
                    poll_interval=parse_duration(repo_spec.get("poll_interval", "15s")))
    daemon = Daemon(config=config, store=store, users=users, gitops=gitops, work_dir=work_dir,
                    public_url=public_url, clock=clock)
    limits = config.limits
    app = create_app(daemon, body_limit=int(limits.get("body_max_bytes", 1024 * 1024)))
    return daemon, app, host, port


def open_store(config: Any, data_dir: Path) -> Any:
    """The store the config names (a FileStore or a PostgresStore): files in `data_dir` (the default), or the
    PostgreSQL database at its dsn
    (whose schema must be this signoff's: StoreError saying what to run otherwise), with `data_dir` as the
    local folder for the runs' scratch files."""
    if config.store.postgres:
        if not config.store.dsn:
            raise ConfigError("the config's store is kind postgres but names no dsn",
                              hint="add store.dsn: {env: SIGNOFF_DSN} (a secret reference) to the config")
        from runner.runs.postgres.store import PostgresStore  # psycopg only for those who use it

        return PostgresStore(config.store.dsn, data_dir, lease=config.store.lease_seconds)
    return FileStore(data_dir)


def serve(found: Settings) -> None:
    """Run the daemon and its app under uvicorn until SIGTERM."""
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for chatty in ("httpx", "httpcore"):  # request lines carry URLs, and a webhook's URL is a secret
        logging.getLogger(chatty).setLevel(logging.WARNING)
    daemon, app, host, port = build(found)
    secrets.mask_logs(daemon.config.masker)
    with daemon.store.daemon_lock():
        _announce(daemon, host, port)
        # log_config=None: uvicorn's records go to the root handler too, and so through the masking;
        # no access log: the paths of signed links (/ui/link/..., /ui/artifacts/...) are credentials
        uvicorn.run(app, host=host, port=port, log_level="warning", log_config=None, access_log=False,
                    lifespan="on", timeout_graceful_shutdown=10)


def _announce(daemon: Daemon, host: str, port: int) -> None:
    local = [u for u in daemon.users.by_hash.values() if u.name == LOCAL_USER]
    print(f"signoff daemon on http://{host}:{port}  (public URL {daemon.public_url})", file=sys.stderr)
    print(f"  flows:  {daemon.gitops.source.url or daemon.repo / 'flows'}", file=sys.stderr)
    where = "PostgreSQL (shared with every daemon on it)" if daemon.shared else daemon.store.data_dir.resolve()
    print(f"  data:   {where}", file=sys.stderr)
    if local:
        print(f"  token:  {(daemon.store.data_dir / TOKEN_FILE).resolve()} (the CLI on this machine reads it)",
              file=sys.stderr)
    print(f"  try:    signoff run hello   |   signoff pending   |   curl {daemon.public_url}/api/v1/health",
          file=sys.stderr)
