"""The GitOps story end to end: the real daemon (a subprocess on loopback) over a real repository.

Branches are drafts, tags are live (DESIGN §3), triggers fire for live flows
only (DESIGN §2). The daemon reads either a local path (`repo: {path}`) or a
bare "remote" by URL (`repo: {url}`), keeping its own bare mirror in its data
dir; tags reach it by polling (`poll_interval: 1s`) or at once through a signed
push webhook (then polling is set to an hour, so only the webhook can explain
the change). Every wait is a poll with a deadline; no test asserts a duration.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
import pytest

from gitops_support import GitOpsDaemon, signature
from support import broken_flow, git, run_cli, simple_flow, wait_until
from postgres_support import files_only


def gated(name: str, marker: str, *, extra: str = "") -> str:
    """An approval (ops may decide, not the starter), then a `set` step that outputs `marker`."""
    return f"""
name: {name}
description: gated {name}
{extra}steps:
  - id: review
    kind: approval
    approvers: [group:ops]
    context: release {marker}
    timeout: 1h
    on_timeout: reject
  - id: mark
    kind: set
    values: {{marker: {marker}}}
"""


def napper(marker: str, seconds: int = 8) -> str:
    """A durable `wait`, then a `set` step that outputs `marker`."""
    return f"""
name: napper
steps:
  - id: nap
    kind: wait
    duration: {seconds}s
  - id: mark
    kind: set
    values: {{marker: {marker}}}
