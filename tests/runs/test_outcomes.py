"""What a decision means for the run (DESIGN §9 "Outcomes of a wait"; issue 10 items 3, 4 and 6).

An in-process Engine over a real file Store, with a fake clock: a rejection or
timeout that `on_reject` / `on_timeout` routes to a handler path ends the run
`rejected` / `timed_out` when that path completes; an `end` step states the
outcome instead; the routing is in the record (a fold of events), so it
survives a restart; a new approval clears it. Durations may be expressions,
rendered and checked when the step starts.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from runner.runs import events as record
from runner.auth import User, Users
from runner.runs.engine import Engine
from runner.timeutil import parse_rfc3339

from support import FakeClock, Harness, run_schema_errors

BOB = User("bob", frozenset({"run", "approve"}), frozenset({"ops"}))


def reviewing(tmp_path, *, clock: FakeClock | None = None) -> Harness:
    """A Harness whose engine takes decisions (as under the daemon), with bob in group ops."""
    harness = Harness(tmp_path, clock=clock or FakeClock())
    harness.engine.accepts_messages = True
    harness.engine.users = Users(groups={"ops": {"bob"}})
    return harness


def parked(harness: Harness, text: str, inputs: dict | None = None) -> str:
    run_id = harness.start(harness.flow(text), inputs)
    asyncio.run(harness.engine.advance(run_id, hold=False))
    return run_id


def decide(harness: Harness, run_id: str, decision: str, step: str = "review", comment: str | None = None) -> None:
    harness.engine.deliver(run_id, step, {"user": BOB, "decision": decision, "comment": comment})


def resume(harness: Harness, run_id: str, *, hold: bool = True) -> dict:
    return asyncio.run(harness.engine.advance(run_id, hold=hold))


def events(harness: Harness, run_id: str, kind: str) -> list[dict]:
    return [e for e in harness.history(run_id) if e["type"] == kind]


def assert_sound(harness: Harness, run_id: str) -> None:
    verified = harness.store.verify(run_id)
    assert verified.ok, verified.problems
    assert not run_schema_errors(harness.snapshot(run_id))


REJECT_AND_NOTE = """\
name: note-and-stop
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    on_timeout: {on_timeout}
    on_reject: note
  - id: apply
    kind: set
    values: {{applied: true}}
  - id: note
    kind: set
    if: ${{{{ steps.review.status != 'succeeded' }}}}
    values: {{noted: "${{{{ steps.review.outputs.comment | default('no answer') }}}}"}}
"""


# ---- a rejection or a timeout routed to a handler ends the run so ----------------------------


def test_a_reject_routed_to_a_handler_ends_the_run_rejected_once_the_handler_is_done(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, REJECT_AND_NOTE.format(on_timeout="reject"))
    decide(harness, run_id, "reject", comment="too risky")
    final = resume(harness, run_id)
    assert final["status"] == "rejected", final["error"]
    assert final["steps"]["note"]["status"] == "succeeded"
    assert final["steps"]["note"]["outputs"] == {"noted": "too risky"}
    assert final["steps"]["apply"]["status"] == "skipped"
    assert "review" in final["error"] and "bob" in final["error"] and "too risky" in final["error"]
    [jump] = events(harness, run_id, "jump")
    assert jump["outcome"] == "rejected" and jump["to"] == "note"
    assert final["routed"]["outcome"] == "rejected" and final["routed"]["step"] == "review"
    assert harness.store.list_runs(status="rejected")[0]["id"] == run_id
    assert_sound(harness, run_id)


def test_a_timeout_routed_to_a_handler_ends_the_run_timed_out(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, REJECT_AND_NOTE.format(on_timeout="note"))
    final = resume(harness, run_id)  # the fake clock lets the hour pass
    assert final["steps"]["review"]["status"] == "timed_out"
    assert final["steps"]["note"]["outputs"] == {"noted": "no answer"}
    assert final["status"] == "timed_out", final["error"]
    assert "timed out" in final["error"] and "no decision within 1h" in final["error"]
    assert events(harness, run_id, "jump")[0]["outcome"] == "timed_out"
    assert_sound(harness, run_id)


def test_on_timeout_reject_then_on_reject_ends_the_run_rejected(tmp_path):
    harness = reviewing(tmp_path)
    final = resume(harness, parked(harness, REJECT_AND_NOTE.format(on_timeout="reject")))
    assert final["steps"]["review"]["status"] == "timed_out"
    assert final["steps"]["note"]["status"] == "succeeded"
    assert final["status"] == "rejected"


def test_an_approved_run_passes_over_nothing_and_succeeds(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, REJECT_AND_NOTE.format(on_timeout="reject"))
    decide(harness, run_id, "approve")
    final = resume(harness, run_id)
    assert final["status"] == "succeeded" and final["error"] is None
    assert final["steps"]["note"]["status"] == "skipped"
    assert final["routed"] is None


def test_a_failing_handler_still_fails_the_run(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, """\
name: handler-fails
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    on_reject: note
  - id: note
    kind: shell
    run: exit 3
