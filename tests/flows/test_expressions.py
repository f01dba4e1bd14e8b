"""runner.flows.expressions: rendering, shell quoting, the sandbox, static references (DESIGN §2).

Shell quoting is also checked end to end: a hostile input goes through the
real `signoff run --local` into a real bash, and the file it tries to create
must not appear.
"""

from __future__ import annotations

import shlex

import pytest

from runner.errors import ExpressionError
from runner.flows.expressions import Evaluator, Raw, iter_expressions, make_environment, references

CONTEXT = {
    "inputs": {"who": "world", "n": 3, "price": 2.5, "flag": True, "off": False, "nothing": None,
               "d": {"a": 1, "b": "two"}, "l": [1, "x"], "first": "Ada", "last": "Lovelace"},
    "steps": {"plan": {"status": "succeeded", "outputs": {"stdout": "plan ok\n", "json": {"count": 7}}}},
    "run": {"id": "r1", "flow": "demo", "started_by": "alice", "draft": True},
    "callbacks": {"done": {"url": "https://signoff.example/callbacks/tok"}},
}


@pytest.fixture
def evaluator() -> Evaluator:
    return Evaluator()


# ---- rendering -------------------------------------------------------------------------------


@pytest.mark.parametrize(("template", "expected"), [
    ("${{ inputs.n }}", 3),
    ("${{ inputs.price }}", 2.5),
    ("${{ inputs.flag }}", True),
    ("${{ inputs.nothing }}", None),
    ("${{ inputs.d }}", {"a": 1, "b": "two"}),
    ("${{ inputs.l }}", [1, "x"]),
    ("${{ steps.plan.outputs.json.count + 1 }}", 8),
    ("  ${{ inputs.n * 2 }}  ", 6),
    ("${{inputs.who}}", "world"),
], ids=["int", "float", "bool", "none", "dict", "list", "arithmetic", "padded", "no-spaces"])
def test_a_lone_expression_keeps_its_type(evaluator, template, expected):
    result = evaluator.render(template, CONTEXT)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(("template", "expected"), [
    ("n=${{ inputs.n }}", "n=3"),
    ("hello ${{ inputs.who }}!", "hello world!"),
    ("on=${{ inputs.flag }} off=${{ inputs.off }}", "on=true off=false"),
    ("[${{ inputs.nothing }}]", "[]"),
    ("d=${{ inputs.d }}", 'd={"a":1,"b":"two"}'),
    ("l=${{ inputs.l }}", 'l=[1,"x"]'),
    ("by ${{ run.started_by }} at ${{ callbacks.done.url }}", "by alice at https://signoff.example/callbacks/tok"),
], ids=["int", "str", "bools", "none", "dict-as-json", "list-as-json", "run-and-callbacks"])
def test_expressions_inside_text_are_spliced_as_text(evaluator, template, expected):
    assert evaluator.render(template, CONTEXT) == expected


def test_two_expressions_that_fill_the_whole_string(evaluator):
    assert evaluator.render("${{ inputs.first }} ${{ inputs.last }}", CONTEXT) == "Ada Lovelace"


def test_rendering_recurses_into_mappings_and_lists(evaluator):
    value = {"order": "${{ inputs.n }}", "tags": ["${{ inputs.who }}", "fixed", 5], "nested": {"d": "${{ inputs.d }}"}}
    assert evaluator.render(value, CONTEXT) == {"order": 3, "tags": ["world", "fixed", 5],
                                                "nested": {"d": {"a": 1, "b": "two"}}}


@pytest.mark.parametrize("value", ["plain text", "$HOME {{ not ours }}", 42, None, True, ["a", 1]])
def test_values_without_expressions_are_left_alone(evaluator, value):
    assert evaluator.render(value, CONTEXT) == value


@pytest.mark.parametrize(("condition", "expected"), [
    ("${{ inputs.flag }}", True), ("${{ inputs.off }}", False), ("${{ inputs.n > 5 }}", False),
    ("${{ steps.plan.status == 'succeeded' }}", True), (True, True), (False, False),
    ("x${{ inputs.off }}", True), ("${{ inputs.nothing }}", False),
])
def test_truthy(evaluator, condition, expected):
    assert evaluator.truthy(condition, CONTEXT, step="s") is expected


# ---- shell quoting ---------------------------------------------------------------------------


HOSTILE = ["\"; touch pwned #", "$(touch pwned)", "`touch pwned`", "'; touch pwned; '", "a\ntouch pwned",
           "*", "a b  c", ""]


@pytest.mark.parametrize("value", HOSTILE, ids=["quote-semicolon", "subshell", "backticks", "single-quotes",
                                                "newline", "glob", "spaces", "empty"])
