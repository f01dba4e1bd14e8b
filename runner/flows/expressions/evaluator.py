"""Rendering `${{ ... }}`: each expression evaluated in the sandbox, results spliced or kept whole."""

from __future__ import annotations

from typing import Any

from jinja2 import TemplateSyntaxError, Undefined
from jinja2.exceptions import SecurityError, UndefinedError

from runner.errors import ExpressionError
from runner.flows.expressions.interpreter import interpreted, path_lookup
from runner.flows.expressions.quoting import Raw, shell_quote, shell_state, to_text
from runner.flows.expressions.sandbox import make_environment
from runner.flows.expressions.syntax import EXPRESSION, has_expression


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
                compiled = (path_lookup(expr) or interpreted(self.env, expr)
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
            quoting = shell_state(literal, quoting) if shell else None
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
