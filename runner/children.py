"""What a command started by signoff inherits: a clean environment and three descriptors.

A step's command (`shell`, and anything else that starts a local process) is
not part of the daemon, so it sees neither the daemon's environment (where the
`{env: NAME}` secrets of the config live) nor its descriptors (the listening
socket, client connections, a run's event log and with it the run's lock).

The environment of a child is, in this order (later wins):

    PATH, HOME, LANG, LC_*, TZ     from signoff's own environment, where set
    the flow's and the step's env  rendered by the engine
    SIGNOFF_*                      what signoff tells the step (run, flow, step, output file, ...)

Its descriptors are stdin (/dev/null), a pipe each for stdout and stderr, and
nothing else: a background job (`nohup worker &`) holds none of the daemon's
files, so the step ends when its shell does. The process is started by
`subprocess` (which closes every other descriptor in the child), not by the
event loop's own process support, because uvloop's ignores `close_fds` and
leaves its copies of the pipes (and a pipe of its own) open in the child.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import threading
from pathlib import Path
from typing import Mapping

from runner.dryrun import refuse

PASSED = ("PATH", "HOME", "LANG", "TZ")  # plus every LC_* variable
PASSED_PREFIXES = ("LC_",)


def child_environment(env: Mapping[str, str], signoff: Mapping[str, str], *,
                      parent: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of a step's command: the passed variables, then `env`, then the `SIGNOFF_*` ones."""
    parent = os.environ if parent is None else parent
    base = {key: value for key, value in parent.items() if key in PASSED or key.startswith(PASSED_PREFIXES)}
    base.setdefault("PATH", os.defpath)
    return {**base, **{str(k): str(v) for k, v in env.items()}, **signoff}


class _PipeReader:
    """The read end of a child's pipe fed into a StreamReader, closed exactly once, by us.

    Not the loop's pipe transports: under uvloop they close a pipe's descriptor twice when
    other threads start processes at the same time (a `git` in a worker thread then got EBADF
    on its own, just-opened pipe).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, fd: int) -> None:
        self.loop, self.fd = loop, fd
        self.reader = asyncio.StreamReader()
        os.set_blocking(fd, False)
        loop.add_reader(fd, self._readable)

    def _readable(self) -> None:
        if self.fd < 0:
            return
        try:
            data = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self.reader.set_exception(exc)
            self.close()
            return
        if data:
            self.reader.feed_data(data)
        else:
            self.reader.feed_eof()
            self.close()

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            self.loop.remove_reader(fd)
            os.close(fd)
            if not self.reader.at_eof():
                self.reader.feed_eof()


class Child:
    """A running command: `stdout`/`stderr` stream readers, `pid`, `returncode`, `wait()` and `close()`."""

    def __init__(self, popen: subprocess.Popen, stdout: asyncio.StreamReader, stderr: asyncio.StreamReader,
                 transports: list[_PipeReader], exited: asyncio.Future) -> None:
        self._popen = popen
        self.stdout = stdout
        self.stderr = stderr
        self._transports = transports
        self._exited = exited

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        return self._popen.returncode

    async def wait(self) -> int:
        """The exit code (negative: killed by that signal), once the process has ended."""
        return await asyncio.shield(self._exited)

    def close(self) -> None:
        """Close the pipes (the process itself is the caller's to end and wait for)."""
        for transport in self._transports:
            transport.close()


async def spawn(argv: list[str], *, cwd: Path, env: Mapping[str, str]) -> Child:
    """Start `argv` in a session of its own with only stdin, stdout and stderr; OSError if it cannot start."""
    refuse(f"start {argv[0]}")  # a replay never starts a process
    loop = asyncio.get_running_loop()
    # the pipes are made here, so each read end has one owner (its transport): a file object that
    # Popen also kept would be closed twice, and the second close could hit a descriptor number
    # another thread has just been given (a run's log, say)
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        popen = subprocess.Popen(argv, cwd=cwd, env=dict(env), stdin=subprocess.DEVNULL, stdout=out_write,
                                 stderr=err_write, close_fds=True, start_new_session=True)
    except BaseException:
        for fd in (out_read, err_read):
            os.close(fd)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
    pipes = [_PipeReader(loop, out_read), _PipeReader(loop, err_read)]
    return Child(popen, pipes[0].reader, pipes[1].reader, pipes, _exit_future(loop, popen))


def _exit_future(loop: asyncio.AbstractEventLoop, popen: subprocess.Popen) -> asyncio.Future:
    """A future for the exit code: a pidfd watched by the loop (Linux), else a thread that waits."""
    exited = loop.create_future()

    def settle(code: int) -> None:
        if not exited.done():
            exited.set_result(code)

    try:
        pidfd = os.pidfd_open(popen.pid)
    except (AttributeError, OSError):
        def wait_in_thread() -> None:
            code = popen.wait()
            try:
                loop.call_soon_threadsafe(settle, code)
            except RuntimeError:  # the loop is closed: nobody waits any more
                pass

        threading.Thread(target=wait_in_thread, name=f"wait-{popen.pid}", daemon=True).start()
        return exited

    def ready() -> None:
        if exited.done():
            return  # a second wake-up of the same readiness: the pidfd is already closed
        loop.remove_reader(pidfd)
        os.close(pidfd)
        settle(popen.wait())

    loop.add_reader(pidfd, ready)
    return exited
