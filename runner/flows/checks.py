"""The meaning of a flow, checked beside its schema: what the schema cannot say.

Each check yields located Problems with a rule name and a fix hint: step ids
and jumps, expressions (syntax, unknown names, filters and tests, steps not yet
run), deadlines, approver quorums, steps an `end` makes unreachable, cron and
time zones, and (given a config) connections, channels and secrets.

The checks also run on a document the schema refused, so that one pass reports
both: they read only what is still readable (a step needs a string `id` and
`kind`; a field of the wrong type is skipped, the schema already names it).
"""

from __future__ import annotations

import difflib
from typing import Any, Iterator
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from runner.errors import ExpressionError
from runner.flows.expressions import FUNCTIONS, ROOT_NAMES, has_expression, iter_expressions, make_environment, references
from runner.timeutil import parse_duration, parse_rfc3339
from runner.schemas import load_schema
from runner.yamldoc import Document, Problem

JUMP_FIELDS = {"on_error": ("fail", "continue"), "on_timeout": ("reject", "fail"), "on_reject": (),
               "rewind_to": (), "callback": ()}


def _waiting_kinds() -> tuple[str, ...]:
    """The kinds that wait for people or systems: those the flow schema requires a `timeout` of.

    Read from the schema, the one place below steps/ that knows every kind, so this is no second
    list to keep in step with the kinds (each kind's `waits` says the same; a test checks they agree).
    """
    defs = load_schema("flow")["$defs"]
    return tuple(kind for kind in defs["step"]["properties"]["kind"]["enum"]
                 if "timeout" in defs.get(kind, {}).get("required", ()))


WAITING_KINDS = _waiting_kinds()
DURATION_FIELDS = ("timeout", "remind_before", "duration")
Steps = list[tuple[int, dict]]  # (position in the file, step) for every readable step


def _readable_steps(data: dict) -> Steps:
    steps = data.get("steps")
    if not isinstance(steps, list):
        return []
    return [(i, step) for i, step in enumerate(steps)
            if isinstance(step, dict) and isinstance(step.get("id"), str) and isinstance(step.get("kind"), str)]


def semantic_problems(doc: Document, *, expect_name: str | None, config: Any = None) -> Iterator[Problem]:
    data = doc.plain
    if not isinstance(data, dict):
        return
    steps = _readable_steps(data)
    if expect_name is not None and isinstance(data.get("name"), str) and data["name"] != expect_name:
        yield doc.problem(("name",), "name-mismatch",
                          f"flow name '{data['name']}' does not match its file name '{expect_name}'",
                          f"rename the flow to `name: {expect_name}` or the file to {data['name']}.yaml")
    index: dict[str, int] = {}
    for i, step in steps:
        if step["id"] in index:
            yield doc.problem(("steps", i, "id"), "duplicate-step-id",
                              f"step id '{step['id']}' is already used by steps[{index[step['id']]}]",
                              "step ids must be unique within a flow")
        else:
            index[step["id"]] = i
    yield from _jumps(doc, steps, index)
    yield from _expressions(doc, data, steps, index)
    yield from _deadlines(doc, steps)
    yield from _unreachable(doc, steps)
    if config is not None and not getattr(config, "declared", True):
        config = None  # no config file: names of connections and channels cannot be checked
    yield from _triggers(doc, data, config)
    if config is not None:
        yield from _references_to_config(doc, steps, config)


def _unknown_step(doc: Document, path: tuple, target: str, index: dict[str, int]) -> Problem:
    close = difflib.get_close_matches(target, list(index), n=1)
    hint = f"did you mean '{close[0]}'?" if close else f"step ids: {', '.join(index)}"
    return doc.problem(path, "unknown-step", f"'{target}' is not a step id of this flow", hint)


def _jumps(doc: Document, steps: Steps, index: dict[str, int]) -> Iterator[Problem]:
    for i, step in steps:
        for field, keywords in JUMP_FIELDS.items():
            target = step.get(field)
            if not isinstance(target, str) or target in keywords:
                continue
            if target not in index:
                yield _unknown_step(doc, ("steps", i, field), target, index)
            elif field == "rewind_to" and index[target] > i:
                yield doc.problem(("steps", i, field), "rewind-forward",
                                  f"rewind_to '{target}' is after this step; it must name an earlier step",
                                  "push-back reruns the flow from an earlier step, such as the one that drafts")
            elif target == step["id"] and field != "rewind_to":
                yield doc.problem(("steps", i, field), "jump-to-self",
                                  f"{field} jumps to the step itself, which would loop",
                                  "use `retry:` to try a step again")


