"""Where expressions sit in a value: the `${{ ... }}` markers, and the plain-path form.

A plain path (`steps.plan.outputs.stdout`, `inputs['a b']`, `steps.x.outputs.list[0]`)
is the common case; the evaluator reads it from the data directly and the static
checks list its names without parsing, so both recognise it with the same patterns.
"""

from __future__ import annotations

import re
from typing import Any, Iterator

EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
PLAIN_PATH = re.compile(
    r"^\s*(inputs|steps|run|callbacks)((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\s*'[^'\\]*'\s*\]|\[[0-9]+\])+)\s*$")
PATH_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[\s*'([^'\\]*)'\s*\]|\[([0-9]+)\]")


def has_expression(text: Any) -> bool:
    return isinstance(text, str) and "${{" in text


def iter_expressions(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    """Yield (path, expression text) for every `${{ }}` inside a plain value."""
    if isinstance(value, dict):
        for key, item in value.items():
            yield from iter_expressions(item, path + (key,))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from iter_expressions(item, path + (index,))
    elif has_expression(value):
        for match in EXPRESSION.finditer(value):
            yield path, match.group(1)
