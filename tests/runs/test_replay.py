"""Replay of recorded runs against a draft (issue 15, part 2): runner.runs.replay.

Recordings are real runs of the real engine over a file store (real shell
commands, a real HTTP server on loopback for http and notify steps, decisions
delivered as the daemon delivers them); drafts are read from real git
repositories at a branch. Replay itself must touch nothing: no file a command
would write, no request, no notification, no ssh connection, nothing written
to the store the recording lives in.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from runner.auth import User, Users
from runner.dryrun import no_side_effects
from runner.errors import SideEffectRefused, UsageError
from runner.children import spawn
from runner.flows.load import load_flow_bytes
from runner.flows.model import Flow
from runner.notify import Message, Notifier
from runner.releases import repo as flow_sources
from runner.runs.replay import VERDICTS, replay_recent, replay_run
from runner.steps.base import kind_named, kind_names

from support import Harness, HttpServer, all_file_bytes, git, harness_with_config, json_reply, make_repo, write_flow

BOB = User("bob", frozenset({"run", "approve"}), frozenset({"ops"}))

DEPLOY = """\
name: deploy
inputs:
  target: {type: string, default: staging}
steps:
  - id: plan
    kind: shell
    run: echo plan for ${{ inputs.target }}
  - id: build
    kind: shell
    run: echo building >&2; exit 3
  - id: report
    kind: set
    values: {plan: "${{ steps.plan.outputs.stdout }}"}
"""


def draft_at(repo: Path, ref: str, name: str) -> Flow:
    """The flow as committed on `ref` of a real git repository, as `signoff replay --ref` reads it."""
    source = flow_sources.at_ref(repo, ref, f"flows/{name}.yaml")
    return load_flow_bytes(source.data, source.label, expect_name=name)


def branch(repo: Path, name: str, flow: str, text: str) -> None:
    """Commit `text` as flows/<flow>.yaml on a new branch `name` (main stays as it was)."""
    git(repo, "checkout", "-q", "-b", name)
    write_flow(repo, flow, text)
    git(repo, "commit", "-q", "-am", f"draft {name}")
    git(repo, "checkout", "-q", "main")


def recorded(harness: Harness, repo: Path, name: str, inputs: dict | None = None, *, draft: bool = False) -> dict:
    """A real run of the flow as committed on main (a live run unless `draft`)."""
    return harness.run(draft_at(repo, "main", name), inputs, draft=draft)


def by_step(report: dict) -> dict[str, dict]:
    return {entry["step"]: entry for entry in report["steps"]}


def test_a_failed_run_against_a_repaired_draft_shows_the_repair_changed_and_reaches_succeeded(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo", {"deploy": DEPLOY})
    marker = tmp_path / "built"
    branch(repo, "fix", "deploy", DEPLOY.replace("echo building >&2; exit 3", f"touch {marker}"))
    harness = Harness(tmp_path)
    run = recorded(harness, repo, "deploy", {"target": "prod"})
    assert run["status"] == "failed"
    before = all_file_bytes(tmp_path / "data")

    report = replay_run(harness.store, run["id"], draft_at(repo, "fix", "deploy"))

    steps = by_step(report)
    assert report["status"] == "succeeded" and report["recorded"]["status"] == "failed"
    assert steps["plan"]["verdict"] == "same"  # unchanged: the recorded outputs, not a new run of it
    assert steps["plan"]["outputs"] == {"old": {"exit_code": 0, "stdout": "plan for prod\n", "stderr": ""},
                                        "new": {"exit_code": 0, "stdout": "plan for prod\n", "stderr": ""}}
    build = steps["build"]
    assert build["verdict"] == "changed" and build["assumed"] is True
    assert build["rendered"]["old"]["run"] == "echo building >&2; exit 3"
    assert build["rendered"]["new"]["run"] == f"touch {marker}"
    assert build["would_run"] == f"$ touch {marker}"
    assert (build["old_status"], build["outputs"]["old"]["exit_code"]) == ("failed", 3)
    # the recording never got to `report`; the draft does, and evaluates it for real with the fed outputs
    assert steps["report"]["verdict"] == "would_run"
    assert steps["report"]["outputs"]["new"] == {"plan": "plan for prod\n"}
    assert report["assumed"] == ["build"]
    assert report["counts"] == {**dict.fromkeys(VERDICTS, 0), "same": 1, "changed": 1, "would_run": 1}
    assert not marker.exists()  # the repaired command was never run
    assert all_file_bytes(tmp_path / "data") == before  # nothing was written to the recording's store


def test_the_recorded_flow_itself_replays_the_same(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo", {"deploy": DEPLOY})
    harness = Harness(tmp_path)
    run = recorded(harness, repo, "deploy")

    report = replay_run(harness.store, run["id"], draft_at(repo, "main", "deploy"))

    assert [(e["step"], e["verdict"], e["status"]) for e in report["steps"]] == [
        ("plan", "same", "succeeded"), ("build", "same", "failed")]
    assert report["status"] == "failed" and report["error"] == run["error"]
    assert report["assumed"] == [] and report["stopped_at"] is None


GATED = """\
name: gated
steps:
  - id: measure
    kind: shell
    run: echo 7
  - id: gate
    kind: end
    if: ${{ steps.measure.outputs.stdout | trim | int > 5 }}
    status: failed
    message: too high
  - id: tell
    kind: notify
    channel: audit
    message: measured ${{ steps.measure.outputs.stdout | trim }}
