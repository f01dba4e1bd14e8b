"""`ssh`: run a command on the host of an ssh connection (fabric over paramiko).

The connection comes from the config: host, port, user, `key_file` (without
one, the daemon user's agent and default keys), `known_hosts` (default: the
daemon user's `~/.ssh/known_hosts`), an optional `jump` connection and a
`connect_timeout`. Host keys are checked strictly: a host missing from
known_hosts, or offering a different key, is refused with its fingerprint and
no retry; `insecure_accept_new: true` trusts (and records) a first-seen key.
Authentication failures are not retried either; other connection failures
are, per the step's `retry`.

The command runs under a small POSIX-sh wrapper on the host:

- env vars are `export`ed with shlex-quoted values (no AcceptEnv needed);
  `SIGNOFF_RUN_ID`, `SIGNOFF_FLOW`, `SIGNOFF_STEP`, `SIGNOFF_OUTPUT` and, when
  the flow has a callback step for it, `SIGNOFF_CALLBACK_URL` are added;
- it runs in a session of its own (`setsid`), from a job directory
  `$HOME/.signoff/jobs/<run>-<step>-<attempt>-<random>` holding its `pid`
  (= its process group), `exit_code`, `$SIGNOFF_OUTPUT` file and, when
  detached, its `log`;
- on timeout or cancel the whole remote process group gets SIGTERM, then
  SIGKILL, over a new SSH connection (closing a channel kills nothing on the
  host). A cancel that wins the race against the start leaves a marker that
  stops the job from starting at all.

Output is spooled as in `shell` (tails inline, the rest to res://) and streamed
to `ctx.on_output` as it arrives. `detach: true` starts the job with
setsid/nohup, its output in the job's `log`, and returns at once with `pid`,
`log`, `host`, `connection`, `job` and `callback`; `kill_detached` stops such
a job later (a run's cancel, its callback's timeout) and `detached_workers`
finds the ones a run may still have running. `upload` / `download` copy files
over sftp before / after the command; downloads become resources.

A connection that served a step cleanly is kept idle for 30 s for the next
step to the same host (same hops, key and known_hosts), so a flow of many
short commands pays one handshake; a pooled connection found dead is replaced
once, transparently. Kills always use a new connection.

The host needs a POSIX /bin/sh and util-linux `setsid` (with `-w`); bash is
used for the command when present, `ps` and `awk` (if there) let a kill see
that only zombies are left instead of waiting out the grace period.

paramiko is synchronous: every blocking call (network, and the step's own file
work) runs on a thread pool of this module (not the loop's shared executor,
which a few long commands would exhaust), so the daemon's event loop never
waits on the network or the disk for an ssh step.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import codecs
import hashlib
import json
import logging
import os
import posixpath
import re
import secrets
import select
import shlex
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import fabric
import paramiko
from paramiko.config import SSHConfig

from runner.errors import NotFound, StepFailed
from runner.steps import Done, StepContext
from runner.steps.shell import MAX_SPOOL, _Spool, parse_output_file
from runner.timeutil import parse_duration

log = logging.getLogger(__name__)

JOBS = ".signoff/jobs"            # under the remote user's $HOME
CHUNK = 65536
POLL_MS = 500                     # longest a reader thread sleeps before it looks at its stop flag
KILL_GRACE = 2.0                  # SIGTERM, then this long, then SIGKILL
START_WAIT = 5.0                  # a detached job must have written its pid by then
MAX_OUTPUT_FILE = 1024 * 1024     # $SIGNOFF_OUTPUT on the host
ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
SETUP_FAILED = 125                # the wrapper's own exit code (job dir, cwd)
_known_hosts_lock = threading.Lock()


# ---- connections ------------------------------------------------------------------


def fingerprint(key: paramiko.PKey) -> str:
    """OpenSSH's form: SHA256:<base64 of the key blob's sha256, unpadded>."""
    digest = hashlib.sha256(key.asbytes()).digest()
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")


@dataclass(frozen=True)
class _Hop:
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


def _route(config: Any, name: str, *, draft: bool) -> list[_Hop]:
    """The hops to connection `name`, outermost jump host first. Checks names and files, no network."""
    if config is None:
        raise StepFailed("ssh steps need a config with connections (--config / SIGNOFF_CONFIG)", retryable=False)
    base = config.path.parent if getattr(config, "path", None) else Path.cwd()
    hops: list[_Hop] = []
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
        hops.append(_Hop(name=conn.name, host=spec["host"], port=int(spec.get("port", 22)), user=spec.get("user"),
                         key_file=key_file, known_hosts=known_hosts,
                         accept_new=accept_new, timeout=parse_duration(spec.get("connect_timeout", "10s"))))
        current = spec.get("jump")
    return hops[::-1]


class _UnknownHostKey(paramiko.SSHException):
    pass


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
    """Strict by default; with insecure_accept_new, trust on first use and remember the key."""

    def __init__(self, hop: _Hop) -> None:
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


def _fabric_config() -> fabric.Config:
    # no ~/.ssh/config, /etc/fabric.yaml or env overrides: the signoff config is the whole truth
    return fabric.Config(lazy=True, ssh_config=SSHConfig())


def _failure(hop: _Hop, exc: BaseException) -> StepFailed:
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


class _Session:
    """An SSH connection to the last hop, through the others; `close` closes them all."""

    def __init__(self, hops: list[_Hop]) -> None:
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
                raise exc if isinstance(exc, StepFailed) else _failure(self.target, exc) from None
            log.info("ssh %s: a pooled connection is gone (%s: %s); reconnecting", self.target.label, what, exc)
        self.close()
        self.reused = False
        self.open()
        try:
            return use()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise _failure(self.target, exc) from None

    @property
    def target(self) -> _Hop:
        return self.hops[-1]

    @property
    def transport(self) -> paramiko.Transport:
        transport = self.connections[-1].client.get_transport()
        if transport is None or not transport.is_active():
            raise StepFailed(f"ssh {self.target.label}: the connection was lost")
        return transport

    def open(self) -> "_Session":
        try:
            for hop in self.hops:
                sock = None
                if self.connections:
                    try:
                        sock = self.transport.open_channel("direct-tcpip", (hop.host, hop.port), ("", 0),
                                                           timeout=hop.timeout)
                    except (paramiko.SSHException, OSError, EOFError) as exc:
                        raise _failure(hop, exc) from None
                self._connect(hop, sock)
        except BaseException:
            self.close()
            raise
        return self

    def _connect(self, hop: _Hop, sock: Any) -> None:
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
        client.set_missing_host_key_policy(_HostKeyPolicy(hop))
        if hop.known_hosts.is_file():
            try:
                client.get_host_keys().load(str(hop.known_hosts))
            except (OSError, paramiko.SSHException, ValueError) as exc:
                raise StepFailed(f"connection '{hop.name}': cannot read known_hosts {hop.known_hosts}: {exc}",
                                 retryable=False) from None
        try:
            conn.open()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise _failure(hop, exc) from None

    def close(self) -> None:
        for conn in reversed(self.connections):
            try:
                conn.client.close()  # not conn.close(): that skips a half-open client
            except Exception:  # closing must not hide what went wrong before
                log.debug("closing an ssh connection failed", exc_info=True)
        self.connections.clear()


class _Pool:
    """Idle connections kept for the next step to the same host (same hops, keys and known_hosts).

    A connection is lent to one step at a time and comes back only when that step
    ended cleanly; one idle longer than `idle` seconds is closed. Kills never use
    the pool: they always make a new connection.
    """

    def __init__(self, idle: float = 30.0, per_key: int = 32) -> None:
        self.idle = idle
        self.per_key = per_key
        self._lock = threading.Lock()
        self._free: dict[tuple[_Hop, ...], list[tuple[float, _Session]]] = {}
        self._reaper: threading.Thread | None = None

    def take(self, hops: list[_Hop]) -> _Session:
        """A pooled connection to `hops`, or a new one (blocking)."""
        found, stale = None, []
        with self._lock:
            free = self._free.get(tuple(hops)) or []
            while free and found is None:
                since, session = free.pop()
                if time.monotonic() - since < self.idle and session.alive():
                    found = session
                else:
                    stale.append(session)
        for session in stale:
            session.close()
        if found is not None:
            found.reused = True
            return found
        return _Session(hops).open()

    def give(self, session: _Session) -> None:
        if not session.alive():
            session.close()
            return
        with self._lock:
            free = self._free.setdefault(tuple(session.hops), [])
            free.append((time.monotonic(), session))
            surplus = free[:-self.per_key]
            del free[:-self.per_key]
            if self._reaper is None or not self._reaper.is_alive():
                self._reaper = threading.Thread(target=self._reap, name="signoff-ssh-pool", daemon=True)
                self._reaper.start()
        for _, extra in surplus:
            extra.close()

    def _reap(self) -> None:
        while True:
            time.sleep(min(self.idle / 3, 10.0))
            now, expired = time.monotonic(), []
            with self._lock:
                for key, free in list(self._free.items()):
                    expired += [session for since, session in free if now - since >= self.idle]
                    free[:] = [(since, session) for since, session in free if now - since < self.idle]
                    if not free:
                        del self._free[key]
                if not self._free:
                    self._reaper = None
                    done = True
                else:
                    done = False
            for session in expired:
                session.close()
            if done:
                return

    def close_all(self) -> None:
        with self._lock:
            sessions = [session for free in self._free.values() for _, session in free]
            self._free.clear()
        for session in sessions:
            session.close()


_CONNECTIONS = _Pool()
atexit.register(_CONNECTIONS.close_all)


def close_connections() -> None:
    """Close the pooled idle connections (the daemon calls this when it stops)."""
    _CONNECTIONS.close_all()


# ---- threads ------------------------------------------------------------------------


# Blocking work runs on this pool rather than the loop's default executor, which a few long
# commands would exhaust. Threads are made on demand and then reused: starting a thread
# waits for it to run, which under load would stall the loop as much as the work itself.
_POOL = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="signoff-ssh")


def _in_thread(fn: Callable[..., Any], *args: Any, cleanup: Callable[[Any], None] | None = None) -> asyncio.Future:
    """fn(*args) on the ssh thread pool, as a future of the running loop.

    If the future is cancelled (its awaiting task was), the call still runs to
    its end and `cleanup(result)` gets what it made (an open connection, say).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if cleanup is not None and error is None:
                _POOL.submit(cleanup, result)
        elif error is not None:
            future.set_exception(error)
        else:
            future.set_result(result)

    def target() -> None:
        result, error = None, None
        try:
            result = fn(*args)
        except BaseException as exc:  # handed to the awaiting task
            error = exc
        try:
            loop.call_soon_threadsafe(settle, result, error)
        except RuntimeError:  # the loop is gone: nobody will take the result
            if cleanup is not None and error is None:
                cleanup(result)

    _POOL.submit(target)
    return future


