"""Approval steps (DESIGN §2, §9; issue 3 item 4), decided through the real daemon's API and the real CLI.

Users (tests/daemon_support.py): alice, bob and carol may approve and are in
group ops; bob and carol are editors; carol is finance; dave is in ops but has
no approve role. Most runs are started by alice, so she is the starter who may
not approve them.
"""

from __future__ import annotations

import asyncio
import hashlib
import json

import httpx
import pytest

from daemon_support import DaemonProcess, event_types
from support import wait_until

pytestmark = pytest.mark.usefixtures("running")  # a daemon left down by a failed test is started again


FLOWS_HERE = {
    "by-user": """
        name: by-user
        steps:
          - id: review
            kind: approval
            approvers: [bob]
            context: ship it?
            timeout: 1h
            on_timeout: reject
          - id: after
            kind: set
            values: {by: "${{ steps.review.outputs.decided_by }}"}
        """,
    "by-group": """
        name: by-group
        steps:
          - id: review
            kind: approval
            approvers: [group:editors]
            timeout: 1h
            on_timeout: reject
          - id: after
            kind: set
            values: {by: "${{ steps.review.outputs.decided_by }}"}
        """,
    "self-ok": """
        name: self-ok
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            allow_self_approval: true
            timeout: 1h
            on_timeout: reject
        """,
    "quorum": """
        name: quorum
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            min_approvals: 2
            context: two people please
            timeout: 1h
            on_timeout: reject
          - id: after
            kind: set
            values: {ok: true}
        """,
    "with-on-reject": """
        name: with-on-reject
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            timeout: 1h
            on_timeout: reject
            on_reject: rejected-note
          - id: apply
            kind: set
            values: {applied: true}
          - id: rejected-note
            kind: set
            if: ${{ steps.review.status == 'rejected' }}
            values: {why: "${{ steps.review.outputs.comment }}"}
        """,
    "always-comment": """
        name: always-comment
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            require_comment: always
            timeout: 1h
            on_timeout: reject
        """,
    "with-inputs": """
        name: with-inputs
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            inputs:
              ticket: {type: integer, required: true}
              level: {type: string, enum: [low, high], default: low}
            timeout: 1h
            on_timeout: reject
          - id: use
            kind: set
            values:
              ticket: "${{ steps.review.outputs.inputs.ticket }}"
              level: "${{ steps.review.outputs.inputs.level }}"
        """,
    "hashed": """
        name: hashed
        inputs:
          what: {type: string, default: the thing}
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            context: "Please approve ${{ inputs.what }}"
            timeout: 1h
            on_timeout: reject
        """,
    "push-back": """
        name: push-back
        steps:
          - id: draft
            kind: shell
            run: echo "draft with feedback:" ${{ steps.review.comment | default('none') }}
            timeout: 1m
          - id: review
            kind: approval
            approvers: [group:editors]
            context: "${{ steps.draft.outputs.stdout }}"
            rewind_to: draft
            timeout: 1h
            on_timeout: fail
          - id: publish
            kind: set
            values: {text: "${{ steps.draft.outputs.stdout }}"}
        """,
    "timeout-reject": """
        name: timeout-reject
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            timeout: 1s
            on_timeout: reject
          - id: apply
            kind: set
            values: {applied: true}
        """,
    "timeout-fail": """
        name: timeout-fail
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            timeout: 1s
            on_timeout: fail
          - id: apply
            kind: set
            values: {applied: true}
        """,
    "note-and-stop": """
        name: note-and-stop
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            require_comment: reject
            timeout: 1h
            on_timeout: reject
            on_reject: note
          - id: apply
            kind: set
            values: {applied: true}
          - id: applied
            kind: end
            status: succeeded
          - id: note
            kind: notify
            channel: audit
            message: "not applied: ${{ steps.review.outputs.comment }}"
        """,
    "timeout-note": """
        name: timeout-note
        steps:
          - id: review
            kind: approval
            approvers: [group:ops]
            timeout: 1s
            on_timeout: note
          - id: apply
            kind: end
            status: succeeded
          - id: note
            kind: set
            values: {noted: "${{ steps.review.status }}"}
        """,
    "with-links": """
        name: with-links
        inputs:
          ticket: {type: string, default: OPS-42}
        steps:
          - id: plan
            kind: shell
            run: echo "the plan" > "$SIGNOFF_ARTIFACTS/plan.txt"
            timeout: 1m
          - id: review
            kind: approval
            approvers: [group:ops]
            context: read the plan first
            links:
              - {title: ticket, url: "https://tickets.example.test/${{ inputs.ticket }}"}
              - {title: plan, url: "${{ steps.plan.outputs.artifacts['plan.txt'] }}"}
            timeout: 1h
            on_timeout: reject
        """,
    "timeout-escalate": """
        name: timeout-escalate
        steps:
          - id: review
            kind: approval
            approvers: [bob]
            timeout: 1s
            on_timeout: escalate
          - id: escalate
            kind: approval
            if: ${{ steps.review.status == 'timed_out' }}
            approvers: [group:finance]
            context: nobody answered in time
            timeout: 1h
            on_timeout: reject
          - id: apply
            kind: set
            values: {by: "${{ steps.escalate.outputs.decided_by }}"}
        """,
}


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("approvals")
    with DaemonProcess(root, flows=FLOWS_HERE, copy=["review-before-action", "content-draft-to-publish"]) as process:
        yield process


