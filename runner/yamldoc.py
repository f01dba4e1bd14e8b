"""YAML documents with a line and column for every node, read defensively.

Flow files and the daemon config are both read here: size limit, alias limit,
duplicate keys and non-YAML are refused with a located `Problem`, and every
later error (schema or semantic) can point back at file:line:column.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.events import AliasEvent
from ruamel.yaml.scalarbool import ScalarBoolean

MAX_FILE_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_NODES = 200_000
MAX_FLOW_DEPTH = 100


@dataclass
class Problem:
    """One finding, located in a file. `severity` is error or warning."""

    file: str
    line: int
    column: int
    path: str
    rule: str
    message: str
    hint: str = ""
    severity: str = "error"

    def to_dict(self) -> dict[str, Any]:
        return {"file": self.file, "line": self.line, "column": self.column, "path": self.path,
                "rule": self.rule, "message": self.message, "hint": self.hint}

    def __str__(self) -> str:
        where = f"{self.file}:{self.line}:{self.column}"
        text = f"{where}: {self.severity}: {self.message} [{self.rule}]"
        if self.path:
            text += f" at {self.path}"
        if self.hint:
            text += f"\n    hint: {self.hint}"
        return text


def format_path(path: tuple | list) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text


@dataclass
class Document:
    """A parsed YAML mapping plus what is needed to locate any path in it."""

    file: str
    source: str
    root: Any
    plain: Any = field(default=None)

    def locate(self, path: tuple | list, *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the node at `path`; of its key when `key` is true."""
        node, line, column = self.root, 1, 1
        for part in path:
            lc = getattr(node, "lc", None)
            try:
                if lc is not None and isinstance(part, int) and isinstance(node, list):
                    line, column = lc.item(part)[0] + 1, lc.item(part)[1] + 1
                elif lc is not None and isinstance(node, dict) and part in node:
                    pos = lc.key(part) if key else lc.value(part)
                    line, column = pos[0] + 1, pos[1] + 1
                else:
                    break
                node = node[part]
            except (KeyError, IndexError, TypeError):
                break
        return line, column

    def problem(self, path: tuple | list, rule: str, message: str, hint: str = "", *,
                key: bool = False, severity: str = "error") -> Problem:
        line, column = self.locate(path, key=key)
        return Problem(self.file, line, column, format_path(path), rule, message, hint, severity)


class _TooManyAliases(Exception):
    def __init__(self, mark: Any) -> None:
        super().__init__("too many aliases")
        self.mark = mark


class _CountingComposer(Composer):
    """Counts aliases while composing, so the file is parsed once and a bomb stops early."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            self.alias_count = getattr(self, "alias_count", 0) + 1
            if self.alias_count > MAX_ALIASES:
                raise _TooManyAliases(self.parser.peek_event().start_mark)
        return super().compose_node(parent, index)


class DocumentError(Exception):
    """The file could not be read as YAML at all; carries one Problem."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(str(problem))
        self.problem = problem


def _refuse(file: str, rule: str, message: str, hint: str = "", line: int = 1, column: int = 1) -> DocumentError:
    return DocumentError(Problem(file, line, column, "", rule, message, hint))


def read_file(path: str | os.PathLike, label: str | None = None) -> Document:
    label = label or str(path)
    try:
        size = os.stat(path).st_size
    except OSError as exc:
        raise _refuse(label, "unreadable", f"cannot read file: {exc.strerror}") from None
    if size > MAX_FILE_BYTES:
        raise _refuse(label, "file-too-large", f"file is {size:,} bytes; the limit is {MAX_FILE_BYTES:,}",
                      "split the flow, or move large data into a script or resource")
    with open(path, "rb") as handle:
        data = handle.read(MAX_FILE_BYTES + 1)
    return parse_bytes(data, label)


def parse_bytes(data: bytes, label: str, *, limit: int | None = MAX_FILE_BYTES) -> Document:
    if limit is not None and len(data) > limit:
        raise _refuse(label, "file-too-large", f"file is over {MAX_FILE_BYTES:,} bytes",
                      "split the flow, or move large data into a script or resource")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(label, "not-utf8", f"file is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise _refuse(label, "not-yaml", "file contains NUL bytes; it is not a YAML text file")
    depth = _bracket_depth(text)
    if depth > MAX_FLOW_DEPTH:
        raise _refuse(label, "too-deep", f"YAML nesting is {depth} levels deep (brackets); the limit is {MAX_FLOW_DEPTH}",
                      "flatten the document")
    yaml = YAML(typ="rt")
    yaml.allow_duplicate_keys = False
    yaml.Composer = _CountingComposer
    try:
        root = yaml.load(text)
    except _TooManyAliases as exc:
        raise _refuse(label, "too-many-aliases",
                      f"more than {MAX_ALIASES} YAML aliases (*name); refusing a possible alias bomb",
                      "write the values out, or use fewer anchors", exc.mark.line + 1, exc.mark.column + 1) from None
    except DuplicateKeyError as exc:
        mark = exc.problem_mark
        raise _refuse(label, "duplicate-key", _first_line(exc.problem) or "duplicate key",
                      "each key may appear once in a mapping", mark.line + 1, mark.column + 1) from None
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        raise _refuse(label, "yaml-syntax", f"invalid YAML: {message}",
                      "check indentation, colons and quotes near this line", line, column) from None
    except YAMLError as exc:
        raise _refuse(label, "yaml-syntax", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _refuse(label, "too-deep", "YAML nesting is too deep") from None
    if not isinstance(root, dict):
        got = "an empty file" if root is None else ("a list" if isinstance(root, list) else
                                                    f"a scalar ({to_plain(root)!r:.40})")
        raise _refuse(label, "not-a-mapping", f"expected a YAML mapping at the top level, got {got}",
                      "a flow starts with `name:` and `steps:`")
    if _expanded_size(root, {}, 0) > MAX_NODES:
        raise _refuse(label, "too-large-expanded",
                      f"the document expands to more than {MAX_NODES:,} values through aliases",
                      "write the values out, or use fewer anchors")
    doc = Document(label, text, root)
    doc.plain = to_plain(root)
    return doc


def _bracket_depth(text: str) -> int:
    """How deep [ and { nest, quotes ignored: cheap, and spares the parser pathological input."""
    depth = deepest = 0
    for char in text:
        if char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}" and depth:
            depth -= 1
    return deepest


def _first_line(text: str | None) -> str:
    return (text or "").strip().splitlines()[0] if text else ""


def _expanded_size(node: Any, memo: dict[int, int], depth: int) -> int:
    if depth > 200:
        return MAX_NODES + 1
    if not isinstance(node, (dict, list)):
        return 1
    known = memo.get(id(node))
    if known is not None:
        return known
    children = node.values() if isinstance(node, dict) else node
    total = 1
    for child in children:
        total += _expanded_size(child, memo, depth + 1)
        if total > MAX_NODES:
            break
    memo[id(node)] = total
    return total


def to_plain(node: Any) -> Any:
    """ruamel's round-trip types -> plain dict/list/str/int/float/bool/None."""
    if isinstance(node, dict):
        return {str(k): to_plain(v) for k, v in node.items()}
    if isinstance(node, list):
        return [to_plain(v) for v in node]
    if isinstance(node, (bool, ScalarBoolean)):
        return bool(node)
    if isinstance(node, int):
        return int(node)
    if isinstance(node, float):
        return float(node)
    if isinstance(node, (datetime, date)):
        return node.isoformat()
    if isinstance(node, str):
        return str(node)
    return node