async def _settled(future: asyncio.Future) -> Any:
    """Await a thread's future through a shield: a second cancel leaves the thread to finish on its own."""
    return await asyncio.shield(future)


# ---- the remote side -------------------------------------------------------------------

# The job itself: $0 is the job dir, $1 the command. It is the leader of its own
# session and process group (setsid), so its pid is the group to kill.
_INNER = ('echo $$ > "$0/pid"; '
          'if command -v bash >/dev/null 2>&1; then bash -c "$1"; else sh -c "$1"; fi; '
          's=$?; echo $s > "$0/exit_code"; exit $s')


def _make_dir(dir_expr: str) -> str:
    return (f'd={dir_expr}\n'
            f'if ! (umask 077 && mkdir -p "$(dirname "$d")" && mkdir "$d") 2>/dev/null; then\n'
            f'  [ -e "$d/cancelled" ] && rm -rf "$d"\n'
            f'  echo "signoff: cannot create the job directory $d on the host" >&2; exit {SETUP_FAILED}\n'
            f'fi\n')


def _cd(cwd: str | None) -> str:
    if not cwd:
        return ""
    return (f'cd {_shell_path(cwd)} || {{ rm -rf "$d"; echo "signoff: cannot change to directory" {shlex.quote(cwd)} '
            f'"on the host" >&2; exit {SETUP_FAILED}; }}\n')


