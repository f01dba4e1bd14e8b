"""SSH transport for the `ssh` step kind: connections, the job wrapper on the host, sftp.

runner.steps.ssh.step decides what to run and what its result means; this module
does the talking, all of it synchronous paramiko (over fabric), so every call
that blocks runs through `in_thread`.

- Routes and host keys: `route` turns a config connection and its `jump`
  chain into `Hop`s, outermost first, checking names and files with no I/O.
  Host keys are checked strictly against known_hosts: a host missing from it,
  or offering a different key, is refused with its `fingerprint` and no retry;
  `insecure_accept_new: true` trusts (and records) a first-seen key.
  Authentication failures are not retryable either; other connection failures
  are (a StepFailed that the step's `retry` acts on).
- Sessions and the pool: a `Session` is a connection to the last hop, through
  the others. `CONNECTIONS` keeps one that served a step cleanly idle for 30 s
  for the next step with the same hops, key and known_hosts, so a flow of many
  short commands pays one handshake; a pooled connection found dead is replaced
  once, transparently. Kills always use a new connection.
- Threads: `in_thread` runs a blocking call on this module's own thread pool
  (not the loop's shared executor, which a few long commands would exhaust),
  so the daemon's event loop never waits on the network or the disk.
- The job wrapper (`run_script`, `detach_script`): a small POSIX-sh script
  that `export`s the env with shlex-quoted values (no AcceptEnv needed) and
  runs the command in a session of its own (`setsid`) from a job directory
  `$HOME/.signoff/jobs/<name>` holding its `pid` (= its process group),
  `exit_code`, `output` ($SIGNOFF_OUTPUT) and, when detached, its `log`.
  `run_command` streams a script's output as it arrives, `capture` collects it.
- Kills (`kill_job`): the job's whole process group gets SIGTERM, then SIGKILL,
  over a new connection (closing a channel kills nothing on the host). A kill
  that wins the race against the start leaves a marker that stops the job
  from starting at all. `claim_job` finds a detached job's pid after a
  restart (or fences one that has not started), for a retry to adopt it.
- Files: `upload` / `download` over sftp; `remote_path` is a path as sftp
  takes it.

The host needs a POSIX /bin/sh and util-linux `setsid` (with `-w`); bash is
used for the command when present, `ps` and `awk` (if there) let a kill see
that only zombies are left instead of waiting out the grace period.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import hashlib
import logging
import os
import posixpath
import select
import shlex
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import fabric
import paramiko
from paramiko.config import SSHConfig

from runner.errors import StepFailed
from runner.timeutil import parse_duration

log = logging.getLogger(__name__)

JOBS = ".signoff/jobs"            # under the remote user's $HOME
CHUNK = 65536
POLL_MS = 500                     # longest a reader thread sleeps before it looks at its stop flag
KILL_GRACE = 2.0                  # SIGTERM, then this long, then SIGKILL
START_WAIT = 5.0                  # a detached job must have written its pid by then
MAX_OUTPUT_FILE = 1024 * 1024     # $SIGNOFF_OUTPUT on the host
SETUP_FAILED = 125                # the wrapper's own exit code (job dir, cwd)
_known_hosts_lock = threading.Lock()


# ---- connections ------------------------------------------------------------------


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


class _HostKeyPolicy(paramiko.MissingHostKeyPolicy):
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


def _fabric_config() -> fabric.Config:
    # no ~/.ssh/config, /etc/fabric.yaml or env overrides: the signoff config is the whole truth
    return fabric.Config(lazy=True, ssh_config=SSHConfig())


def _connection_failure(hop: Hop, exc: BaseException) -> StepFailed:
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
                raise exc if isinstance(exc, StepFailed) else _connection_failure(self.target, exc) from None
            log.info("ssh %s: a pooled connection is gone (%s: %s); reconnecting", self.target.label, what, exc)
        self.close()
        self.reused = False
        self.open()
        try:
            return use()
        except (paramiko.SSHException, OSError, EOFError) as exc:
            raise _connection_failure(self.target, exc) from None

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
                        raise _connection_failure(hop, exc) from None
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
            raise _connection_failure(hop, exc) from None

    def close(self) -> None:
        for conn in reversed(self.connections):
            try:
                conn.client.close()  # not conn.close(): that skips a half-open client
            except Exception:  # closing must not hide what went wrong before
                log.debug("closing an ssh connection failed", exc_info=True)
        self.connections.clear()


class ConnectionPool:
    """Idle connections kept for the next step to the same host (same hops, keys and known_hosts).

    A connection is lent to one step at a time and comes back only when that step
    ended cleanly; one idle longer than `idle` seconds is closed. Kills never use
    the pool: they always make a new connection.
    """

    def __init__(self, idle: float = 30.0, per_key: int = 32) -> None:
        self.idle = idle
        self.per_key = per_key
        self._lock = threading.Lock()
        self._free: dict[tuple[Hop, ...], list[tuple[float, Session]]] = {}
        self._reaper: threading.Thread | None = None

    def take(self, hops: list[Hop]) -> Session:
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
        return Session(hops).open()

    def give(self, session: Session) -> None:
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


CONNECTIONS = ConnectionPool()
atexit.register(CONNECTIONS.close_all)


# ---- threads ------------------------------------------------------------------------


# Blocking work runs on this pool rather than the loop's default executor, which a few long
# commands would exhaust. Threads are made on demand and then reused: starting a thread
# waits for it to run, which under load would stall the loop as much as the work itself.
_THREADS = ThreadPoolExecutor(max_workers=1024, thread_name_prefix="signoff-ssh")


def in_thread(fn: Callable[..., Any], *args: Any, cleanup: Callable[[Any], None] | None = None) -> asyncio.Future:
    """fn(*args) on the ssh thread pool, as a future of the running loop.

    If the future is cancelled (its awaiting task was), the call still runs to
    its end and `cleanup(result)` gets what it made (an open connection, say).
    """
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(result: Any, error: BaseException | None) -> None:
        if future.cancelled():
            if cleanup is not None and error is None:
                _THREADS.submit(cleanup, result)
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

    _THREADS.submit(target)
    return future


async def settled(future: asyncio.Future) -> Any:
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


def job_dir(name: str) -> str:
    return f'"$HOME"/{JOBS}/{name}'


def run_script(job: str, command: str, cwd: str | None, env: dict[str, str]) -> str:
    """Run `command` as job `job` and wait for it; its output is the script's."""
    return (_make_dir(job_dir(job)) + _cd(cwd) + _exports(env) + 'export SIGNOFF_OUTPUT="$d/output"\n'
            f'setsid -w /bin/sh -c {shlex.quote(_INNER)} "$d" {shlex.quote(command)} < /dev/null\n')