def waiting(daemon: DaemonProcess, flow: str, inputs: dict | None = None, user: str = "alice",
            step: str = "review") -> dict:
    run = daemon.start_run(flow, inputs, user=user)
    return daemon.wait_step(run["id"], step, "waiting")


def error_of(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    error = response.json()["error"]
    assert error["code"] and error["message"]
    return error


# ---- who may decide ----------------------------------------------------------------


def test_approver_by_user_name(daemon: DaemonProcess) -> None:
    run = waiting(daemon, "by-user")
    run_id = run["id"]
    assert run["steps"]["review"]["approvers"] == ["bob"]
    # carol is not among the flow's approvers, so the run does not exist for her (who may read: runner.auth)
    error = error_of(daemon.decide(run_id, "review", "carol"), 404)
    assert error["message"] == f"no run {run_id}"
    error_of(daemon.decide(run_id, "review", "dave"), 403)  # no approve role: refused before anything is looked up
    assert daemon.run(run_id)["steps"]["review"]["status"] == "waiting"

    response = daemon.decide(run_id, "review", "bob", comment="looks right")
    assert response.status_code == 200, response.text
    assert response.json()["final"] is True
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert final["steps"]["review"]["decision"] == "approve"
    assert final["steps"]["review"]["decided_by"] == "bob"
    assert final["steps"]["review"]["comment"] == "looks right"
    assert final["steps"]["after"]["outputs"] == {"by": "bob"}
    decisions = [e for e in daemon.events(run_id) if e["type"] == "decision"]
    assert len(decisions) == 1
    assert decisions[0]["by"] == "bob" and decisions[0]["comment"] == "looks right"
    assert decisions[0]["context_sha256"] == hashlib.sha256(b"ship it?").hexdigest()
    assert decisions[0]["at"]


def test_approver_by_group(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "by-group")["id"]
    error_of(daemon.decide(run_id, "review", "alice"), 403)  # not an editor
    response = daemon.decide(run_id, "review", "carol")
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert final["steps"]["after"]["outputs"] == {"by": "carol"}
    daemon.assert_record_valid(run_id)


def test_a_user_without_the_approve_role_is_refused_even_in_the_group(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "quorum")["id"]
    error = error_of(daemon.decide(run_id, "review", "dave"), 403)
    assert "approve" in error["message"]
    assert daemon.run(run_id)["steps"]["review"]["approvals"] == []
    daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")


def test_the_starter_may_not_approve_their_own_run(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "quorum", user="bob")["id"]
    error = error_of(daemon.decide(run_id, "review", "bob"), 403)
    assert "started this run" in error["message"]
    assert daemon.run(run_id)["steps"]["review"]["approvals"] == []
    # the starter may still reject (only approving is self-approval)
    response = daemon.decide(run_id, "review", "bob", "reject", comment="changed my mind")
    assert response.status_code == 200, response.text
    assert daemon.wait_end(run_id)["status"] == "rejected"


def test_allow_self_approval_lets_the_starter_approve(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "self-ok", user="carol")["id"]
    response = daemon.decide(run_id, "review", "carol")
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert final["steps"]["review"]["decided_by"] == "carol"


def test_a_decision_on_a_step_that_is_not_waiting_is_409(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "by-user")["id"]
    error_of(daemon.decide(run_id, "after", "bob"), 409)  # a set step takes no decisions
    error_of(daemon.decide(run_id, "nope", "bob"), 404)
    assert daemon.decide(run_id, "review", "bob").status_code == 200
    daemon.wait_end(run_id)
    error_of(daemon.decide(run_id, "review", "bob"), 409)
    error_of(daemon.decide(run_id, "review", "bob", "maybe"), 409)


def test_an_unknown_decision_word_is_422(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "by-user")["id"]
    error_of(daemon.decide(run_id, "review", "bob", "maybe"), 422)
    error_of(daemon.decide(run_id, "review", "bob", "request_changes"), 422)  # no rewind_to here
    assert daemon.run(run_id)["steps"]["review"]["status"] == "waiting"
    daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")


@pytest.mark.parametrize("body", [{"inputs": 5}, {"comment": 5}], ids=["inputs-number", "comment-number"])
def test_a_decision_with_wrongly_typed_fields_is_422(daemon: DaemonProcess, body: dict) -> None:
    run_id = waiting(daemon, "by-user")["id"]
    try:
        error_of(daemon.decide(run_id, "review", "bob", **body), 422)
        assert daemon.run(run_id)["steps"]["review"]["status"] == "waiting"
    finally:
        daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")


# ---- quorum and reject -----------------------------------------------------------------


def test_min_approvals_needs_two_distinct_people(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "quorum")["id"]
    first = daemon.decide(run_id, "review", "bob", comment="one")
    assert first.status_code == 200, first.text
    assert first.json()["final"] is False
    run = daemon.run(run_id)
    assert run["status"] == "waiting"
    assert [a["by"] for a in run["steps"]["review"]["approvals"]] == ["bob"]

    error = error_of(daemon.decide(run_id, "review", "bob", comment="again"), 409)
    assert "already approved" in error["message"]
    assert daemon.run(run_id)["status"] == "waiting"

    second = daemon.decide(run_id, "review", "carol", comment="two")
    assert second.status_code == 200, second.text
    assert second.json()["final"] is True
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    review = final["steps"]["review"]
    assert [a["by"] for a in review["approvals"]] == ["bob", "carol"]
    assert review["outputs"]["approved_by"] == ["bob", "carol"]
    assert [e["by"] for e in daemon.events(run_id) if e["type"] == "decision"] == ["bob", "carol"]
    daemon.assert_record_valid(run_id)


def test_an_acknowledged_approval_survives_kill_9(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "quorum")["id"]
    assert daemon.decide(run_id, "review", "bob", comment="first").status_code == 200
    daemon.restart(hard=True)
    run = daemon.run(run_id)
    assert run["status"] == "waiting"
    assert [a["by"] for a in run["steps"]["review"]["approvals"]] == ["bob"]
    error_of(daemon.decide(run_id, "review", "bob"), 409)
    assert daemon.decide(run_id, "review", "carol").status_code == 200
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert final["steps"]["review"]["outputs"]["approved_by"] == ["bob", "carol"]
    daemon.assert_record_valid(run_id)


def test_one_reject_ends_a_quorum_wait(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "quorum")["id"]
    assert daemon.decide(run_id, "review", "bob").status_code == 200
    response = daemon.decide(run_id, "review", "carol", "reject", comment="not like this")
    assert response.status_code == 200, response.text
    assert response.json()["final"] is True
    final = daemon.wait_end(run_id)
    assert final["status"] == "rejected"
    assert final["steps"]["review"]["status"] == "rejected"
    assert final["steps"]["review"]["decided_by"] == "carol"
    assert final["steps"]["after"]["status"] == "pending"
    assert "carol" in final["error"] and "not like this" in final["error"]
    daemon.assert_record_valid(run_id)


def test_reject_goes_to_on_reject(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "with-on-reject")["id"]
    response = daemon.decide(run_id, "review", "carol", "reject", comment="too risky")
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id)
    assert final["steps"]["review"]["status"] == "rejected"
    assert final["steps"]["apply"]["status"] == "skipped"
    assert final["steps"]["rejected-note"]["status"] == "succeeded"
    assert final["steps"]["rejected-note"]["outputs"] == {"why": "too risky"}
    assert "jump" in event_types(daemon.events(run_id))


