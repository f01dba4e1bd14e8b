"""What an expression refers to, read without running it, for the checks before anything runs."""

from __future__ import annotations

from dataclasses import dataclass, field

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.errors import ExpressionError
from runner.flows.expressions.syntax import PATH_PART, PLAIN_PATH

ROOT_NAMES = frozenset({"inputs", "steps", "run", "callbacks", "env"})
FUNCTIONS = frozenset({"raw", "fromjson", "range", "lipsum", "dict", "cycler", "joiner", "namespace", "true",
                       "false", "none", "True", "False", "None"})


@dataclass
class References:
    """What an expression refers to, for static checks before anything runs."""

    roots: set[str] = field(default_factory=set)
    inputs: set[str] = field(default_factory=set)
    steps: set[str] = field(default_factory=set)
    callbacks: set[str] = field(default_factory=set)
    filters: set[str] = field(default_factory=set)  # `x | name`: must be a filter the sandbox has
    tests: set[str] = field(default_factory=set)  # `x is name`: must be a test the sandbox has


def references(env: ImmutableSandboxedEnvironment, expr: str) -> References:
    """Parse one expression and list the names it reads. Raises ExpressionError on bad syntax.

    Results are cached by text (validation sees the same expressions again and again), and a
    plain path (`steps.plan.outputs.stdout`) is read without parsing.
    """
    cached = _REFERENCES.get(expr)
    if cached is None:
        cached = _path_references(expr) or _parse_references(env, expr)
        if len(_REFERENCES) >= 8192:
            _REFERENCES.pop(next(iter(_REFERENCES)))
        _REFERENCES[expr] = cached
    return References(set(cached.roots), set(cached.inputs), set(cached.steps), set(cached.callbacks),
                      set(cached.filters), set(cached.tests))


_REFERENCES: dict[str, References] = {}  # a pure function's results; bounded


def _path_references(expr: str) -> References | None:
    match = PLAIN_PATH.match(expr)
    if not match or "-" in match.group(2):
        return None
    parts = [m.group(1) or m.group(2) for m in PATH_PART.finditer(match.group(2))]
    refs = References(roots={match.group(1)})
    bucket = {"inputs": refs.inputs, "steps": refs.steps, "callbacks": refs.callbacks}.get(match.group(1))
    if bucket is not None and parts and parts[0] is not None:
        bucket.add(parts[0])
    return refs


def _parse_references(env: ImmutableSandboxedEnvironment, expr: str) -> References:
    try:
        tree = env.parse("{{ " + expr.strip() + " }}")
    except TemplateSyntaxError as exc:
        raise ExpressionError(f"syntax error in ${{{{ {expr.strip()} }}}}: {exc.message}") from None
    refs = References(filters={n.name for n in tree.find_all(nodes.Filter)},
                      tests={n.name for n in tree.find_all(nodes.Test)})
    assigned = {n.name for n in tree.find_all(nodes.Name) if n.ctx in ("store", "param")}
    for name in tree.find_all(nodes.Name):
        if name.ctx == "load" and name.name not in assigned:
            refs.roots.add(name.name)
    buckets = {"inputs": refs.inputs, "steps": refs.steps, "callbacks": refs.callbacks}
    callees = {id(call.node): call for call in tree.find_all(nodes.Call)}
    for node in tree.find_all((nodes.Getattr, nodes.Getitem)):
        target = node.node
        if not (isinstance(target, nodes.Name) and target.ctx == "load" and target.name in buckets):
            continue
        call = callees.get(id(node))
        if call is not None:  # steps.get('build'): the key is the call's argument
            first = call.args[0] if call.args else None
            key = first.value if isinstance(first, nodes.Const) and isinstance(first.value, str) else None
        else:
            key = _static_key(node)
        if key is not None:
            buckets[target.name].add(key)
    return refs


def _static_key(node: nodes.Node) -> str | None:
    if isinstance(node, nodes.Getattr):
        return node.attr
    if isinstance(node, nodes.Getitem) and isinstance(node.arg, nodes.Const) and isinstance(node.arg.value, str):
        return node.arg.value
    return None
