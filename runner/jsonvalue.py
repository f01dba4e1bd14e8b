"""Strict JSON: the one decoder for what signoff takes in, and the one encoder for what it keeps.

Every JSON entry (API bodies, callbacks, webhooks, `-i` and `--inputs-file`
values) goes through `loads`, so what is acknowledged can always be recorded:

- the bytes must be UTF-8, without a byte order mark (`json.loads(bytes)`
  would also take UTF-16 and UTF-32, and a BOM in text);
- numbers are finite (no `NaN`, `Infinity`, nor `1e400`, which Python reads
  as infinity);
- strings and keys hold no lone surrogate (`"\\ud800"` decodes, but can never
  be written back as UTF-8);
- nesting is at most `MAX_DEPTH` levels.

A refusal is `Invalid` (HTTP 422) with the reason. `check` applies the same
rules to a value built in memory (YAML inputs, step outputs), and `dumps`
writes strict JSON only, so nothing non-finite or unencodable reaches disk.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from runner.errors import Invalid

MAX_DEPTH = 64
_ESCAPED_SURROGATE = re.compile(r"\\u[dD][89a-fA-F]")  # only an escape can make a surrogate in UTF-8 text
_SURROGATE = re.compile("[\ud800-\udfff]")


class _NotFinite(ValueError):
    pass


def _constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not a JSON number")


def _number(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise _NotFinite(f"{text[:40]} is out of range for a number")
    return value


def loads(data: bytes | str, what: str = "the body") -> Any:
    """The JSON value in `data` (UTF-8 bytes, or text), or Invalid saying why it is refused."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        data = bytes(data)
        if data.startswith(b"\xef\xbb\xbf"):
            raise Invalid(f"{what} starts with a byte order mark", hint="send UTF-8 without a BOM")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise Invalid(f"{what} is not UTF-8", [f"byte {exc.start}: {exc.reason}"],
                          hint="JSON is sent as UTF-8 (RFC 8259)") from None
    else:
        text = data
        if text.startswith("\ufeff"):
            raise Invalid(f"{what} starts with a byte order mark", hint="send UTF-8 without a BOM")
    try:
        value = json.loads(text, parse_constant=_constant, parse_float=_number)
    except _NotFinite as exc:
        raise Invalid(f"{what} holds a number JSON cannot carry", [str(exc)],
                      hint="NaN and Infinity are not JSON; send null or a string") from None
    except RecursionError:
        raise Invalid(f"{what} is nested deeper than {MAX_DEPTH} levels") from None
    except ValueError as exc:
        raise Invalid(f"{what} is not valid JSON", [str(exc)[:200]]) from None
    if _ESCAPED_SURROGATE.search(text):
        check(value, what)  # paired surrogates are fine; a lone one is refused there
    elif depth(value) > MAX_DEPTH:
        raise Invalid(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return value


def depth(value: Any) -> int:
    """How deeply containers nest in `value` (a scalar is 0), counted no further than MAX_DEPTH + 1."""
    deepest, stack = 0, [(value, 0)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            level += 1
            deepest = max(deepest, level)
            if level <= MAX_DEPTH:
                stack.extend((child, level) for child in (item.values() if isinstance(item, dict) else item))
    return deepest


def problem(value: Any, name: str = "") -> str | None:
    """Why `value` (called `name`) cannot be written as strict JSON, saying where in it; None if it can."""
    stack: list[tuple[Any, str, int]] = [(value, name, 0)]
    while stack:
        item, path, level = stack.pop()
        where = path or "(root)"
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return f"{where}: a string holds a lone surrogate (not Unicode text)"
        elif isinstance(item, bool) or item is None or isinstance(item, int):
            continue
        elif isinstance(item, float):
            if not math.isfinite(item):
                return f"{where}: {item} is not a JSON number"
        elif isinstance(item, (dict, list)):
            if level >= MAX_DEPTH:
                return f"{where}: nested deeper than {MAX_DEPTH} levels"
            if isinstance(item, dict):
                for key, child in item.items():
                    if isinstance(key, str) and _SURROGATE.search(key):
                        return f"{where}: a key holds a lone surrogate (not Unicode text)"
                    if isinstance(key, float) and not math.isfinite(key):
                        return f"{where}: the key {key} is not a JSON number"
                    stack.append((child, f"{path}.{key}" if path else str(key), level + 1))
            else:
                stack.extend((child, f"{path}[{index}]", level + 1) for index, child in enumerate(item))
        # anything else (a YAML date, say) is written as text by the encoder's default
    return None


def check(value: Any, what: str = "the value") -> Any:
    """`value` itself if it can be written as strict JSON; else Invalid naming where it cannot."""
    reason = problem(value)
    if reason is not None:
        raise Invalid(f"{what} cannot be kept as JSON", [reason],
                      hint="numbers must be finite, text valid Unicode, nesting at most "
                           f"{MAX_DEPTH} levels")
    return value


def dumps(value: Any, *, default: Any = None) -> bytes:
    """Compact strict JSON as UTF-8; ValueError, before anything is written, for NaN, Infinity or a lone surrogate."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False,
                      default=default).encode("utf-8")