def test_approve_skips_the_on_reject_step_of_review_before_action(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "review-before-action", {"setting": "workers = 8"})["id"]
    run = daemon.run(run_id)
    assert "+workers = 8" in run["steps"]["review"]["context"]
    assert "requested by alice" in run["steps"]["review"]["context"]
    response = daemon.decide(run_id, "review", "bob")
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert "approved by bob" in final["steps"]["apply"]["outputs"]["stdout"]
    assert final["steps"]["applied"]["status"] == "succeeded"
    assert final["steps"]["note-rejection"]["status"] == "pending"  # after the end step: reached by on_reject only
    daemon.assert_record_valid(run_id)


def test_reject_post_a_note_and_stop_ends_the_run_rejected(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "note-and-stop")["id"]
    response = daemon.decide(run_id, "review", "carol", "reject", comment="not this week")
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id)
    assert final["steps"]["note"]["status"] == "succeeded"
    assert final["steps"]["note"]["outputs"]["delivered"] is True
    assert final["steps"]["apply"]["status"] == "skipped"
    assert final["status"] == "rejected"
    assert "carol" in final["error"] and "not this week" in final["error"]
    assert final["routed"]["outcome"] == "rejected"

    def listed() -> set[str]:  # the list reads snapshots, rewritten just after the run's last event
        answer = daemon.api("alice").get("/api/v1/runs", params={"flow": "note-and-stop", "status": "rejected"})
        return {r["id"] for r in answer.json()["runs"]}

    wait_until(lambda: run_id in listed(), message="the run in the list of rejected runs")
    jumps = [e for e in daemon.events(run_id) if e["type"] == "jump"]
    assert [(j["to"], j["outcome"]) for j in jumps] == [("note", "rejected")]
    daemon.assert_record_valid(run_id)


