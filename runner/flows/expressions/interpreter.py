"""Evaluating common expressions without compiling them to Python.

Compiling each distinct expression costs ~0.5 ms, which dominated short steps.
So a plain path is read from the data directly (`path_lookup`), and an
expression made of simple nodes is walked straight from jinja2's parse tree
(`interpreted`). Only data is touched (dict keys, list items); operators go
through the sandbox's caps; anything unusual, and every error, is handed to the
compiled jinja2 expression, so results and messages are jinja2's own.
"""

from __future__ import annotations

import operator
from typing import Any, Callable

from jinja2 import TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.flows.expressions.sandbox import make_environment
from runner.flows.expressions.syntax import PATH_PART, PLAIN_PATH

Compiled = Callable[..., Any]  # called with the context's names as keywords

_SIMPLE_NODES = (nodes.Const, nodes.Name, nodes.Getattr, nodes.Getitem, nodes.BinExpr, nodes.UnaryExpr,
                 nodes.Compare, nodes.Operand, nodes.Concat, nodes.CondExpr, nodes.List, nodes.Tuple, nodes.Dict,
                 nodes.Pair, nodes.Filter, nodes.Output, nodes.Template, nodes.TemplateData)
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv,
           "%": operator.mod, "**": operator.pow}
_COMPARE = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
            "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}

# compiles the rare path that misses (to word jinja2's error); a pure function of the text
_SLOW_ENV = make_environment()


class _Unsupported(Exception):
    """This expression needs jinja2 proper (an error to word, attribute semantics, a test...)."""


def path_lookup(expr: str) -> Compiled | None:
    """A plain path (`steps.plan.outputs.stdout`) read from the data directly: no compile, no
    attribute access on any object at all. Anything else, or a miss, goes to jinja2."""
    match = PLAIN_PATH.match(expr)
    if not match or "-" in "".join(m.group(1) or "" for m in PATH_PART.finditer(match.group(2))):
        return None
    root = match.group(1)
    parts = [(m.group(1) or m.group(2), m.group(3)) for m in PATH_PART.finditer(match.group(2))]
    fallback = []

    def lookup(**context: Any) -> Any:
        value = context[root]
        for key, index in parts:
            if isinstance(value, dict) and index is None and key in value:
                value = value[key]
            elif isinstance(value, list) and index is not None and int(index) < len(value):
                value = value[int(index)]
            else:  # let jinja2 produce its usual error (or attribute semantics)
                if not fallback:
                    fallback.append(_SLOW_ENV.compile_expression(expr.strip(), undefined_to_none=False))
                return fallback[0](**context)
        return value

    return lookup


def interpreted(env: ImmutableSandboxedEnvironment, expr: str) -> Compiled | None:
    """Evaluate common expressions straight from jinja2's parse tree; None for any other expression."""
    try:
        tree = env.parse("{{ " + expr.strip() + " }}")
    except TemplateSyntaxError:
        return None
    body = tree.body[0].nodes[0] if tree.body and isinstance(tree.body[0], nodes.Output) else None
    if body is None or len(tree.body[0].nodes) != 1:
        return None
    for node in tree.find_all(nodes.Node):
        if not isinstance(node, _SIMPLE_NODES) or (isinstance(node, nodes.Filter) and (
                node.dyn_args or node.dyn_kwargs or node.node is None)):
            return None
    slow: list = []

    def evaluate(**context: Any) -> Any:
        try:
            return _walk(env, body, context)
        except Exception:
            if not slow:
                slow.append(env.compile_expression(expr.strip(), undefined_to_none=False))
            return slow[0](**context)

    return evaluate


def _walk(env: ImmutableSandboxedEnvironment, node: nodes.Node, context: dict[str, Any]) -> Any:
    kind = type(node)
    if kind is nodes.Const:
        return node.value
    if kind is nodes.Name:
        if node.name in context:
            return context[node.name]
        raise _Unsupported(node.name)
    if kind is nodes.Getattr:
        value = _walk(env, node.node, context)
        if isinstance(value, dict) and node.attr in value:
            return value[node.attr]
        raise _Unsupported(node.attr)
    if kind is nodes.Getitem:
        value, key = _walk(env, node.node, context), _walk(env, node.arg, context)
        if isinstance(value, dict) and isinstance(key, str) and key in value:
            return value[key]
        if isinstance(value, (list, tuple)) and isinstance(key, int) and -len(value) <= key < len(value):
            return value[key]
        raise _Unsupported("item")
    if kind is nodes.And:
        return _walk(env, node.left, context) and _walk(env, node.right, context)
    if kind is nodes.Or:
        return _walk(env, node.left, context) or _walk(env, node.right, context)
    if isinstance(node, nodes.BinExpr):
        left, right = _walk(env, node.left, context), _walk(env, node.right, context)
        if node.operator in env.intercepted_binops:
            return env.call_binop(None, node.operator, left, right)
        return _BINARY[node.operator](left, right)
    if kind is nodes.Not:
        return not _walk(env, node.node, context)
    if kind is nodes.Neg:
        return -_walk(env, node.node, context)
    if kind is nodes.Pos:
        return +_walk(env, node.node, context)
    if kind is nodes.Compare:
        left = _walk(env, node.expr, context)
        for operand in node.ops:
            right = _walk(env, operand.expr, context)
            if not _COMPARE[operand.op](left, right):
                return False
            left = right
        return True
    if kind is nodes.Concat:
        return "".join(str(_walk(env, part, context)) for part in node.nodes)
    if kind is nodes.CondExpr:
        if _walk(env, node.test, context):
            return _walk(env, node.expr1, context)
        if node.expr2 is None:
            raise _Unsupported("else")
        return _walk(env, node.expr2, context)
    if kind is nodes.List:
        return [_walk(env, item, context) for item in node.items]
    if kind is nodes.Tuple:
        return tuple(_walk(env, item, context) for item in node.items)
    if kind is nodes.Dict:
        return {_walk(env, pair.key, context): _walk(env, pair.value, context) for pair in node.items}
    if kind is nodes.Filter:
        func = env.filters.get(node.name)
        if func is None or getattr(func, "jinja_pass_arg", None) is not None:
            raise _Unsupported(node.name)
        args = [_walk(env, arg, context) for arg in node.args]
        kwargs = {pair.key: _walk(env, pair.value, context) for pair in node.kwargs}
        return func(_walk(env, node.node, context), *args, **kwargs)
    raise _Unsupported(kind.__name__)
