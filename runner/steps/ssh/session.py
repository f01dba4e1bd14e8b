"""An SSH session to a host, through its jump hosts, and a command run over it.

All of it is synchronous paramiko (over fabric), so every call that blocks runs
on a thread of the owner's SshPool (runner.steps.ssh.pool).

- A `Session` is a connection to the last hop, through the others. One taken
  from the pool may have died while it was idle: `first` replaces it once,
  transparently, for the session's first channel.
- `run_command` streams a command's output as it arrives (its exit status, or
  -1 when the connection is lost first); `capture` collects it. The command
  runs under /bin/sh, whatever the login shell.
"""

from __future__ import annotations

import logging
import select
import shlex
import threading
from typing import Any, Callable

import fabric
import paramiko
from paramiko.config import SSHConfig

from runner.errors import StepFailed
from runner.steps.ssh.hosts import Hop, HostKeyPolicy, connection_failure

log = logging.getLogger(__name__)

CHUNK = 65536
POLL_MS = 500                     # longest a reader thread sleeps before it looks at its stop flag
MAX_OUTPUT_FILE = 1024 * 1024     # $SIGNOFF_OUTPUT on the host


def _fabric_config() -> fabric.Config:
    # no ~/.ssh/config, /etc/fabric.yaml or env overrides: the signoff config is the whole truth
    return fabric.Config(lazy=True, ssh_config=SSHConfig())


class Session:
    """An SSH connection to the last hop, through the others; `close` closes them all."""

    def __init__(self, hops: list[Hop]) -> None:
        self.hops = hops
        self.connections: list[fabric.Connection] = []
        self.reused = False  # taken from the pool: the far end may have gone meanwhile

    def alive(self) -> bool:
        transport = self.connections[-1].client.get_transport() if self.connections else None
        return bool(transport and transport.is_active())

    def first(self, use: Callable[[], Any], what: str) -> Any:
        """use() for the session's first channel; a pooled connection found dead is replaced once."""
        try:
            return use()
        except (paramiko.SSHException, OSError, EOFError, StepFailed) as exc:
            if not self.reused:
                raise exc if isinstance(exc, StepFailed) else connection_failure(self.target, exc) from None
            log.info("ssh %s: a pooled connection is gone (%s: %s); reconnecting", self.target.label, what, exc)
        self.close()
        self.reused = False
        self.open()
        try:
            return use()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise connection_failure(self.target, exc) from None

    @property
    def target(self) -> Hop:
        return self.hops[-1]

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.connections[-1].client.get_transport()
        if transport is None or not transport.is_active():
            raise StepFailed(f"ssh {self.target.label}: the connection was lost")
        return transport

    def open(self) -> "Session":
        try:
            for hop in self.hops:
                sock = None
                if self.connections:
                    try:
                        sock = self.transport.open_channel("direct-tcpip", (hop.host, hop.port), ("", 0),
                                                           timeout=hop.timeout)
                    except (paramiko.SSHException, OSError, EOFError) as exc:
                        raise connection_failure(hop, exc) from None
                self._connect(hop, sock)
        except BaseException:
            self.close()
            raise
        return self

    def _connect(self, hop: Hop, sock: Any) -> None:
        kwargs: dict[str, Any] = {"timeout": hop.timeout, "banner_timeout": hop.timeout,
                                  "auth_timeout": hop.timeout, "channel_timeout": hop.timeout}
        if hop.key_file is not None:
            kwargs.update(key_filename=str(hop.key_file), look_for_keys=False, allow_agent=False)
        else:
            kwargs.update(look_for_keys=True, allow_agent=True)
        if sock is not None:
            kwargs["sock"] = sock
        conn = fabric.Connection(hop.host, user=hop.user, port=hop.port, config=_fabric_config(),
                                 connect_kwargs=kwargs)
        self.connections.append(conn)  # closed by close() even if opening fails half-way
        client = conn.client
        client.set_missing_host_key_policy(HostKeyPolicy(hop))
        if hop.known_hosts.is_file():
            try:
                client.get_host_keys().load(str(hop.known_hosts))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise StepFailed(f"connection '{hop.name}': cannot read known_hosts {hop.known_hosts}: {exc}",
                                 retryable=False) from None
        try:
            conn.open()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise connection_failure(hop, exc) from None

    def close(self) -> None:
        for conn in reversed(self.connections):
            try:
                conn.client.close()  # not conn.close(): that skips a half-open client
            except Exception:  # closing must not hide what went wrong before
                log.debug("closing an ssh connection failed", exc_info=True)
        self.connections.clear()


def _wrap(script: str) -> str:
    """Whatever the login shell, the script runs under /bin/sh."""
    return f"exec /bin/sh -c {shlex.quote(script)}"


def run_command(session: Session, command: str, sink: Callable[[str, bytes], None],
                stop: threading.Event | None = None) -> int | None:
    """Run `command` on the session; output chunks go to sink(stream, bytes).

    Returns the exit status; -1 if the connection was lost first; None once `stop` is set.
    """
    def start() -> paramiko.Channel:
        channel = session.transport.open_session(timeout=session.target.timeout)
        try:
            channel.exec_command(_wrap(command))
        except BaseException:
            channel.close()
            raise
        return channel

    channel = session.first(start, "exec")
    session.reused = False
    try:
        channel.shutdown_write()
        poller = select.poll()
        poller.register(channel.fileno(), select.POLLIN)
        while stop is None or not stop.is_set():
            busy = False
            if channel.recv_ready():
                busy = True
                if data := channel.recv(CHUNK):
                    sink("stdout", data)
            if channel.recv_stderr_ready():
                busy = True
                if data := channel.recv_stderr(CHUNK):
                    sink("stderr", data)
            if busy:
                continue
            if channel.eof_received or channel.closed:  # all output is in; only the status is to come
                if channel.status_event.wait(POLL_MS / 1000) or channel.closed:
                    break
                continue
            poller.poll(POLL_MS)
        else:
            return None
        return channel.exit_status if channel.status_event.is_set() else -1
    except (paramiko.SSHException, OSError, EOFError) as exc:
        raise connection_failure(session.target, exc) from None
    finally:
        channel.close()


def capture(session: Session, command: str) -> tuple[int | None, str, str]:
    """Run `command`; its exit status, stdout and stderr (as text)."""
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    code = run_command(session, command, lambda stream, data: out[stream].extend(data[:MAX_OUTPUT_FILE + 1]))
    return code, out["stdout"].decode("utf-8", "replace"), out["stderr"].decode("utf-8", "replace")
