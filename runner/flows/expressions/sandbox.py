"""The jinja2 sandbox expressions run in, and the functions and filters it offers.

An expression sees plain data only and cannot reach Python internals, the
filesystem or the network: jinja2's immutable sandbox refuses attribute access
to `__class__` and friends, and everything that can build a huge value (`*`,
`**`, `%`, format widths, number arguments to calls and filters) is capped at
MAX_BUILT_LENGTH.
"""

from __future__ import annotations

import json
import re
from typing import Any, Callable

from jinja2 import StrictUndefined
from jinja2.exceptions import SecurityError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.flows.expressions.quoting import Raw, to_text

MAX_BUILT_LENGTH = 1_000_000
_BIG_WIDTH = re.compile(r"[1-9][0-9]{6,}")


class _Sandbox(ImmutableSandboxedEnvironment):
    """jinja2's immutable sandbox, plus caps on everything that can build a huge value."""

    intercepted_binops = frozenset({"*", "**", "%"})

    def call_binop(self, context, operator, left, right):  # noqa: ANN001 - jinja2's signature
        if operator == "**" and isinstance(left, (int, float)) and isinstance(right, (int, float)):
            if abs(right) > 4096 or (isinstance(left, int) and abs(left) > 1
                                     and left.bit_length() * abs(right) > 100_000):
                raise SecurityError("exponent too large in expression")
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if isinstance(seq, (str, list, tuple)) and isinstance(times, int):
                    if len(seq) * times > MAX_BUILT_LENGTH:
                        raise SecurityError("expression would build a value over 1,000,000 items")
        if operator == "%" and isinstance(left, str):
            _check_format(left)
            _check_numbers(right if isinstance(right, tuple) else (right,))
        return super().call_binop(context, operator, left, right)

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - jinja2's signature
        _check_numbers(args)
        _check_numbers(tuple(kwargs.values()))
        return super().call(__context, __obj, *args, **kwargs)

    def wrap_str_format(self, value):  # noqa: ANN001 - jinja2's signature
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        _check_format(value.__self__)  # the width lives in the template string itself
        return wrapped

    def getattr(self, obj, attribute):  # noqa: ANN001 - jinja2's signature
        # data first: an output named `items` or `keys` is the output, not dict.items
        if isinstance(obj, dict) and isinstance(attribute, str) and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


def _check_numbers(values: tuple) -> None:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_BUILT_LENGTH:
            raise SecurityError("a number argument over 1,000,000 is not allowed here")


def _check_format(template: str) -> None:
    if _BIG_WIDTH.search(template):
        raise SecurityError("format widths over 1,000,000 are not allowed")


def _guarded_filter(func: Callable[..., Any]) -> Callable[..., Any]:
    def guarded(*args, **kwargs):
        _check_numbers(tuple(args[1:]) + tuple(kwargs.values()))
        if func.__name__ == "do_format" and args and isinstance(args[0], str):
            _check_format(args[0])
        return func(*args, **kwargs)

    for attr in ("jinja_pass_arg",):
        if hasattr(func, attr):
            setattr(guarded, attr, getattr(func, attr))
    guarded.__name__ = func.__name__
    return guarded


def _fromjson(text: str) -> Any:
    return json.loads(text)


def make_environment() -> ImmutableSandboxedEnvironment:
    """A new sandbox with signoff's globals (`raw`, `fromjson`, `range`, `dict`) and capped filters."""
    env = _Sandbox(undefined=StrictUndefined, autoescape=False)
    env.globals = {"raw": lambda value: Raw(to_text(value)), "fromjson": _fromjson,
                   "range": env.globals["range"], "dict": dict}
    env.filters = {name: _guarded_filter(func) for name, func in env.filters.items()}
    env.filters["fromjson"] = _fromjson
    return env