def _rewind_reach(steps: Steps, index: dict[str, int]) -> dict[int, int]:
    """For each step i, the latest step that can rewind to i or before (push-back loops)."""
    reach: dict[int, int] = {}
    for j, step in steps:
        target = step.get("rewind_to")
        if isinstance(target, str) and target in index:
            for i in range(index[target], j + 1):
                reach[i] = max(reach.get(i, -1), j)
    return reach


def _expressions(doc: Document, data: dict, steps: Steps, index: dict[str, int]) -> Iterator[Problem]:
    env = make_environment()
    inputs = data.get("inputs")
    declared_inputs = set(inputs.keys()) if isinstance(inputs, dict) else set()
    callbacks = {s["id"] for _, s in steps if s["kind"] == "callback"}
    reach = _rewind_reach(steps, index)
    sources: list[tuple[tuple, str, int | None]] = []
    for path, expr in iter_expressions(data.get("env") or {}, ("env",)):
        sources.append((path, expr, None))
    for i, step in steps:
        for path, expr in iter_expressions(step, ("steps", i)):
            sources.append((path, expr, i))
    for path, expr, position in sources:
        try:
            refs = references(env, expr)
        except ExpressionError as exc:
            yield doc.problem(path, "expression-syntax", exc.message, "expressions are jinja2 syntax inside ${{ }}")
            continue
        yield from _unknown_names(doc, path, expr, "filter", refs.filters, env.filters)
        yield from _unknown_names(doc, path, expr, "test", refs.tests, env.tests)
        for root in sorted(refs.roots - ROOT_NAMES - FUNCTIONS):
            yield doc.problem(path, "unknown-name", f"${{{{ {expr.strip()} }}}} uses unknown name '{root}'",
                              "expressions can read inputs, steps, run and callbacks")
        for name in sorted(refs.inputs - declared_inputs):
            close = difflib.get_close_matches(name, declared_inputs, n=1)
            yield doc.problem(path, "unknown-input", f"input '{name}' is not declared under `inputs:`",
                              f"did you mean '{close[0]}'?" if close else f"declare it: inputs: {{{name}: {{type: string}}}}")
        for step_id in sorted(refs.steps):
            if step_id not in index:
                yield _unknown_step(doc, path, step_id, index)
            elif position is not None and index[step_id] >= position and reach.get(position, -1) < index[step_id]:
                when = "itself" if index[step_id] == position else "a later step"
                yield doc.problem(path, "later-step", f"${{{{ {expr.strip()} }}}} reads step '{step_id}', which is "
                                  f"{when} and has not run when this is evaluated",
                                  "move the step, or read it from a step that runs after it")
        for callback in sorted(refs.callbacks - callbacks):
            yield doc.problem(path, "unknown-callback", f"'{callback}' is not a callback step of this flow",
                              f"callback steps: {', '.join(sorted(callbacks)) or 'none'}")


def _unknown_names(doc: Document, path: tuple, expr: str, what: str, used: set[str],
                   known: Any) -> Iterator[Problem]:
    """A filter (`x | name`) or test (`x is name`) the sandbox does not have fails every run: say so now."""
    for name in sorted(used - set(known)):
        close = difflib.get_close_matches(name, list(known), n=1)
        yield doc.problem(path, f"unknown-{what}", f"${{{{ {expr.strip()} }}}} uses unknown {what} '{name}'",
                          (f"did you mean '{close[0]}'? " if close else "")
                          + f"known {what}s: {', '.join(sorted(n for n in known if n.isidentifier()))}")


def _literal_seconds(value: Any) -> float | None:
    """Seconds of a literal duration; None for an expression (checked when the step starts) or a non-duration."""
    if not isinstance(value, str) or has_expression(value):
        return None
    try:
        return parse_duration(value)
    except ValueError:
        return None  # the schema names it


