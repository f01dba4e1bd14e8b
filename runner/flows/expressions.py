"""`${{ ... }}` expressions: evaluation in a jinja2 sandbox, and shell quoting.

An expression sees plain data only (`inputs`, `steps`, `run`, `callbacks`) and
cannot reach Python internals, the filesystem or the network: the sandbox
refuses attribute access to `__class__` and friends, and the operators that can
build huge values (`*`, `**`) are capped. Values interpolated into a shell
command are quoted with `shlex.quote` unless written `raw(...)`.
"""

from __future__ import annotations

import json
import operator
import re
import shlex
from dataclasses import dataclass, field
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, Undefined, nodes
from jinja2.exceptions import SecurityError, UndefinedError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from runner.errors import ExpressionError

EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}", re.DOTALL)
ROOT_NAMES = frozenset({"inputs", "steps", "run", "callbacks", "env"})
FUNCTIONS = frozenset({"raw", "fromjson", "range", "lipsum", "dict", "cycler", "joiner", "namespace", "true",
                       "false", "none", "True", "False", "None"})
MAX_BUILT_LENGTH = 1_000_000


class Raw(str):
    """A value the author asked to splice into a shell command unquoted."""


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


_BIG_WIDTH = re.compile(r"[1-9][0-9]{6,}")


def _check_numbers(values: tuple) -> None:
    for value in values:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and abs(value) > MAX_BUILT_LENGTH:
            raise SecurityError("a number argument over 1,000,000 is not allowed here")


def _check_format(template: str) -> None:
    if _BIG_WIDTH.search(template):
        raise SecurityError("format widths over 1,000,000 are not allowed")


def _guarded_filter(func):
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


_PATH = re.compile(r"^\s*(inputs|steps|run|callbacks)((?:\.[A-Za-z_][A-Za-z0-9_-]*|\[\s*'[^'\\]*'\s*\]|\[[0-9]+\])+)\s*$")
_PART = re.compile(r"\.([A-Za-z_][A-Za-z0-9_-]*)|\[\s*'([^'\\]*)'\s*\]|\[([0-9]+)\]")


def _path_lookup(expr: str):
    """A plain path (`steps.plan.outputs.stdout`) read from the data directly: no compile, no
    attribute access on any object at all. Anything else, or a miss, goes to jinja2."""
    match = _PATH.match(expr)
    if not match or "-" in "".join(m.group(1) or "" for m in _PART.finditer(match.group(2))):
        return None
    root = match.group(1)
    parts = [(m.group(1) or m.group(2), m.group(3)) for m in _PART.finditer(match.group(2))]
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


_SIMPLE_NODES = (nodes.Const, nodes.Name, nodes.Getattr, nodes.Getitem, nodes.BinExpr, nodes.UnaryExpr,
                 nodes.Compare, nodes.Operand, nodes.Concat, nodes.CondExpr, nodes.List, nodes.Tuple, nodes.Dict,
                 nodes.Pair, nodes.Filter, nodes.Output, nodes.Template, nodes.TemplateData)
_BINARY = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.truediv, "//": operator.floordiv,
           "%": operator.mod, "**": operator.pow}
_COMPARE = {"eq": operator.eq, "ne": operator.ne, "gt": operator.gt, "gteq": operator.ge, "lt": operator.lt,
            "lteq": operator.le, "in": lambda a, b: a in b, "notin": lambda a, b: a not in b}


class _Unsupported(Exception):
    """This expression needs jinja2 proper (an error to word, attribute semantics, a test...)."""


def _interpreted(env: ImmutableSandboxedEnvironment, expr: str):
    """Evaluate common expressions straight from jinja2's parse tree.

    Compiling each distinct expression to Python costs ~0.5 ms, which dominated
    short steps. Only data is touched (dict keys, list items); operators go
    through the sandbox's caps; anything unusual, and every error, is handed to
    the compiled jinja2 expression, so results and messages are jinja2's own.
    """
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


def _fromjson(text: str) -> Any:
    return json.loads(text)


def make_environment() -> ImmutableSandboxedEnvironment:
    env = _Sandbox(undefined=StrictUndefined, autoescape=False)
    env.globals = {"raw": lambda value: Raw(to_text(value)), "fromjson": _fromjson,
                   "range": env.globals["range"], "dict": dict}
    env.filters = {name: _guarded_filter(func) for name, func in env.filters.items()}
    env.filters["fromjson"] = _fromjson
    return env


