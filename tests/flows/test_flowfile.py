"""runner.flows.load: reading, schema and meaning checks, located errors (DESIGN §2, §6, §8).

Every bad flow is checked three ways: `check_file` on a real file,
`check_bytes` on its bytes, and the real `signoff validate --json` in a
subprocess. Each asserts the rule, the line (and column) and the fix hint.
"""

from __future__ import annotations

import hashlib
import textwrap
from pathlib import Path

import pytest

from runner.flows.load import check_bytes, check_file
from runner.yamldoc import MAX_ALIASES, MAX_FILE_BYTES

from support import PROJECT_FLOWS, PROJECT_ROOT

EXAMPLES = sorted(PROJECT_FLOWS.glob("*.yaml"))
PROBLEM_KEYS = {"file", "line", "column", "path", "rule", "message", "hint"}

GOOD = """\
name: {name}
steps:
  - id: a
    kind: shell
    run: echo hi
"""


def text(source: str) -> str:
    return textwrap.dedent(source).lstrip("\n")


def only_error(report):
    assert not report.ok
    assert len(report.errors) == 1, "\n".join(str(p) for p in report.errors)
    return report.errors[0]


# ---- the table: one mistake per flow, the error it must give ----------------------------------
#
# (id, flow text for flows/demo.yaml, rule, line, column, path, hint fragment, message fragment)