def test_approve_then_the_end_step_ends_the_run_succeeded(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "note-and-stop")["id"]
    assert daemon.decide(run_id, "review", "carol").status_code == 200
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded" and final["error"] is None
    assert final["steps"]["note"]["status"] == "pending"
    daemon.assert_record_valid(run_id)


def test_a_timeout_routed_to_a_handler_ends_the_run_timed_out(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("timeout-note")["id"]
    final = daemon.wait_end(run_id)
    assert final["steps"]["note"]["outputs"] == {"noted": "timed_out"}
    assert final["steps"]["apply"]["status"] == "skipped"
    assert final["status"] == "timed_out"
    assert "review" in final["error"] and "timed out" in final["error"]
    daemon.assert_record_valid(run_id)


# ---- what the reviewer is shown --------------------------------------------------------------


def test_links_are_rendered_into_the_record_and_shown_in_pending(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "with-links", {"ticket": "OPS-7"})["id"]
    try:
        links = daemon.run(run_id)["steps"]["review"]["links"]
        plan = daemon.run(run_id)["steps"]["plan"]["outputs"]["artifacts"]["plan.txt"]
        assert plan.startswith("res://")
        assert links == [{"title": "ticket", "url": "https://tickets.example.test/OPS-7"},
                         {"title": "plan", "url": plan}]
        wait_until(lambda: daemon.run_json(run_id)["steps"]["review"].get("links") == links,
                   message="run.json written with the links")  # the park's snapshot follows its event
        daemon.assert_record_valid(run_id)

        [entry] = [p for p in daemon.api("bob").get("/api/v1/pending").json()["pending"] if p["run"] == run_id]
        assert entry["links"] == links
        shown = daemon.cli("pending", "--json", user="bob")
        assert shown.returncode == 0, shown.stderr
        assert next(p for p in json.loads(shown.stdout)["pending"] if p["run"] == run_id)["links"] == links
        human = daemon.cli("pending", user="bob")
        assert human.returncode == 0, human.stderr
        assert f"{run_id} review: plan {plan}" in human.stdout
        assert f"{run_id} review: ticket https://tickets.example.test/OPS-7" in human.stdout
        resource = daemon.api("bob").get(f"/api/v1/resources/{plan.removeprefix('res://')}")
        assert resource.status_code == 200 and resource.text == "the plan\n"
    finally:
        daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")


# ---- comments and reviewer inputs --------------------------------------------------------


def test_require_comment_on_reject(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "review-before-action")["id"]
    error = error_of(daemon.decide(run_id, "review", "bob", "reject"), 422)
    assert "comment" in error["message"]
    error_of(daemon.decide(run_id, "review", "bob", "reject", comment="   "), 422)
    assert daemon.run(run_id)["steps"]["review"]["status"] == "waiting"

    response = daemon.decide(run_id, "review", "bob", "reject", comment="wrong file")
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id)
    assert final["steps"]["review"]["status"] == "rejected"
    assert final["steps"]["apply"]["status"] == "skipped"
    assert final["steps"]["note-rejection"]["status"] == "succeeded"
    assert final["steps"]["review"]["comment"] == "wrong file"
    assert final["status"] == "rejected" and "wrong file" in final["error"]
    daemon.assert_record_valid(run_id)