def detach_script(job: str, command: str, cwd: str | None, env: dict[str, str]) -> str:
    """Start `command` as job `job` in the background; prints `pid=` and `job=` (its directory) once it runs."""
    tries = int(START_WAIT / 0.05)
    return (_make_dir(job_dir(job)) + _cd(cwd) + _exports(env) +
            f'setsid nohup /bin/sh -c {shlex.quote(_INNER)} "$d" {shlex.quote(command)} '
            '> "$d/log" 2>&1 < /dev/null &\n'
            'i=0\n'
            'while [ ! -s "$d/pid" ]; do\n'
            f'  i=$((i+1)); if [ $i -gt {tries} ]; then echo "signoff: the job did not start" >&2; '
            f'exit {SETUP_FAILED}; fi\n'
            '  sleep 0.05\n'
            'done\n'
            'printf "pid=%s\\njob=%s\\n" "$(cat "$d/pid")" "$d"\n')


# a group is alive while it has a member that is not a zombie (orphans wait for init to reap them)
_ALIVE = ('alive() {\n'
          '  kill -s 0 -- "-$1" 2>/dev/null || return 1\n'
          '  command -v ps >/dev/null 2>&1 || return 0\n'
          '  ps -A -o pgid= -o stat= 2>/dev/null | awk -v g="$1" \'$1 == g && $2 !~ /^Z/ {n++} END {exit !n}\'\n'
          '}\n')