"""


def test_a_repair_in_a_condition_is_evaluated_for_real_and_every_effect_is_fed(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo", {"gated": GATED})
    branch(repo, "fix", "gated", GATED.replace("int > 5", "int > 9"))
    branch(repo, "renamed", "gated", GATED.replace("measured ${{", "value ${{"))
    harness = harness_with_config(tmp_path, {"channels": {"audit": {"kind": "log"}}})
    run = recorded(harness, repo, "gated")
    assert run["status"] == "failed"

    report = replay_run(harness.store, run["id"], draft_at(repo, "fix", "gated"), config=harness.config)

    assert [(e["step"], e["verdict"], e["status"]) for e in report["steps"]] == [
        ("measure", "same", "succeeded"), ("gate", "changed", "skipped"), ("tell", "would_run", "succeeded")]
    assert by_step(report)["tell"]["would_run"] == "notify audit: measured 7"
    assert report["status"] == "succeeded" and report["assumed"] == ["tell"]


REVIEWED = """\
name: reviewed
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    context: Ship it?
    inputs: {ticket: {type: string}}
    timeout: 1h
    on_reject: note
  - id: ship
    kind: set
    values: {by: "${{ steps.review.outputs.decided_by }}"}
  - id: note
    kind: set
    if: ${{ steps.review.decision == 'reject' }}
    values: {why: "${{ steps.review.outputs.comment }}"}
"""


def reviewing(tmp_path: Path, config: dict | None = None) -> Harness:
    harness = harness_with_config(tmp_path, config) if config else Harness(tmp_path)
    harness.engine.accepts_messages = True
    harness.engine.users = Users(groups={"ops": {"bob"}})
    return harness


def decided(harness: Harness, flow: Flow, decision: str, **message) -> dict:
    run_id = harness.start(flow, draft=False)
    asyncio.run(harness.engine.advance(run_id, hold=False))
    harness.engine.deliver(run_id, "review", {"user": BOB, "decision": decision, **message})
    return asyncio.run(harness.engine.advance(run_id, hold=False))


def test_recorded_decisions_are_fed_and_a_new_wait_stops_the_replay(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo", {"reviewed": REVIEWED})
    extra = REVIEWED.replace("  - id: ship\n", "  - id: second\n    kind: approval\n    approvers: [group:ops]\n"
                                               "    timeout: 1h\n  - id: ship\n")
    branch(repo, "two-eyes", "reviewed", extra)
    harness = reviewing(tmp_path)
    approved = decided(harness, draft_at(repo, "main", "reviewed"), "approve", comment="fine",
                       inputs={"ticket": "T-1"})
    rejected = decided(harness, draft_at(repo, "main", "reviewed"), "reject", comment="not today")
    assert (approved["status"], rejected["status"]) == ("succeeded", "rejected")

    again = replay_run(harness.store, approved["id"], draft_at(repo, "main", "reviewed"))
    assert again["status"] == "succeeded"
    review = by_step(again)["review"]
    assert review["verdict"] == "same"
    assert {k: review["outputs"]["new"][k] for k in ("decision", "decided_by", "comment", "inputs")} == {
        "decision": "approve", "decided_by": "bob", "comment": "fine", "inputs": {"ticket": "T-1"}}
    assert by_step(again)["ship"]["outputs"]["new"] == {"by": "bob"}

    no = replay_run(harness.store, rejected["id"], draft_at(repo, "main", "reviewed"))
    assert no["status"] == "rejected"
    assert by_step(no)["note"]["outputs"]["new"] == {"why": "not today"}
    assert all(entry["verdict"] == "same" for entry in no["steps"])

    stopped = replay_run(harness.store, approved["id"], draft_at(repo, "two-eyes", "reviewed"))
    assert stopped["status"] == "waiting" and stopped["stopped_at"] == "second"
    assert [(e["step"], e["verdict"]) for e in stopped["steps"]] == [("review", "same"), ("second", "would_wait")]


REWOUND = """\
name: rewound
steps:
  - id: prepare
    kind: shell
    run: echo draft number ${{ steps.review.outputs.comment | default('one', true) }}
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    rewind_to: prepare
"""


def test_each_visit_of_a_rewound_step_gets_its_own_recorded_answer(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo", {"rewound": REWOUND})
    harness = reviewing(tmp_path)
    run_id = harness.start(draft_at(repo, "main", "rewound"), draft=False)
    asyncio.run(harness.engine.advance(run_id, hold=False))
    harness.engine.deliver(run_id, "review", {"user": BOB, "decision": "request_changes", "comment": "two"})
    asyncio.run(harness.engine.advance(run_id, hold=False))
    harness.engine.deliver(run_id, "review", {"user": BOB, "decision": "approve"})
    run = asyncio.run(harness.engine.advance(run_id, hold=False))
    assert run["status"] == "succeeded"

    report = replay_run(harness.store, run_id, draft_at(repo, "main", "rewound"))

    assert [(e["step"], e["visit"], e["verdict"]) for e in report["steps"]] == [
        ("prepare", 1, "same"), ("review", 1, "same"), ("prepare", 2, "same"), ("review", 2, "same")]
    assert [e["outputs"]["new"].get("stdout") for e in report["steps"] if e["step"] == "prepare"] == [
        "draft number one\n", "draft number two\n"]
    assert report["status"] == "succeeded"


TIMED = """\
name: timed
steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    timeout: 1h
    on_timeout: late
  - id: late
    kind: set
    values: {late: true}
