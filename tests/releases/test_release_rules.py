"""Release approval in the release model itself: a real git repository, the Resolver and the data directory.

The end-to-end story through the daemon is tests/releases/test_release_approval.py; here, quickly,
the corners: an invalid rule file refuses its tag, the first tag has no live rule, a per-flow rule
replaces `all`, pins and yanks stay the emergency levers, and git identities map to users.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from runner.auth import load_users, may_decide_release
from runner.config import load_config
from runner.errors import ConfigError, Forbidden, UsageError
from runner.releases import approval, changes
from runner.releases.live import Resolver
from runner.schemas import load_schema
from support import flow_text, git, make_repo, simple_flow, write_config, write_flow

ROOT = changes.Actor("root", "daemon", "emergency")


def users(tmp_path: Path):
    spec = {"alice": {"roles": ["approve"], "git_emails": ["Alice@Example.com"]},
            "bob": {"roles": ["approve"], "git_names": ["Bob Builder"]},
            "carol": {"roles": ["approve"]}}
    for name, user in spec.items():
        user["token_sha256"] = hashlib.sha256(name.encode()).hexdigest()
    return load_users({"users": spec}, tmp_path / "data")


def repo_with_rule(tmp_path: Path, rule: dict, flows: tuple[str, ...] = ("deploy",)) -> Path:
    repo = make_repo(tmp_path / "repo", {name: simple_flow(name) for name in flows})
    (repo / "signoff-release.yaml").write_text(flow_text(rule))
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "rules")
    git(repo, "tag", "v1.0.0")
    return repo


def next_tag(repo: Path, tag: str, marker: str, flows: tuple[str, ...] = ("deploy",)) -> None:
    for name in flows:
        write_flow(repo, name, simple_flow(name, marker))
    git(repo, "commit", "-qam", marker)
    git(repo, "tag", tag)


def live(resolver: Resolver, flow: str = "deploy"):
    return resolver.resolve().flows[flow]


def test_an_invalid_rule_file_refuses_its_tag(tmp_path: Path) -> None:
    repo = repo_with_rule(tmp_path, {"all": {"approvers": ["group:ops"]}})
    resolver = Resolver(repo, tmp_path / "data")
    assert live(resolver).release.tag == "v1.0.0"  # the first tag: nothing live to read a rule from
    (repo / "signoff-release.yaml").write_text(flow_text({"all": {"approver": ["bob"]}}))
    next_tag(repo, "v1.1.0", "two")
    flow = live(resolver)
    assert flow.release.tag == "v1.0.0" and not flow.pending
    errors = flow.refused[0]["errors"]
    assert errors[0]["file"] == "signoff-release.yaml@v1.1.0" and "approver" in errors[0]["message"]


def test_a_flow_rule_replaces_all_and_a_flow_under_no_rule_goes_live_at_once(tmp_path: Path) -> None:
    repo = repo_with_rule(tmp_path, {"flows": {"deploy": {"approvers": ["carol"]}}}, flows=("deploy", "hello"))
    resolver = Resolver(repo, tmp_path / "data")
    resolver.resolve()
    next_tag(repo, "v1.1.0", "two", flows=("deploy", "hello"))
    flows = resolver.resolve().flows
    assert flows["hello"].release.tag == "v1.1.0" and not flows["hello"].pending
    assert flows["deploy"].release.tag == "v1.0.0" and [p["tag"] for p in flows["deploy"].pending] == ["v1.1.0"]
    assert flows["deploy"].pending[0]["rule"]["approvers"] == ["carol"]
    record = approval.decide(resolver.state, "deploy", "1.1.0", users(tmp_path).authenticate("carol"),
                             users(tmp_path), "approve", None, clock=resolver.clock)
    assert record["status"] == "approved" and live(resolver).release.tag == "v1.1.0"


def test_pins_and_yanks_stay_the_emergency_levers(tmp_path: Path) -> None:
    repo = repo_with_rule(tmp_path, {"all": {"approvers": ["carol"]}})
    data = tmp_path / "data"
    resolver = Resolver(repo, data)
    resolver.resolve()
    next_tag(repo, "v1.1.0", "two")
    assert live(resolver).release.tag == "v1.0.0"
    changes.override(repo, data, "pin", "deploy", "1.1.0", ROOT)  # an admin's pin goes past the approval
    flow = live(resolver)
    assert flow.release.tag == "v1.1.0" and not flow.pending
    assert resolver.state.load("approvals", {})["deploy v1.1.0"]["status"] == "overridden"
    changes.override(repo, data, "unpin", "deploy", None, ROOT)
    assert live(resolver).release.tag == "v1.1.0"  # it was live: it needs no approval again

    next_tag(repo, "v1.2.0", "three")
    assert [p["tag"] for p in live(resolver).pending] == ["v1.2.0"]
    changes.override(repo, data, "yank", "deploy", "1.1.0", ROOT)
    assert live(resolver).release.tag == "v1.0.0"  # back to what was live before, without asking
    everyone = users(tmp_path)
    approval.decide(resolver.state, "deploy", "1.2.0", everyone.authenticate("carol"), everyone, "reject",
                    "no", clock=resolver.clock)
    with pytest.raises(UsageError, match="rejected"):
        changes.override(repo, data, "pin", "deploy", "1.2.0", ROOT)
    assert live(resolver).release.tag == "v1.0.0"


def test_git_identities_map_to_users_and_authors_may_not_approve(tmp_path: Path) -> None:
    everyone = users(tmp_path)
    assert everyone.of_git("Alice Example <alice@example.COM>") == "alice"
    assert everyone.of_git("Bob Builder <bob@elsewhere.org>") == "bob"
    assert everyone.of_git("carol <carol@signoff.invalid>") == "carol"  # a tag the daemon made for carol
    assert everyone.of_git("mallory <mallory@signoff.invalid>") is None
    assert everyone.of_git("Someone <someone@example.com>") is None
    pending = {"flow": "deploy", "tag": "v2.0.0", "rule": {"approvers": ["alice", "bob", "carol"]},
               "authors": ["A <alice@example.com>"], "released_by": "bob"}
    for name in ("alice", "bob"):
        right = may_decide_release(everyone.authenticate(name), pending, everyone)
        assert not right and "authored the release" in right.message
        assert may_decide_release(everyone.authenticate(name), pending, everyone, decision="reject")
    assert may_decide_release(everyone.authenticate("carol"), pending, everyone)
    assert may_decide_release(everyone.authenticate("alice"), {**pending, "rule": {
        "approvers": ["alice"], "allow_self_approval": True}}, everyone)
    with pytest.raises(Forbidden, match="not an approver"):
        may_decide_release(everyone.authenticate("carol"), {**pending, "rule": {"approvers": ["bob"]}},
                           everyone).check()


def test_the_config_takes_git_emails_and_git_names(tmp_path: Path) -> None:
    path = write_config(tmp_path, {"users": {"alice": {"token_sha256": "0" * 64, "git_emails": ["a@example.com"],
                                                       "git_names": ["Alice Example"]}}})
    assert load_config(path).data["users"]["alice"]["git_emails"] == ["a@example.com"]
    bad = write_config(tmp_path, {"users": {"alice": {"token_sha256": "0" * 64, "git_emails": ["not an address"]}}})
    with pytest.raises(ConfigError, match="git_emails"):
        load_config(bad)


def test_the_release_schema_describes_every_field_and_allows_no_others() -> None:
    schema = load_schema("release")

    def walk(node: object, where: str) -> list[str]:
        problems = []
        if isinstance(node, dict):
            if node.get("type") == "object" and "additionalProperties" not in node:
                problems.append(f"{where}: an object without additionalProperties")
            for name, field in (node.get("properties") or {}).items():
                if "description" not in field:
                    problems.append(f"{where}.{name}: no description")
            for key, value in node.items():
                problems += walk(value, f"{where}.{key}")
        return problems

    assert walk(schema, "release") == []
