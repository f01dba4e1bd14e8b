"""`${{ ... }}` expressions: evaluation in a jinja2 sandbox, shell quoting, and static references.

An expression sees plain data only (`inputs`, `steps`, `run`, `callbacks`) and
cannot reach Python internals, the filesystem or the network: the sandbox
refuses attribute access to `__class__` and friends, and the operators that can
build huge values (`*`, `**`) are capped. Values interpolated into a shell
command are quoted with `shlex.quote` unless written `raw(...)`.

- `evaluator`: `Evaluator` renders values and evaluates expressions (cached);
- `interpreter`: the fast paths that evaluate common expressions without compiling;
- `sandbox`: the jinja2 environment (`make_environment`) and its caps;
- `quoting`: `to_text`, `shell_quote` and `Raw`;
- `syntax`: where expressions are (`EXPRESSION`, `has_expression`, `iter_expressions`);
- `static_refs`: what an expression reads (`references`), for the checks.
"""

from __future__ import annotations

from runner.flows.expressions.evaluator import Evaluator
from runner.flows.expressions.quoting import Raw, shell_quote, to_text
from runner.flows.expressions.sandbox import MAX_BUILT_LENGTH, make_environment
from runner.flows.expressions.static_refs import FUNCTIONS, ROOT_NAMES, References, references
from runner.flows.expressions.syntax import EXPRESSION, has_expression, iter_expressions

__all__ = ["EXPRESSION", "FUNCTIONS", "MAX_BUILT_LENGTH", "ROOT_NAMES", "Evaluator", "Raw", "References",
           "has_expression", "iter_expressions", "make_environment", "references", "shell_quote", "to_text"]