""")
    decide(harness, run_id, "reject")
    final = resume(harness, run_id)
    assert final["status"] == "failed"
    assert "note" in final["error"]


def test_the_routing_survives_a_restart_because_it_is_in_the_events(tmp_path):
    text = """\
name: note-later
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    on_reject: cool-off
  - id: apply
    kind: set
    values: {applied: true}
  - id: cool-off
    kind: wait
    duration: 10m
  - id: note
    kind: set
    values: {noted: true}
"""
    harness = reviewing(tmp_path)
    run_id = parked(harness, text)
    decide(harness, run_id, "reject")
    parked_again = resume(harness, run_id, hold=False)
    assert parked_again["status"] == "waiting" and parked_again["current_step"] == "cool-off"
    (harness.run_dir(run_id) / "run.json").unlink()  # as if the snapshot was lost: the record is the fold
    assert record.fold(harness.history(run_id))["routed"]["outcome"] == "rejected"

    later = Engine(harness.store, work_dir=tmp_path / "work", clock=FakeClock(harness.clock.now()))
    final = asyncio.run(later.advance(run_id))
    assert final["steps"]["note"]["status"] == "succeeded"
    assert final["status"] == "rejected"
    assert_sound(harness, run_id)


def test_an_escalation_approval_clears_the_routing_and_decides_the_outcome(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, """\
name: escalate
steps:
  - id: review
    kind: approval
    approvers: [someone-else]
    timeout: 1h
    on_timeout: escalate
  - id: escalate
    kind: approval
    if: ${{ steps.review.status == 'timed_out' }}
    approvers: [group:ops]
    timeout: 1h
    on_timeout: fail
  - id: apply
    kind: set
    values: {applied: true}
""")
    harness.clock.offset += timedelta(hours=2)  # bob's hour passes with no answer
    waiting = resume(harness, run_id, hold=False)
    assert waiting["current_step"] == "escalate" and waiting["status"] == "waiting"
    assert waiting["routed"] is None
    [cleared] = events(harness, run_id, "routing_cleared")
    assert cleared["step"] == "escalate"
    decide(harness, run_id, "approve", step="escalate")
    final = resume(harness, run_id)
    assert final["status"] == "succeeded", final["error"]
    assert_sound(harness, run_id)


def test_request_changes_after_a_routed_path_clears_it(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, """\
name: routed-then-rewound
steps:
  - id: draft
    kind: set
    values: {text: draft}
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    on_reject: second-look
  - id: publish
    kind: end
    status: succeeded
  - id: second-look
    kind: approval
    approvers: [group:ops]
    rewind_to: draft
    timeout: 1h
""")
    decide(harness, run_id, "reject")
    assert resume(harness, run_id, hold=False)["current_step"] == "second-look"
    decide(harness, run_id, "request_changes", step="second-look", comment="try again")
    assert resume(harness, run_id, hold=False)["current_step"] == "review"
    decide(harness, run_id, "approve")
    final = resume(harness, run_id)
    assert final["status"] == "succeeded", final["error"]
    assert final["routed"] is None


# ---- the end step -------------------------------------------------------------------------------


def test_an_end_step_states_the_outcome_over_a_routed_one(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, """\
name: reject-is-fine
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    on_reject: handled
  - id: apply
    kind: set
    values: {applied: true}
  - id: handled
    kind: end
    status: succeeded
""")
    decide(harness, run_id, "reject")
    final = resume(harness, run_id)
    assert final["status"] == "succeeded" and final["error"] is None
    assert final["steps"]["handled"]["status"] == "succeeded"
    assert_sound(harness, run_id)


@pytest.mark.parametrize("status", ["failed", "rejected", "cancelled", "succeeded"])
def test_an_end_step_ends_the_run_with_its_status_and_message(tmp_path, status):
    harness = Harness(tmp_path)
    final = harness.run(f"""\
