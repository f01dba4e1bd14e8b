"""Who may change what is live, through the real daemon (a subprocess on loopback) and the real CLI.

Every change of what is live goes through `POST /api/v1/flows/{flow}/release|pin|unpin|yank|unyank`
when a daemon is configured: `release` needs the release role, the others admin. Each is
recorded in the release history with who (`by`), when (`at`), why (`reason`) and how (`via`), and
so is the activation it causes. Without a daemon the CLI works on the repository directly and
says so; a config that declares users and no token refuses.

Users (tests/daemon_support.py): alice (run, approve), dave (run), rita (release), root (admin).
"""

from __future__ import annotations

import getpass
from pathlib import Path

import pytest

from gitops_support import GitOpsDaemon
from support import git, run_cli, simple_flow
from postgres_support import files_only


@pytest.fixture
def daemon(tmp_path: Path):
    # polling once an hour: whatever goes live during a test went live because of the request itself
    process = GitOpsDaemon(tmp_path / "gitops", flows={"deploy": simple_flow("deploy")}, poll_interval="1h")
    process.tag("v1.0.0")
    process.commit("two", flows={"deploy": simple_flow("deploy", "two")})
    process.tag("v1.1.0")
    with process:
        assert process.live_tag("deploy") == "v1.1.0"
        yield process


def change(daemon: GitOpsDaemon, user: str, what: str, **body):
    return daemon.api(user).post(f"/api/v1/flows/deploy/{what}", json=body)


def error_of(response, status: int) -> dict:
    assert response.status_code == status, f"expected {status}, got {response.status_code}: {response.text}"
    return response.json()["error"]


def history(daemon: GitOpsDaemon) -> list[dict]:
    code, out, err, doc = run_cli(["releases", "--json", "--repo", daemon.repo, "--data", daemon.data])
    assert code == 0, f"{out}\n{err}"
    return next(f for f in doc["flows"] if f["flow"] == "deploy")["history"]


def where(daemon: GitOpsDaemon) -> list:
    return ["--repo", daemon.repo, "--data", daemon.data]


@files_only
def test_pin_yank_and_release_need_their_roles_and_record_who_when_and_why(daemon: GitOpsDaemon) -> None:
    for user in ("alice", "dave", "rita"):
        error = error_of(change(daemon, user, "pin", version="1.0.0", reason="try"), 403)
        assert user in error["message"] and "admin" in error["message"]
        error_of(change(daemon, user, "yank", version="1.1.0"), 403)
    for user in ("alice", "dave"):
        assert "release role" in error_of(change(daemon, user, "release", version="1.2.0"), 403)["message"]
    assert daemon.live_tag("deploy") == "v1.1.0" and daemon.flows()["deploy"]["pinned"] is None
    assert git(daemon.repo, "tag", "-l", "deploy/*") == ""
    assert not [h for h in history(daemon) if "override" in h or "released" in h]

    pinned = change(daemon, "root", "pin", version="1.0.0", reason="1.1.0 breaks refunds")
    assert pinned.status_code == 200, pinned.text
    answer = pinned.json()
    assert (answer["by"], answer["via"], answer["reason"]) == ("root", "daemon", "1.1.0 breaks refunds")
    assert answer["at"].endswith("Z") and answer["live"]["live"]["tag"] == "v1.0.0"
    assert daemon.live_tag("deploy") == "v1.0.0"  # at once, not at the next poll
    assert daemon.start_run("deploy")["version"] == "v1.0.0"

    error_of(change(daemon, "rita", "unpin"), 403)
    assert change(daemon, "root", "unpin", reason="fixed").status_code == 200
    assert daemon.live_tag("deploy") == "v1.1.0"
    assert change(daemon, "root", "yank", version="1.1.0", reason="leaks").status_code == 200
    assert daemon.live_tag("deploy") == "v1.0.0"
    error_of(change(daemon, "dave", "unyank", version="1.1.0"), 403)
    assert change(daemon, "root", "unyank", version="1.1.0").status_code == 200
    assert daemon.live_tag("deploy") == "v1.1.0"

    released = change(daemon, "rita", "release", version="1.2.0", message="ship the fix")
    assert released.status_code == 201, released.text
    answer = released.json()
    assert (answer["tag"], answer["by"], answer["via"], answer["reason"]) == ("deploy/v1.2.0", "rita", "daemon",
                                                                              "ship the fix")
    assert daemon.live_tag("deploy") == "deploy/v1.2.0"
    tagged = git(daemon.repo, "for-each-ref", "refs/tags/deploy/", "--format=%(taggername) %(contents:subject)")
    assert tagged == "rita ship the fix"  # the tag itself says who released it

    entries = history(daemon)
    made = [(h.get("override") or "release", h["by"], h["via"], h["reason"]) for h in entries
            if "override" in h or "released" in h]
    assert made == [("pin", "root", "daemon", "1.1.0 breaks refunds"), ("unpin", "root", "daemon", "fixed"),
                    ("yank", "root", "daemon", "leaks"), ("unyank", "root", "daemon", None),
                    ("release", "rita", "daemon", "ship the fix")]
    activations = [(h["previous"], h["tag"], h.get("by")) for h in entries if "tag" in h]
    assert activations[-5:] == [("v1.1.0", "v1.0.0", "root"), ("v1.0.0", "v1.1.0", "root"),
                                ("v1.1.0", "v1.0.0", "root"), ("v1.0.0", "v1.1.0", "root"),
                                ("v1.1.0", "deploy/v1.2.0", "rita")]
    code, out, err, _ = run_cli(["releases", *where(daemon)])
    assert code == 0, err
    assert "deploy: released deploy/v1.2.0 by rita through the daemon at " in out and "ship the fix" in out


