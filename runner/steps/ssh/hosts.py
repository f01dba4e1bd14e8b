"""Where an ssh step connects and whom it trusts: routes, host keys, and connection failures worded.

- Routes: `route` turns a config connection and its `jump` chain into `Hop`s,
  outermost first, checking names and files with no I/O.
- Host keys are checked strictly against known_hosts: a host missing from it,
  or offering a different key, is refused with its `fingerprint` and no retry;
  `insecure_accept_new: true` trusts (and records) a first-seen key
  (`HostKeyPolicy`).
- Failures: `connection_failure` turns what paramiko raised into a StepFailed.
  Host key and authentication failures are not retryable; other connection
  failures are (a StepFailed that the step's `retry` acts on).
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paramiko

from runner.errors import StepFailed
from runner.timeutil import parse_duration

log = logging.getLogger(__name__)

_known_hosts_lock = threading.Lock()  # guards a file: two first-seen keys must not interleave their lines


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256:<base64 of the key blob's sha256, unpadded>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class Hop:
    """One ssh connection of the config, its paths resolved; no I/O."""

    name: str
    host: str
    port: int
    user: str | None
    key_file: Path | None
    known_hosts: Path
    accept_new: bool
    timeout: float

    @property
    def known_name(self) -> str:
        """The host as known_hosts writes it."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"

    @property
    def label(self) -> str:
        return f"{self.user}@{self.known_name}" if self.user else self.known_name


def _path(value: str, base: Path) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else base / path


def route(config: Any, name: str, *, draft: bool) -> list[Hop]:
    """The hops to connection `name`, outermost jump host first. Checks names and files, no network."""
    if config is None:
        raise StepFailed("ssh steps need a config with connections (--config / SIGNOFF_CONFIG)", retryable=False)
    base = config.path.parent if getattr(config, "path", None) else Path.cwd()
    hops: list[Hop] = []
    seen: list[str] = []
    current: str | None = name
    while current:
        if current in seen:
            raise StepFailed(f"ssh connections jump in a loop: {' -> '.join([*seen, current])}", retryable=False)
        seen.append(current)
        conn = config.connection(current, draft=draft)  # refuses live_only for drafts, before any I/O
        if conn.kind != "ssh":
            raise StepFailed(f"connection '{conn.name}' is a {conn.kind} connection, not ssh", retryable=False)
        spec = conn.spec
        key_file = _path(spec["key_file"], base) if spec.get("key_file") else None
        if key_file is not None and not os.access(key_file, os.R_OK):
            raise StepFailed(f"connection '{conn.name}': key_file {key_file} does not exist or is not readable",
                             retryable=False)
        given = bool(spec.get("known_hosts"))
        known_hosts = _path(spec["known_hosts"], base) if given else Path("~/.ssh/known_hosts").expanduser()
        accept_new = bool(spec.get("insecure_accept_new"))
        if given and not accept_new and not known_hosts.is_file():
            raise StepFailed(f"connection '{conn.name}': known_hosts file {known_hosts} does not exist",
                             retryable=False)
        hops.append(Hop(name=conn.name, host=spec["host"], port=int(spec.get("port", 22)), user=spec.get("user"),
                         key_file=key_file, known_hosts=known_hosts,
                         accept_new=accept_new, timeout=parse_duration(spec.get("connect_timeout", "10s"))))
        current = spec.get("jump")
    return hops[::-1]


class _UnknownHostKey(paramiko.SSHException):
    pass


class HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Strict by default; with insecure_accept_new, trust on first use and remember the key."""

    def __init__(self, hop: Hop) -> None:
        self.hop = hop

    def missing_host_key(self, client: paramiko.SSHClient, hostname: str, key: paramiko.PKey) -> None:
        hop = self.hop
        if not hop.accept_new:
            scan = f"ssh-keyscan {'-p ' + str(hop.port) + ' ' if hop.port != 22 else ''}{hop.host}"
            raise _UnknownHostKey(
                f"the host key of {hostname} is unknown: the host offered {key.get_name()} {fingerprint(key)}, "
                f"which {hop.known_hosts} does not list; refusing to connect. Check that fingerprint with the "
                f"host's owner, then add the key (`{scan} >> {hop.known_hosts}`), or set "
                f"insecure_accept_new: true on connection '{hop.name}' to trust a first-seen key")
        client.get_host_keys().add(hostname, key.get_name(), key)
        log.warning("ssh: trusting the new host key of %s (%s %s) and adding it to %s", hostname, key.get_name(),
                    fingerprint(key), hop.known_hosts, extra={"event": "ssh_host_key_accepted"})
        with _known_hosts_lock:
            hop.known_hosts.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(hop.known_hosts, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a") as handle:
                handle.write(f"{hostname} {key.get_name()} {key.get_base64()}\n")


def connection_failure(hop: Hop, exc: BaseException) -> StepFailed:
    """A connection error as a StepFailed: retryable unless a retry cannot help."""
    where = f"ssh {hop.label} (connection '{hop.name}')"
    if isinstance(exc, _UnknownHostKey):
        return StepFailed(f"{where}: {exc}", retryable=False)
    if isinstance(exc, paramiko.BadHostKeyException):
        return StepFailed(
            f"{where}: the host key of {hop.known_name} has CHANGED: the host offered {exc.key.get_name()} "
            f"{fingerprint(exc.key)}, but {hop.known_hosts} has {exc.expected_key.get_name()} "
            f"{fingerprint(exc.expected_key)}; refusing to connect (the host was reinstalled, or someone is in "
            f"between). If the change is expected, replace the {hop.known_name} line in {hop.known_hosts}",
            retryable=False)
    if isinstance(exc, paramiko.PasswordRequiredException):
        return StepFailed(f"{where}: key_file {hop.key_file} is encrypted; use an unencrypted key or an agent",
                          retryable=False)
    if isinstance(exc, paramiko.AuthenticationException) or (
            isinstance(exc, paramiko.SSHException) and "No authentication methods" in str(exc)):
        used = f"key {hop.key_file}" if hop.key_file else "the agent and default keys"
        return StepFailed(f"{where}: authentication failed with {used} ({exc}); check the user and that the key "
                          "is authorized on the host", retryable=False)
    if isinstance(exc, TimeoutError):
        return StepFailed(f"{where}: no connection within {hop.timeout:g}s")
    if isinstance(exc, paramiko.ChannelException):
        return StepFailed(f"{where}: the jump host could not open a tunnel to {hop.known_name}: {exc.text}")
    if isinstance(exc, OSError):
        return StepFailed(f"{where}: {exc.strerror or exc}")
    if isinstance(exc, (paramiko.SSHException, EOFError)):
        return StepFailed(f"{where}: {type(exc).__name__}: {exc or 'the connection closed'}")
    raise exc
