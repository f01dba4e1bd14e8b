"""The shipped JSON Schemas, and their errors turned into located Problems.

jsonschema's raw messages are precise but terse; here each one becomes a
sentence a flow author can act on, at the line of the offending key or value,
with a "did you mean" hint for misspelt fields and kinds.
"""

from __future__ import annotations

import difflib
import json
import re
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, Iterable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from runner.yamldoc import Document, Problem

_SOURCE_DIR = Path(__file__).resolve().parent.parent / "schema"
_UNEXPECTED = re.compile(r"'([^']+)'")
DURATION_PATTERN = "^[0-9]+(ms|s|m|h|d)$"
DURATION_OR_EXPRESSION_PATTERN = "^([0-9]+(ms|s|m|h|d)|.*\\$\\{\\{.*\\}\\}.*)$"
_TYPE_NAMES = {"string": "a string", "integer": "an integer", "number": "a number", "boolean": "true or false",
               "object": "a mapping", "array": "a list", "null": "null"}


SCHEMA_NAMES = ("flow", "config", "run", "release")


def schema_text(name: str) -> str:
    """`flow`, `config` or `run` -> the schema file's text (from the checkout, else the wheel)."""
    local = _SOURCE_DIR / f"{name}.schema.json"
    if local.is_file():
        return local.read_text()
    return resources.files("runner.schema").joinpath(f"{name}.schema.json").read_text()


@lru_cache(maxsize=None)
def load_schema(name: str) -> dict[str, Any]:
    """`flow`, `config` or `run` -> the parsed schema."""
    return json.loads(schema_text(name))


@lru_cache(maxsize=None)
def validator(name: str) -> Draft202012Validator:
    return Draft202012Validator(load_schema(name))


@lru_cache(maxsize=None)
def _fast_flow_validators() -> tuple[Draft202012Validator, dict[str, Draft202012Validator]]:
    """A quick yes/no for flows: each step checked against its own kind's merged schema.

    The full schema (if/then per kind + unevaluatedProperties) words errors
    precisely but costs several times more; a valid flow, the common case, never
    needs it. Both accept exactly the same documents (a test keeps them in step).
    """
    schema = load_schema("flow")
    defs = schema["$defs"]
    step = defs["step"]
    top = {**schema, "properties": {**schema["properties"], "steps": {**schema["properties"]["steps"],
                                                                     "items": {"type": "object"}}}}
    per_kind = {}
    for kind in step["properties"]["kind"]["enum"]:
        definition = defs[kind]
        extra = {k: v for k, v in definition.items() if k not in ("properties", "required", "title", "description",
                                                                   "$comment", "type")}
        merged = {"$defs": defs, "type": "object", "additionalProperties": False,
                  "required": sorted(set(step.get("required", [])) | set(definition.get("required", []))),
                  "properties": {**step["properties"], **definition.get("properties", {})},
                  "allOf": [extra] if extra else []}
        per_kind[kind] = Draft202012Validator(merged)
    return Draft202012Validator(top), per_kind


def _quickly_valid(name: str, plain: Any) -> bool:
    if name != "flow":
        return False
    top, per_kind = _fast_flow_validators()
    if not top.is_valid(plain):
        return False
    for step in plain.get("steps") or []:
        kind = step.get("kind") if isinstance(step, dict) else None
        checker = per_kind.get(kind) if isinstance(kind, str) else None
        if checker is None or not checker.is_valid(step):
            return False
    return True


def schema_problems(doc: Document, name: str) -> list[Problem]:
    """Validate `doc.plain` against schema `name`; one clear Problem per real mistake."""
    if _quickly_valid(name, doc.plain):
        return []
    errors = list(validator(name).iter_errors(doc.plain))
    errors = [_deepest(e) for e in errors]
    bad_kinds = {tuple(e.absolute_path)[:-1] for e in errors
                 if tuple(e.absolute_path)[-1:] == ("kind",) and e.validator in ("enum", "const", "type")}
    problems: list[Problem] = []
    seen: set[tuple] = set()
    for error in sorted(errors, key=lambda e: [str(p) for p in e.absolute_path]):
        path = tuple(error.absolute_path)
        if error.validator == "unevaluatedProperties" and path in bad_kinds:
            continue  # the unknown kind is the one mistake; its fields follow from it
        for problem in _to_problems(doc, name, error):
            key = (problem.line, problem.column, problem.message)
            if key not in seen:
                seen.add(key)
                problems.append(problem)
    return problems


def _deepest(error: ValidationError) -> ValidationError:
    """For anyOf/oneOf failures, report the branch that came closest."""
    while error.context:
        relevant = [e for e in error.context if e.validator not in ("required",)] or list(error.context)
        error = max(relevant, key=lambda e: len(e.absolute_path))
    return error


def _known_fields(schema_name: str, doc: Document, path: tuple) -> list[str]:
    """Field names allowed at `path` (for a step or connection: common plus its kind's)."""
    schema = load_schema(schema_name)
    defs = schema.get("$defs", {})
    node: Any = doc.plain
    for part in path:
        node = node[part]
    names: set[str] = set()
    kind = node.get("kind") if isinstance(node, dict) else None
    for definition in defs.values():
        if kind and definition is defs.get(str(kind)):
            names.update(definition.get("properties", {}))
    container = "step" if len(path) == 2 and path[0] == "steps" else None
    if container and container in defs:
        names.update(defs[container].get("properties", {}))
    if not names and not path:
        names.update(schema.get("properties", {}))
    return sorted(names)


