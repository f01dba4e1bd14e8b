"""The guard that keeps a replay from touching the world.

A replay (runner.runs.replay) runs a flow with every step's effect answered
from a recording. Inside `no_side_effects()` anything that would reach the
world raises SideEffectRefused instead: the `execute` and `kill_leftover` of
every step kind that is not `pure` (runner.steps.base wraps them), a child
process (runner.children.spawn) and a notification (runner.notify). The mark
is a context variable, so it holds for the replay's own task (and the tasks it
starts, and threads started with `asyncio.to_thread`) and never for anything
else the same process runs.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from typing import Any, Callable, Iterator

from runner.errors import SideEffectRefused

_REPLAYING: contextvars.ContextVar[str | None] = contextvars.ContextVar("signoff_replaying", default=None)


@contextlib.contextmanager
def no_side_effects(why: str = "a replay") -> Iterator[None]:
    """Within this block, `refuse` raises: nothing may touch the world."""
    token = _REPLAYING.set(why)
    try:
        yield
    finally:
        _REPLAYING.reset(token)


def active() -> bool:
    """Whether the caller runs inside `no_side_effects()`."""
    return _REPLAYING.get() is not None


def refuse(what: str) -> None:
    """SideEffectRefused if the caller runs inside `no_side_effects()`: `what` names the effect refused."""
    why = _REPLAYING.get()
    if why is not None:
        raise SideEffectRefused(f"{why} never touches the world, yet it reached: {what}",
                                hint="this is a bug in signoff: a replay must answer every effect from its "
                                     "recording; please report it")


def refusing(hook: Callable, name: str) -> Callable:
    """An async method of a step kind that `refuse`s first: how runner.steps.base guards impure kinds."""
    @functools.wraps(hook)
    async def guarded(self: Any, *args: Any, **kwargs: Any) -> Any:
        refuse(f"the {name} of a {getattr(self, 'name', type(self).__name__)} step")
        return await hook(self, *args, **kwargs)
    return guarded
