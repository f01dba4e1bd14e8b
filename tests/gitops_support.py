"""Real git repositories and a GitOps-configured daemon, for the release tests and bench/releases.py.

`GitWorld(root)` lays out, under `root`:

    root/remote.git   a bare "remote" (what a hosting service would hold)
    root/dev/         a clone where flows are written, committed, tagged and pushed
    root/ops/         a second clone that only fetches: what `signoff --repo` reads

`GitOpsDaemon(root, flows=..., remote=True|False, ...)` is `daemon_support.DaemonProcess`
with the repo section of its config rewritten: `repo: {path: root/repo}` or, with
`remote=True`, `repo: {url: root/remote.git}` (a bare clone of root/repo, which
gets it as `origin`, so commits and tags made in root/repo reach the daemon only
when pushed). It adds `poll_interval`, a push `webhook_secret` and named `secrets:`
(handed over as environment variables), and helpers to sign and send push webhooks.

Everything is real: git subprocesses, the real CLI and the real daemon on loopback.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets as random_secrets
import uuid
from pathlib import Path
from typing import Any

import httpx
from yamlcompat import YAML

from daemon_support import DaemonProcess
from support import (flow_text, git, identify, run_cli, simple_flow,  # noqa: F401  (bench/releases.py imports them here)
                     wait_until, write_flow)


def commit(repo: Path, message: str, *, flows: dict[str, str | dict | None] | None = None,
           date: str | None = None) -> str:
    """Write (or, for None, delete) flows/<name>.yaml, commit everything; returns the new commit's sha."""
    for name, content in (flows or {}).items():
        if content is None:
            git(repo, "rm", "-q", f"flows/{name}.yaml")
        else:
            write_flow(repo, name, content)
    git(repo, "add", "-A")
    env = {"GIT_AUTHOR_DATE": date, "GIT_COMMITTER_DATE": date} if date else None
    git(repo, "commit", "-q", "--allow-empty", "-m", message, env=env)
    return git(repo, "rev-parse", "HEAD")


def tag(repo: Path, name: str, ref: str = "HEAD", *, message: str | None = None, date: str | None = None,
        force: bool = False) -> None:
    """A lightweight tag, or an annotated one when `message` is given."""
    args = ["tag"] + (["-f"] if force else []) + (["-a", "-m", message] if message is not None else [])
    env = {"GIT_COMMITTER_DATE": date} if date else None
    git(repo, *args, name, ref, env=env)