def _to_problems(doc: Document, schema_name: str, error: ValidationError) -> Iterable[Problem]:
    path = tuple(error.absolute_path)
    where = _describe(doc, path)
    rule = f"schema.{error.validator}"
    if error.validator in ("unevaluatedProperties", "additionalProperties"):
        allowed = _known_fields(schema_name, doc, path) or sorted(error.schema.get("properties", {}))
        instance = error.instance if isinstance(error.instance, dict) else {}
        extra = [k for k in _UNEXPECTED.findall(error.message) if k in instance]
        for key in extra or list(instance):
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f"did you mean '{close[0]}'?" if close else (
                f"allowed here: {', '.join(allowed)}" if allowed else "remove it")
            yield doc.problem(path + (key,), "schema.unknown-field", f"unknown field '{key}' in {where}", hint,
                              key=True)
        return
    if error.validator == "required":
        missing = _UNEXPECTED.findall(error.message)[:1]
        field = missing[0] if missing else "?"
        kind = _kind_at(doc, path)
        article = "an" if kind and kind[0] in "aeiou" else "a"
        # a step, or what the top-level field holds: a connection, a channel, the store
        noun = "step" if "steps" in path or not path else str(path[0]).removesuffix("s")
        yield doc.problem(path, "schema.required", f"{where} is missing required field '{field}'",
                          f"{article} {kind} {noun} needs `{field}:`" if kind else f"add `{field}:`")
        return
    if error.validator in ("enum", "const"):
        options = error.schema.get("enum") or [error.schema.get("const")]
        value = error.instance
        close = difflib.get_close_matches(str(value), [str(o) for o in options], n=1)
        hint = (f"did you mean '{close[0]}'? " if close else "") + f"one of: {', '.join(map(str, options))}"
        label = "step kind" if path[-1:] == ("kind",) else "value"
        yield doc.problem(path, rule, f"unknown {label} {json.dumps(value)} at {where}", hint)
        return
    if error.validator == "type":
        expected = error.schema.get("type")
        wanted = " or ".join(_TYPE_NAMES.get(t, t) for t in (expected if isinstance(expected, list) else [expected]))
        got = _TYPE_NAMES.get(_json_type(error.instance), type(error.instance).__name__)
        yield doc.problem(path, rule, f"{where} must be {wanted}, not {got}",
                          "quote the value if it should be text" if "string" in str(expected) else "")
        return
    if error.validator == "pattern":
        if error.schema.get("pattern") in (DURATION_PATTERN, DURATION_OR_EXPRESSION_PATTERN):
            also = (", or a ${{ }} expression that renders one"
                    if error.schema.get("pattern") == DURATION_OR_EXPRESSION_PATTERN else "")
            yield doc.problem(path, "schema.duration", f"{json.dumps(error.instance)} at {where} is not a duration",
                              f"write a number and a unit: 500ms, 30s, 10m, 4h, 7d{also}")
        else:
            yield doc.problem(path, rule, f"{json.dumps(error.instance)} at {where} has the wrong form",
                              error.schema.get("description", f"it must match {error.schema.get('pattern')}"))
        return
    if error.validator == "not":
        forbidden = (error.schema.get("not") or {})
        if "enum" in forbidden or "const" in forbidden:
            yield doc.problem(path, "schema.reserved", f"{json.dumps(error.instance)} at {where} is a reserved word",
                              "choose another name; fail, continue and reject are keywords of on_error and on_timeout")
            return
        if _kind_at(doc, path[:2]) == "wait" or _kind_at(doc, path) == "wait":
            yield doc.problem(path, rule, f"{where}: give either duration or until, not both",
                              "keep one of them")
            return
        yield doc.problem(path, rule, f"{where}: {_not_message(error)}", "keep one of the conflicting fields")
        return
    message = error.message if len(error.message) < 200 else error.message[:200] + "..."
    yield doc.problem(path, rule, f"{where}: {message}", error.schema.get("description", "")[:200])


def _not_message(error: ValidationError) -> str:
    required = (error.schema.get("not") or {}).get("required")
    if required:
        return f"use only one of {', '.join(required)}"
    return "this combination of fields is not allowed"


def _kind_at(doc: Document, path: tuple) -> str | None:
    node: Any = doc.plain
    try:
        for part in path:
            node = node[part]
    except (KeyError, IndexError, TypeError):
        return None
    return node.get("kind") if isinstance(node, dict) and isinstance(node.get("kind"), str) else None


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _describe(doc: Document, path: tuple) -> str:
    """`step 'plan' (shell)`, `steps[3].retry`, or `the flow` for the root."""
    if not path:
        return "the document"
    if path[0] == "steps" and len(path) >= 2 and isinstance(path[1], int):
        try:
            step = doc.plain["steps"][path[1]]
            label = f"step '{step.get('id', path[1])}'"
        except (KeyError, IndexError, TypeError, AttributeError):
            label = f"steps[{path[1]}]"
        rest = ".".join(str(p) for p in path[2:])
        return f"{label} field '{rest}'" if rest else label
    return "'" + ".".join(str(p) for p in path) + "'"