"""


@pytest.fixture
def daemons():
    started: list[GitOpsDaemon] = []
    yield started
    for daemon in started:
        daemon.close()


def launch(daemons: list, root: Path, flows: dict, *, tag: str | None = "v1.0.0", **kwargs) -> GitOpsDaemon:
    daemon = GitOpsDaemon(root, flows=flows, **kwargs)
    daemons.append(daemon)
    if tag:
        daemon.tag(tag)
    return daemon.start()


def assert_error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    return response.json()["error"]


def approve(daemon: GitOpsDaemon, run_id: str, step: str = "review") -> None:
    response = daemon.decide(run_id, step, "bob")
    assert response.status_code == 200, response.text


def head(daemon: GitOpsDaemon, ref: str = "HEAD") -> str:
    return git(daemon.repo, "rev-parse", ref)


# ---- the whole story ---------------------------------------------------------------------


@files_only
@pytest.mark.parametrize("mode", ["path", "url"])
def test_draft_then_tag_then_in_flight_runs_keep_their_commit(tmp_path: Path, daemons: list, mode: str) -> None:
    remote = mode == "url"
    # with a URL, only the push webhook prompts a reconcile; with a path, only polling does
    daemon = launch(daemons, tmp_path, {"deploy": gated("deploy", "one"), "napper": napper("one")},
                    remote=remote, poll_interval="1h" if remote else "1s")
    c1 = head(daemon)
    health = daemon.health()
    assert health["ok"] is True and health["repo"]["live"] == {"deploy": "v1.0.0", "napper": "v1.0.0"}
    if remote:
        assert health["repo"]["source"] == str(daemon.remote)
        mirror = daemon.data / "mirror.git"
        assert git(mirror, "rev-parse", "--is-bare-repository") == "true"

    # a branch is a draft: run on demand, marked, pinned to the branch's commit
    draft_sha = daemon.branch("feature", {"deploy": gated("deploy", "draft")})
    if remote:
        assert daemon.push_webhook().status_code == 202

    def start_draft() -> dict | None:
        response = daemon.api("alice").post("/api/v1/flows/deploy/runs", json={"inputs": {}, "ref": "feature"})
        return response.json() if response.status_code == 201 else None

    draft = wait_until(start_draft, 15, message="a draft run on the new branch")
    assert draft["draft"] is True and draft["ref"] == "refs/heads/feature"
    assert draft["commit"] == draft_sha and draft["version"] is None
    daemon.wait_step(draft["id"], "review")
    # the branch moves on; the draft run does not
    daemon.branch("feature", {"deploy": gated("deploy", "draft-two")})
    approve(daemon, draft["id"])
    assert daemon.wait_end(draft["id"])["steps"]["mark"]["outputs"] == {"marker": "draft"}
    assert daemon.live_tag("deploy") == "v1.0.0"  # a branch never changes what is live
    daemon.branch("broken", {"deploy": broken_flow("deploy")})
    if remote:
        assert daemon.push_webhook().status_code == 202
    wait_until(lambda: daemon.api().post("/api/v1/flows/deploy/runs", json={"ref": "broken"}).status_code != 404,
               15, message="the broken branch to be visible")
    invalid = daemon.api().post("/api/v1/flows/deploy/runs", json={"inputs": {}, "ref": "broken"})
    assert invalid.status_code == 422 and "teleport" in invalid.text

    # live runs in flight: one parked on an approval, one on a durable wait
    parked = daemon.start_run("deploy")
    assert (parked["draft"], parked["version"], parked["ref"], parked["commit"]) == \
        (False, "v1.0.0", "refs/tags/v1.0.0", c1)
    daemon.wait_step(parked["id"], "review")
    sleeping = daemon.start_run("napper")
    daemon.wait_step(sleeping["id"], "nap")

    # a newer release: new runs use it at once, in-flight runs do not
    c2 = daemon.commit("release two", flows={"deploy": gated("deploy", "two"), "napper": napper("two")})
    daemon.tag("v1.1.0", message="two")
    if remote:
        assert daemon.push_webhook().status_code == 202
    daemon.wait_live("deploy", "v1.1.0")
    fresh = daemon.start_run("deploy")
    assert (fresh["version"], fresh["commit"], fresh["draft"]) == ("v1.1.0", c2, False)

    # ... and across a restart
    assert daemon.run(sleeping["id"])["status"] == "waiting", "the wait ended before the restart"
    daemon.restart()
    assert daemon.run(parked["id"])["status"] == "waiting"
    approve(daemon, parked["id"])
    done = daemon.wait_end(parked["id"])
    assert done["status"] == "succeeded" and done["steps"]["mark"]["outputs"] == {"marker": "one"}
    assert (done["version"], done["commit"]) == ("v1.0.0", c1)
    slept = daemon.wait_end(sleeping["id"], timeout=30)
    assert slept["status"] == "succeeded" and slept["steps"]["mark"]["outputs"] == {"marker": "one"}
    approve(daemon, fresh["id"])
    assert daemon.wait_end(fresh["id"])["steps"]["mark"]["outputs"] == {"marker": "two"}
    # the run keeps the exact source it ran
    kept = (daemon.data / "runs" / parked["id"] / "flow.yaml").read_text()
    assert kept.strip() == git(daemon.repo, "show", f"{c1}:flows/deploy.yaml").strip()

    drafts = daemon.api().get("/api/v1/runs", params={"draft": "true", "flow": "deploy"}).json()["runs"]
    assert [r["id"] for r in drafts] == [draft["id"]]


def test_push_webhook_is_signed_and_replays_are_dropped(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")}, remote=True, poll_interval="1h")
    daemon.commit("two", flows={"deploy": simple_flow("deploy", "two")})
    daemon.tag("v1.1.0")
    body = b'{"ref": "refs/tags/v1.1.0", "after": "0000"}'

    assert_error(daemon.push_webhook(body, sign=False), 401)
    assert_error(daemon.push_webhook(body, secret="not-the-secret"), 401)
    forged = daemon.api(None).post("/api/v1/git/webhook", content=body + b" ", headers={
        "X-Hub-Signature-256": signature(daemon.webhook_secret, body), "X-GitHub-Delivery": "forged"})
    assert_error(forged, 401)
    assert daemon.live_tag("deploy") == "v1.0.0"  # nothing above prompted a reconcile

    first = daemon.push_webhook(body, delivery="delivery-1")
    assert first.status_code == 202 and first.json() == {"accepted": True, "duplicate": False}
    daemon.wait_live("deploy", "v1.1.0")
    run = daemon.start_run("deploy")
    assert run["version"] == "v1.1.0"
    assert daemon.wait_end(run["id"])["steps"]["mark"]["outputs"] == {"marker": "two"}

    again = daemon.push_webhook(body, delivery="delivery-1")
    assert again.status_code == 202 and again.json()["duplicate"] is True
    assert daemon.push_webhook(body, delivery="delivery-2").json()["duplicate"] is False


def test_without_a_webhook_a_tag_is_picked_up_by_polling(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")}, remote=True, poll_interval="1s")
    before = daemon.health()["repo"]["last_reconciled"]
    c2 = daemon.commit("two", flows={"deploy": simple_flow("deploy", "two")})
    daemon.tag("v2.0.0")
    daemon.wait_live("deploy", "v2.0.0", timeout=15)
    health = daemon.health()
    assert health["repo"]["last_reconciled"] != before and health["repo"]["error"] is None
    run = daemon.start_run("deploy")
    assert (run["version"], run["commit"]) == ("v2.0.0", c2)


# ---- bad releases ----------------------------------------------------------------------


def test_broken_tag_is_refused_and_a_rollback_tag_goes_live(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy"), "other": simple_flow("other")})
    c1 = head(daemon)
    c2 = daemon.commit("deploy broken", flows={"deploy": broken_flow("deploy"),
                                               "other": simple_flow("other", "two")})
    daemon.tag("v1.1.0")

    def refused() -> dict | None:
        flows = daemon.flows()
        return flows if flows["deploy"]["refused"] else None

    flows = wait_until(refused, 15, message="the refusal of v1.1.0 in /api/v1/flows")
    for name in ("deploy", "other"):  # all or nothing: the valid flow is refused with it
        assert flows[name]["live"]["tag"] == "v1.0.0" and flows[name]["live"]["commit"] == c1
        assert flows[name]["refused"][0]["tag"] == "v1.1.0" and flows[name]["refused"][0]["commit"] == c2
        assert any("teleport" in e["message"] for e in flows[name]["refused"][0]["errors"])
    health = daemon.health()
    assert health["ok"] is True and health["repo"]["live"] == {"deploy": "v1.0.0", "other": "v1.0.0"}
    run = daemon.start_run("deploy")
    assert (run["version"], run["commit"]) == ("v1.0.0", c1)

    c3 = daemon.commit("deploy fixed", flows={"deploy": simple_flow("deploy", "three")})
    daemon.tag("v1.2.0")
    daemon.wait_live("deploy", "v1.2.0")
    assert daemon.start_run("deploy")["commit"] == c3

    # rollback: a higher tag on the old commit
    daemon.tag("v1.2.1", c1, message="roll back to v1.0.0's content")
    daemon.wait_live("deploy", "v1.2.1")
    rolled = daemon.start_run("deploy")
    assert (rolled["version"], rolled["commit"]) == ("v1.2.1", c1)
    assert daemon.wait_end(rolled["id"])["steps"]["mark"]["outputs"] == {"marker": "one"}


def test_a_refused_tag_is_logged_by_the_daemon(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")})
    daemon.commit("broken", flows={"deploy": broken_flow("deploy")})
    daemon.tag("v1.1.0")
    wait_until(lambda: daemon.flows()["deploy"]["refused"], 15, message="the refusal")
    log = daemon.log_path.read_text()
    assert "v1.1.0" in log and "refus" in log.lower()


def test_moved_and_deleted_tags_are_reported_by_the_daemon(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")}, remote=True)
    c1 = head(daemon)
    daemon.commit("two", flows={"deploy": simple_flow("deploy", "two")})
    daemon.tag("v1.1.0")
    daemon.wait_live("deploy", "v1.1.0")
    c3 = daemon.commit("three", flows={"deploy": simple_flow("deploy", "three")})
    daemon.tag("v1.0.0", c3, force=True)  # moved after it was seen
    git(daemon.repo, "tag", "-d", "v1.1.0")
    git(daemon.repo, "push", "-q", "origin", ":refs/tags/v1.1.0")  # deleted after it was seen

    def problems() -> dict | None:
        found = {p["tag"]: p["problem"] for p in daemon.health()["repo"]["problems"]}
        return found if len(found) == 2 else None

    assert wait_until(problems, 15, message="moved and deleted tags in health") == {"v1.0.0": "moved",
                                                                                     "v1.1.0": "deleted"}
    assert daemon.live_tag("deploy") == "v1.1.0"
    yank = daemon.start_run("deploy")
    assert yank["version"] == "v1.1.0"
    assert daemon.wait_end(yank["id"])["steps"]["mark"]["outputs"] == {"marker": "two"}
    log = daemon.log_path.read_text()
    assert "v1.0.0 was moved" in log and "v1.1.0 was deleted" in log
    assert git(daemon.data / "mirror.git", "rev-parse", "refs/tags/v1.0.0") == c3 != c1


def test_a_flow_deleted_in_a_newer_release_refuses_new_runs_but_in_flight_ones_finish(
        tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"doomed": gated("doomed", "one"), "keeper": simple_flow("keeper")})
    c1 = head(daemon)
    in_flight = daemon.start_run("doomed")
    daemon.wait_step(in_flight["id"], "review")
    daemon.commit("drop doomed", flows={"doomed": None})
    daemon.tag("v2.0.0")
    daemon.wait_live("doomed", None)
    assert daemon.live_tag("keeper") == "v2.0.0"

    error = assert_error(daemon.api().post("/api/v1/flows/doomed/runs", json={"inputs": {}}), 404)
    assert "removed" in error["message"] and error.get("hint")
    flows = daemon.flows()
    assert flows["doomed"]["live"] is None and flows["doomed"]["removed"] is True

    approve(daemon, in_flight["id"])
    done = daemon.wait_end(in_flight["id"])
    assert done["status"] == "succeeded" and done["commit"] == c1
    assert done["steps"]["mark"]["outputs"] == {"marker": "one"}


# ---- triggers: live flows only ----------------------------------------------------------

TICKER = simple_flow("ticker", "tick", extra="triggers:\n  - schedule: {cron: '0 0 1 1 *', timezone: UTC}\n")


def test_schedule_timers_are_planned_only_for_live_flows(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"hello": simple_flow("hello")})
    daemon.branch("feature", {"ticker": TICKER})
    daemon.commit("ticker on main, not released", flows={"ticker": TICKER})
    # let the daemon see both refs change (a poll), with nothing released
    wait_until(lambda: daemon.health()["repo"]["last_reconciled"], 5)
    marker = daemon.health()["repo"]["last_reconciled"]
    wait_until(lambda: daemon.health()["repo"]["last_reconciled"] != marker, 10, message="a poll")
    assert daemon.health()["timers"] == 0
    assert daemon.flows().get("ticker") is None

    daemon.tag("v1.1.0")
    daemon.wait_live("ticker", "v1.1.0")
    wait_until(lambda: daemon.health()["timers"] == 1, 10, message="the ticker's timer")
    assert daemon.api().get("/api/v1/runs", params={"flow": "ticker"}).json()["runs"] == []


def test_a_release_does_not_duplicate_schedule_timers(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"hello": simple_flow("hello"), "ticker": TICKER})
    wait_until(lambda: daemon.health()["timers"] == 1, 10, message="the ticker's timer")
    for n, version in enumerate(("v1.1.0", "v1.2.0")):
        daemon.commit(f"hello {n}", flows={"hello": simple_flow("hello", f"n{n}")})
        daemon.tag(version)
        daemon.wait_live("hello", version)
    marker = daemon.health()["repo"]["last_reconciled"]  # planning is spawned on a live change; let it run
    wait_until(lambda: daemon.health()["repo"]["last_reconciled"] != marker, 10, message="a poll")
    assert daemon.health()["timers"] == 1


HOOKED = simple_flow("hooked", "hooked", extra="""inputs:
  order_id: {type: string, required: true}
  amount: {type: number, default: 0}
