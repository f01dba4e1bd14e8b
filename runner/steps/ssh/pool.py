"""What the ssh steps of one owner share: idle connections, and the threads their blocking calls run on.

The owner (the daemon, or a local run) holds one `SshPool` and closes it when
it is done; nothing here lives in a module global, so two daemons in one
process keep their connections apart.

- Connections: `ConnectionPool` keeps a session that served a step cleanly
  idle for 30 s for the next step with the same hops, key and known_hosts, so
  a flow of many short commands pays one handshake. Kills never use it: they
  always make a new connection.
- Threads: `SshPool.in_thread` runs a blocking call on the pool's own threads
  (not the loop's shared executor, which a few long commands would exhaust),
  so the event loop never waits on the network or the disk.
"""

from __future__ import annotations

import asyncio
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from runner.steps.ssh.hosts import Hop
from runner.steps.ssh.session import Session


class ConnectionPool:
    """Idle connections kept for the next step to the same host (same hops, keys and known_hosts).

    A connection is lent to one step at a time and comes back only when that step
    ended cleanly; one idle longer than `idle` seconds is closed. Kills never use
    the pool: they always make a new connection. Once closed, the pool keeps nothing.
    """

    def __init__(self, idle: float = 30.0, per_key: int = 32) -> None:
        self.idle = idle
        self.per_key = per_key
        self._lock = threading.Lock()
        self._free: dict[tuple[Hop, ...], list[tuple[float, Session]]] = {}
        self._reaper: threading.Thread | None = None
        self._closed = threading.Event()

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
        """Take back a session that served a step cleanly (one that is dead, or late, is closed)."""
        if not session.alive() or self._closed.is_set():
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
        while not self._closed.wait(min(self.idle / 3, 10.0)):
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
        """Close every idle connection; sessions given back later are closed, not kept."""
        self._closed.set()
        with self._lock:
            sessions = [session for free in self._free.values() for _, session in free]
            self._free.clear()
        for session in sessions:
            session.close()


class SshPool:
    """The ssh connection pool and the threads that block on ssh, for one owner; `close` ends both."""

    MAX_THREADS = 1024

    def __init__(self) -> None:
        self.connections = ConnectionPool()
        # threads are made on demand and then reused: starting a thread waits for it to run,
        # which under load would stall the loop as much as the work itself
        self._threads = ThreadPoolExecutor(max_workers=self.MAX_THREADS, thread_name_prefix="signoff-ssh")

    def take(self, hops: list[Hop]) -> Session:
        """A pooled connection to `hops`, or a new one (blocking: call it through in_thread)."""
        return self.connections.take(hops)

    def give(self, session: Session) -> None:
        """Give back a session that served a step cleanly (blocking: call it through in_thread)."""
        self.connections.give(session)

    def in_thread(self, fn: Callable[..., Any], *args: Any,
                  cleanup: Callable[[Any], None] | None = None) -> asyncio.Future:
        """fn(*args) on the pool's threads, as a future of the running loop.

        If the future is cancelled (its awaiting task was), the call still runs to
        its end and `cleanup(result)` gets what it made (an open connection, say).
        """
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()

        def settle(result: Any, error: BaseException | None) -> None:
            if future.cancelled():
                if cleanup is not None and error is None:
                    self._submit(cleanup, result)
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

        self._submit(target)
        return future

    def _submit(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._threads.submit(fn, *args)
        except RuntimeError:  # closed while a step still winds down (a kill racing the stop): let it finish
            threading.Thread(target=fn, args=args, name="signoff-ssh-late").start()

    def close(self) -> None:
        """Close every idle connection and let the threads go once their work is done."""
        self.connections.close_all()
        self._threads.shutdown(wait=False)


async def settled(future: asyncio.Future) -> Any:
    """Await a thread's future through a shield: a second cancel leaves the thread to finish on its own."""
    return await asyncio.shield(future)