def test_require_comment_always_applies_to_approve_too(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "always-comment")["id"]
    error_of(daemon.decide(run_id, "review", "bob"), 422)
    assert daemon.decide(run_id, "review", "bob", comment="ok because tested").status_code == 200
    assert daemon.wait_end(run_id)["status"] == "succeeded"


def test_reviewer_inputs_are_validated_and_reach_later_steps(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "with-inputs")["id"]
    error = error_of(daemon.decide(run_id, "review", "bob", inputs={"ticket": "not a number"}), 422)
    assert any("ticket" in reason for reason in error.get("reasons", [])), error
    error_of(daemon.decide(run_id, "review", "bob", inputs={}), 422)  # ticket is required to approve
    error_of(daemon.decide(run_id, "review", "bob", inputs={"ticket": 5, "level": "extreme"}), 422)
    error = error_of(daemon.decide(run_id, "review", "bob", inputs={"ticket": 5, "colour": "red"}), 422)
    assert "colour" in error["message"]
    assert daemon.run(run_id)["steps"]["review"]["status"] == "waiting"

    response = daemon.decide(run_id, "review", "bob", inputs={"ticket": 4711})
    assert response.status_code == 200, response.text
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert final["steps"]["review"]["inputs"] == {"ticket": 4711, "level": "low"}
    assert final["steps"]["use"]["outputs"] == {"ticket": 4711, "level": "low"}
    decision = next(e for e in daemon.events(run_id) if e["type"] == "decision")
    assert decision["inputs"] == {"ticket": 4711, "level": "low"}
    daemon.assert_record_valid(run_id)


# ---- what the reviewer saw ------------------------------------------------------------------


def test_context_sha256_must_match_what_the_reviewer_saw(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "hashed", {"what": "the red button"})["id"]
    review = daemon.run(run_id)["steps"]["review"]
    assert review["context"] == "Please approve the red button"
    digest = hashlib.sha256(b"Please approve the red button").hexdigest()
    assert review["context_sha256"] == digest

    stale = hashlib.sha256(b"Please approve the blue button").hexdigest()
    error = error_of(daemon.decide(run_id, "review", "bob", context_sha256=stale), 409)
    assert "context" in error["message"]
    assert daemon.run(run_id)["steps"]["review"]["status"] == "waiting"

    response = daemon.decide(run_id, "review", "bob", context_sha256=digest)
    assert response.status_code == 200, response.text
    assert daemon.wait_end(run_id)["status"] == "succeeded"
    decision = next(e for e in daemon.events(run_id) if e["type"] == "decision")
    assert decision["context_sha256"] == digest


def test_concurrent_approve_and_reject_exactly_one_wins(daemon: DaemonProcess) -> None:
    async def race(run_id: str) -> list[httpx.Response]:
        async with daemon.new_client("bob", asynchronous=True) as bob, \
                daemon.new_client("carol", asynchronous=True) as carol:
            url = f"/api/v1/runs/{run_id}/steps/review/decision"
            return list(await asyncio.gather(bob.post(url, json={"decision": "approve"}),
                                             carol.post(url, json={"decision": "reject", "comment": "no"})))

    for _ in range(3):
        run_id = waiting(daemon, "by-group")["id"]
        answers = asyncio.run(race(run_id))
        codes = sorted(r.status_code for r in answers)
        assert codes == [200, 409], [r.text for r in answers]
        winner = next(r for r in answers if r.status_code == 200).json()["decision"]["decision"]
        final = daemon.wait_end(run_id)
        assert final["status"] == ("succeeded" if winner == "approve" else "rejected")
        decisions = [e for e in daemon.events(run_id) if e["type"] == "decision"]
        assert len(decisions) == 1 and decisions[0]["decision"] == winner


# ---- push-back -------------------------------------------------------------------------------