class GitWorld:
    """A bare remote, a clone that writes (dev) and a clone that only fetches (ops)."""

    def __init__(self, root: Path, flows: dict[str, str | dict] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.remote = self.root / "remote.git"
        git(self.root, "init", "-q", "--bare", "-b", "main", str(self.remote))
        self.dev = self.root / "dev"
        git(self.root, "clone", "-q", str(self.remote), str(self.dev))
        identify(self.dev)
        git(self.dev, "checkout", "-q", "-B", "main")
        self.first = commit(self.dev, "first flows", flows=flows or {})
        git(self.dev, "push", "-q", "origin", "main")
        self.ops = self.root / "ops"
        git(self.root, "clone", "-q", str(self.remote), str(self.ops))
        identify(self.ops, "Release Manager", "rm@example.com")

    def commit(self, message: str, **kwargs: Any) -> str:
        sha = commit(self.dev, message, **kwargs)
        git(self.dev, "push", "-q", "origin", "HEAD")
        return sha

    def tag(self, name: str, ref: str = "HEAD", **kwargs: Any) -> None:
        """Tag in dev and push the tag to the remote (forced when retagging)."""
        tag(self.dev, name, ref, **kwargs)
        git(self.dev, "push", "-q", *(["--force"] if kwargs.get("force") else []), "origin", f"refs/tags/{name}")

    def delete_tag(self, name: str) -> None:
        git(self.dev, "tag", "-d", name)
        git(self.dev, "push", "-q", "origin", f":refs/tags/{name}")

    def sync(self) -> None:
        """ops fetches everything: branches as local branches, tags (forced, pruned)."""
        git(self.ops, "fetch", "-q", "--prune", "--prune-tags", "--force", "origin",
            "+refs/heads/*:refs/remotes/origin/*", "+refs/tags/*:refs/tags/*")
        git(self.ops, "checkout", "-q", "-B", "main", "origin/main")


# ---- the daemon -------------------------------------------------------------------


def signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


class GitOpsDaemon(DaemonProcess):
    """DaemonProcess with repo.path or repo.url, poll_interval, a push webhook secret and named secrets."""

    def __init__(self, root: Path, *, flows: dict[str, str | dict] | None = None, remote: bool = False,
                 poll_interval: str = "1s", hook_secrets: tuple[str, ...] = (), **kwargs: Any) -> None:
        self.webhook_secret = random_secrets.token_hex(16)
        self.secret_values = {name: random_secrets.token_hex(16) for name in hook_secrets}
        env = {"GIT_WEBHOOK_SECRET": self.webhook_secret, **kwargs.pop("env", {})}
        env.update({_env_name(name): value for name, value in self.secret_values.items()})
        super().__init__(root, flows=flows, env=env, **kwargs)
        self.remote: Path | None = None
        repo_spec: dict[str, Any] = {"path": str(self.repo)}
        if remote:
            self.remote = self.root / "remote.git"
            git(self.root, "clone", "-q", "--bare", str(self.repo), str(self.remote))
            git(self.repo, "remote", "add", "origin", str(self.remote))
            git(self.repo, "fetch", "-q", "origin")
            repo_spec = {"url": str(self.remote)}
        yaml = YAML(typ="safe", pure=True)
        config = yaml.load(self.config_path.read_text())
        config["repo"] = {**repo_spec, "poll_interval": poll_interval,
                          "webhook_secret": {"env": "GIT_WEBHOOK_SECRET"}}
        if hook_secrets:
            config["secrets"] = {name: {"env": _env_name(name)} for name in hook_secrets}
        self.config_path.write_text(flow_text(config), encoding="utf-8")

    # ---- the repository ------------------------------------------------------------

    def commit(self, message: str, **kwargs: Any) -> str:
        sha = commit(self.repo, message, **kwargs)
        if self.remote:
            git(self.repo, "push", "-q", "origin", "HEAD")
        return sha

    def tag(self, name: str, ref: str = "HEAD", **kwargs: Any) -> None:
        tag(self.repo, name, ref, **kwargs)
        if self.remote:
            git(self.repo, "push", "-q", *(["--force"] if kwargs.get("force") else []), "origin",
                f"refs/tags/{name}")

    def branch(self, name: str, flows: dict[str, str | dict | None], message: str = "draft") -> str:
        """A branch off main with these flow changes; main stays checked out. Returns its commit."""
        git(self.repo, "checkout", "-q", "-B", name, "main")
        try:
            sha = commit(self.repo, message, flows=flows)
            if self.remote:
                git(self.repo, "push", "-q", "--force", "origin", f"refs/heads/{name}")
        finally:
            git(self.repo, "checkout", "-q", "main")
        return sha

    # ---- HTTP -----------------------------------------------------------------------

    def push_webhook(self, body: bytes = b'{"ref": "refs/tags/x"}', *, delivery: str | None = None,
                     secret: str | None = None, sign: bool = True) -> httpx.Response:
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "push",
                   "X-GitHub-Delivery": delivery or str(uuid.uuid4())}
        if sign:
            headers["X-Hub-Signature-256"] = signature(secret or self.webhook_secret, body)
        return self.api(None).post("/api/v1/git/webhook", content=body, headers=headers)

    def hook(self, flow: str, payload: Any, *, secret: str | None = None, raw: bytes | None = None
             ) -> httpx.Response:
        body = raw if raw is not None else json.dumps(payload).encode()
        key = secret if secret is not None else next(iter(self.secret_values.values()))
        return self.api(None).post(f"/hooks/{flow}", content=body,
                                   headers={"Content-Type": "application/json",
                                            "X-Hub-Signature-256": signature(key, body)})

    def health(self) -> dict:
        response = self.api(None).get("/api/v1/health")
        assert response.status_code == 200, response.text
        return response.json()

    def flows(self) -> dict[str, dict]:
        response = self.api().get("/api/v1/flows")
        assert response.status_code == 200, response.text
        return {entry["flow"]: entry for entry in response.json()["flows"]}

    def live_tag(self, flow: str) -> str | None:
        live = (self.health()["repo"]["live"] or {})
        return live.get(flow)

    def wait_live(self, flow: str, tag: str | None, timeout: float = 15.0) -> dict:
        """Poll health until `flow`'s live tag is `tag`; returns the health document."""
        last: dict[str, Any] = {}

        def check() -> dict | None:
            last["health"] = self.health()
            return last["health"] if (last["health"]["repo"]["live"] or {}).get(flow) == tag else None

        return wait_until(check, timeout, interval=0.05,
                          message=lambda: f"{flow} live at {tag}; health: {last.get('health')}\n"
                                          f"daemon log:\n{self.log_tail(20)}")


def _env_name(secret_name: str) -> str:
    return "HOOK_" + secret_name.upper().replace("-", "_")


def governed_daemon(root: Path, flow: str, rule: str, git_emails: dict[str, list[str]],
                    **kwargs: Any) -> GitOpsDaemon:
    """`deploy` (as `flow`) live at v1.0.0, whose signoff-release.yaml is `rule`, the daemon started; the users of
    `git_emails` known to it by their git e-mail addresses (the release approval tests)."""
    from yamlcompat import YAML

    daemon = GitOpsDaemon(root, flows={"deploy": flow}, poll_interval="1h", **kwargs)
    (daemon.repo / "signoff-release.yaml").write_text(rule)
    git(daemon.repo, "add", "-A")
    git(daemon.repo, "commit", "-q", "-m", "release rules")
    config = YAML(typ="safe", pure=True).load(daemon.config_path.read_text())
    for user, emails in git_emails.items():
        config["users"][user]["git_emails"] = emails
    daemon.config_path.write_text(flow_text(config), encoding="utf-8")
    daemon.tag("v1.0.0")
    daemon.start()
    assert daemon.live_tag("deploy") == "v1.0.0"
    return daemon