def _deadlines(doc: Document, steps: Steps) -> Iterator[Problem]:
    for i, step in steps:
        kind = step["kind"]
        if kind in WAITING_KINDS and not step.get("timeout"):
            yield doc.problem(("steps", i), "missing-timeout",
                              f"{kind} step '{step['id']}' has no timeout; every wait needs a deadline",
                              "add e.g. `timeout: 4h` and `on_timeout: reject`")
        for field in DURATION_FIELDS:
            seconds = _literal_seconds(step.get(field))
            if seconds is not None and seconds <= 0:
                yield doc.problem(("steps", i, field), "zero-duration", f"{field} must be longer than 0",
                                  "write e.g. 30s")
        if kind == "wait" and isinstance(step.get("until"), str) and "${{" not in step["until"]:
            try:
                parse_rfc3339(step["until"])
            except ValueError as exc:
                yield doc.problem(("steps", i, "until"), "bad-time", str(exc),
                                  "write an RFC 3339 time such as 2026-11-24T19:00:00Z, or an expression")
        if kind == "approval":
            approvers = step.get("approvers") if isinstance(step.get("approvers"), list) else []
            people = {str(a) for a in approvers if not str(a).startswith("group:")}
            quorum = step.get("min_approvals", 1)
            if isinstance(quorum, int) and quorum > len(people) and len(people) == len(approvers):
                yield doc.problem(("steps", i, "min_approvals"), "quorum-unreachable",
                                  f"min_approvals is {quorum} but only {len(people)} approver(s) are listed",
                                  "list more approvers, add a group:, or lower min_approvals")


def _unreachable(doc: Document, steps: Steps) -> Iterator[Problem]:
    """Steps after an `end` (with no `if`) run only if a jump leads to them; a warning for those none does."""
    targets = {step.get(field) for _, step in steps for field in JUMP_FIELDS if isinstance(step.get(field), str)}
    falls_through = True  # the step before lets the run go on to the next one
    for i, step in steps:
        reachable = falls_through or step["id"] in targets
        if not reachable:
            yield doc.problem(("steps", i), "unreachable-step",
                              f"step '{step['id']}' comes after an end step and no jump leads to it, so it never runs",
                              "jump to it (on_error, on_reject, on_timeout), give the end step an `if:`, or remove it",
                              severity="warning")
        if step["kind"] == "end" and step.get("if", True) is True:
            falls_through = False
        elif reachable:
            falls_through = True


def _triggers(doc: Document, data: dict, config: Any) -> Iterator[Problem]:
    triggers = data.get("triggers")
    for i, trigger in enumerate(triggers if isinstance(triggers, list) else []):
        schedule = trigger.get("schedule") if isinstance(trigger, dict) else None
        if isinstance(schedule, dict):
            if not croniter.is_valid(str(schedule.get("cron", ""))):
                yield doc.problem(("triggers", i, "schedule", "cron"), "bad-cron",
                                  f"'{schedule.get('cron')}' is not a valid cron expression",
                                  "five fields: minute hour day-of-month month day-of-week, e.g. '0 9 * * 1-5'")
            zone = schedule.get("timezone")
            if isinstance(zone, str) and zone:
                try:
                    ZoneInfo(zone)
                except (ZoneInfoNotFoundError, ValueError):
                    yield doc.problem(("triggers", i, "schedule", "timezone"), "bad-timezone",
                                      f"'{zone}' is not a known time zone", "use an IANA name such as Europe/Oslo")
        webhook = trigger.get("webhook") if isinstance(trigger, dict) else None
        if (isinstance(webhook, dict) and config is not None and isinstance(webhook.get("secret"), str)
                and webhook["secret"] not in config.secrets):
            yield doc.problem(("triggers", i, "webhook", "secret"), "unknown-secret",
                              f"secret '{webhook.get('secret')}' is not defined in the config",
                              "add it under `secrets:` in signoff.yaml")


def _references_to_config(doc: Document, steps: Steps, config: Any) -> Iterator[Problem]:
    for i, step in steps:
        connection = step.get("connection")
        if isinstance(connection, str) and "${{" not in connection and connection not in config.connections:
            close = difflib.get_close_matches(connection, list(config.connections), n=1)
            yield doc.problem(("steps", i, "connection"), "unknown-connection",
                              f"connection '{connection}' is not defined in the config",
                              f"did you mean '{close[0]}'?" if close else "add it under `connections:` in signoff.yaml")
        notify = step.get("notify") if isinstance(step.get("notify"), list) else []
        channels = ([step["channel"]] if isinstance(step.get("channel"), str) else []) + notify
        for channel in filter(lambda name: isinstance(name, str), channels):
            if channel not in config.channels:
                yield doc.problem(("steps", i), "unknown-channel", f"channel '{channel}' is not defined in the config",
                                  "add it under `channels:` in signoff.yaml")
