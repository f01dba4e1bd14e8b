"""How a value lands in text: `to_text` for splicing, shell quoting for commands, and `Raw` to opt out.

A value interpolated into a shell command is quoted for where it lands (bare,
inside '...' or inside "..."), so an input can never become shell syntax;
`raw(...)` in an expression marks the one value its author wants spliced as is.
"""

from __future__ import annotations

import json
import re
import shlex
from typing import Any


class Raw(str):
    """A value the author asked to splice into a shell command unquoted."""


def to_text(value: Any) -> str:
    """How a value reads when spliced into a string."""
    if isinstance(value, Raw):
        return str(value)
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, separators=(",", ":"), default=str)
    return str(value)


def shell_state(literal: str, state: str | None) -> str | None:
    """The quoting in force after `literal`: None, "'" or '"' (backslash escapes honoured)."""
    escaped = False
    for char in literal:
        if escaped:
            escaped = False
        elif state == "'":
            if char == "'":
                state = None
        elif char == "\\":
            escaped = True
        elif state == '"':
            if char == '"':
                state = None
        elif char in "'\"":
            state = char
    return state


def shell_quote(text: str, state: str | None = None) -> str:
    """Quote `text` as one literal word for where it lands: bare, inside '...' or inside "..."."""
    if state == '"':
        return re.sub(r'([\\"$`])', r"\\\1", text)
    if state == "'":
        return "'" + shlex.quote(text) + "'"  # close the author's quote, add ours, reopen
    return shlex.quote(text)