def _shell_path(path: str) -> str:
    if path == "~":
        return '"$HOME"'
    if path.startswith("~/"):
        return '"$HOME"/' + shlex.quote(path[2:])
    return shlex.quote(path)


def _exports(env: dict[str, str]) -> str:
    return "".join(f"export {key}={shlex.quote(value)}\n" for key, value in env.items())


def _job_dir(name: str) -> str:
    return f'"$HOME"/{JOBS}/{name}'


def _run_script(plan: "_Plan") -> str:
    return (_make_dir(_job_dir(plan.job)) + _cd(plan.cwd) + _exports(plan.env) + 'export SIGNOFF_OUTPUT="$d/output"\n'
            f'setsid -w /bin/sh -c {shlex.quote(_INNER)} "$d" {shlex.quote(plan.run)} < /dev/null\n')


def _detach_script(plan: "_Plan") -> str:
    tries = int(START_WAIT / 0.05)
    return (_make_dir(_job_dir(plan.job)) + _cd(plan.cwd) + _exports(plan.env) +
            f'setsid nohup /bin/sh -c {shlex.quote(_INNER)} "$d" {shlex.quote(plan.run)} '
            '> "$d/log" 2>&1 < /dev/null &\n'
            'i=0\n'
            'while [ ! -s "$d/pid" ]; do\n'
            f'  i=$((i+1)); if [ $i -gt {tries} ]; then echo "signoff: the job did not start" >&2; '
            f'exit {SETUP_FAILED}; fi\n'
            '  sleep 0.05\n'
            'done\n'
            'printf "pid=%s\\njob=%s\\n" "$(cat "$d/pid")" "$d"\n')