def test_shell_rendering_quotes_each_value_into_one_word(evaluator, value):
    command = evaluator.render("echo ${{ inputs.v }} end", {"inputs": {"v": value}}, shell=True)
    assert shlex.split(command) == ["echo", value, "end"]


def test_a_lone_expression_is_still_quoted_in_a_shell_field(evaluator):
    command = evaluator.render("${{ inputs.v }}", {"inputs": {"v": "rm -rf /tmp/x; echo"}}, shell=True)
    assert command == shlex.quote("rm -rf /tmp/x; echo")


def test_dicts_are_quoted_as_one_json_word(evaluator):
    command = evaluator.render("send ${{ inputs.d }}", CONTEXT, shell=True)
    assert shlex.split(command) == ["send", '{"a":1,"b":"two"}']


def test_raw_is_spliced_unquoted(evaluator):
    context = {"inputs": {"cmd": "ls -la | wc -l"}}
    assert evaluator.render("${{ raw(inputs.cmd) }} && ${{ inputs.cmd }}", context, shell=True) == \
        "ls -la | wc -l && 'ls -la | wc -l'"


def test_raw_outside_a_shell_field_is_a_plain_string(evaluator):
    result = evaluator.render("${{ raw(inputs.n) }}", CONTEXT)
    assert result == "3" and type(result) is str and not isinstance(result, Raw)


def _injection_flow(make_flow, run_line: str) -> None:
    make_flow("inject", {
        "name": "inject",
        "inputs": {"v": {"type": "string", "required": True}},
        "steps": [{"id": "say", "kind": "shell", "run": run_line, "timeout": "30s"}],
    })


@pytest.mark.parametrize("payload", ['"; touch {target} #', "$(touch {target})", "`touch {target}`",
                                     "'; touch {target}; '", "x\ntouch {target}"],
                         ids=["quote-semicolon", "subshell", "backticks", "single-quotes", "newline"])
def test_an_input_cannot_inject_a_command_into_a_real_run(make_flow, cli, tmp_path, payload):
    target = tmp_path / "pwned"
    value = payload.format(target=target)
    _injection_flow(make_flow, "echo ${{ inputs.v }}")
    code, _, err, record = cli(["run", "inject", "--local", "--json", "-i", f"v={value}"])
    assert code == 0, err
    assert not target.exists()
    assert record["status"] == "succeeded"
    assert record["steps"]["say"]["outputs"]["stdout"] == value + "\n"


def test_raw_runs_the_value_as_shell_in_a_real_run(make_flow, cli, tmp_path):
    target = tmp_path / "made-by-raw"
    _injection_flow(make_flow, "${{ raw(inputs.v) }}")
    code, _, err, record = cli(["run", "inject", "--local", "--json", "-i", f"v=touch {target}"])
    assert code == 0, err
    assert record["status"] == "succeeded"
    assert target.exists()


@pytest.mark.parametrize("run_line", ['echo "${{ inputs.v }}"', "echo '${{ inputs.v }}'",
                                      'echo "pre ${{ inputs.v }} post" | sed "s/^pre //; s/ post$//"'],
                         ids=["double-quoted", "single-quoted", "mid-double-quoted"])
@pytest.mark.parametrize("payload", ['"; touch {target} #', "'; touch {target}; '", "$(touch {target})"],
                         ids=["double-quote", "single-quote", "subshell"])
def test_an_input_cannot_inject_from_inside_author_quotes(make_flow, cli, tmp_path, run_line, payload):
    target = tmp_path / "pwned"
    value = payload.format(target=target)
    _injection_flow(make_flow, run_line)
    code, _, err, record = cli(["run", "inject", "--local", "--json", "-i", f"v={value}"])
    assert not target.exists()
    assert code == 0, err
    assert record["steps"]["say"]["outputs"]["stdout"] == value + "\n"


# ---- the sandbox -----------------------------------------------------------------------------


@pytest.mark.parametrize(("expr", "says"), [
    ("inputs.__class__", "unsafe"),
    ("inputs.__class__.__mro__", "unsafe"),
    ("().__class__.__mro__[1].__subclasses__()", "unsafe"),
    ("inputs.who.__class__.__mro__", "unsafe"),
    ("'{0.__class__}'.format(1)", "unsafe"),
    ("'x' | attr('__class__')", "unsafe"),
    ("inputs.pop('who')", "unsafe"),
    ("'a' * 10**9", "1,000,000"),
    ("10**9 * 'a'", "1,000,000"),
    ("[0] * 10**9", "1,000,000"),
    ("2 ** 100000", "exponent"),
    ("range(10**9) | list", None),
], ids=["class", "mro", "subclasses", "str-mro", "format", "attr-filter", "mutation", "big-string",
        "big-string-reversed", "big-list", "big-power", "big-range"])
