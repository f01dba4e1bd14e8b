"""The release model (DESIGN §3) against real git repositories, through the real CLI and `Resolver`.

Every test builds a `GitWorld`: a bare "remote", a clone `dev` where flows are
committed, tagged and pushed, and a clone `ops` that fetches them, which is
what `signoff --repo` reads. Tags travel between them with real `git push` and
`git fetch`. The CLI runs as a subprocess (`python -m runner ... --repo --data`);
`runner.releases.live.Resolver` is used in-process where the JSON of the CLI would add
nothing.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from gitops_support import GitWorld, commit
from support import broken_flow, git, identify, run_cli, simple_flow
from runner.releases.live import Resolver


@pytest.fixture
def world(tmp_path: Path) -> GitWorld:
    return GitWorld(tmp_path / "git", flows={"alpha": simple_flow("alpha"), "beta": simple_flow("beta")})


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


def signoff(world: GitWorld, data: Path, *args: str, env: dict | None = None) -> tuple[int, str, str, object]:
    return run_cli([*args, "--repo", str(world.ops), "--data", str(data)], env=env)


def releases(world: GitWorld, data: Path, *extra: str, env: dict | None = None) -> dict:
    code, out, err, doc = signoff(world, data, "releases", "--json", *extra, env=env)
    assert code == 0, f"releases failed ({code}):\n{out}\n{err}"
    doc["by_flow"] = {entry["flow"]: entry for entry in doc["flows"]}
    return doc


def live_of(doc: dict, flow: str) -> tuple[str | None, str | None]:
    live = doc["by_flow"][flow]["live"]
    return (live["tag"], live["commit"]) if live else (None, None)


def resolve(world: GitWorld, data: Path, **kwargs):
    return Resolver(world.ops, data, **kwargs).resolve()


def resolved_tag(resolution, flow: str) -> str | None:
    live = resolution.flows.get(flow)
    return live.release.tag if live and live.release else None


# ---- which tags release what ----------------------------------------------------------


def test_repo_tag_releases_every_flow_at_its_commit(world: GitWorld, data: Path) -> None:
    doc = releases(world, data)
    assert doc["tagged"] is False and doc["flows"] == []  # nothing is released before the first tag

    world.tag("v1.0.0")
    world.sync()
    doc = releases(world, data)
    assert doc["tagged"] is True
    assert set(doc["by_flow"]) == {"alpha", "beta"}
    for flow in ("alpha", "beta"):
        live = doc["by_flow"][flow]["live"]
        assert live["tag"] == "v1.0.0" and live["version"] == "1.0.0" and live["scope"] == "repo"
        assert live["commit"] == world.first

    resolution = resolve(world, data)
    assert {name: resolved_tag(resolution, name) for name in resolution.flows} == {"alpha": "v1.0.0",
                                                                                "beta": "v1.0.0"}


def test_flow_tag_then_follows_only_its_own_tags(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    c2 = world.commit("alpha two", flows={"alpha": simple_flow("alpha", "two")})
    world.tag("alpha/v1.1.0")
    world.sync()
    doc = releases(world, data)
    assert live_of(doc, "alpha") == ("alpha/v1.1.0", c2)
    assert doc["by_flow"]["alpha"]["live"]["scope"] == "flow"
    assert live_of(doc, "beta") == ("v1.0.0", world.first)

    # a higher whole-repo tag releases beta, but alpha now follows only alpha/v* tags
    c3 = world.commit("both three", flows={"alpha": simple_flow("alpha", "three"),
                                           "beta": simple_flow("beta", "three")})
    world.tag("v2.0.0")
    world.sync()
    doc = releases(world, data)
    assert live_of(doc, "beta") == ("v2.0.0", c3)
    assert live_of(doc, "alpha") == ("alpha/v1.1.0", c2)
    assert doc["by_flow"]["alpha"]["versions"] == ["1.1.0"]

    # its own next tag moves it
    world.tag("alpha/v10.0.0")
    world.sync()
    assert resolved_tag(resolve(world, data), "alpha") == "alpha/v10.0.0"


def test_semver_order_not_lexical_not_by_date(world: GitWorld, data: Path) -> None:
    # v1.10.0 is the oldest tag on the oldest commit; v1.9.0 and v1.2.0 are newer by every date
    world.tag("v1.10.0", world.first, message="ten", date="2024-01-02T00:00:00Z")
    c2 = world.commit("newer", flows={"alpha": simple_flow("alpha", "newer")}, date="2024-06-01T00:00:00Z")
    world.tag("v1.9.0", c2, message="nine", date="2024-06-02T00:00:00Z")
    world.tag("v1.2.0", c2)
    world.sync()
    doc = releases(world, data)
    assert live_of(doc, "alpha") == ("v1.10.0", world.first)
    assert doc["by_flow"]["alpha"]["versions"] == ["1.10.0", "1.9.0", "1.2.0"]
    # flow tags too: numeric, not lexical
    world.tag("beta/v2.0.0", c2)
    world.tag("beta/v10.0.0", world.first)
    world.sync()
    assert resolved_tag(resolve(world, data), "beta") == "beta/v10.0.0"


def test_prereleases_are_never_live(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.commit("rc content", flows={"alpha": simple_flow("alpha", "rc")})
    world.tag("v2.0.0-rc.1")
    world.tag("v1.0.1-beta")
    world.sync()
    doc = releases(world, data)
    for flow in ("alpha", "beta"):
        assert live_of(doc, flow) == ("v1.0.0", world.first)
        assert sorted(doc["by_flow"][flow]["prereleases"]) == ["v1.0.1-beta", "v2.0.0-rc.1"]
        assert doc["by_flow"][flow]["versions"] == ["1.0.0"]


def test_a_prerelease_flow_tag_does_not_take_the_flow_offline(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.sync()
    assert resolved_tag(resolve(world, data), "alpha") == "v1.0.0"
    world.commit("rc content", flows={"alpha": simple_flow("alpha", "rc")})
    world.tag("alpha/v2.0.0-rc.1")
    world.sync()
    doc = releases(world, data)
    assert doc["by_flow"]["alpha"]["prereleases"] == ["alpha/v2.0.0-rc.1"]
    assert live_of(doc, "alpha") == ("v1.0.0", world.first)


def test_lightweight_and_annotated_tags_both_release(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")  # lightweight
    c2 = world.commit("two", flows={"alpha": simple_flow("alpha", "two")})
    git(world.dev, "config", "user.name", "Rel Eng")
    git(world.dev, "config", "user.email", "releng@example.com")
    world.tag("v1.1.0", message="Second release\n\nwith notes", date="2025-03-04T05:06:07Z")
    world.sync()
    tag_object = git(world.ops, "rev-parse", "refs/tags/v1.1.0")
    assert tag_object != c2  # an annotated tag is its own object: the release must be peeled

    doc = releases(world, data)
    live = doc["by_flow"]["alpha"]["live"]
    assert live["tag"] == "v1.1.0" and live["commit"] == c2
    assert live["tagger"] == "Rel Eng <releng@example.com>"
    assert live["message"].startswith("Second release") and "with notes" in live["message"]
    assert live["date"].startswith("2025-03-04T05:06:07")

    # the lightweight one, shown through a pin, has no tagger
    code, _, err, _ = signoff(world, data, "pin", "alpha", "1.0.0", "--json")
    assert code == 0, err
    live = releases(world, data)["by_flow"]["alpha"]["live"]
    assert live["tag"] == "v1.0.0" and live["commit"] == world.first and live["tagger"] is None


def test_branch_and_tag_with_the_same_name_are_not_confused(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    # branch v1.1.0 holds a broken alpha; the tag v1.1.0 is on a valid commit
    git(world.dev, "checkout", "-q", "-b", "v1.1.0")
    branch_sha = commit(world.dev, "broken on a branch", flows={"alpha": broken_flow("alpha")})
    git(world.dev, "push", "-q", "origin", "refs/heads/v1.1.0:refs/heads/v1.1.0")
    git(world.dev, "checkout", "-q", "main")
    tag_sha = world.commit("tagged", flows={"alpha": simple_flow("alpha", "tagged")})
    world.tag("v1.1.0", tag_sha)
    # a branch that looks like a release, with no tag
    git(world.dev, "push", "-q", "origin", f"{tag_sha}:refs/heads/v9.0.0")
    world.sync()
    git(world.ops, "branch", "-q", "v1.1.0", "origin/v1.1.0")
    git(world.ops, "branch", "-q", "v9.0.0", "origin/v9.0.0")

    doc = releases(world, data)
    assert live_of(doc, "alpha") == ("v1.1.0", tag_sha)
    assert doc["by_flow"]["alpha"]["refused"] == []
    assert "9.0.0" not in doc["by_flow"]["alpha"]["versions"]
    assert {"branch": "refs/heads/v1.1.0", "commit": branch_sha} in doc["by_flow"]["alpha"]["drafts"]

    code, _, _, report = signoff(world, data, "validate", "--ref", "refs/heads/v1.1.0", "--json")
    assert code == 1 and report["ok"] is False
    code, _, _, report = signoff(world, data, "validate", "--ref", "refs/tags/v1.1.0", "--json")
    assert code == 0 and report["ok"] is True
    code, _, err, diff = signoff(world, data, "diff", "alpha", "--ref", "refs/heads/v1.1.0", "--json")
    assert code == 0, err
    assert diff["draft"] == {"ref": "refs/heads/v1.1.0", "commit": branch_sha}
    assert diff["live"] == {"tag": "v1.1.0", "commit": tag_sha}


# ---- refusals and their cache -----------------------------------------------------------


def test_whole_repo_tag_with_one_broken_flow_is_refused_whole(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.sync()
    releases(world, data)
    c2 = world.commit("alpha fine, beta broken", flows={"alpha": simple_flow("alpha", "two"),
                                                        "beta": broken_flow("beta")})
    world.tag("v1.1.0")
    world.sync()
    doc = releases(world, data)
    for flow in ("alpha", "beta"):  # alpha is valid at v1.1.0 and still keeps v1.0.0
        assert live_of(doc, flow) == ("v1.0.0", world.first)
        refused = doc["by_flow"][flow]["refused"]
        assert [r["tag"] for r in refused] == ["v1.1.0"] and refused[0]["commit"] == c2
        errors = refused[0]["errors"]
        assert errors and all("beta" in e["file"] for e in errors)
        assert any("teleport" in e["message"] for e in errors)
        assert all({"file", "line", "message"} <= set(e) for e in errors)

    code, out, _, _ = signoff(world, data, "releases")
    assert code == 0 and "refused v1.1.0" in out and "beta" in out

    # the history shows no activation of v1.1.0
    assert not [h for h in doc["by_flow"]["alpha"]["history"] if h.get("tag") == "v1.1.0"]


def test_a_refused_tag_that_drops_a_flow_keeps_it_live_from_the_first_resolve(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.commit("alpha broken, beta dropped", flows={"alpha": broken_flow("alpha"), "beta": None})
    world.tag("v1.1.0")
    world.sync()
    first = resolve(world, data)
    second = resolve(world, data)
    assert resolved_tag(second, "beta") == "v1.0.0"  # every flow keeps its previous version
    assert resolved_tag(first, "beta") == resolved_tag(second, "beta")


def test_refusal_is_cached_per_commit_and_never_retried(tmp_path: Path, data: Path) -> None:
    hooked = simple_flow("hooked", extra="triggers:\n  - webhook: {secret: hook}\n")
    world = GitWorld(tmp_path / "git", flows={"hooked": hooked})
    without = tmp_path / "without.yaml"
    without.write_text("secrets: {}\n")
    with_secret = tmp_path / "with.yaml"
    with_secret.write_text("secrets:\n  hook: {env: HOOK_VALUE}\n")
    env = {"HOOK_VALUE": "s3cret"}
    world.tag("v1.0.0")
    world.sync()

    doc = releases(world, data, "--config", str(without), env=env)
    refused = doc["by_flow"]["hooked"]["refused"]
    assert live_of(doc, "hooked") == (None, None)
    assert refused[0]["tag"] == "v1.0.0" and refused[0]["errors"][0]["rule"] == "unknown-secret"
    verdicts = json.loads((data / "releases" / "verdicts.json").read_text())
    key = f"*@{world.first}"
    assert verdicts[key]["ok"] is False

    # the config now defines the secret, so a fresh check would pass: the verdict is not retried
    doc = releases(world, data, "--config", str(with_secret), env=env)
    assert live_of(doc, "hooked") == (None, None)
    assert doc["by_flow"]["hooked"]["refused"][0]["tag"] == "v1.0.0"
    assert json.loads((data / "releases" / "verdicts.json").read_text())[key] == verdicts[key]

    # the same tag with a data dir that never saw it goes live: the cache, not the content, refused it
    fresh = releases(world, tmp_path / "fresh-data", "--config", str(with_secret), env=env)
    assert live_of(fresh, "hooked") == ("v1.0.0", world.first)


def test_tags_that_are_not_semver_are_ignored(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.commit("other", flows={"alpha": simple_flow("alpha", "other")})
    odd = ["latest", "v2", "v2.0", "2.0.0", "v02.0.0", "v2.0.0.1", "alpha/v3", "alpha/3.0.0", "Alpha/v3.0.0",
           "release-2.0.0"]
    for name in odd:
        world.tag(name)
    world.sync()
    doc = releases(world, data)
    assert sorted(doc["ignored_tags"]) == sorted(odd)
    assert live_of(doc, "alpha") == ("v1.0.0", world.first)
    assert live_of(doc, "beta") == ("v1.0.0", world.first)
    assert doc["by_flow"]["alpha"]["versions"] == ["1.0.0"]


def test_two_tags_pushed_at_once(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.sync()
    releases(world, data)
    c2 = world.commit("two", flows={"beta": simple_flow("beta", "two")})
    git(world.dev, "tag", "v1.1.0", c2)
    git(world.dev, "tag", "v1.2.0", c2)
    git(world.dev, "push", "-q", "origin", "refs/tags/v1.1.0", "refs/tags/v1.2.0")
    world.sync()
    doc = releases(world, data)
    assert live_of(doc, "beta") == ("v1.2.0", c2)
    assert doc["by_flow"]["beta"]["versions"] == ["1.2.0", "1.1.0", "1.0.0"]
    history = [h for h in doc["by_flow"]["beta"]["history"] if "tag" in h]
    assert [(h["previous"], h["tag"]) for h in history] == [(None, "v1.0.0"), ("v1.0.0", "v1.2.0")]


# ---- tags that change after they were seen ------------------------------------------------


def test_moved_tag_is_reported_and_keeps_its_first_commit(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.sync()
    assert live_of(releases(world, data), "alpha") == ("v1.0.0", world.first)
    c2 = world.commit("sneaky", flows={"alpha": simple_flow("alpha", "sneaky")})
    world.tag("v1.0.0", c2, force=True)
    world.sync()
    assert git(world.ops, "rev-parse", "refs/tags/v1.0.0^{commit}") == c2  # the clone did see the move

    doc = releases(world, data)
    assert live_of(doc, "alpha") == ("v1.0.0", world.first)
    moved = [p for p in doc["problems"] if p["tag"] == "v1.0.0"]
    assert moved and moved[0]["problem"] == "moved"
    assert world.first[:12] in moved[0]["message"] and c2[:12] in moved[0]["message"]
    resolution = resolve(world, data)
    assert resolution.flows["alpha"].release.commit == world.first


def test_a_moved_annotated_tag_keeps_the_metadata_of_what_was_released(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0", message="the real release")
    world.sync()
    assert releases(world, data)["by_flow"]["alpha"]["live"]["message"] == "the real release"
    c2 = world.commit("sneaky", flows={"alpha": simple_flow("alpha", "sneaky")})
    git(world.dev, "config", "user.name", "Mallory")
    world.tag("v1.0.0", c2, message="nothing to see here", force=True)
    world.sync()
    live = releases(world, data)["by_flow"]["alpha"]["live"]
    assert live["commit"] == world.first
    assert live["message"] == "the real release" and not live["tagger"].startswith("Mallory")


def test_deleted_tag_is_reported_and_its_release_kept(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.sync()
    releases(world, data)
    world.delete_tag("v1.0.0")
    world.sync()
    assert git(world.ops, "tag", "-l") == ""
    doc = releases(world, data)
    assert live_of(doc, "alpha") == ("v1.0.0", world.first)
    deleted = [p for p in doc["problems"] if p["tag"] == "v1.0.0"]
    assert deleted and deleted[0]["problem"] == "deleted"
    # a tag deleted before anyone saw it was never a release
    fresh = releases(world, data.parent / "fresh")
    assert fresh["tagged"] is False and fresh["flows"] == [] and fresh["problems"] == []


# ---- signoff release ----------------------------------------------------------------------


def test_release_creates_an_annotated_tag_and_pushes_it(world: GitWorld, data: Path) -> None:
    code, out, err, doc = signoff(world, data, "release", "alpha", "1.0.0", "--message", "First alpha", "--json")
    assert code == 0, f"{out}\n{err}"
    assert {key: doc[key] for key in ("flow", "tag", "version", "commit", "pushed_to", "previous", "via",
                                      "reason")} == {
        "flow": "alpha", "tag": "alpha/v1.0.0", "version": "1.0.0", "commit": world.first, "pushed_to": "origin",
        "previous": None, "via": "repository", "reason": "First alpha"}
    listing = git(world.remote, "for-each-ref", "refs/tags/",
                  "--format=%(refname) %(objecttype) %(*objectname) %(taggername) %(taggeremail) %(contents:subject)")
    assert listing == f"refs/tags/alpha/v1.0.0 tag {world.first} Release Manager <rm@example.com> First alpha"

    # another clone fetching the remote sees the release with its tagger and message
    git(world.dev, "fetch", "-q", "--tags", "origin")
    other = Resolver(world.dev, data.parent / "dev-data").resolve()
    release = other.flows["alpha"].release
    assert release.tag == "alpha/v1.0.0" and release.commit == world.first
    assert release.tagger == "Release Manager <rm@example.com>" and release.message == "First alpha"
    assert other.flows.get("beta") is None or other.flows["beta"].release is None


def test_release_without_a_remote_only_tags_locally(tmp_path: Path) -> None:
    repo = tmp_path / "solo"
    git(tmp_path, "init", "-q", "-b", "main", str(repo))
    identify(repo)
    sha = commit(repo, "one flow", flows={"solo": simple_flow("solo")})
    code, out, err, doc = run_cli(["release", "solo", "0.1.0", "--repo", str(repo), "--data", str(tmp_path / "d"),
                                   "--json"])
    assert code == 0, f"{out}\n{err}"
    assert doc["pushed_to"] is None and doc["commit"] == sha
    assert git(repo, "cat-file", "-t", "refs/tags/solo/v0.1.0") == "tag"


def test_release_refuses_an_invalid_flow_and_tags_nothing(world: GitWorld, data: Path) -> None:
    git(world.dev, "checkout", "-q", "-b", "broken")
    commit(world.dev, "break alpha", flows={"alpha": broken_flow("alpha")})
    git(world.dev, "push", "-q", "origin", "broken")
    world.sync()
    code, out, err, doc = signoff(world, data, "release", "alpha", "2.0.0", "--ref", "origin/broken", "--json")
    assert code == 1, f"{out}\n{err}"
    assert doc["error"]["code"] == "flow_invalid"
    assert any("teleport" in e["message"] for e in doc["error"]["errors"])
    assert git(world.ops, "tag", "-l") == "" and git(world.remote, "tag", "-l") == ""
    # a flow that does not exist is refused too
    code, _, _, doc = signoff(world, data, "release", "gamma", "1.0.0", "--json")
    assert code == 1 and doc["error"]["code"] == "not_found"
    assert git(world.ops, "tag", "-l") == ""
    # and a version that is not semver is a usage error
    code, _, _, _ = signoff(world, data, "release", "alpha", "1.0", "--json")
    assert code == 2 and git(world.ops, "tag", "-l") == ""


def test_release_refuses_a_version_not_higher_than_live_unless_rollback(world: GitWorld, data: Path) -> None:
    world.tag("v1.2.0")
    world.sync()
    for version in ("1.2.0", "1.1.9", "1.2.0-rc.1"):
        code, out, err, doc = signoff(world, data, "release", "alpha", version, "--json")
        assert code == 2, f"{version}: {out}\n{err}"
        assert "v1.2.0" in doc["error"]["message"]
    assert git(world.remote, "tag", "-l") == "v1.2.0"

    code, out, err, doc = signoff(world, data, "release", "alpha", "1.1.9", "--rollback", "--json")
    assert code == 0, f"{out}\n{err}"
    assert doc["previous"] == "v1.2.0" and doc["pushed_to"] == "origin"
    assert "alpha/v1.1.9" in git(world.remote, "tag", "-l").split()
    # alpha now follows its own tags, so the explicit rollback is what is live
    resolution = resolve(world, data)
    assert resolved_tag(resolution, "alpha") == "alpha/v1.1.9"
    assert resolved_tag(resolution, "beta") == "v1.2.0"


def test_rollback_is_a_higher_tag_on_an_older_commit(world: GitWorld, data: Path) -> None:
    code, _, err, _ = signoff(world, data, "release", "alpha", "1.1.0", "--json")
    assert code == 0, err
    c2 = world.commit("a bad idea", flows={"alpha": simple_flow("alpha", "bad-idea")})
    world.sync()
    code, _, err, _ = signoff(world, data, "release", "alpha", "1.2.0", "--ref", "origin/main", "--json")
    assert code == 0, err
    assert resolve(world, data).flows["alpha"].release.commit == c2

    code, out, err, doc = signoff(world, data, "release", "alpha", "1.2.1", "--ref", world.first, "--json")
    assert code == 0, f"{out}\n{err}"
    assert doc["previous"] == "alpha/v1.2.0" and doc["commit"] == world.first
    doc = releases(world, data)
    assert live_of(doc, "alpha") == ("alpha/v1.2.1", world.first)
    assert doc["by_flow"]["alpha"]["versions"] == ["1.2.1", "1.2.0", "1.1.0"]
    # history is never rewritten: every tag is still there, pointing where it did
    assert git(world.remote, "rev-parse", "refs/tags/alpha/v1.2.0^{commit}") == c2
    history = [(h["previous"], h["tag"]) for h in doc["by_flow"]["alpha"]["history"] if "tag" in h]
    assert history == [(None, "alpha/v1.1.0"), ("alpha/v1.1.0", "alpha/v1.2.0"), ("alpha/v1.2.0", "alpha/v1.2.1")]


# ---- emergency overrides and history -------------------------------------------------------


def test_pin_unpin_yank_and_undo_change_what_is_live(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    c2 = world.commit("two", flows={"alpha": simple_flow("alpha", "two")})
    world.tag("v1.1.0")
    c3 = world.commit("three", flows={"alpha": simple_flow("alpha", "three")})
    world.tag("v1.2.0")
    world.sync()
    assert live_of(releases(world, data), "alpha") == ("v1.2.0", c3)

    code, _, err, doc = signoff(world, data, "pin", "alpha", "1.0.0", "--json")
    assert code == 0, err
    assert doc["live"]["live"]["tag"] == "v1.0.0" and doc["overrides"]["pins"] == {"alpha": "1.0.0"}
    state = releases(world, data)
    assert live_of(state, "alpha") == ("v1.0.0", world.first) and state["by_flow"]["alpha"]["pinned"] == "1.0.0"
    assert live_of(state, "beta") == ("v1.2.0", c3)  # a pin is per flow
    code, out, _, _ = signoff(world, data, "releases")
    assert "PINNED 1.0.0" in out

    code, _, _, doc = signoff(world, data, "pin", "alpha", "9.9.9", "--json")
    assert code == 1 and doc["error"]["code"] == "not_found"

    code, _, err, _ = signoff(world, data, "unpin", "alpha", "--json")
    assert code == 0, err
    assert live_of(releases(world, data), "alpha") == ("v1.2.0", c3)

    code, _, err, doc = signoff(world, data, "yank", "alpha", "1.2.0", "--json")
    assert code == 0, err
    state = releases(world, data)
    assert live_of(state, "alpha") == ("v1.1.0", c2) and state["by_flow"]["alpha"]["yanked"] == ["1.2.0"]
    assert live_of(state, "beta") == ("v1.2.0", c3)
    code, out, _, _ = signoff(world, data, "releases")
    assert "yanked 1.2.0" in out

    code, _, err, _ = signoff(world, data, "yank", "alpha", "1.2.0", "--undo", "--json")
    assert code == 0, err
    state = releases(world, data)
    assert live_of(state, "alpha") == ("v1.2.0", c3) and state["by_flow"]["alpha"]["yanked"] == []

    # every activation and override is in the history, in order
    history = state["by_flow"]["alpha"]["history"]
    activations = [(h["previous"], h["tag"]) for h in history if "tag" in h]
    assert activations == [(None, "v1.2.0"), ("v1.2.0", "v1.0.0"), ("v1.0.0", "v1.2.0"), ("v1.2.0", "v1.1.0"),
                           ("v1.1.0", "v1.2.0")]
    assert [h["pinned"] for h in history if "tag" in h][1] == "1.0.0"
    overrides = [(h["override"], h["version"]) for h in history if "override" in h]
    assert overrides == [("pin", "1.0.0"), ("unpin", None), ("yank", "1.2.0"), ("unyank", "1.2.0")]
    assert all(h["at"].endswith("Z") for h in history)


def test_pin_refuses_a_version_that_was_refused(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.commit("alpha broken", flows={"alpha": broken_flow("alpha")})
    world.tag("v1.1.0")
    world.sync()
    assert live_of(releases(world, data), "alpha") == ("v1.0.0", world.first)
    code, _, _, doc = signoff(world, data, "pin", "alpha", "1.1.0", "--json")
    assert code != 0 and "error" in doc
    assert live_of(releases(world, data), "alpha") == ("v1.0.0", world.first)


# ---- drafts: branches ---------------------------------------------------------------------


def test_diff_shows_the_unified_diff_and_changed_steps(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    git(world.dev, "checkout", "-q", "-b", "feature")
    draft = (simple_flow("alpha", "changed")
             + "  - id: extra\n    kind: set\n    values: {more: true}\n")
    sha = commit(world.dev, "change alpha", flows={"alpha": draft})
    git(world.dev, "push", "-q", "origin", "feature")
    world.sync()
    code, out, err, doc = signoff(world, data, "diff", "alpha", "--ref", "origin/feature", "--json")
    assert code == 0, err
    assert doc["live"] == {"tag": "v1.0.0", "commit": world.first}
    assert doc["draft"]["commit"] == sha
    assert "-    values: {marker: one}" in doc["diff"] and "+    values: {marker: changed}" in doc["diff"]
    assert "+  - id: extra" in doc["diff"] and "(live v1.0.0)" in doc["diff"]
    assert doc["steps"] == {"added": ["extra"], "removed": [], "changed": ["mark"]}

    code, out, _, _ = signoff(world, data, "diff", "alpha", "--ref", "origin/feature")
    assert code == 0 and out.startswith("--- flows/alpha.yaml") and "steps: " in out and "added extra" in out
    code, out, _, doc = signoff(world, data, "diff", "beta", "--ref", "origin/feature", "--json")
    assert code == 0 and doc["diff"] == "" and doc["steps"] == {"added": [], "removed": [], "changed": []}


def test_validate_at_a_branch(world: GitWorld, data: Path) -> None:
    git(world.dev, "checkout", "-q", "-b", "broken")
    commit(world.dev, "break beta", flows={"beta": broken_flow("beta")})
    git(world.dev, "push", "-q", "origin", "broken")
    world.sync()
    code, _, _, doc = signoff(world, data, "validate", "--ref", "origin/broken", "--json")
    assert code == 1 and doc["ok"] is False
    by_name = {f["name"]: f for f in doc["flows"]}
    assert by_name["alpha"]["ok"] is True and by_name["beta"]["ok"] is False
    error = by_name["beta"]["errors"][0]
    assert error["file"].startswith("flows/beta.yaml") and error["line"] > 0 and error["hint"]
    code, _, _, doc = signoff(world, data, "validate", "--ref", "main", "--json")
    assert code == 0 and doc["ok"] is True and len(doc["flows"]) == 2
    # the working tree of the clone is not what was validated
    assert (world.ops / "flows" / "beta.yaml").read_text() == simple_flow("beta")


def test_drafts_are_the_branches_that_change_a_flow(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.sync()
    git(world.ops, "checkout", "-q", "-b", "change-alpha")
    sha = commit(world.ops, "alpha draft", flows={"alpha": simple_flow("alpha", "draft")})
    git(world.ops, "checkout", "-q", "-b", "docs-only", "main")
    (world.ops / "README").write_text("notes\n")
    commit(world.ops, "docs")
    git(world.ops, "checkout", "-q", "main")
    doc = releases(world, data)
    assert doc["by_flow"]["alpha"]["drafts"] == [{"branch": "refs/heads/change-alpha", "commit": sha}]
    assert doc["by_flow"]["beta"]["drafts"] == []
    assert live_of(doc, "alpha") == ("v1.0.0", world.first)  # a branch never changes what is live
    code, out, _, _ = signoff(world, data, "releases")
    assert "drafts: refs/heads/change-alpha" in out


def test_a_flow_deleted_in_a_newer_release_is_not_live(world: GitWorld, data: Path) -> None:
    world.tag("v1.0.0")
    world.sync()
    assert live_of(releases(world, data), "beta") == ("v1.0.0", world.first)
    c2 = world.commit("drop beta", flows={"beta": None, "alpha": simple_flow("alpha", "two")})
    world.tag("v2.0.0")
    world.sync()
    doc = releases(world, data)
    assert live_of(doc, "alpha") == ("v2.0.0", c2)
    assert live_of(doc, "beta") == (None, None)
    assert doc["by_flow"]["beta"]["removed"] is True
    assert doc["by_flow"]["alpha"]["removed"] is False
    code, out, _, _ = signoff(world, data, "releases")
    assert "removed in the newest release" in out
    history = [(h["previous"], h["tag"]) for h in doc["by_flow"]["beta"]["history"] if "tag" in h]
    assert history == [(None, "v1.0.0"), ("v1.0.0", None)]
    # a data dir that never saw v1.0.0 comes to the same answer
    fresh = releases(world, data.parent / "fresh")
    assert live_of(fresh, "beta") == (None, None) and fresh["by_flow"]["beta"]["removed"] is True
    assert live_of(fresh, "alpha") == ("v2.0.0", c2)