# a job being started writes its pid at once: give it a few seconds
_WAIT_PID = ('i=0\n'
             'while [ ! -s "$d/pid" ] && [ ! -e "$d/exit_code" ] && [ $i -lt 60 ]; do sleep 0.05; i=$((i+1)); done\n')
# a job that has not started yet (no directory): make sure it never does
_FENCE = ('if [ ! -d "$d" ]; then\n'
          '  (umask 077 && mkdir -p "$(dirname "$d")" && mkdir "$d" && : > "$d/cancelled") 2>/dev/null\n'
          '  echo not-started; exit 0\n'
          'fi\n')


def _kill_script(dir_expr: str, *, remove: bool) -> str:
    steps = int(KILL_GRACE * 10)
    return (f'd={dir_expr}\n' + _FENCE + _ALIVE + _WAIT_PID +
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


def _claim_script(dir_expr: str) -> str:
    return (f'd={dir_expr}\n' + _FENCE + _WAIT_PID +
            'if [ -s "$d/pid" ]; then printf "pid=%s\\njob=%s\\n" "$(cat "$d/pid")" "$d"; exit 0; fi\n'
            ': > "$d/cancelled"\n'
            'echo not-started\n')


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
        raise _connection_failure(session.target, exc) from None
    finally:
        channel.close()


def capture(session: Session, command: str) -> tuple[int | None, str, str]:
    out: dict[str, bytearray] = {"stdout": bytearray(), "stderr": bytearray()}
    code = run_command(session, command, lambda stream, data: out[stream].extend(data[:MAX_OUTPUT_FILE + 1]))
    return code, out["stdout"].decode("utf-8", "replace"), out["stderr"].decode("utf-8", "replace")


def kill_job(hops: list[Hop], dir_expr: str, remove: bool) -> str:
    """Kill a job's process group over a new connection; what happened (killed, ended, not-started...)."""
    session = Session(hops).open()
    try:
        code, out, err = capture(session, _kill_script(dir_expr, remove=remove))
    finally:
        session.close()
    if code != 0:
        raise StepFailed(f"ssh {hops[-1].label}: killing the job failed ({code}): {err.strip()[:300]}")
    return out.strip() or "unknown"


def claim_job(hops: list[Hop], dir_expr: str) -> dict[str, str]:
    """Over a new connection: a detached job's `pid` and `job` (its directory) if it started, else {}.

    A job that has not started is fenced: it never will (runner.steps.ssh.jobs: a retry adopts or replaces).
    """
    session = Session(hops).open()
    try:
        code, out, err = capture(session, _claim_script(dir_expr))
    finally:
        session.close()
    if code != 0:
        raise StepFailed(f"ssh {hops[-1].label}: looking for the earlier job failed ({code}): {err.strip()[:300]}")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


# ---- files (sftp) ----------------------------------------------------------------------


def remote_path(path: str, cwd: str | None) -> str:
    """A path as sftp takes it: relative ones start from the login directory (~/ too), or from `cwd`."""
    if path.startswith("~/"):
        return path[2:]
    if posixpath.isabs(path) or not cwd:
        return path
    return posixpath.join(remote_path(cwd, None) if cwd != "~" else ".", path)


def _sftp_failure(session: Session, what: str, exc: BaseException) -> StepFailed:
    if isinstance(exc, (paramiko.SSHException, EOFError)) or (isinstance(exc, OSError) and not exc.errno
                                                               and not isinstance(exc, FileNotFoundError)):
        return StepFailed(f"ssh {session.target.label}: {what}: {exc}")  # the connection, not the file
    return StepFailed(f"ssh {session.target.label}: {what}: {getattr(exc, 'strerror', None) or exc}",
                      retryable=False)


def upload(session: Session, uploads: list[tuple[Path, str]]) -> None:
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


def download(session: Session, downloads: list[tuple[str, str]], folder: Path, cap: int,
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