triggers:
  - webhook: {secret: hook-secret}
""")


def test_webhook_trigger_is_signed_validates_inputs_and_fires_for_live_flows_only(
        tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"hooked": HOOKED, "plain": simple_flow("plain")}, tag=None,
                    hook_secrets=("hook-secret",))
    payload = {"order_id": "A-1", "amount": 3}
    assert_error(daemon.hook("hooked", payload), 404)  # no release tags yet: nothing is live

    daemon.tag("v1.0.0")
    daemon.wait_live("hooked", "v1.0.0")
    response = daemon.hook("hooked", payload)
    assert response.status_code == 201, response.text
    run = response.json()
    assert run["inputs"] == payload and run["started_by"] == "webhook"
    assert (run["draft"], run["version"]) == (False, "v1.0.0")
    assert daemon.wait_end(run["id"])["status"] == "succeeded"
    defaulted = daemon.hook("hooked", {"order_id": "A-2"})
    assert defaulted.status_code == 201 and defaulted.json()["inputs"] == {"order_id": "A-2", "amount": 0}

    before = len(daemon.api().get("/api/v1/runs", params={"flow": "hooked"}).json()["runs"])
    assert_error(daemon.hook("hooked", {"amount": 3}), 422)                 # order_id missing
    assert_error(daemon.hook("hooked", {"order_id": "A-3", "amount": "lots"}), 422)
    assert_error(daemon.hook("hooked", None, raw=b"not json"), 422)
    assert_error(daemon.hook("hooked", payload, secret="wrong-secret"), 401)
    unsigned = daemon.api(None).post("/hooks/hooked", json=payload)
    assert_error(unsigned, 401)
    assert len(daemon.api().get("/api/v1/runs", params={"flow": "hooked"}).json()["runs"]) == before

    # a flow with no webhook trigger, and one that exists only on a branch (a draft): 404
    assert_error(daemon.hook("plain", {}), 404)
    drafty = HOOKED.replace("name: hooked", "name: drafty")
    daemon.branch("feature", {"drafty": drafty})
    response = daemon.api().post("/api/v1/flows/drafty/runs", json={"inputs": payload, "ref": "feature"})
    assert response.status_code == 201 and response.json()["draft"] is True  # it is valid and runnable
    assert_error(daemon.hook("drafty", payload), 404)


def test_concurrency_one_queues_the_second_run_until_the_first_ends(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"single": gated("single", "one", extra="concurrency: 1\n")})
    first = daemon.start_run("single")
    daemon.wait_step(first["id"], "review")
    second = daemon.start_run("single")
    assert second["status"] == "queued"
    third = daemon.start_run("single")
    # give the daemon every chance to (wrongly) start them
    marker = daemon.health()["repo"]["last_reconciled"]
    wait_until(lambda: daemon.health()["repo"]["last_reconciled"] != marker, 10, message="a poll")
    assert daemon.run(second["id"])["status"] == "queued" and daemon.run(third["id"])["status"] == "queued"

    approve(daemon, first["id"])
    assert daemon.wait_end(first["id"])["status"] == "succeeded"
    daemon.wait_step(second["id"], "review")
    assert daemon.run(third["id"])["status"] == "queued"
    first_end = daemon.events(first["id"])[-1]["at"]
    second_start = next(e["at"] for e in daemon.events(second["id"]) if e["type"] == "run_started")
    assert second_start >= first_end
    approve(daemon, second["id"])
    daemon.wait_step(third["id"], "review")
    approve(daemon, third["id"])
    assert daemon.wait_end(third["id"])["status"] == "succeeded"


# ---- the remote goes away ----------------------------------------------------------------


def test_an_unreachable_remote_keeps_the_last_good_state(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")}, remote=True, poll_interval="1s")
    c1 = head(daemon)
    hidden = tmp_path / "remote-gone.git"
    shutil.move(daemon.remote, hidden)
    try:
        health = wait_until(lambda: (h := daemon.health())["repo"]["error"] and h, 15,
                            message="health to report the unreachable remote")
        assert health["ok"] is False and health["repo"]["live"] == {"deploy": "v1.0.0"}
        run = daemon.start_run("deploy")
        assert (run["version"], run["commit"]) == ("v1.0.0", c1)
        assert daemon.wait_end(run["id"])["status"] == "succeeded"
        assert daemon.flows()["deploy"]["live"]["tag"] == "v1.0.0"
    finally:
        shutil.move(hidden, daemon.remote)
    health = wait_until(lambda: (h := daemon.health())["repo"]["error"] is None and h, 15,
                        message="health to recover once the remote is back")
    assert health["ok"] is True


def test_a_restart_while_the_remote_is_unreachable_keeps_the_releases(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")}, remote=True, poll_interval="1s")
    c1 = head(daemon)
    c2 = daemon.commit("unreleased work on main", flows={"deploy": simple_flow("deploy", "unreleased")})
    wait_until(lambda: git(daemon.data / "mirror.git", "rev-parse", "refs/heads/main") == c2, 15,
               message="the mirror to fetch main")
    daemon.stop()
    shutil.move(daemon.remote, tmp_path / "remote-gone.git")
    daemon.start()
    health = daemon.health()
    assert health["ok"] is False and health["repo"]["error"]
    assert health["repo"]["live"] == {"deploy": "v1.0.0"}
    run = daemon.start_run("deploy")
    assert (run["draft"], run["version"], run["commit"]) == (False, "v1.0.0", c1)


def test_health_names_the_unreachable_remote(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")}, remote=True, poll_interval="1s")
    shutil.move(daemon.remote, tmp_path / "remote-gone.git")
    error = wait_until(lambda: daemon.health()["repo"]["error"], 15, message="the error in health")
    assert str(daemon.remote) in error or "does not appear to be a git repository" in error, error


@files_only
def test_pin_and_yank_from_the_cli_reach_the_daemon(tmp_path: Path, daemons: list) -> None:
    daemon = launch(daemons, tmp_path, {"deploy": simple_flow("deploy")})
    c1 = head(daemon)
    c2 = daemon.commit("two", flows={"deploy": simple_flow("deploy", "two")})
    daemon.tag("v1.1.0")
    daemon.wait_live("deploy", "v1.1.0")
    where = ["--repo", str(daemon.repo), "--data", str(daemon.data), "--json"]
    assert run_cli(["pin", "deploy", "1.0.0", *where])[0] == 0
    daemon.wait_live("deploy", "v1.0.0")
    assert daemon.flows()["deploy"]["pinned"] == "1.0.0"
    assert daemon.start_run("deploy")["commit"] == c1
    assert run_cli(["unpin", "deploy", *where])[0] == 0
    daemon.wait_live("deploy", "v1.1.0")
    assert daemon.start_run("deploy")["commit"] == c2
    assert run_cli(["yank", "deploy", "1.1.0", *where])[0] == 0
    daemon.wait_live("deploy", "v1.0.0")
    assert daemon.flows()["deploy"]["yanked"] == ["1.1.0"]
    assert daemon.start_run("deploy")["version"] == "v1.0.0"