CASES = [
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
           run: [unclosed
        """, "yaml-syntax", 5, 4, "", "check indentation", "invalid YAML", id="malformed-yaml"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo hi
            timeout: 5
        """, "schema.type", 6, 14, "steps[0].timeout", "quote the value", "must be a string, not an integer",
        id="timeout-as-number"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shel
            run: echo hi
        """, "schema.enum", 4, 11, "steps[0].kind", "did you mean 'shell'", 'unknown step kind "shel"',
        id="unknown-kind"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shel
            run: echo hi
            runn: also unknown once the kind is
        """, "schema.enum", 4, 11, "steps[0].kind", "did you mean 'shell'", 'unknown step kind "shel"',
        id="unknown-kind-is-the-one-error"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
        """, "schema.required", 3, 5, "steps[0]", "a shell step needs `run:`", "missing required field 'run'",
        id="shell-without-run"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo hi
            tiemout: 5s
        """, "schema.unknown-field", 6, 5, "steps[0].tiemout", "did you mean 'timeout'?", "unknown field 'tiemout'",
        id="unknown-step-field"),
    pytest.param(
        """
        name: demo
        descripton: says hello
        steps:
          - id: a
            kind: shell
            run: echo hi
        """, "schema.unknown-field", 2, 1, "descripton", "did you mean 'description'?",
        "unknown field 'descripton'", id="unknown-top-level-field"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: http
            connection: api
            methd: GET
        """, "schema.unknown-field", 6, 5, "steps[0].methd", "did you mean 'method'?", "unknown field 'methd'",
        id="unknown-field-of-a-kind"),
    pytest.param(
        """
        name: demo
        steps:
          - id: ../etc
            kind: shell
            run: echo hi
        """, "schema.pattern", 3, 9, "steps[0].id", "Lower-case letter first", '"../etc"',
        id="step-id-path-trick"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo one
            run: echo two
        """, "duplicate-key", 6, 5, "", "each key may appear once", 'duplicate key "run"', id="duplicate-key"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo one
          - id: a
            kind: shell
            run: echo two
        """, "duplicate-step-id", 6, 9, "steps[1].id", "unique", "already used by steps[0]",
        id="duplicate-step-id"),
    pytest.param(
        """
        name: other
        steps:
          - id: a
            kind: shell
            run: echo hi
        """, "name-mismatch", 1, 7, "name", "`name: demo`", "does not match its file name 'demo'",
        id="name-is-not-the-file-stem"),
    pytest.param(
        """
        name: demo
        steps:
          - id: build
            kind: shell
            run: make
            on_error: clenup
          - id: cleanup
            kind: shell
            run: make clean
        """, "unknown-step", 6, 15, "steps[0].on_error", "did you mean 'cleanup'?", "'clenup' is not a step id",
        id="on-error-unknown-step"),
    pytest.param(
        """
        name: demo
        steps:
          - id: review
            kind: approval
            approvers: [alice]
            timeout: 4h
            on_timeout: escalte
          - id: escalate
            kind: shell
            run: echo late
        """, "unknown-step", 7, 17, "steps[0].on_timeout", "did you mean 'escalate'?", "'escalte'",
        id="on-timeout-unknown-step"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: make
            on_error: a
        """, "jump-to-self", 6, 15, "steps[0].on_error", "retry", "would loop", id="on-error-to-itself"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo ${{ steps.b.outputs.stdout }}
          - id: b
            kind: shell
            run: echo b
        """, "later-step", 5, 10, "steps[0].run", "move the step", "reads step 'b', which is a later step",
        id="expression-reads-a-later-step"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            if: ${{ steps.a.status == 'succeeded' }}
            run: echo a
        """, "later-step", 5, 9, "steps[0].if", "move the step", "which is itself", id="expression-reads-itself"),
    pytest.param(
        """
        name: demo
        steps:
          - id: build
            kind: shell
            run: make
          - id: ship
            kind: shell
            run: echo ${{ steps.buld.outputs.stdout }}
        """, "unknown-step", 8, 10, "steps[1].run", "did you mean 'build'?", "'buld' is not a step id",
        id="expression-unknown-step"),
    pytest.param(
        """
        name: demo
        inputs:
          who: {type: string}
        steps:
          - id: a
            kind: shell
            run: echo ${{ inputs.whom }}
        """, "unknown-input", 7, 10, "steps[0].run", "did you mean 'who'?", "input 'whom' is not declared",
        id="expression-unknown-input"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo ${{ callbacks.done.url }}
        """, "unknown-callback", 5, 10, "steps[0].run", "callback steps: none", "'done' is not a callback step",
        id="expression-unknown-callback"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo ${{ secrets.token }}
        """, "unknown-name", 5, 10, "steps[0].run", "inputs, steps, run and callbacks", "unknown name 'secrets'",
        id="expression-unknown-name"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo ${{ inputs. }}
        """, "expression-syntax", 5, 10, "steps[0].run", "jinja2 syntax", "syntax error", id="expression-syntax"),
    pytest.param(
        """
        name: demo
        steps:
          - id: review
            kind: approval
            approvers: [alice]
        """, "schema.required", 3, 5, "steps[0]", "`timeout:`", "missing required field 'timeout'",
        id="approval-without-timeout"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo hi
            timeout: 0s
        """, "zero-duration", 6, 14, "steps[0].timeout", "30s", "longer than 0", id="zero-timeout"),
    pytest.param(
        """
        name: demo
        inputs:
          who: {type: string, default: you}
        steps:
          - id: a
            kind: shell
            run: echo ${{ inputs.who | nosuchfilter }}
        """, "unknown-filter", 7, 10, "steps[0].run", "known filters: abs,", "unknown filter 'nosuchfilter'",
        id="expression-unknown-filter"),
    pytest.param(
        """
        name: demo
        inputs:
          who: {type: string, default: you}
        steps:
          - id: a
            kind: shell
            run: echo ${{ inputs.who | uper }}
        """, "unknown-filter", 7, 10, "steps[0].run", "did you mean 'upper'?", "unknown filter 'uper'",
        id="expression-misspelt-filter"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            if: ${{ run.draft is nosuchtest }}
            run: echo hi
        """, "unknown-test", 5, 9, "steps[0].if", "known tests:", "unknown test 'nosuchtest'",
        id="expression-unknown-test"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo hi
            timeout: ${{ inputs.t }}
        """, "unknown-input", 6, 14, "steps[0].timeout", "declare it", "input 't' is not declared",
        id="duration-expression-references-are-checked"),
    pytest.param(
        """
        name: demo
        steps:
          - id: a
            kind: wait
            duration: soon
        """, "schema.duration", 5, 15, "steps[0].duration", "or a ${{ }} expression", "is not a duration",
        id="literal-duration-still-checked"),
    pytest.param(
        """
        name: demo
        triggers:
          - schedule: {cron: "61 * * * *"}
        steps:
          - id: a
            kind: shell
            run: echo hi
        """, "bad-cron", 3, 22, "triggers[0].schedule.cron", "five fields", "'61 * * * *' is not a valid cron",
        id="bad-cron"),
    pytest.param(
        """
        name: demo
        triggers:
          - schedule:
              cron: "0 9 * * 1-5"
              timezone: Europe/Atlantis
        steps:
          - id: a
            kind: shell
            run: echo hi
        """, "bad-timezone", 5, 17, "triggers[0].schedule.timezone", "IANA name",
        "'Europe/Atlantis' is not a known time zone", id="bad-timezone"),
    pytest.param(
        """
        name: demo
        steps:
          - id: review
            kind: approval
            approvers: [alice, bob]
            min_approvals: 3
            timeout: 4h
        """, "quorum-unreachable", 6, 20, "steps[0].min_approvals", "lower min_approvals",
        "min_approvals is 3 but only 2 approver(s)", id="min-approvals-unreachable"),
    pytest.param(
        """
        name: demo
        steps:
          - id: review
            kind: approval
            approvers: [alice]
            timeout: 4h
            rewind_to: draft
          - id: draft
            kind: shell
            run: echo draft
        """, "rewind-forward", 7, 16, "steps[0].rewind_to", "earlier step", "rewind_to 'draft' is after this step",
        id="rewind-to-a-later-step"),
]