def test_bad_change_requests_get_clear_answers(daemon: GitOpsDaemon) -> None:
    error_of(change(daemon, "root", "pin", version="9.9.9"), 404)
    error_of(change(daemon, "root", "pin"), 422)
    error_of(change(daemon, "root", "pin", version=1), 422)
    error_of(change(daemon, "root", "pin", version="1.0.0", force=True), 422)
    error_of(change(daemon, "root", "release", version="not-semver"), 422)
    error_of(change(daemon, "rita", "release", version="1.0.1"), 422)  # not higher than the live 1.1.0
    error_of(daemon.api("root").post("/api/v1/flows/No_Such/pin", json={"version": "1.0.0"}), 404)
    error_of(daemon.api(None).post("/api/v1/flows/deploy/pin", json={"version": "1.0.0"}), 401)
    assert daemon.live_tag("deploy") == "v1.1.0"


def test_the_cli_goes_through_the_daemon_when_one_is_configured(daemon: GitOpsDaemon) -> None:
    anonymous = daemon.cli("pin", "deploy", "1.0.0", user=None)
    assert anonymous.returncode == 1
    assert f"through the daemon at {daemon.url} needs a user's token" in anonymous.stderr
    refused = daemon.cli("pin", "deploy", "1.0.0", "--json", user="dave")
    assert refused.returncode == 1
    assert "admin" in refused.stderr and "forbidden" in refused.stdout
    assert daemon.live_tag("deploy") == "v1.1.0"

    pinned = daemon.cli("pin", "deploy", "1.0.0", "-m", "rollback", user="root")
    assert pinned.returncode == 0, pinned.stderr
    assert "live is now v1.0.0" in pinned.stdout and f"through the daemon at {daemon.url}, as root" in pinned.stdout
    assert daemon.live_tag("deploy") == "v1.0.0"
    lifted = daemon.cli("unpin", "deploy", "--json", user="root")
    assert lifted.returncode == 0, lifted.stderr
    assert daemon.live_tag("deploy") == "v1.1.0"

    released = daemon.cli("release", "deploy", "1.2.0", "-m", "through the cli", "--json", user="rita")
    assert released.returncode == 0, released.stderr
    assert '"via": "daemon"' in released.stdout and '"by": "rita"' in released.stdout
    assert daemon.live_tag("deploy") == "deploy/v1.2.0"


def test_without_a_daemon_the_cli_says_it_works_on_the_repository(daemon: GitOpsDaemon) -> None:
    code, out, err, doc = run_cli(["pin", "deploy", "1.0.0", "--json", "-m", "by hand", *where(daemon)])
    assert code == 0, err
    assert (doc["via"], doc["by"], doc["reason"]) == ("repository", getpass.getuser(), "by hand")
    assert doc["repository"] == str(daemon.repo)
    code, out, err, _ = run_cli(["unpin", "deploy", *where(daemon)])
    assert code == 0, err
    assert "directly in the repository" in out and "no authorization" in out
    entries = [h for h in history(daemon) if "override" in h]
    assert [(h["override"], h["via"]) for h in entries] == [("pin", "repository"), ("unpin", "repository")]


def test_a_config_with_users_and_no_token_refuses(daemon: GitOpsDaemon) -> None:
    config = ["--config", daemon.config_path]
    code, out, err, doc = run_cli(["yank", "deploy", "1.1.0", "--json", *config, *where(daemon)])
    assert code == 1, f"{out}\n{err}"
    assert doc["error"]["code"] == "unauthorized" and "declares users" in doc["error"]["message"]
    assert "SIGNOFF_TOKEN" in doc["error"]["hint"]
    assert daemon.flows()["deploy"]["yanked"] == []
    assert not [h for h in history(daemon) if "override" in h]

    # with a token, the config says where its daemon is, and the daemon decides
    as_dave = {"SIGNOFF_TOKEN": daemon.tokens["dave"]}
    code, _, _, doc = run_cli(["yank", "deploy", "1.1.0", "--json", *config, *where(daemon)], env=as_dave)
    assert code == 1 and doc["error"]["code"] == "forbidden"
    as_root = {"SIGNOFF_TOKEN": daemon.tokens["root"]}
    code, _, err, doc = run_cli(["yank", "deploy", "1.1.0", "--json", *config, *where(daemon)], env=as_root)
    assert code == 0, err
    assert (doc["via"], doc["by"]) == ("daemon", "root")
    assert daemon.live_tag("deploy") == "v1.0.0"


def test_a_release_through_a_daemon_on_a_clone_url_reaches_the_remote(tmp_path: Path) -> None:
    process = GitOpsDaemon(tmp_path / "remote", flows={"deploy": simple_flow("deploy")}, remote=True,
                           poll_interval="1h")
    process.tag("v1.0.0")
    with process:
        released = change(process, "rita", "release", version="1.1.0", message="from the mirror")
        assert released.status_code == 201, released.text
        assert released.json()["pushed_to"] and process.live_tag("deploy") == "deploy/v1.1.0"
        assert git(process.remote, "for-each-ref", "refs/tags/deploy/",
                   "--format=%(refname) %(taggername)") == "refs/tags/deploy/v1.1.0 rita"

        # a remote that refuses the tag: nothing is released, and the mirror keeps no tag the remote lacks
        hook = process.remote / "hooks" / "pre-receive"
        hook.write_text("#!/bin/sh\necho 'tags are frozen today' >&2\nexit 1\n")
        hook.chmod(0o755)
        error = error_of(change(process, "rita", "release", version="1.2.0"), 409)
        assert "deploy/v1.2.0" in error["message"] and "tags are frozen today" in error["message"]
        mirror = process.data / "mirror.git"
        assert git(mirror, "tag", "-l", "deploy/v1.2.0") == ""
        assert process.live_tag("deploy") == "deploy/v1.1.0"