name: stop-here
inputs:
  why: {{type: string, default: out of budget}}
steps:
  - id: check
    kind: set
    values: {{ok: false}}
  - id: stop
    kind: end
    if: ${{{{ not steps.check.outputs.ok }}}}
    status: {status}
    message: "stopped: ${{{{ inputs.why }}}}"
  - id: after
    kind: shell
    run: touch after.ran
""")
    assert final["status"] == status
    assert final["error"] == (None if status == "succeeded" else "stopped: out of budget")
    assert final["steps"]["stop"]["outputs"] == {"status": status, "message": "stopped: out of budget"}
    assert final["steps"]["after"]["status"] == "pending"
    assert not (tmp_path / "work" / "after.ran").exists()
    assert_sound(harness, final["id"])


def test_an_end_step_whose_if_is_false_lets_the_run_go_on(tmp_path):
    final = Harness(tmp_path).run("""\
name: maybe-stop
steps:
  - id: stop
    kind: end
    if: false
    status: failed
  - id: after
    kind: set
    values: {x: 1}
""")
    assert final["status"] == "succeeded"
    assert final["steps"]["stop"]["status"] == "skipped"


# ---- durations from expressions -------------------------------------------------------------


def test_a_wait_duration_from_an_expression_is_rendered_when_the_step_starts(tmp_path):
    harness = Harness(tmp_path)
    final = harness.run("""\
name: nap
inputs:
  minutes: {type: integer, default: 7}
steps:
  - id: nap
    kind: wait
    duration: ${{ inputs.minutes }}m
""")
    assert final["status"] == "succeeded", final["error"]
    assert harness.clock.slept == [420.0]


def test_a_step_timeout_from_an_expression_bounds_the_step(tmp_path):
    final = Harness(tmp_path).run("""\
name: bounded
inputs:
  t: {type: string, default: 200ms}
steps:
  - id: slow
    kind: shell
    run: exec sleep 30
    timeout: ${{ inputs.t }}
""")
    assert final["steps"]["slow"]["status"] == "timed_out"
    assert "200ms" in final["steps"]["slow"]["error"]


def test_an_approval_timeout_and_reminder_from_expressions_set_the_deadline(tmp_path):
    harness = reviewing(tmp_path)
    run_id = parked(harness, """\
name: timed-review
inputs:
  t: {type: string, default: 2h}
  early: {type: string, default: 30m}
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: ${{ inputs.t }}
    remind_before: ${{ inputs.early }}
""")
    state = harness.store.read_run(run_id)["steps"]["review"]
    started = parse_rfc3339(state["started_at"])
    assert parse_rfc3339(state["deadline"]) - started == timedelta(hours=2)
    assert parse_rfc3339(state["remind_at"]) - started == timedelta(hours=1, minutes=30)
    final = resume(harness, run_id)
    assert final["steps"]["review"]["error"] == "no decision within 2h"
    assert_sound(harness, run_id)


@pytest.mark.parametrize(("field", "step"), [
    ("timeout", "  - id: s\n    kind: shell\n    run: 'true'\n    timeout: ${{ inputs.t }}\n"),
    ("duration", "  - id: s\n    kind: wait\n    duration: ${{ inputs.t }}\n"),
    ("timeout", "  - id: s\n    kind: approval\n    approvers: [group:ops]\n    timeout: ${{ inputs.t }}\n"),
    ("remind_before", "  - id: s\n    kind: approval\n    approvers: [group:ops]\n    timeout: 1h\n"
                      "    remind_before: ${{ inputs.t }}\n"),
    ("timeout", "  - id: s\n    kind: callback\n    timeout: ${{ inputs.t }}\n"),
])
def test_a_rendered_value_that_is_not_a_duration_fails_the_step_naming_field_and_value(tmp_path, field, step):
    harness = reviewing(tmp_path)
    text = "name: bad-duration\ninputs:\n  t: {type: string, default: soon}\nsteps:\n" + step
    final = resume(harness, harness.start(harness.flow(text)))
    assert final["status"] == "failed"
    assert final["steps"]["s"]["status"] == "failed"
    error = final["steps"]["s"]["error"]
    assert error.startswith(f"{field}: 'soon'") and "not a duration" in error, error
    assert "${{ inputs.t }}" in error
    assert final["steps"]["s"]["attempts"] == 1
