"""The config file (`signoff.yaml`): validated by schema/config.schema.json.

Secrets named in it are resolved once, at load; a missing one is an error that
names it. With no file, the defaults of DESIGN §5 apply.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from runner import secrets
from runner.errors import ConfigError, StepFailed
from runner.schemas import schema_problems
from runner.secrets import Masker
from runner.timeutil import parse_duration
from runner.yamldoc import DocumentError, read_file


@dataclass
class Connection:
    name: str
    kind: str
    spec: dict[str, Any]
    secret_values: dict[str, str] = field(default_factory=dict)

    @property
    def live_only(self) -> bool:
        return bool(self.spec.get("live_only"))


@dataclass
class StoreConfig:
    """`store:`: files in the data directory (the default), or PostgreSQL at `dsn` (resolved: a secret)."""

    kind: str = "files"
    dsn: str | None = None
    lease_seconds: float = 5.0  # with postgres: how long a daemon holds a run without renewing

    @property
    def postgres(self) -> bool:
        return self.kind == "postgres"


@dataclass
class Config:
    path: Path | None = None
    data: dict[str, Any] = field(default_factory=dict)
    connections: dict[str, Connection] = field(default_factory=dict)
    channels: dict[str, dict] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    masker: Masker = field(default_factory=Masker)
    # what signs the links in notifications (oldest first, newest last; none: the daemon keeps its own)
    link_secrets: list[str] = field(default_factory=list)
    link_max_age: timedelta | None = None
    store: StoreConfig = field(default_factory=StoreConfig)

    @property
    def declared(self) -> bool:
        """Whether a config file was given (only then are flows checked against its names)."""
        return self.path is not None

    @property
    def limits(self) -> dict[str, Any]:
        return self.data.get("limits") or {}

    def connection(self, name: str, *, draft: bool) -> Connection:
        """The connection a step named, refusing live-only ones for drafts before any I/O."""
        conn = self.connections.get(name)
        if conn is None:
            raise StepFailed(f"connection '{name}' is not defined in the config", retryable=False)
        if draft and conn.live_only:
            replacement = conn.spec.get("draft_replacement")
            if replacement and replacement in self.connections:
                return self.connections[replacement]
            raise StepFailed(f"connection '{name}' is live_only and this is a draft run; nothing was sent",
                             retryable=False)
        return conn


def _read(path: Path):
    try:
        return read_file(path)
    except DocumentError as exc:
        raise ConfigError(str(exc.problem)) from None


@dataclass
class ClientView:
    """What a client of the daemon takes from its config: where it answers, and its data directory."""

    server_url: str | None = None
    data: Path | None = None
    database: bool = False  # the config's store is PostgreSQL (its dsn is resolved only when it is opened)


def client_view(path: str | Path) -> ClientView:
    """The daemon's address and data directory from a config, without resolving any secret.

    The address is `server.host:port` (where the daemon listens; 0.0.0.0 and :: mean this
    machine), or `server.public_url` when the config names neither host nor port.
    """
    path = Path(path)
    data = _read(path).plain
    data = data if isinstance(data, dict) else {}
    server = data.get("server") if isinstance(data.get("server"), dict) else {}
    url = None
    if server.get("host") or server.get("port"):
        host = str(server.get("host") or "127.0.0.1")
        host = "127.0.0.1" if host in ("0.0.0.0", "::", "[::]") else host
        url = f"http://{f'[{host}]' if ':' in host and not host.startswith('[') else host}:{server.get('port', 8080)}"
    elif server.get("public_url"):
        url = str(server["public_url"])
    data_dir = path.parent / data["data"] if isinstance(data.get("data"), str) else None
    store = data.get("store") if isinstance(data.get("store"), dict) else {}
    return ClientView(url, data_dir, store.get("kind") == "postgres")


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return Config()
    path = Path(path)
    doc = _read(path)
    problems = schema_problems(doc, "config")
    if problems:
        raise ConfigError(f"{path}: invalid config\n" + "\n".join(str(p) for p in problems))
    data = doc.plain
    base = path.parent
    config = Config(path=path, data=data)
    found: list[str] = []
    for name, ref in (data.get("secrets") or {}).items():
        config.secrets[name] = secrets.resolve(ref, what=f"secrets.{name}", base_dir=base)
        found.append(config.secrets[name])
    for name, spec in (data.get("connections") or {}).items():
        values = {}
        for header, ref in (spec.get("headers") or {}).items():
            if not isinstance(ref, str):
                values[f"headers.{header}"] = secrets.resolve(ref, what=f"connections.{name}.headers.{header}",
                                                              base_dir=base)
                found.append(values[f"headers.{header}"])
        config.connections[name] = Connection(name, spec["kind"], spec, values)
    for name, spec in (data.get("channels") or {}).items():
        resolved = dict(spec)
        for key in ("url", "password"):
            if key in spec and not isinstance(spec[key], str):
                resolved[key] = secrets.resolve(spec[key], what=f"channels.{name}.{key}", base_dir=base)
                found.append(resolved[key])
        config.channels[name] = resolved
    store = data.get("store") or {}
    config.store = StoreConfig(store.get("kind", "files"))
    if store.get("lease"):
        config.store.lease_seconds = parse_duration(store["lease"])
    if "dsn" in store:
        config.store.dsn = secrets.resolve(store["dsn"], what="store.dsn", base_dir=base)
        found.append(config.store.dsn)
    config.link_secrets = _link_secrets(data.get("server") or {}, base)
    found += config.link_secrets
    if (data.get("server") or {}).get("link_max_age"):
        config.link_max_age = timedelta(seconds=parse_duration(data["server"]["link_max_age"]))
    config.masker = Masker(found)
    return config


LINK_SECRET_MIN_LENGTH = 32


def _link_secrets(server: dict[str, Any], base: Path) -> list[str]:
    """`server.link_secret` resolved: one secret reference or a rotation list of them, newest last."""
    refs = server.get("link_secret")
    if refs is None:
        return []
    refs = refs if isinstance(refs, list) else [refs]
    found = []
    for index, ref in enumerate(refs):
        what = "server.link_secret" + (f"[{index}]" if len(refs) > 1 else "")
        value = secrets.resolve(ref, what=what, base_dir=base)
        if len(value) < LINK_SECRET_MIN_LENGTH:
            raise ConfigError(f"{what}: a link secret needs at least {LINK_SECRET_MIN_LENGTH} characters "
                              f"(it has {len(value)})", hint="make one with: openssl rand -hex 32")
        found.append(value)
    return found