def _assert_problem(problem: dict, rule, line, column, path, hint, message) -> None:
    assert problem["rule"] == rule, problem
    assert (problem["line"], problem["column"]) == (line, column), problem
    assert problem["path"] == path, problem
    assert hint in problem["hint"], problem
    assert message in problem["message"], problem


@pytest.mark.parametrize(("source", "rule", "line", "column", "path", "hint", "message"), CASES)
def test_check_file_reports_one_located_error(make_flow, source, rule, line, column, path, hint, message):
    flow_file = make_flow("demo", text(source))
    report = check_file(flow_file)
    problem = only_error(report)
    assert problem.file == str(flow_file)
    assert report.flow is None
    _assert_problem(problem.to_dict(), rule, line, column, path, hint, message)


@pytest.mark.parametrize(("source", "rule", "line", "column", "path", "hint", "message"), CASES)
def test_check_bytes_reports_the_same_error(source, rule, line, column, path, hint, message):
    report = check_bytes(text(source).encode(), "flows/demo.yaml@refs/heads/main", expect_name="demo")
    problem = only_error(report)
    assert problem.file == "flows/demo.yaml@refs/heads/main"
    _assert_problem(problem.to_dict(), rule, line, column, path, hint, message)


@pytest.mark.parametrize(("source", "rule", "line", "column", "path", "hint", "message"), CASES)
def test_cli_validate_json_reports_the_same_error(make_flow, cli, source, rule, line, column, path, hint, message):
    make_flow("demo", text(source))
    code, _, err, doc = cli(["validate", "flows/demo.yaml", "--json"])
    assert code == 1
    assert "Traceback" not in err
    assert doc["ok"] is False
    [flow] = doc["flows"]
    assert flow["ok"] is False and flow["file"] == "flows/demo.yaml"
    [problem] = flow["errors"]
    assert problem["file"] == "flows/demo.yaml"
    _assert_problem(problem, rule, line, column, path, hint, message)


# ---- the examples ----------------------------------------------------------------------------


def test_there_are_examples():
    assert len(EXAMPLES) >= 3


