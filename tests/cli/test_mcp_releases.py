"""`signoff mcp` and release approval: a real MCP client session against a real daemon over a real repository.

The repository requires one approval from group:finance for a new release (signoff-release.yaml,
live at v1.0.0). An agent sees the releases it may decide (with the diff, the validation and the
replay summary) and decides one; everyone else is refused exactly as the API refuses them.
Users (tests/daemon_support.py): alice (the tagger), bob (ops), carol (finance), dave (run only).
"""

from __future__ import annotations

import json
import sys
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client
from yamlcompat import YAML

from gitops_support import GitOpsDaemon
from support import flow_text, git, simple_flow, wait_until, write_flow

SESSION_DEADLINE = 60  # seconds for the whole client story (bounded, never a sleep)


async def call(session: ClientSession, tool: str, **arguments: Any) -> tuple[bool, dict[str, Any]]:
    result = await session.call_tool(tool, arguments)
    document = json.loads(result.content[0].text)
    assert result.structured_content == document
    return result.is_error, document


async def open_session(stack: AsyncExitStack, daemon: GitOpsDaemon, user: str) -> ClientSession:
    params = StdioServerParameters(command=sys.executable, args=["-m", "runner", "mcp", "--repo", str(daemon.repo)],
                                   env=daemon.cli_env(user), cwd=str(daemon.root))
    errlog = stack.enter_context(open(daemon.root / f"mcp-{user}.log", "a"))
    read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return session


def pending_release(tmp_path: Path) -> GitOpsDaemon:
    """deploy live at v1.0.0 under the rule, with a live run recorded, and v1.1.0 pending with its replay."""
    daemon = GitOpsDaemon(tmp_path, flows={"deploy": simple_flow("deploy")}, poll_interval="1h")
    (daemon.repo / "signoff-release.yaml").write_text(flow_text({"all": {"approvers": ["group:finance"]}}))
    git(daemon.repo, "add", "-A")
    git(daemon.repo, "commit", "-q", "-m", "release rules")
    config = YAML(typ="safe", pure=True).load(daemon.config_path.read_text())
    config["users"]["alice"]["git_emails"] = ["author@example.com"]
    daemon.config_path.write_text(flow_text(config), encoding="utf-8")
    daemon.tag("v1.0.0")
    daemon.start()
    daemon.wait_end(daemon.start_run("deploy")["id"])
    write_flow(daemon.repo, "deploy", simple_flow("deploy", "two"))
    git(daemon.repo, "commit", "-q", "-am", "deploy two")
    daemon.tag("v1.1.0", message="ship two")
    assert daemon.push_webhook().status_code == 202
    wait_until(lambda: any(p.get("replay") for p in daemon.flows()["deploy"]["pending"]), 20,
               message=lambda: f"v1.1.0 pending with its replay: {daemon.flows()['deploy']}")
    return daemon


def test_an_agent_lists_the_releases_it_may_decide_and_decides_one_as_the_api_would(tmp_path: Path) -> None:
    daemon = pending_release(tmp_path)

    async def story(stack: AsyncExitStack) -> None:
        alice, dave, carol = [await open_session(stack, daemon, user) for user in ("alice", "dave", "carol")]
        tools = {tool.name: tool for tool in (await carol.list_tools()).tools}
        assert tools["list_pending_releases"].annotations.read_only_hint is True
        assert tools["decide_release"].input_schema["properties"]["decision"]["enum"] == ["approve", "reject"]

        failed, mine = await call(carol, "list_pending_releases")
        assert not failed and mine["user"] == "carol"
        [item] = mine["pending"]
        assert (item["flow"], item["tag"], item["may_approve"]) == ("deploy", "v1.1.0", True)
        assert "+    values: {marker: two}" in item["diff"] and item["validation"]["ok"] is True
        assert item["replay"]["summary"]["runs"] == 1 and item["replay"]["summary"]["statuses"] == {"succeeded": 1}
        assert item["replay"]["runs"][0]["steps"][0]["verdict"] == "changed"  # the marker it sets changed

        # alice (the tagger, no approver) sees nothing to decide; approving is refused as the API refuses it
        failed, hers = await call(alice, "list_pending_releases")
        assert not failed and hers["pending"] == []
        failed, refusal = await call(alice, "decide_release", flow="deploy", version="1.1.0", decision="approve")
        direct = daemon.api("alice").post("/api/v1/releases/deploy/1.1.0/decision", json={"decision": "approve"})
        assert failed and refusal == {"error": direct.json()["error"], "status": 403}
        failed, refusal = await call(dave, "decide_release", flow="deploy", version="1.1.0", decision="reject")
        assert failed and refusal["status"] == 403 and "approve role" in refusal["error"]["message"]
        failed, refusal = await call(carol, "decide_release", flow="deploy", version="9.9.9", decision="approve")
        assert failed and refusal["status"] == 404
        failed, refusal = await call(carol, "decide_release", flow="deploy", version="1.1.0", decision="maybe")
        assert failed and refusal["error"]["code"] == "usage"  # the tool's schema says approve or reject
        assert daemon.live_tag("deploy") == "v1.0.0"

        failed, decided = await call(carol, "decide_release", flow="deploy", version="v1.1.0", decision="approve",
                                     comment="replay is clean")
        assert not failed and (decided["status"], decided["final"], decided["tag"]) == ("approved", True, "v1.1.0")
        assert decided["live"]["live"]["tag"] == "v1.1.0" and daemon.live_tag("deploy") == "v1.1.0"
        failed, again = await call(carol, "decide_release", flow="deploy", version="1.1.0", decision="approve")
        assert failed and again["status"] == 409
        assert (await call(carol, "list_pending_releases"))[1]["pending"] == []

    async def main() -> None:
        with anyio.fail_after(SESSION_DEADLINE):
            async with AsyncExitStack() as stack:
                await story(stack)

    try:
        anyio.run(main)
    except BaseExceptionGroup as group:  # the SDK's task groups wrap a failed assertion: show it plainly
        error: BaseException = group
        while isinstance(error, BaseExceptionGroup):
            error = error.exceptions[0]
        raise error from None
    finally:
        daemon.close()