def test_request_changes_reruns_the_draft_with_the_comment(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "push-back")["id"]
    first = daemon.run(run_id)
    assert first["steps"]["draft"]["outputs"]["stdout"].strip() == "draft with feedback: none"

    response = daemon.decide(run_id, "review", "bob", "request_changes", comment="add-a-date")
    assert response.status_code == 200, response.text
    daemon.wait_for(run_id, lambda r: r["steps"]["review"]["status"] == "waiting"
                    and r["steps"]["draft"]["outputs"].get("stdout", "").strip() != "draft with feedback: none",
                    what="the draft to be redone and the review to wait again")
    again = daemon.run(run_id)
    assert again["steps"]["draft"]["outputs"]["stdout"].strip() == "draft with feedback: add-a-date"
    assert "add-a-date" in again["steps"]["review"]["context"]

    assert daemon.decide(run_id, "review", "carol").status_code == 200
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert final["steps"]["publish"]["outputs"]["text"].strip() == "draft with feedback: add-a-date"
    events = daemon.events(run_id)
    drafts = [e for e in events if e["type"] == "step_finished" and e["step"] == "draft"]
    assert [d["outputs"]["stdout"].strip() for d in drafts] == ["draft with feedback: none",
                                                                "draft with feedback: add-a-date"]
    assert [e["decision"] for e in events if e["type"] == "decision"] == ["request_changes", "approve"]
    assert final["steps_executed"] == 5
    daemon.assert_record_valid(run_id)


def test_content_draft_to_publish_end_to_end_with_push_back(daemon: DaemonProcess) -> None:
    shipped = {f["flow"]: f for f in daemon.api("alice").get("/api/v1/flows").json()["flows"]}
    assert shipped["content-draft-to-publish"]["working_tree"]["ok"], shipped["content-draft-to-publish"]
    run_id = waiting(daemon, "content-draft-to-publish", {"topic": "signoff 1.0"})["id"]
    response = daemon.decide(run_id, "review", "bob", "request_changes", comment="mention the docs")
    assert response.status_code == 200, response.text
    daemon.wait_for(run_id, lambda r: r["steps"]["review"]["status"] == "waiting"
                    and r["steps"]["review"].get("decision") is None and r["steps_executed"] >= 3,
                    what="the second review")
    ref = daemon.run(run_id)["steps"]["draft"]["outputs"]["artifacts"]["announcement.md"]
    text = daemon.api("bob").get(f"/api/v1/resources/{ref.removeprefix('res://')}").text
    assert "signoff 1.0" in text
    assert "(revised after review: mention the docs)" in text

    assert daemon.decide(run_id, "review", "carol").status_code == 200
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert ref in final["steps"]["publish"]["outputs"]["stdout"]
    assert final["steps"]["feedback"]["status"] == "skipped"


# ---- timeouts ------------------------------------------------------------------------------