"""


def test_a_recorded_timeout_is_fed_and_a_wait_step_is_over_at_once(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo", {"timed": TIMED})
    branch(repo, "pause", "timed", TIMED.replace("steps:\n", "steps:\n  - id: pause\n    kind: wait\n"
                                                              "    duration: 7d\n"))
    harness = reviewing(tmp_path)
    run = asyncio.run(harness.engine.advance(harness.start(draft_at(repo, "main", "timed"), draft=False)))
    assert run["status"] == "timed_out"  # the fake clock let the hour pass

    report = replay_run(harness.store, run["id"], draft_at(repo, "pause", "timed"))

    assert [(e["step"], e["verdict"], e["status"]) for e in report["steps"]] == [
        ("pause", "added", "succeeded"), ("review", "same", "timed_out"), ("late", "same", "succeeded")]
    assert report["status"] == "timed_out"


def test_a_step_the_draft_removed_is_listed_and_a_run_of_another_flow_is_refused(tmp_path) -> None:
    repo = make_repo(tmp_path / "repo", {"deploy": DEPLOY})
    slim = DEPLOY.replace("  - id: plan\n    kind: shell\n    run: echo plan for ${{ inputs.target }}\n", "")
    branch(repo, "slim", "deploy", slim.replace("${{ steps.plan.outputs.stdout }}", "none"))
    harness = Harness(tmp_path)
    run = recorded(harness, repo, "deploy")

    report = replay_run(harness.store, run["id"], draft_at(repo, "slim", "deploy"))

    removed = by_step(report)["plan"]
    assert (removed["verdict"], removed["status"], removed["old_status"]) == ("removed", None, "succeeded")
    other = load_flow_bytes(b"name: other\nsteps:\n  - {id: a, kind: set, values: {x: 1}}\n", "flows/other.yaml")
    with pytest.raises(UsageError, match="is a run of deploy"):
        replay_run(harness.store, run["id"], other)


# ---- nothing touches the world -------------------------------------------------------------------


class SshPort:
    """A TCP port on loopback that counts the connections made to it (an ssh host nobody may reach)."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.sock.settimeout(0.05)  # so the serving thread sees `stopped` soon after it is set
        self.accepted = 0
        self.stopped = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def _serve(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self.accepted += 1
            conn.close()

    def __enter__(self) -> "SshPort":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stopped.set()
        self._thread.join(timeout=5)
        self.sock.close()


WORLDLY = """\
name: worldly
steps:
  - id: call
    kind: http
    connection: api
    method: POST
    path: /orders
    json: {order: 1}
  - id: tell
    kind: notify
    channel: hook
    message: ordered
  - id: write
    kind: shell
    run: echo recorded
"""


def test_replay_never_executes_a_side_effect(tmp_path) -> None:
    """Every kind with an effect, fed or changed or new: no request, message, connection or file."""
    with HttpServer({"POST /orders": lambda r, n: json_reply(201, {"id": n}),
                     "POST /hook": lambda r, n: json_reply(200, {})}) as server, SshPort() as host:
        config = {"connections": {"api": {"kind": "http", "base_url": server.url},
                                  "box": {"kind": "ssh", "host": "127.0.0.1", "port": host.port, "user": "nobody"}},
                  "channels": {"hook": {"kind": "webhook", "url": f"{server.url}/hook"}}}
        repo = make_repo(tmp_path / "repo", {"worldly": WORLDLY})
        written = tmp_path / "written"
        changed = (WORLDLY.replace("json: {order: 1}", "json: {order: 2}").replace("ordered", "ordered again")
                   .replace("echo recorded", f"echo changed > {written}")
                   + f"  - id: remote\n    kind: ssh\n    connection: box\n    run: touch {written}\n")
        branch(repo, "changed", "worldly", changed)
        harness = harness_with_config(tmp_path, config)
        run = recorded(harness, repo, "worldly")
        assert run["status"] == "succeeded" and len(server.requests) == 2
        before = all_file_bytes(tmp_path / "data")

        same = replay_run(harness.store, run["id"], draft_at(repo, "main", "worldly"), config=harness.config)
        other = replay_run(harness.store, run["id"], draft_at(repo, "changed", "worldly"), config=harness.config)

        assert [e["verdict"] for e in same["steps"]] == ["same", "same", "same"]
        assert by_step(same)["call"]["outputs"]["new"]["json"] == {"id": 1}  # the recorded answer
        assert [(e["step"], e["verdict"]) for e in other["steps"]] == [
            ("call", "changed"), ("tell", "changed"), ("write", "changed"), ("remote", "added")]
        assert by_step(other)["call"]["would_run"] == 'POST api /orders {"order": 2}'
        assert by_step(other)["remote"]["would_run"] == f"ssh box: touch {written}"
        assert len(server.requests) == 2 and host.accepted == 0 and not written.exists()
        assert all_file_bytes(tmp_path / "data") == before


def test_inside_the_guard_every_impure_kind_processes_and_notifications_refuse() -> None:
    """The guard itself: a kind that is not `pure` cannot execute (nor kill) in a replay; a pure one can."""
    impure = [name for name in kind_names() if not kind_named(name).pure]
    assert sorted(impure) == ["http", "notify", "shell", "ssh"]

    async def attempt() -> list[str]:
        refused = []
        with no_side_effects("a replay"):
            for name in impure:
                with pytest.raises(SideEffectRefused):
                    await kind_named(name).execute(None)  # refused before it looks at anything
                refused.append(name)
            with pytest.raises(SideEffectRefused):
                await kind_named("ssh").kill_leftover({}, config=None, draft=False, pools=None)
            with pytest.raises(SideEffectRefused, match="start /bin/true"):
                await spawn(["/bin/true"], cwd=Path("/"), env={})
            with pytest.raises(SideEffectRefused, match="channel 'audit'"):
                await Notifier({"audit": {"kind": "log"}}).send("audit", Message("s", "t", []))
        child = await spawn(["/bin/true"], cwd=Path("/"), env={})  # outside the guard: as ever
        assert await child.wait() == 0
        child.close()
        return refused

    assert asyncio.run(attempt()) == impure


# ---- recent runs -----------------------------------------------------------------------------


def test_replay_recent_takes_the_last_live_runs_failed_first_and_sums_them_up(tmp_path) -> None:
    flow = DEPLOY.replace("echo building >&2; exit 3", 'test "${{ inputs.target }}" != prod')
    repo = make_repo(tmp_path / "repo", {"deploy": flow})
    branch(repo, "fix", "deploy", flow.replace('test "${{ inputs.target }}" != prod', "echo fixed"))
    harness = Harness(tmp_path)

    def later(target: str, *, draft: bool = False) -> dict:
        harness.clock.offset += timedelta(minutes=1)  # run ids sort by creation time
        return recorded(harness, repo, "deploy", {"target": target}, draft=draft)
    oldest, failed, passed = later("prod"), later("prod"), later("dev")
    later("prod", draft=True)  # a draft run: not among the live runs

    result = replay_recent(harness.store, "deploy", draft_at(repo, "fix", "deploy"), last=2)

    assert [r["run"] for r in result["runs"]] == [failed["id"], passed["id"]]
    assert oldest["id"] not in [r["run"] for r in result["runs"]]
    summary = result["summary"]
    assert summary["runs"] == 2
    assert summary["statuses"] == {"succeeded": 2}
    assert summary["recorded_statuses"] == {"failed": 1, "succeeded": 1}
    assert summary["outcome_changed"] == [failed["id"]]
    # the plans are fed, the repaired builds would run, one `report` was recorded and one was never reached
    assert summary["verdicts"] == {**dict.fromkeys(VERDICTS, 0), "same": 3, "changed": 2, "would_run": 1}
    assert result["flow"] == "deploy" and summary["not_replayed"] == []
    everything = replay_recent(harness.store, "deploy", draft_at(repo, "fix", "deploy"), last=10,
                               include_drafts=True)
    assert everything["summary"]["runs"] == 4
