"""What each MCP tool does: the daemon's API for what the daemon owns, the local core for validate and diff.

Thin on purpose, as the CLI commands are: runs, pending approvals, decisions,
callbacks and releases go to the daemon through the CLI's `Client`, as the user
whose token it holds, so the daemon's rules (who may decide, self-approval, the
context hash, roles) refuse exactly as they do for the API; validate and diff
read the local repository with the same functions as `signoff validate` and
`signoff diff`. Every method returns the JSON document of the matching CLI
command's `--json`, or raises a SignoffError (the server makes it an error result).
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

from runner.cli.app import Env
from runner.cli.client import Client
from runner.cli.flows import validation
from runner.cli.releases import diff_document
from runner.releases.changes import parse_version
from runner.status import RunStatus

UNSETTLED = frozenset({RunStatus.QUEUED.value, RunStatus.RUNNING.value})
FINAL = frozenset(status.value for status in RunStatus) - UNSETTLED - {RunStatus.WAITING.value}
LONG_POLL_SECONDS = 20.0  # the daemon holds an events request at most 30 s


class Actions:
    """The tools' bodies, over one Env (repository, data, config) and the daemon at `server`."""

    def __init__(self, env: Env, server: str | None) -> None:
        self.env = env
        self.server = server
        self._git = threading.Lock()  # git reading (GitPython) is not thread-safe; tools run in threads

    def client(self, server: str | None = None) -> Client:
        return self.env.client(server or self.server)

    # ---- the local core ------------------------------------------------------------------

    def validate_flows(self, paths: list[str] | None = None, ref: str | None = None) -> dict[str, Any]:
        with self._git:
            # relative paths are the repository's: the agent's working directory is not ours to guess
            given = [p if ref else str(self.env.repo / p) for p in (paths or [])]
            document, _ = validation(self.env, given, ref)
        return document

    def diff_flow(self, flow: str, ref: str | None = None) -> dict[str, Any]:
        with self._git:
            document, _ = diff_document(self.env, flow, ref)
        return document

    # ---- runs ----------------------------------------------------------------------------

    def run_draft(self, flow: str, ref: str, inputs: dict[str, Any] | None = None, wait_until: str = "settled",
                  wait_seconds: float = 20) -> dict[str, Any]:
        return self._start(flow, {"inputs": inputs or {}, "ref": ref}, wait_until, wait_seconds)

    def start_run(self, flow: str, inputs: dict[str, Any] | None = None, wait_until: str = "settled",
                  wait_seconds: float = 20) -> dict[str, Any]:
        return self._start(flow, {"inputs": inputs or {}}, wait_until, wait_seconds)

    def _start(self, flow: str, body: dict[str, Any], wait_until: str, wait_seconds: float) -> dict[str, Any]:
        with self.client() as client:
            _, record = client.call("POST", f"/api/v1/flows/{flow}/runs", json=body)
            return _wait(client, record, wait_until, wait_seconds)

    def list_runs(self, flow: str | None = None, status: str | None = None, draft: bool | None = None,
                  limit: int = 50, before: str | None = None) -> dict[str, Any]:
        params: dict[str, Any] = {"flow": flow, "status": status, "limit": limit, "before": before,
                                  "draft": None if draft is None else str(draft).lower()}
        with self.client() as client:
            _, page = client.call("GET", "/api/v1/runs", params={k: v for k, v in params.items() if v is not None})
        return page

    def show_run(self, run_id: str, events: bool = False, wait_until: str = "settled",
                 wait_seconds: float = 0) -> dict[str, Any]:
        with self.client() as client:
            _, record = client.call("GET", f"/api/v1/runs/{run_id}")
            record = _wait(client, record, wait_until, wait_seconds)
            if events:
                _, page = client.call("GET", f"/api/v1/runs/{run_id}/events")
                record = {**record, "history": page["events"]}
        return record

    def run_events(self, run_id: str, after: int = -1, wait_seconds: float = 0) -> dict[str, Any]:
        with self.client() as client:
            _, page = client.call("GET", f"/api/v1/runs/{run_id}/events",
                                  params={"after": after, "wait": _seconds(wait_seconds)})
        return page

    def cancel_run(self, run_id: str) -> dict[str, Any]:
        with self.client() as client:
            _, record = client.call("POST", f"/api/v1/runs/{run_id}/cancel")
        return record

    # ---- waiting steps -------------------------------------------------------------------

    def list_pending(self) -> dict[str, Any]:
        with self.client() as client:
            _, answer = client.call("GET", "/api/v1/pending")
        return answer

    def decide(self, run_id: str, step: str, decision: str, comment: str | None = None,
               inputs: dict[str, Any] | None = None, context_sha256: str | None = None) -> dict[str, Any]:
        body = {"decision": decision, "comment": comment, "inputs": inputs or {}, "context_sha256": context_sha256}
        with self.client() as client:
            _, answer = client.call("POST", f"/api/v1/runs/{run_id}/steps/{step}/decision", json=body)
        return answer

    def post_callback(self, target: str, payload: Any) -> dict[str, Any]:
        # a URL names its daemon (a worker's URL may point at another one than ours); a token is ours
        server = target.rsplit("/callbacks/", 1)[0] if "://" in target else None
        token = target.rstrip("/").rsplit("/", 1)[-1]
        body = json.dumps(payload, ensure_ascii=False, allow_nan=False).encode()
        with Client(server, Path(".")) if server else self.client() as client:
            status, answer = client.call("POST", f"/callbacks/{token}", content=body,
                                         headers={"Content-Type": "application/json"})
        return {**answer, "status": status}

    # ---- releases ------------------------------------------------------------------------

    def release_flow(self, flow: str, version: str, ref: str = "HEAD", message: str | None = None,
                     rollback: bool = False) -> dict[str, Any]:
        parse_version(version)  # a clear usage error before anything is asked of the daemon
        body = {"version": version, "ref": ref, "message": message, "rollback": rollback}
        with self.client() as client:
            _, answer = client.call("POST", f"/api/v1/flows/{flow}/release",
                                    json={key: value for key, value in body.items() if value is not None})
            return {**answer, "server": client.server}

    def list_releases(self, flow: str | None = None) -> dict[str, Any]:
        """`signoff releases --json` as the daemon serves it (pins, yanks, refusals, pending, drafts, history)."""
        with self.client() as client:
            _, document = client.call("GET", "/api/v1/releases")
        if flow:
            document = {**document, "flows": [entry for entry in document["flows"] if entry["flow"] == flow]}
        return document

    def list_pending_releases(self) -> dict[str, Any]:
        with self.client() as client:
            _, answer = client.call("GET", "/api/v1/releases/pending")
        return answer

    def decide_release(self, flow: str, version: str, decision: str, comment: str | None = None) -> dict[str, Any]:
        body = {"decision": decision, **({"comment": comment} if comment is not None else {})}
        with self.client() as client:
            _, answer = client.call("POST", f"/api/v1/releases/{quote(flow, safe='')}/{quote(version, safe='')}"
                                            "/decision", json=body)
        return answer


def _wait(client: Client, record: dict[str, Any], until: str, seconds: float) -> dict[str, Any]:
    """The run once it reached `until` (settled: not queued or running; ended: final), or when `seconds` ran out.

    Long-polls the run's events, so it answers as soon as the daemon records the change, without busy polling.
    """
    done = FINAL if until == "ended" else FINAL | {RunStatus.WAITING.value}
    deadline = time.monotonic() + seconds
    seq = -1
    while record["status"] not in done:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        _, page = client.call("GET", f"/api/v1/runs/{record['id']}/events",
                              params={"after": seq, "wait": _seconds(min(left, LONG_POLL_SECONDS))})
        seq = page["next"]
        _, record = client.call("GET", f"/api/v1/runs/{record['id']}")
    return record


def _seconds(value: float) -> str:
    """A number of seconds as the API reads it (plain decimals: never 1e-05)."""
    return f"{value:.3f}"
