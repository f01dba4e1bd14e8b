"""A run's inputs: parsed from `-i key=value`, defaulted and checked against the flow.

Whatever their source (the API, a webhook, `-i`, `--inputs-file`), inputs are
strict JSON values (`runner.jsonvalue`): a finite number, Unicode text.
"""

from __future__ import annotations

import math
from typing import Any

from jsonschema import Draft202012Validator

from runner import jsonvalue
from runner.errors import Invalid, UsageError
from runner.flows.model import Flow


def parse_pairs(pairs: tuple[str, ...] | list[str]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        if "=" not in pair:
            raise UsageError(f"input {pair!r} is not KEY=VALUE", hint="write e.g. -i order_id=A-1001")
        key, value = pair.split("=", 1)
        values[key.strip()] = value
    return values


def coerce(name: str, kind: str, value: Any) -> Any:
    if not isinstance(value, str) or kind == "string":
        return value
    try:
        if kind == "integer":
            return int(value)
        if kind == "number":
            number = float(value)
            if not math.isfinite(number):
                raise UsageError(f"input {name}={value!r} is not a finite number",
                                 hint="NaN and Infinity cannot be kept as JSON")
            return int(number) if number.is_integer() and "." not in value else number
        if kind == "boolean":
            lowered = value.lower()
            if lowered in ("true", "yes", "1"):
                return True
            if lowered in ("false", "no", "0"):
                return False
            raise ValueError(value)
        if kind in ("object", "array"):
            return jsonvalue.loads(value, f"input {name}")
    except Invalid as exc:
        raise UsageError("; ".join([exc.message, *exc.reasons]), hint=exc.hint) from None
    except ValueError:
        raise UsageError(f"input {name}={value!r} is not a valid {kind}") from None
    return value


def resolve_inputs(flow: Flow, given: dict[str, Any]) -> dict[str, Any]:
    """Declared inputs only, with defaults applied and types checked."""
    check_values(given)
    unknown = sorted(set(given) - set(flow.inputs))
    if unknown:
        known = ", ".join(flow.inputs) or "none"
        raise UsageError(f"flow {flow.name} has no input {', '.join(unknown)}", hint=f"its inputs: {known}")
    values: dict[str, Any] = {}
    for name, spec in flow.inputs.items():
        spec = spec or {}
        if name in given:
            values[name] = coerce(name, spec.get("type", "string"), given[name])
        elif "default" in spec:
            values[name] = spec["default"]
        elif spec.get("required"):
            raise UsageError(f"flow {flow.name} needs input '{name}'", hint=f"pass -i {name}=...")
    schema = {"type": "object", "properties": {
        name: {k: v for k, v in {"type": (spec or {}).get("type", "string"), "enum": (spec or {}).get("enum")}.items()
               if v is not None} for name, spec in flow.inputs.items()}}
    errors = sorted(Draft202012Validator(schema).iter_errors(values), key=lambda e: list(e.path))
    if errors:
        error = errors[0]
        where = ".".join(str(p) for p in error.absolute_path)
        raise UsageError(f"input {where}: {error.message}")
    return check_values(values)


def check_values(given: dict[str, Any], what: str = "inputs") -> dict[str, Any]:
    """`given` if every value can be kept as strict JSON; else UsageError naming the input and why."""
    reason = jsonvalue.problem(given, what)
    if reason is not None:
        raise UsageError(reason,
                         hint="numbers must be finite, and text valid Unicode (UTF-8)")
    return given