def _kill_script(dir_expr: str, *, remove: bool) -> str:
    steps = int(KILL_GRACE * 10)
    return (f'd={dir_expr}\n'
            'if [ ! -d "$d" ]; then\n'  # not started yet: make sure it never does
            '  (umask 077 && mkdir -p "$(dirname "$d")" && mkdir "$d" && : > "$d/cancelled") 2>/dev/null\n'
            '  echo not-started; exit 0\n'
            'fi\n'
            # a group is alive while it has a member that is not a zombie (orphans wait for init to reap them)
            'alive() {\n'
            '  kill -s 0 -- "-$1" 2>/dev/null || return 1\n'
            '  command -v ps >/dev/null 2>&1 || return 0\n'
            '  ps -A -o pgid= -o stat= 2>/dev/null | awk -v g="$1" \'$1 == g && $2 !~ /^Z/ {n++} END {exit !n}\'\n'
            '}\n'
            'i=0\n'
            'while [ ! -s "$d/pid" ] && [ ! -e "$d/exit_code" ] && [ $i -lt 60 ]; do sleep 0.05; i=$((i+1)); done\n'
            'if [ -e "$d/exit_code" ] || [ ! -s "$d/pid" ]; then r=ended\n'
            'else\n'
            '  p=$(cat "$d/pid")\n'
            '  if alive "$p"; then\n'
            '    kill -s TERM -- "-$p" 2>/dev/null\n'
            f'    i=0; while alive "$p" && [ $i -lt {steps} ]; do sleep 0.1; i=$((i+1)); done\n'
            '    if alive "$p"; then r=killed; else r=terminated; fi\n'
            '    kill -s KILL -- "-$p" 2>/dev/null\n'
            '  else r=gone; fi\n'
            'fi\n'
            + ('rm -rf "$d"\n' if remove else ': > "$d/killed" 2>/dev/null\n') +
            'echo "$r"\n')


def _wrap(script: str) -> str:
    """Whatever the login shell, the script runs under /bin/sh."""
    return f"exec /bin/sh -c {shlex.quote(script)}"