@pytest.mark.parametrize("example", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_example_flow_is_valid(example):
    report = check_file(example)
    assert report.ok, "\n".join(str(p) for p in report.errors)
    assert report.warnings == []
    assert report.flow is not None
    assert report.flow.name == example.stem == report.name
    ids = [step.id for step in report.flow.steps]
    assert ids and len(set(ids)) == len(ids)
    assert report.flow.source == example.read_text()


def test_cli_validate_agrees_with_check_file_on_the_examples(cli):
    code, _, _, doc = cli(["validate", "--json"], cwd=PROJECT_ROOT)
    in_process = {p.name: check_file(p) for p in EXAMPLES}
    by_name = {Path(f["file"]).name: f for f in doc["flows"]}
    assert set(by_name) == set(in_process)
    for name, report in in_process.items():
        assert by_name[name] == report.to_dict()
    assert doc["ok"] is all(r.ok for r in in_process.values())
    assert code == (0 if doc["ok"] else 1)


# ---- files that are not flows at all ---------------------------------------------------------


@pytest.mark.parametrize("content", [b"", b"\n\n", b"# only a comment\n"], ids=["empty", "blank", "comment"])
def test_empty_file_is_refused(make_flow, content):
    problem = only_error(check_file(make_flow("demo", content)))
    assert (problem.rule, problem.line, problem.column) == ("not-a-mapping", 1, 1)
    assert "empty file" in problem.message
    assert "name:" in problem.hint


@pytest.mark.parametrize("content", [b"- id: a\n- id: b\n", b"just some text\n", b"42\n"],
                         ids=["list", "text", "number"])
def test_non_mapping_is_refused(make_flow, content):
    problem = only_error(check_file(make_flow("demo", content)))
    assert (problem.rule, problem.line) == ("not-a-mapping", 1)
    assert "expected a YAML mapping" in problem.message


def test_top_level_list_message_speaks_yaml_not_python(make_flow):
    problem = only_error(check_file(make_flow("demo", b"- id: a\n- id: b\n")))
    assert "CommentedSeq" not in problem.message
    assert "list" in problem.message


def test_binary_file_is_refused(make_flow):
    problem = only_error(check_file(make_flow("demo", bytes(range(256)) * 4)))
    assert (problem.rule, problem.line, problem.column) == ("not-utf8", 1, 1)
    assert "not UTF-8" in problem.message


def test_nul_bytes_are_refused(make_flow):
    problem = only_error(check_file(make_flow("demo", b"name: demo\x00\nsteps: []\n")))
    assert (problem.rule, problem.line) == ("not-yaml", 1)
    assert "NUL" in problem.message


def test_missing_file_is_reported_not_raised(tmp_path):
    problem = only_error(check_file(tmp_path / "flows" / "ghost.yaml"))
    assert problem.rule == "unreadable"
    assert "cannot read file" in problem.message


# ---- size, aliases, nesting ------------------------------------------------------------------


def billion_laughs(levels: int = 9, width: int = 9) -> str:
    """A valid-looking set step whose values expand to width**levels strings."""
    lines = ["name: demo", "steps:", "  - id: a", "    kind: set", "    values:",
             "      l0: &l0 [" + ", ".join(['"lol"'] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"      l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    return "\n".join(lines) + "\n"


def test_alias_bomb_is_refused_through_check_file(make_flow):
    problem = only_error(check_file(make_flow("demo", billion_laughs())))
    assert problem.rule in ("too-many-aliases", "too-large-expanded")
    # located at the alias past the limit, or at line 1 for the expanded document as a whole
    assert (problem.line == 1) if problem.rule == "too-large-expanded" else (1 <= problem.line <= 14)
    assert "alias" in problem.message
    assert "anchors" in problem.hint


def test_alias_bomb_is_refused_through_the_cli(make_flow, cli):
    make_flow("demo", billion_laughs())
    code, _, _, doc = cli(["validate", "--json"])
    assert code == 1
    [problem] = doc["flows"][0]["errors"]
    assert problem["rule"] in ("too-many-aliases", "too-large-expanded")


def test_many_aliases_are_refused_where_the_limit_is_crossed():
    aliases = ", ".join(["*v"] * (MAX_ALIASES + 1))
    source = f"name: demo\nx: &v 1\ny: [{aliases}]\nsteps: []\n"
    problem = only_error(check_bytes(source.encode(), "demo.yaml", expect_name="demo"))
    assert (problem.rule, problem.line) == ("too-many-aliases", 3)
    assert problem.column == len("y: [") + 1 + len("*v, ") * MAX_ALIASES  # the first alias past the limit
    assert "alias bomb" in problem.message


def test_a_few_anchors_are_fine():
    source = text("""
        name: demo
        steps:
          - &base
            id: a
            kind: shell
            run: echo hi
            retry: &retry {attempts: 3, backoff: 1s}
          - <<: *base
            id: b
            retry: *retry
        """)
    report = check_bytes(source.encode(), "demo.yaml", expect_name="demo")
    assert report.ok, [str(p) for p in report.errors]
    assert [s.id for s in report.flow.steps] == ["a", "b"]
    assert report.flow.step("b").retry.attempts == 3
    assert report.flow.step("b").spec["run"] == "echo hi"


def test_fifty_megabyte_file_is_refused_as_too_large(make_flow):
    path = make_flow("demo", b"name: demo\n")
    with path.open("r+b") as handle:
        handle.truncate(50 * 1024 * 1024)
    problem = only_error(check_file(path))
    assert (problem.rule, problem.line, problem.column) == ("file-too-large", 1, 1)
    assert "52,428,800" in problem.message
    assert "split" in problem.hint


def test_fifty_megabyte_file_is_refused_by_the_cli(make_flow, cli):
    make_flow("small", GOOD.format(name="small"))
    path = make_flow("demo", b"name: demo\n")
    with path.open("r+b") as handle:
        handle.truncate(50 * 1024 * 1024)
    code, _, _, doc = cli(["validate", "--json"])
    assert code == 1
    by_name = {Path(f["file"]).name: f for f in doc["flows"]}
    assert by_name["small.yaml"]["ok"] is True
    assert [e["rule"] for e in by_name["demo.yaml"]["errors"]] == ["file-too-large"]


def test_oversized_bytes_are_refused():
    data = b"name: demo\n" + b"#" * MAX_FILE_BYTES
    problem = only_error(check_bytes(data, "demo.yaml", expect_name="demo"))
    assert problem.rule == "file-too-large"


def test_deep_nesting_is_refused_cleanly():
    depth = 300
    source = "name: demo\nsteps: " + "[" * depth + "]" * depth + "\n"
    problem = only_error(check_bytes(source.encode(), "demo.yaml", expect_name="demo"))
    assert (problem.rule, problem.line) == ("too-deep", 1)
    assert "nesting" in problem.message


# ---- schema messages that mislead ------------------------------------------------------------


def test_reserved_step_id_says_it_is_reserved():
    source = text("""
        name: demo
        steps:
          - id: fail
            kind: shell
            run: echo hi
        """)
    problem = only_error(check_bytes(source.encode(), "demo.yaml", expect_name="demo"))
    assert (problem.line, problem.path) == (3, "steps[0].id")
    assert "reserved" in problem.message + problem.hint
    assert "conflicting fields" not in problem.hint


def test_wait_with_duration_and_until_names_both_fields():
    source = text("""
        name: demo
        steps:
          - id: pause
            kind: wait
            duration: 1s
            until: "2030-01-01T00:00:00Z"
        """)
    problem = only_error(check_bytes(source.encode(), "demo.yaml", expect_name="demo"))
    assert (problem.rule, problem.line) == ("schema.not", 3)
    assert "duration" in problem.message and "until" in problem.message


# ---- more meaning checks ---------------------------------------------------------------------


def test_later_step_is_allowed_inside_a_push_back_loop():
    source = text("""
        name: demo
        steps:
          - id: draft
            kind: shell
            run: echo ${{ steps.review.outputs.comment | default('') }}
          - id: review
            kind: approval
            approvers: [alice]
            timeout: 4h
            rewind_to: draft
        """)
    report = check_bytes(source.encode(), "demo.yaml", expect_name="demo")
    assert report.ok, [str(p) for p in report.errors]


def test_every_problem_is_reported_not_just_the_first():
    source = text("""
        name: demo
        inputs:
          who: {type: string}
        steps:
          - id: a
            kind: shell
            run: echo ${{ inputs.whom }} ${{ steps.b.outputs.stdout }}
            on_error: nowhere
          - id: b
            kind: shell
            run: echo b
          - id: b
            kind: shell
            run: echo again
        """)
    report = check_bytes(source.encode(), "demo.yaml", expect_name="demo")
    found = sorted((p.rule, p.line) for p in report.errors)
    assert found == [("duplicate-step-id", 12), ("later-step", 7), ("unknown-input", 7), ("unknown-step", 8)]


def test_flow_level_env_expressions_are_checked():
    source = text("""
        name: demo
        env:
          TARGET: ${{ inputs.target }}
        steps:
          - id: a
            kind: shell
            run: echo "$TARGET"
        """)
    problem = only_error(check_bytes(source.encode(), "demo.yaml", expect_name="demo"))
    assert (problem.rule, problem.line, problem.path) == ("unknown-input", 3, "env.TARGET")
    assert "declare it" in problem.hint


def test_a_valid_flow_becomes_a_flow(make_flow):
    path = make_flow("demo", {
        "name": "demo",
        "inputs": {"who": {"type": "string", "default": "world"}},
        "steps": [
            {"id": "greet", "kind": "set", "values": {"text": "hi ${{ inputs.who }}"}},
            {"id": "say", "kind": "shell", "run": "echo ${{ steps.greet.outputs.text }}", "timeout": "30s",
             "retry": {"attempts": 2, "backoff": "1s"}},
        ],
    })
    report = check_file(path)
    assert report.ok, [str(p) for p in report.errors]
    flow = report.flow
    assert flow.name == "demo" and flow.file == str(path)
    assert [(s.id, s.kind, s.index) for s in flow.steps] == [("greet", "set", 0), ("say", "shell", 1)]
    assert flow.step("say").timeout == 30 and flow.step("say").retry.attempts == 2
    assert flow.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


def test_schema_errors_do_not_hide_the_meaning_checks_of_the_rest_of_the_file():
    source = text("""
        name: demo
        steps:
          - id: a
            kind: shell
            run: echo hi
            timeout: soon
            on_error: nowhere
          - id: b
            kind: shel
            run: echo b
          - id: c
            kind: shell
            run: echo ${{ inputs.missing | nosuchfilter }}
        """)
    report = check_bytes(source.encode(), "demo.yaml", expect_name="demo")
    found = sorted((p.rule, p.line, p.path) for p in report.errors)
    assert found == [("schema.duration", 6, "steps[0].timeout"), ("schema.enum", 9, "steps[1].kind"),
                     ("unknown-filter", 13, "steps[2].run"), ("unknown-input", 13, "steps[2].run"),
                     ("unknown-step", 7, "steps[0].on_error")], [str(p) for p in report.errors]
    assert report.flow is None


def test_a_meaning_check_the_schema_already_reports_is_not_said_twice():
    source = text("""
        name: demo
        steps:
          - id: review
            kind: approval
            approvers: [alice]
        """)
    [problem] = check_bytes(source.encode(), "demo.yaml", expect_name="demo").errors
    assert problem.rule == "schema.required"  # not also missing-timeout at the same place


@pytest.mark.parametrize("value", ["${{ inputs.t }}", "${{ inputs.minutes }}m", "45s"])
def test_durations_may_be_expressions_checked_when_the_step_starts(value):
    source = text(f"""
        name: demo
        inputs:
          t: {{type: string, default: 5m}}
          minutes: {{type: integer, default: 5}}
        steps:
          - id: nap
            kind: wait
            duration: "{value}"
            timeout: "{value}"
          - id: review
            kind: approval
            approvers: [alice]
            timeout: "{value}"
            remind_before: "{value}"
        """)
    report = check_bytes(source.encode(), "demo.yaml", expect_name="demo")
    assert report.ok, [str(p) for p in report.errors]


def test_steps_after_an_end_step_that_nothing_jumps_to_are_unreachable():
    source = text("""
        name: demo
        steps:
          - id: review
            kind: approval
            approvers: [alice]
            timeout: 1h
            on_reject: note
          - id: done
            kind: end
            status: succeeded
          - id: forgotten
            kind: shell
            run: echo never
          - id: note
            kind: shell
            run: echo rejected
          - id: stop
            kind: end
            status: rejected
            message: "rejected: ${{ steps.review.outputs.comment }}"
          - id: also-forgotten
            kind: set
            values: {x: 1}
        """)
    report = check_bytes(source.encode(), "demo.yaml", expect_name="demo")
    assert report.ok, [str(p) for p in report.errors]
    assert [(p.rule, p.line, p.path, p.severity) for p in report.warnings] == [
        ("unreachable-step", 11, "steps[2]", "warning"), ("unreachable-step", 21, "steps[5]", "warning")]
    assert "no jump leads to it" in report.warnings[0].message
    assert report.flow is not None


def test_an_end_step_with_an_if_leaves_the_next_step_reachable():
    source = text("""
        name: demo
        steps:
          - id: stop
            kind: end
            if: ${{ run.draft }}
            status: cancelled
          - id: go-on
            kind: shell
            run: echo live
        """)
    report = check_bytes(source.encode(), "demo.yaml", expect_name="demo")
    assert report.ok and not report.warnings, [str(p) for p in report.errors + report.warnings]


def test_an_end_step_needs_a_known_status():
    source = text("""
        name: demo
        steps:
          - id: stop
            kind: end
            status: timed_out
        """)
    problem = only_error(check_bytes(source.encode(), "demo.yaml", expect_name="demo"))
    assert (problem.rule, problem.path) == ("schema.enum", "steps[0].status")
    assert "succeeded, failed, rejected, cancelled" in problem.hint


# ---- the CLI: exit codes, JSON shape, human output -------------------------------------------


def test_validate_exits_0_when_all_flows_are_valid(make_flow, cli):
    make_flow("one", GOOD.format(name="one"))
    make_flow("two", GOOD.format(name="two"))
    code, out, _, _ = cli(["validate"])
    assert code == 0
    assert "2 flows checked: all valid" in out


def test_validate_json_shape_and_exit_1_when_any_flow_is_invalid(make_flow, cli):
    make_flow("good", GOOD.format(name="good"))
    make_flow("bad", GOOD.format(name="bad").replace("kind: shell", "kind: shel"))
    code, _, _, doc = cli(["validate", "--json"])
    assert code == 1
    assert set(doc) == {"ok", "flows"} and doc["ok"] is False
    for flow in doc["flows"]:
        assert set(flow) == {"file", "name", "ok", "errors", "warnings"}
        assert isinstance(flow["warnings"], list)
    by_name = {f["name"]: f for f in doc["flows"]}
    assert set(by_name) == {"good", "bad"}
    assert by_name["good"]["ok"] is True and by_name["good"]["errors"] == []
    assert by_name["bad"]["ok"] is False
    [problem] = by_name["bad"]["errors"]
    assert set(problem) == PROBLEM_KEYS
    assert isinstance(problem["line"], int) and isinstance(problem["column"], int)
    assert problem["file"] == by_name["bad"]["file"]
    assert Path(problem["file"]).name == "bad.yaml"
    assert (problem["rule"], problem["line"], problem["path"]) == ("schema.enum", 4, "steps[0].kind")


def test_validate_json_for_an_unparsable_file_has_no_name(make_flow, cli):
    make_flow("demo", "name: demo\nsteps: [\n")
    code, _, _, doc = cli(["validate", "--json"])
    assert code == 1
    [flow] = doc["flows"]
    assert flow["name"] is None and flow["ok"] is False
    assert flow["errors"][0]["rule"] == "yaml-syntax"


def test_validate_human_output_is_located_with_a_hint(make_flow, cli):
    make_flow("demo", GOOD.format(name="demo").replace("kind: shell", "kind: shel"))
    code, out, _, doc = cli(["validate", "flows/demo.yaml"])
    assert code == 1 and doc is None
    assert "flows/demo.yaml:4:11: error:" in out
    assert "[schema.enum] at steps[0].kind" in out
    assert "hint: did you mean 'shell'?" in out
    assert "1 flow checked: 1 invalid" in out


def test_validate_accepts_a_directory_and_several_paths(make_flow, cli, tmp_path):
    make_flow("one", GOOD.format(name="one"))
    other = make_flow("two", GOOD.format(name="two"), root=tmp_path / "elsewhere")
    code, _, _, doc = cli(["validate", "flows", str(other), "--json"])
    assert code == 0
    assert sorted(f["name"] for f in doc["flows"]) == ["one", "two"]


def test_validate_missing_path_fails_with_a_json_error(cli):
    code, _, err, doc = cli(["validate", "flows/ghost.yaml", "--json"])
    assert code == 1
    assert doc["error"]["code"] == "not_found"
    assert "ghost.yaml" in doc["error"]["message"]
    assert "ghost.yaml" in err


def test_validate_usage_error_exits_2(cli):
    code, _, err, _ = cli(["validate", "--no-such-option"])
    assert code == 2
    assert "Traceback" not in err
    assert "no-such-option" in err


# ---- validate --ref: the committed content, from git -----------------------------------------


def test_validate_ref_reads_the_committed_flow_not_the_working_tree(repo, git, make_flow, cli):
    make_flow("hello", GOOD.format(name="hello"))
    git("add", "-A")
    git("commit", "-q", "-m", "a good flow")
    git("checkout", "-q", "-b", "draft")
    make_flow("hello", GOOD.format(name="hello").replace("kind: shell", "kind: shel"))
    git("commit", "-q", "-am", "break it on a branch")
    git("checkout", "-q", "main")

    code, _, _, doc = cli(["validate", "--ref", "draft", "--json"])
    assert code == 1 and doc["ok"] is False
    [flow] = doc["flows"]
    assert flow["file"] == "flows/hello.yaml@refs/heads/draft"
    [problem] = flow["errors"]
    assert (problem["rule"], problem["line"]) == ("schema.enum", 4)
    assert "did you mean 'shell'" in problem["hint"]

    code, _, _, doc = cli(["validate", "--ref", "main", "--json"])
    assert code == 0 and doc["ok"] is True
    assert [f["file"] for f in doc["flows"]] == ["flows/hello.yaml@refs/heads/main"]

    # an uncommitted break in the working tree does not change what main holds
    make_flow("hello", "name: hello\nsteps: [\n")
    assert cli(["validate", "--ref", "main", "--json"]).json["ok"] is True
    assert cli(["validate", "--json"]).code == 1


def test_validate_ref_sees_flows_that_exist_only_on_the_branch(repo, git, make_flow, cli):
    make_flow("hello", GOOD.format(name="hello"))
    git("add", "-A")
    git("commit", "-q", "-m", "one flow")
    git("checkout", "-q", "-b", "feature")
    make_flow("extra", GOOD.format(name="wrong-name"))
    git("add", "-A")
    git("commit", "-q", "-m", "a second, misnamed flow")
    git("checkout", "-q", "main")
    assert not (repo / "flows" / "extra.yaml").exists()

    code, _, _, doc = cli(["validate", "--ref", "feature", "--json"])
    assert code == 1
    by_file = {f["file"]: f for f in doc["flows"]}
    assert set(by_file) == {"flows/hello.yaml@refs/heads/feature", "flows/extra.yaml@refs/heads/feature"}
    [problem] = by_file["flows/extra.yaml@refs/heads/feature"]["errors"]
    assert (problem["rule"], problem["line"]) == ("name-mismatch", 1)


def test_validate_unknown_ref_is_an_error(repo, git, make_flow, cli):
    make_flow("hello", GOOD.format(name="hello"))
    git("add", "-A")
    git("commit", "-q", "-m", "one flow")
    code, _, _, doc = cli(["validate", "--ref", "no-such-branch", "--json"])
    assert code == 1
    assert doc["error"]["code"] == "not_found"
    assert "no-such-branch" in doc["error"]["message"]