_SLOW_ENV = make_environment()


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


def has_expression(text: Any) -> bool:
    return isinstance(text, str) and "${{" in text


class Evaluator:
    """Evaluates and renders expressions; compiled expressions are cached."""

    CACHE_SIZE = 4096

    def __init__(self) -> None:
        self.env = make_environment()
        self._compiled: dict[str, Any] = {}  # bounded: an unbounded cache makes every GC pass slower

    def evaluate(self, expr: str, context: dict[str, Any], *, step: str | None = None,
                 field: str | None = None) -> Any:
        compiled = self._compiled.get(expr)
        try:
            if compiled is None:
                compiled = (_path_lookup(expr) or _interpreted(self.env, expr)
                            or self.env.compile_expression(expr.strip(), undefined_to_none=False))
                if len(self._compiled) >= self.CACHE_SIZE:
                    self._compiled.pop(next(iter(self._compiled)))
                self._compiled[expr] = compiled
            value = compiled(**context)
        except UndefinedError as exc:
            raise ExpressionError(f"${{{{ {expr.strip()} }}}}: {exc.message}", step=step, field=field,
                                  hint="check the name, or give a fallback with `| default(...)`") from None
        except SecurityError as exc:
            raise ExpressionError(f"${{{{ {expr.strip()} }}}} is not allowed: {exc}", step=step,
                                  field=field) from None
        except TemplateSyntaxError as exc:
            raise ExpressionError(f"${{{{ {expr.strip()} }}}}: syntax error: {exc.message}", step=step,
                                  field=field) from None
        except Exception as exc:  # an expression is user code: any error it raises is theirs
            raise ExpressionError(f"${{{{ {expr.strip()} }}}} raised {type(exc).__name__}: {exc}",
                                  step=step, field=field) from None
        if isinstance(value, Undefined):
            raise ExpressionError(f"${{{{ {expr.strip()} }}}}: {value._undefined_message}", step=step,
                                  field=field, hint="check the name, or give a fallback with `| default(...)`")
        return value

    def render(self, value: Any, context: dict[str, Any], *, shell: bool = False,
               step: str | None = None, field: str | None = None) -> Any:
        """Render every expression inside `value` (recursing into dicts and lists).

        A string that is exactly one expression keeps the expression's type;
        otherwise results are spliced in as text, shell-quoted when `shell`.
        """
        if isinstance(value, dict):
            return {k: self.render(v, context, shell=shell, step=step, field=f"{field}.{k}" if field else k)
                    for k, v in value.items()}
        if isinstance(value, list):
            return [self.render(v, context, shell=shell, step=step, field=f"{field}[{i}]")
                    for i, v in enumerate(value)]
        if not has_expression(value):
            return value
        whole = EXPRESSION.fullmatch(value.strip())
        if whole and len(EXPRESSION.findall(value)) == 1 and not shell:
            result = self.evaluate(whole.group(1), context, step=step, field=field)
            return str(result) if isinstance(result, Raw) else result

        pieces, position, quoting = [], 0, None
        for match in EXPRESSION.finditer(value):
            literal = value[position:match.start()]
            quoting = _shell_state(literal, quoting) if shell else None
            result = self.evaluate(match.group(1), context, step=step, field=field)
            text = to_text(result)
            if shell and not isinstance(result, Raw):
                text = shell_quote(text, quoting)
            pieces += [literal, text]
            position = match.end()
        pieces.append(value[position:])
        return "".join(pieces)

    def truthy(self, value: Any, context: dict[str, Any], *, step: str | None = None) -> bool:
        result = self.render(value, context, step=step, field="if")
        if isinstance(result, str):
            return result.strip().lower() not in {"", "false", "0", "no", "null", "none"}
        return bool(result)


def _shell_state(literal: str, state: str | None) -> str | None:
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
    match = _PATH.match(expr)
    if not match or "-" in match.group(2):
        return None
    parts = [m.group(1) or m.group(2) for m in _PART.finditer(match.group(2))]
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


def iter_expressions(value: Any, path: tuple = ()):
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