def _exec(session: _Session, command: str, sink: Callable[[str, bytes], None],
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
        raise _failure(session.target, exc) from None
    finally:
        channel.close()


def _capture(session: _Session, command: str) -> tuple[int | None, str, str]:
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    code = _exec(session, command, lambda stream, data: out[stream].extend(data[:MAX_OUTPUT_FILE + 1]))
    return code, out["stdout"].decode("utf-8", "replace"), out["stderr"].decode("utf-8", "replace")


def _kill(hops: list[_Hop], dir_expr: str, remove: bool) -> str:
    """Kill a job's process group over a new connection; what happened (killed, ended, not-started...)."""
    session = _Session(hops).open()
    try:
        code, out, err = _capture(session, _kill_script(dir_expr, remove=remove))
    finally:
        session.close()
    if code != 0:
        raise StepFailed(f"ssh {hops[-1].label}: killing the job failed ({code}): {err.strip()[:300]}")
    return out.strip() or "unknown"


def _remote_path(path: str, cwd: str | None) -> str:
    """A path as sftp takes it: relative ones start from the login directory (~/ too), or from `cwd`."""
    if path.startswith("~/"):
        return path[2:]
    if posixpath.isabs(path) or not cwd:
        return path
    return posixpath.join(_remote_path(cwd, None) if cwd != "~" else ".", path)


def _sftp_failure(session: _Session, what: str, exc: BaseException) -> StepFailed:
    if isinstance(exc, (paramiko.SSHException, EOFError)) or (isinstance(exc, OSError) and not exc.errno
                                                               and not isinstance(exc, FileNotFoundError)):
        return StepFailed(f"ssh {session.target.label}: {what}: {exc}")  # the connection, not the file
    return StepFailed(f"ssh {session.target.label}: {what}: {getattr(exc, 'strerror', None) or exc}",
                      retryable=False)


def _upload(session: _Session, uploads: list[tuple[Path, str]]) -> None:
    sftp = session.first(lambda: session.connections[-1].client.open_sftp(), "sftp")
    session.reused = False
    try:
        for local, remote in uploads:
            try:
                parent = posixpath.dirname(remote)
                if parent and parent not in (".", "/"):
                    _makedirs(sftp, parent)
                sftp.put(str(local), remote)
                sftp.chmod(remote, local.stat().st_mode & 0o777)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _sftp_failure(session, f"upload {local} -> {remote}", exc) from None
    finally:
        sftp.close()


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.stat(path)
        return
    except FileNotFoundError:
        pass
    parent = posixpath.dirname(path)
    if parent and parent not in (".", "/", path):
        _makedirs(sftp, parent)
    sftp.mkdir(path)


def _download(session: _Session, downloads: list[tuple[str, str]], folder: Path, cap: int,
              required: bool) -> dict[str, Path]:
    """Copy files from the host into `folder`; name -> local path. Missing ones fail only if `required`."""
    found: dict[str, Path] = {}
    sftp = session.first(lambda: session.connections[-1].client.open_sftp(), "sftp")
    try:
        for remote, name in downloads:
            try:
                size = sftp.stat(remote).st_size or 0
            except FileNotFoundError:
                if required:
                    raise StepFailed(f"download: {remote} does not exist on {session.target.label}",
                                     retryable=False) from None
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _sftp_failure(session, f"download {remote}", exc) from None
            if size > cap:
                raise StepFailed(f"download: {remote} is {size:,} bytes, over the limit of {cap:,} "
                                 "(limits.max_output_bytes)", retryable=False)
            local = folder / f"{len(found)}-{posixpath.basename(name)}"
            try:
                sftp.get(remote, str(local))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _sftp_failure(session, f"download {remote}", exc) from None
            found[name] = local
    finally:
        sftp.close()
    return found


# ---- the step -----------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything the step will do, checked before any I/O."""

    hops: list[_Hop]
    run: str
    cwd: str | None
    env: dict[str, str]
    detach: bool
    job: str
    callback: str | None
    output_json: bool
    uploads: list[tuple[Path, str]] = field(default_factory=list)
    downloads: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def build(cls, ctx: StepContext) -> "_Plan":
        spec = ctx.spec
        hops = _route(ctx.config, str(spec["connection"]), draft=ctx.draft)
        detach = _flag(spec.get("detach"), "detach")
        callback = _callback_step(ctx)
        env = {str(k): str(v) for k, v in ctx.env.items()}
        env.update({"SIGNOFF_RUN_ID": ctx.run["id"], "SIGNOFF_FLOW": ctx.run["flow"], "SIGNOFF_STEP": ctx.step.id})
        url = ctx.callback_url(callback) if callback else None
        if url:
            env["SIGNOFF_CALLBACK_URL"] = url
        for key in env:
            if not ENV_KEY.match(key):
                raise StepFailed(f"env name {key!r} is not a valid variable name", retryable=False)
        cwd = str(spec["cwd"]) if spec.get("cwd") else None
        job = f"{ctx.run['id']}-{ctx.step.id}-{ctx.attempt}-{secrets.token_hex(6)}"
        plan = cls(hops=hops, run=str(spec["run"]), cwd=cwd, env=env, detach=detach, job=job, callback=callback,
                   output_json=spec.get("output") == "json")
        for item in spec.get("upload") or []:
            plan.uploads.append((_local_file(ctx, str(item["from"])), _upload_target(ctx, item, cwd)))
        names: set[str] = set()
        for item in spec.get("download") or []:
            name = str(item.get("to") or posixpath.basename(str(item["from"]).rstrip("/")))
            if not name or name.startswith("/") or ".." in name.split("/"):
                raise StepFailed(f"download name {name!r} must be a relative name without '..'", retryable=False)
            if name in names:
                raise StepFailed(f"two downloads are named {name!r}; give one a `to:`", retryable=False)
            names.add(name)
            plan.downloads.append((_remote_path(str(item["from"]), cwd), name))
        if detach and plan.downloads:
            raise StepFailed("download needs the command to end, and a detached job does not wait for that; "
                             "have the worker post its results to the callback, or download in a later step",
                             retryable=False)
        if detach and plan.output_json:
            raise StepFailed("output: json needs the command's stdout, which a detached job writes to its log",
                             retryable=False)
        return plan


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise StepFailed(f"{name} must be true or false, not {value!r}", retryable=False)
    return bool(value)


def _callback_step(ctx: StepContext) -> str | None:
    """The callback step a job reports to: the one named by `callback:`, else the flow's next one."""
    callbacks = ctx.run.get("callbacks") or {}
    named = ctx.spec.get("callback")
    if named:
        if named not in callbacks:
            raise StepFailed(f"callback: '{named}' is not a callback step of this flow", retryable=False)
        return str(named)
    order = list(ctx.run.get("steps") or {})
    return next((step_id for step_id in order[ctx.step.index + 1:] if step_id in callbacks), None)


def _local_file(ctx: StepContext, source: str) -> Path:
    if source.startswith("res://"):
        try:
            return ctx.store.resource_path(source)
        except NotFound as exc:
            raise StepFailed(f"upload: {exc.message}", retryable=False) from None
    path = Path(source).expanduser()
    path = path if path.is_absolute() else ctx.work_dir / path
    if not path.is_file():
        raise StepFailed(f"upload: {path} is not a file", retryable=False)
    return path


def _upload_target(ctx: StepContext, item: dict, cwd: str | None) -> str:
    target = str(item["to"])
    if target.endswith("/"):
        source = str(item["from"])
        base = (ctx.store.resource_meta(source).get("name") or source[len("res://"):]) \
            if source.startswith("res://") else Path(source).name
        target += posixpath.basename(base)
    return _remote_path(target, cwd)


def _prepare_work(work: Path, cap: int) -> dict[str, _Spool]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return {"stdout": _Spool(work / "stdout", cap), "stderr": _Spool(work / "stderr", cap)}


def _remove_work(work: Path, spools: dict[str, _Spool]) -> None:
    for spool in spools.values():
        spool.handle.close()
    shutil.rmtree(work, ignore_errors=True)


class _Sink:
    """Spools a stream as shell does and streams it to ctx.on_output on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: StepContext, spools: dict[str, _Spool]) -> None:
        self.loop = loop
        self.ctx = ctx
        self.spools = spools
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in spools}

    def __call__(self, stream: str, data: bytes) -> None:
        self.spools[stream].write(data)
        text = self.decoders[stream].decode(data)
        if text:
            try:
                self.loop.call_soon_threadsafe(self.ctx.on_output, stream, text)
            except RuntimeError:  # the loop is closing; the spool still has it
                pass


class SshKind:
    instant = False
    shell_fields = ("run",)

    async def execute(self, ctx: StepContext) -> Done:
        plan = _Plan.build(ctx)
        session = await _in_thread(_CONNECTIONS.take, plan.hops, cleanup=_CONNECTIONS.give)
        clean = False
        try:
            if plan.uploads:
                await _in_thread(_upload, session, plan.uploads)
            if plan.detach:
                result = await self._detach(ctx, plan, session)
            else:
                result = await self._run(ctx, plan, session)
            clean = True
            return result
        except StepFailed as exc:
            clean = "exit_code" in exc.outputs  # the command ran to its end: the connection is fine
            raise
        finally:
            await _settled(_in_thread(_CONNECTIONS.give if clean else _Session.close, session))

    async def _remote(self, plan: _Plan, session: _Session, command: str,
                      sink: Callable[[str, bytes], None]) -> int:
        """Run the job; on cancel (a timeout, a cancelled run) kill it on the host before letting go."""
        stop = threading.Event()
        job = _in_thread(_exec, session, command, sink, stop)
        job.add_done_callback(lambda done: done.cancelled() or done.exception())  # never "not retrieved"
        try:
            code = await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()
            await self._kill_after(plan, "cancelled")
            await asyncio.wait([job], timeout=POLL_MS / 1000 + 1)  # the reader sees `stop` and lets go
            raise
        if code == -1:
            await self._kill_after(plan, "connection lost")
            raise StepFailed(f"ssh {plan.hops[-1].label}: the connection was lost before the command ended")
        return code

    async def _kill_after(self, plan: _Plan, why: str) -> None:
        try:
            result = await _settled(_in_thread(_kill, plan.hops, _job_dir(plan.job), not plan.detach))
            log.info("ssh job %s on %s (%s): %s", plan.job, plan.hops[-1].label, why, result,
                     extra={"event": "ssh_job_killed"})
        except StepFailed as exc:
            log.warning("ssh job %s on %s (%s) may still run: %s", plan.job, plan.hops[-1].label, why, exc.message,
                        extra={"event": "ssh_kill_failed"})

    async def _run(self, ctx: StepContext, plan: _Plan, session: _Session) -> Done:
        work = ctx.run_dir / "work" / f"{ctx.step.id}-{ctx.attempt}"
        cap = int((ctx.config.limits if ctx.config else {}).get("max_output_bytes", MAX_SPOOL))
        spools = await _in_thread(_prepare_work, work, cap)  # files stay off the loop's thread
        try:
            code = await self._remote(plan, session, _run_script(plan),
                                      _Sink(asyncio.get_running_loop(), ctx, spools))
            return Done(await _in_thread(self._collect, ctx, plan, session, work, spools, code, cap))
        finally:
            await _settled(_in_thread(_remove_work, work, spools))

    def _collect(self, ctx: StepContext, plan: _Plan, session: _Session, work: Path, spools: dict[str, _Spool],
                 code: int, cap: int) -> dict[str, Any]:
        """The outputs of a finished command (in a pool thread): tails, resources, $SIGNOFF_OUTPUT, downloads."""
        for spool in spools.values():
            spool.handle.close()
        # the job dir: read $SIGNOFF_OUTPUT, then remove it
        status, written, err = _capture(session, f'd={_job_dir(plan.job)}\ncat "$d/output" 2>/dev/null\nrm -rf "$d"\n')
        outputs: dict[str, Any] = {"exit_code": code}
        for name, spool in spools.items():
            outputs.update(spool.outputs(name, ctx))
        if status != 0:
            raise StepFailed(f"ssh {plan.hops[-1].label}: reading $SIGNOFF_OUTPUT failed: {err.strip()[:300]}",
                             outputs=outputs)
        if len(written.encode()) > MAX_OUTPUT_FILE:
            raise StepFailed(f"$SIGNOFF_OUTPUT is over {MAX_OUTPUT_FILE:,} bytes", retryable=False, outputs=outputs)
        (work / "output").write_text(written)
        outputs.update(parse_output_file(work / "output"))
        if plan.downloads:
            files = _download(session, plan.downloads, work, cap, code == 0)
            outputs["downloads"] = {name: ctx.store.put_resource(path, name=name, run_id=ctx.run["id"],
                                                                 step=ctx.step.id)
                                    for name, path in files.items()}
        if code != 0:
            last = spools["stderr"].tail.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise StepFailed(f"exit code {code}{': ' + last[0][:300] if last[0] else ''}", outputs=outputs)
        if plan.output_json:
            outputs["json"] = self._json(spools["stdout"], outputs)
        return outputs

    def _json(self, spool: _Spool, outputs: dict[str, Any]) -> Any:
        if spool.truncated:
            raise StepFailed("output: json, but stdout was cut at the output limit", retryable=False, outputs=outputs)
        try:
            return json.loads(spool.path.read_bytes())
        except ValueError as exc:
            raise StepFailed(f"output: json, but stdout is not JSON ({exc})", retryable=False,
                             outputs=outputs) from None

    async def _detach(self, ctx: StepContext, plan: _Plan, session: _Session) -> Done:
        out = {"stdout": bytearray(), "stderr": bytearray()}
        code = await self._remote(plan, session, _detach_script(plan),
                                  lambda stream, data: out[stream].extend(data[:MAX_OUTPUT_FILE]))
        stdout, stderr = (out[k].decode("utf-8", "replace") for k in ("stdout", "stderr"))
        fields = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
        if code != 0 or not fields.get("pid", "").isdigit() or not fields.get("job"):
            last = stderr.strip().splitlines()[-1:] or [f"exit code {code}"]
            raise StepFailed(f"ssh {plan.hops[-1].label}: the detached job did not start: {last[0][:300]}")
        target = plan.hops[-1]
        job = fields["job"]
        return Done({"pid": int(fields["pid"]), "log": f"{job}/log", "host": target.host,
                     "connection": target.name, "job": job, "callback": plan.callback})


KIND = SshKind()


# ---- detached workers: the engine's clean-up ---------------------------------------


async def kill_detached(ctx_or_config: Any, outputs: dict[str, Any], *, draft: bool | None = None) -> str:
    """Kill a detached job's process group (its `outputs` from the ssh step) over a new connection.

    Returns what happened: killed, terminated, gone or ended (it had finished).
    Raises StepFailed when the host cannot be reached.
    """
    if isinstance(ctx_or_config, StepContext):
        config, draft = ctx_or_config.config, ctx_or_config.draft if draft is None else draft
    else:
        config = ctx_or_config
    for key in ("connection", "job", "pid"):
        if not outputs.get(key):
            raise StepFailed(f"these are not the outputs of a detached ssh step (no {key!r})", retryable=False)
    hops = _route(config, str(outputs["connection"]), draft=bool(draft))
    return await _settled(_in_thread(_kill, hops, shlex.quote(str(outputs["job"])), False))


def detached_workers(run: dict[str, Any], flow: Any, *,
                     callback: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    """(step id, outputs) of the run's detached ssh jobs that may still be running.

    Those that started and whose callback has not arrived; with `callback`, only
    the ones reporting to that callback step. Hand each outputs to kill_detached.
    """
    received = run.get("callbacks_received") or {}
    found = []
    for step in flow.steps:
        if step.kind != "ssh":
            continue
        state = (run.get("steps") or {}).get(step.id) or {}
        outputs = state.get("outputs") or {}
        if state.get("status") != "succeeded" or not outputs.get("job") or not outputs.get("pid"):
            continue
        target = outputs.get("callback")
        if (target and target in received) or (callback is not None and target != callback):
            continue
        found.append((step.id, outputs))
    return found
