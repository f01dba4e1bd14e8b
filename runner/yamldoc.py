"""YAML documents with a line and column for every node, read defensively.

Flow files and the daemon config are both read here: size limit, alias limit,
duplicate keys and non-YAML are refused with a located `Problem`, and every
later error (schema or semantic) can point back at file:line:column.

Parsing is libyaml's composer (through PyYAML), which keeps a mark on every
node at a fraction of a pure-Python parser's cost; scalars are resolved with
the YAML 1.2 core schema (`yes`, `no`, `on` stay strings), as editors and the
yaml-language-server expect.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, field
from typing import Any

import yaml

MAX_FILE_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_NODES = 200_000
MAX_FLOW_DEPTH = 100
MAX_DEPTH = 200

_BASE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_NULL = re.compile(r"^(?:~|null|Null|NULL|)$")
_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")
_INT = re.compile(r"^(?:[-+]?[0-9]+|0o[0-7]+|0x[0-9a-fA-F]+)$")
_FLOAT = re.compile(r"^(?:[-+]?(?:\.[0-9]+|[0-9]+(?:\.[0-9]*)?)(?:[eE][-+]?[0-9]+)?|[-+]?\.(?:inf|Inf|INF)"
                    r"|\.(?:nan|NaN|NAN))$")
TAG = "tag:yaml.org,2002:"


class _Loader(_BASE_LOADER):  # type: ignore[misc, valid-type]
    """Plain scalars resolved by the YAML 1.2 core schema (not 1.1's yes/no/on/off booleans)."""

    def resolve(self, kind, value, implicit):  # noqa: ANN001 - PyYAML's signature
        if kind is yaml.ScalarNode and implicit[0]:
            if value == "<<":
                return TAG + "merge"
            for pattern, name in ((_NULL, "null"), (_BOOL, "bool"), (_INT, "int"), (_FLOAT, "float")):
                if pattern.match(value):
                    return TAG + name
            return TAG + "str"
        return super().resolve(kind, value, implicit)


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
    """A parsed YAML mapping (`plain`) plus the position of every value and key in it."""

    file: str
    source: str
    plain: Any
    values: dict[tuple, tuple[int, int]] = field(default_factory=dict)
    keys: dict[tuple, tuple[int, int]] = field(default_factory=dict)

    def locate(self, path: tuple | list, *, key: bool = False) -> tuple[int, int]:
        """1-based (line, column) of the node at `path` (of its key when `key`), or of its nearest parent."""
        path = tuple(path)
        if key and path in self.keys:
            return self.keys[path]
        while path:
            if path in self.values:
                return self.values[path]
            path = path[:-1]
        return self.values.get((), (1, 1))

    def problem(self, path: tuple | list, rule: str, message: str, hint: str = "", *,
                key: bool = False, severity: str = "error") -> Problem:
        line, column = self.locate(path, key=key)
        return Problem(self.file, line, column, format_path(path), rule, message, hint, severity)


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
    try:
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:  # a directory, no permission
        raise _refuse(label, "unreadable", f"cannot read file: {exc.strerror}") from None
    return parse_bytes(data, label)


def parse_bytes(data: bytes, label: str, *, limit: int | None = MAX_FILE_BYTES) -> Document:
    if limit is not None and len(data) > limit:
        raise _refuse(label, "file-too-large", f"file is over {limit:,} bytes",
                      "split the flow, or move large data into a script or resource")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _refuse(label, "not-utf8", f"file is not UTF-8 text (byte {exc.start})") from None
    if "\x00" in text:
        raise _refuse(label, "not-yaml", "file contains NUL bytes; it is not a YAML text file")
    depth = _bracket_depth(text)
    if depth > MAX_FLOW_DEPTH:
        raise _refuse(label, "too-deep", f"YAML nesting is {depth} levels deep (brackets); the limit is "
                      f"{MAX_FLOW_DEPTH}", "flatten the document")
    try:
        _count_aliases(text, label)
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, column = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        message = " ".join(filter(None, [exc.context, exc.problem])) or "invalid YAML"
        raise _refuse(label, "yaml-syntax", f"invalid YAML: {message}",
                      "check indentation, colons and quotes near this line", line, column) from None
    except yaml.YAMLError as exc:
        raise _refuse(label, "yaml-syntax", f"invalid YAML: {exc}") from None
    except RecursionError:
        raise _refuse(label, "too-deep", "YAML nesting is too deep") from None
    builder = _Builder(label)
    plain = builder.build(root, ()) if root is not None else None
    if not isinstance(plain, dict):
        got = "an empty file" if plain is None else ("a list" if isinstance(plain, list) else
                                                     f"a scalar ({plain!r:.40})")
        raise _refuse(label, "not-a-mapping", f"expected a YAML mapping at the top level, got {got}",
                      "a flow starts with `name:` and `steps:`")
    if _expanded_size(plain, {}, 0) > MAX_NODES:
        raise _refuse(label, "too-large-expanded",
                      f"the document expands to more than {MAX_NODES:,} values through aliases",
                      "write the values out, or use fewer anchors")
    return Document(label, text, plain, builder.values, builder.keys)


class _Builder:
    """Node graph -> plain data, recording positions; refuses duplicate keys and recursive aliases."""

    def __init__(self, label: str) -> None:
        self.label = label
        self.values: dict[tuple, tuple[int, int]] = {}
        self.keys: dict[tuple, tuple[int, int]] = {}
        self.built: dict[int, Any] = {}
        self.building: set[int] = set()

    def _at(self, node: yaml.Node) -> tuple[int, int]:
        return node.start_mark.line + 1, node.start_mark.column + 1

    def build(self, node: yaml.Node, path: tuple, depth: int = 0) -> Any:
        if depth > MAX_DEPTH:
            raise _refuse(self.label, "too-deep", "YAML nesting is too deep", "flatten the document",
                          *self._at(node))
        self.values.setdefault(path, self._at(node))
        if id(node) in self.built or id(node) in self.building:  # an alias (counted by _count_aliases)
            if id(node) in self.building:
                raise _refuse(self.label, "recursive-alias", "an alias refers to a node that contains it",
                              "YAML documents here cannot be recursive", *self._at(node))
            return self.built[id(node)]
        if isinstance(node, yaml.ScalarNode):
            value = _scalar(node)
        elif isinstance(node, yaml.SequenceNode):
            self.building.add(id(node))
            value = [self.build(item, path + (index,), depth + 1) for index, item in enumerate(node.value)]
            self.building.discard(id(node))
        else:
            self.building.add(id(node))
            value = self._mapping(node, path, depth)
            self.building.discard(id(node))
        self.built[id(node)] = value
        return value

    def _mapping(self, node: yaml.MappingNode, path: tuple, depth: int) -> dict[str, Any]:
        merged: dict[str, Any] = {}
        explicit: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == TAG + "merge":
                sources = value_node.value if isinstance(value_node, yaml.SequenceNode) else [value_node]
                for source in sources:
                    value = self.build(source, path, depth + 1)
                    if not isinstance(value, dict):
                        raise _refuse(self.label, "yaml-syntax", "a merge key (<<) needs a mapping",
                                      line=self._at(key_node)[0], column=self._at(key_node)[1])
                    merged.update({k: v for k, v in value.items() if k not in merged})
                continue
            if not isinstance(key_node, yaml.ScalarNode):
                raise _refuse(self.label, "yaml-syntax", "mapping keys must be plain values",
                              line=self._at(key_node)[0], column=self._at(key_node)[1])
            key = str(_scalar(key_node)) if key_node.tag != TAG + "null" else "null"
            if key in explicit:
                raise _refuse(self.label, "duplicate-key", f'found duplicate key "{key}"',
                              "each key may appear once in a mapping", *self._at(key_node))
            self.keys[path + (key,)] = self._at(key_node)
            explicit[key] = self.build(value_node, path + (key,), depth + 1)
        return {**merged, **explicit}


def _scalar(node: yaml.ScalarNode) -> Any:
    tag, value = node.tag, node.value
    if tag == TAG + "null":
        return None
    if tag == TAG + "bool":
        return value.lower() == "true"
    if tag == TAG + "int":
        if value.startswith("0o"):
            return int(value[2:], 8)
        return int(value, 16) if value.startswith("0x") else int(value)
    if tag == TAG + "float":
        lowered = value.lower().lstrip("+")
        if lowered in (".inf", "-.inf"):
            return -math.inf if lowered.startswith("-") else math.inf
        return math.nan if lowered == ".nan" else float(value)
    return value


def _count_aliases(text: str, label: str) -> None:
    """Refuse a possible alias bomb where the limit is crossed (libyaml's event stream is cheap)."""
    aliases = 0
    for event in yaml.parse(text, Loader=_Loader):
        if isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                mark = event.start_mark
                raise _refuse(label, "too-many-aliases",
                              f"more than {MAX_ALIASES} YAML aliases (*name); refusing a possible alias bomb",
                              "write the values out, or use fewer anchors", mark.line + 1, mark.column + 1)


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


def _expanded_size(node: Any, memo: dict[int, int], depth: int) -> int:
    if depth > MAX_DEPTH:
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