def test_the_sandbox_refuses(evaluator, expr, says):
    with pytest.raises(ExpressionError) as caught:
        evaluator.evaluate(expr, CONTEXT, step="deploy", field="run")
    error = caught.value
    assert (error.step, error.field) == ("deploy", "run")
    assert error.message.startswith("deploy.run: ")
    assert expr in error.message
    if says is not None:
        assert says in error.message


@pytest.mark.parametrize("expr", [
    "2 ** 128 ** 128 ** 128",
    "'%02000000d' % 1",
    "'a' | center(2000000)",
    "'{:>2000000}'.format(1)",
], ids=["chained-power", "percent-format", "center-filter", "format-width"])
def test_the_sandbox_caps_every_way_of_building_a_huge_value(evaluator, expr):
    with pytest.raises(ExpressionError):
        evaluator.evaluate(expr, CONTEXT, step="deploy", field="run")


def test_an_expression_that_raises_is_an_expression_error(evaluator):
    with pytest.raises(ExpressionError) as caught:
        evaluator.evaluate("1/0", CONTEXT, step="calc", field="values.ratio")
    assert (caught.value.step, caught.value.field) == ("calc", "values.ratio")
    assert "ZeroDivisionError" in caught.value.message
    assert caught.value.message.startswith("calc.values.ratio: ")


@pytest.mark.parametrize(("expr", "says"), [
    ("nope", "'nope' is undefined"),
    ("inputs.missing", "missing"),
    ("steps.later.outputs.stdout", "later"),
])
def test_undefined_names_give_a_clear_message(evaluator, expr, says):
    with pytest.raises(ExpressionError) as caught:
        evaluator.evaluate(expr, CONTEXT, step="say", field="run")
    assert says in caught.value.message
    assert caught.value.message.startswith("say.run: ")
    assert "default" in caught.value.hint


def test_a_default_filter_covers_an_undefined_value(evaluator):
    assert evaluator.evaluate("inputs.missing | default('fallback')", CONTEXT) == "fallback"


def test_syntax_error_at_evaluation_is_an_expression_error(evaluator):
    with pytest.raises(ExpressionError) as caught:
        evaluator.evaluate("inputs.", CONTEXT, step="say", field="run")
    assert "syntax error" in caught.value.message


def test_errors_inside_nested_values_name_the_nested_field(evaluator):
    with pytest.raises(ExpressionError) as caught:
        evaluator.render({"payload": {"who": "${{ inputs.nobody }}"}}, CONTEXT, step="post", field="json")
    assert (caught.value.step, caught.value.field) == ("post", "json.payload.who")


def test_a_sandbox_violation_fails_a_real_run_naming_step_and_field(make_flow, cli):
    make_flow("escape", {
        "name": "escape",
        "inputs": {"v": {"type": "string", "default": "x"}},
        "steps": [{"id": "probe", "kind": "shell", "run": "echo ${{ inputs.v.__class__.__mro__ }}",
                   "timeout": "30s"}],
    })
    code, _, err, record = cli(["run", "escape", "--local", "--json"])
    assert code == 1
    assert "Traceback" not in err
    assert record["status"] == "failed"
    step = record["steps"]["probe"]
    assert step["status"] == "failed"
    assert "probe.run" in step["error"] and "unsafe" in step["error"]
    assert "probe" in record["error"]


# ---- static references -----------------------------------------------------------------------


def test_references_find_inputs_steps_and_callbacks():
    refs = references(make_environment(),
                      "inputs.a ~ inputs['b'] ~ steps.plan.outputs.x ~ steps['review'].decision"
                      " ~ callbacks.done.url ~ run.id")
    assert refs.inputs == {"a", "b"}
    assert refs.steps == {"plan", "review"}
    assert refs.callbacks == {"done"}
    assert refs.roots == {"inputs", "steps", "callbacks", "run"}


def test_references_list_unknown_roots_and_functions():
    refs = references(make_environment(), " raw(secrets.token) | upper ")
    assert refs.roots == {"raw", "secrets"}
    assert refs.inputs == refs.steps == refs.callbacks == set()


def test_references_skip_dynamic_keys():
    refs = references(make_environment(), "steps[inputs.which].status")
    assert refs.steps == set()
    assert refs.inputs == {"which"}


def test_references_refuse_bad_syntax():
    with pytest.raises(ExpressionError) as caught:
        references(make_environment(), "inputs.a +")
    assert "syntax error" in caught.value.message


def test_iter_expressions_walks_nested_values():
    step = {"id": "a", "run": "echo ${{ inputs.x }} ${{ inputs.y }}",
            "json": {"list": ["plain", "${{ steps.b.outputs }}"]}, "timeout": "5m"}
    assert list(iter_expressions(step, ("steps", 0))) == [
        (("steps", 0, "run"), " inputs.x "),
        (("steps", 0, "run"), " inputs.y "),
        (("steps", 0, "json", "list", 1), " steps.b.outputs "),
    ]