def test_timeout_with_on_timeout_reject(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("timeout-reject")["id"]
    final = daemon.wait_end(run_id)
    assert final["status"] == "rejected"
    review = final["steps"]["review"]
    assert review["status"] == "timed_out"
    assert review.get("decision") is None and not review.get("approvals")
    assert final["steps"]["apply"]["status"] == "pending"
    daemon.assert_record_valid(run_id)


def test_timeout_with_on_timeout_fail(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("timeout-fail")["id"]
    final = daemon.wait_end(run_id)
    assert final["status"] == "timed_out"
    assert final["steps"]["review"]["status"] == "timed_out"
    assert final["steps"]["apply"]["status"] == "pending"
    assert "review" in final["error"]
    error_of(daemon.decide(run_id, "review", "bob"), 409)  # too late: a timeout never approves
    assert daemon.run(run_id)["status"] == "timed_out"
    daemon.assert_record_valid(run_id)


def test_timeout_escalates_to_another_step(daemon: DaemonProcess) -> None:
    run_id = daemon.start_run("timeout-escalate")["id"]
    run = daemon.wait_step(run_id, "escalate", "waiting")
    assert run["steps"]["review"]["status"] == "timed_out"
    assert run["steps"]["review"].get("decision") is None
    assert run["steps"]["escalate"]["approvers"] == ["group:finance"]
    error_of(daemon.decide(run_id, "review", "bob"), 409)
    error_of(daemon.decide(run_id, "escalate", "bob"), 403)  # bob is not in finance
    assert daemon.decide(run_id, "escalate", "carol").status_code == 200
    final = daemon.wait_end(run_id)
    assert final["status"] == "succeeded"
    assert final["steps"]["apply"]["outputs"] == {"by": "carol"}
    daemon.assert_record_valid(run_id)


# ---- the CLI ---------------------------------------------------------------------------------


def test_cli_pending_approve_and_reject(daemon: DaemonProcess) -> None:
    approve_me = waiting(daemon, "by-user")["id"]
    reject_me = waiting(daemon, "review-before-action")["id"]

    listed = daemon.cli("pending", "--json", user="bob")
    assert listed.returncode == 0, listed.stderr
    pending = json.loads(listed.stdout)
    assert pending["user"] == "bob"
    mine = {(p["run"], p["step"]) for p in pending["pending"]}
    assert {(approve_me, "review"), (reject_me, "review")} <= mine
    entry = next(p for p in pending["pending"] if p["run"] == approve_me)
    assert entry["context"] == "ship it?"
    stale = daemon.cli("approve", approve_me, "review", "--context-sha256", "0" * 64, user="bob")
    assert stale.returncode == 1 and "context changed" in stale.stderr
    assert entry["url"].endswith(f"/ui/runs/{approve_me}")

    carol_sees = json.loads(daemon.cli("pending", "--json", user="carol").stdout)
    assert approve_me not in {p["run"] for p in carol_sees["pending"]}  # by-user names only bob

    refused = daemon.cli("approve", approve_me, "review", user="carol")
    assert refused.returncode == 1
    assert f"no run {approve_me}" in refused.stderr  # not an approver of by-user: the run is not hers to see

    approved = daemon.cli("approve", approve_me, "review", "--comment", "via the cli", "--json",
                          "--context-sha256", entry["context_sha256"], user="bob")
    assert approved.returncode == 0, approved.stderr
    assert json.loads(approved.stdout)["final"] is True
    final = daemon.wait_end(approve_me)
    assert final["status"] == "succeeded"
    assert final["steps"]["review"]["comment"] == "via the cli"

    no_comment = daemon.cli("reject", reject_me, "review", user="carol")
    assert no_comment.returncode == 1 and "comment" in no_comment.stderr
    rejected = daemon.cli("reject", reject_me, "review", "--comment", "not today", user="carol")
    assert rejected.returncode == 0, rejected.stderr
    assert "rejected" in rejected.stdout
    final = daemon.wait_end(reject_me)
    assert final["steps"]["review"]["status"] == "rejected"
    assert final["steps"]["review"]["decided_by"] == "carol"

    after = json.loads(daemon.cli("pending", "--json", user="bob").stdout)
    assert not {approve_me, reject_me} & {p["run"] for p in after["pending"]}


def test_pending_lists_only_what_i_can_decide(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "quorum", user="alice")["id"]
    try:
        assert daemon.decide(run_id, "review", "bob").status_code == 200

        def pending(user: str) -> set[str]:
            return {p["run"] for p in daemon.api(user).get("/api/v1/pending").json()["pending"]}

        assert run_id in pending("carol")  # the one who can still complete the quorum
        assert run_id not in pending("alice"), "alice started the run and may not approve it"
        assert run_id not in pending("bob"), "bob already approved"
        assert run_id not in pending("dave"), "dave has no approve role"
    finally:
        daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")


def test_cli_self_approval_is_refused_with_the_reason(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "quorum", user="alice")["id"]
    answer = daemon.cli("approve", run_id, "review", user="alice")
    assert answer.returncode == 1
    assert "started this run" in answer.stderr
    unauthenticated = daemon.cli("approve", run_id, "review", user=None)
    assert unauthenticated.returncode == 1
    assert daemon.run(run_id)["steps"]["review"]["approvals"] == []
    daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")


def test_cli_reviewer_inputs_are_typed(daemon: DaemonProcess) -> None:
    run_id = waiting(daemon, "with-inputs")["id"]
    answer = daemon.cli("approve", run_id, "review", "-i", "ticket=99", "-i", "level=high", user="bob")
    try:
        assert answer.returncode == 0, answer.stderr
        final = daemon.wait_end(run_id)
        assert final["steps"]["use"]["outputs"] == {"ticket": 99, "level": "high"}
    finally:
        daemon.api("alice").post(f"/api/v1/runs/{run_id}/cancel")
