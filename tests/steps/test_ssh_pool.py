"""runner.steps.ssh.pool: one SshPool per owner holds the idle connections and the ssh threads.

No sshd here: the pool only asks a session whether it is alive and closes it,
so stand-in sessions show what it keeps, what it closes, and where work runs.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

from runner.steps.ssh.hosts import Hop
from runner.steps.ssh.pool import SshPool, settled
from support import wait_until

HOP = Hop(name="vm", host="127.0.0.1", port=2222, user="agent", key_file=None, known_hosts=Path("known_hosts"),
          accept_new=False, timeout=5.0)


class StandIn:
    """What the pool needs of a Session: its hops, alive(), close()."""

    def __init__(self, alive: bool = True) -> None:
        self.hops = [HOP]
        self.reused = False
        self._alive = alive
        self.closed = threading.Event()

    def alive(self) -> bool:
        return self._alive and not self.closed.is_set()

    def close(self) -> None:
        self.closed.set()


def test_a_pool_needs_no_arguments_and_two_pools_share_nothing():
    first, second = SshPool(), SshPool()
    session = StandIn()
    first.give(session)
    second.close()  # another owner stopping closes nothing of this one's
    assert not session.closed.is_set()
    taken = first.take([HOP])
    first.close()
    assert taken is session and taken.reused


def test_close_closes_every_idle_connection_and_later_ones_are_not_kept():
    pool = SshPool()
    idle = [StandIn(), StandIn()]
    for session in idle:
        pool.give(session)
    pool.close()
    assert all(session.closed.is_set() for session in idle)
    late = StandIn()
    pool.give(late)  # a step that ended after its owner stopped
    assert late.closed.is_set()


def test_a_dead_connection_is_closed_not_kept():
    pool = SshPool()
    try:
        dead = StandIn(alive=False)
        pool.give(dead)
        assert dead.closed.is_set()
    finally:
        pool.close()


def test_blocking_work_runs_on_the_pools_own_threads():
    pool = SshPool()

    async def main() -> str:
        return await settled(pool.in_thread(lambda: threading.current_thread().name))

    try:
        assert asyncio.run(main()).startswith("signoff-ssh")
    finally:
        pool.close()


def test_work_handed_over_after_close_still_runs_to_its_end():
    pool = SshPool()
    pool.close()

    async def main() -> int:
        return await pool.in_thread(lambda a, b: a + b, 2, 3)

    assert asyncio.run(main()) == 5


def test_a_cancelled_call_still_finishes_and_its_result_is_cleaned_up():
    pool = SshPool()
    release, cleaned = threading.Event(), []

    async def main() -> None:
        future = pool.in_thread(lambda: release.wait(10) and "made", cleanup=cleaned.append)
        task = asyncio.ensure_future(settled(future))
        await asyncio.sleep(0)
        future.cancel()
        release.set()
        try:
            await task
        except asyncio.CancelledError:
            pass
        await asyncio.get_running_loop().run_in_executor(None, wait_until, lambda: cleaned, 10.0)

    try:
        asyncio.run(main())
        assert cleaned == ["made"]
    finally:
        pool.close()
