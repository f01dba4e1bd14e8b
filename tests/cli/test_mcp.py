"""`signoff mcp`: a real MCP client session (the SDK's stdio client) against a real daemon on loopback.

Each session spawns `python -m runner mcp` as the agent's MCP client would, with
SIGNOFF_SERVER and one user's SIGNOFF_TOKEN. The daemon's config names an author
(ada: run, approve, release; group ops), an approver (bob, ops) and a user who may
run but not approve (dave). The story of the agent: author a flow on a branch,
validate it, run the draft, have a person decide (the author's own approval is
refused as the API refuses it), see the run end, release, and see it live.
"""

from __future__ import annotations

import inspect
import json
import sys
from contextlib import AsyncExitStack
from typing import Any

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client

from agent_support import SHIP_NOTE, daemon_with_author
from gitops_support import GitOpsDaemon
from support import broken_flow

from runner.cli.mcp.actions import Actions
from runner.cli.mcp.catalogue import TOOLS

EXPECTED_TOOLS = {"validate_flows", "diff_flow", "run_draft", "start_run", "list_runs", "show_run", "run_events",
                  "list_pending", "decide", "post_callback", "cancel_run", "release_flow", "list_releases",
                  "list_pending_releases", "decide_release"}
SESSION_DEADLINE = 60  # seconds for one whole client session (bounded, never a sleep)


WORKER = """
name: worker
steps:
  - id: done
    kind: callback
    schema: {type: object, required: [result]}
    timeout: 1h
    on_timeout: fail
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory):
    """One daemon for the module (its runs are the tests' own: each test uses its own flow or run)."""
    world = daemon_with_author(tmp_path_factory.mktemp("mcp"))
    yield world
    world.close()


class Agent:
    """One MCP client session, as one user: `call` expects a document, `refused` an error result."""

    def __init__(self, session: ClientSession) -> None:
        self.session = session

    async def answer(self, tool: str, arguments: dict[str, Any]) -> tuple[bool, dict[str, Any]]:
        result = await self.session.call_tool(tool, arguments)
        text = result.content[0].text
        document = json.loads(text)
        assert result.structured_content == document, "the structured content is the JSON text's document"
        return result.is_error, document

    async def call(self, tool: str, **arguments: Any) -> dict[str, Any]:
        failed, document = await self.answer(tool, arguments)
        assert not failed, f"{tool} failed: {document}"
        return document

    async def refused(self, tool: str, **arguments: Any) -> dict[str, Any]:
        failed, document = await self.answer(tool, arguments)
        assert failed, f"{tool} was expected to be refused, but answered {document}"
        return document


async def agent(stack: AsyncExitStack, daemon: GitOpsDaemon, user: str) -> Agent:
    """`signoff mcp` spawned over stdio as `user` (SIGNOFF_SERVER, SIGNOFF_TOKEN), on the daemon's repository."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "runner", "mcp", "--repo", str(daemon.repo)],
                                   env=daemon.cli_env(user), cwd=str(daemon.root))
    errlog = stack.enter_context(open(daemon.root / f"mcp-{user}.log", "a"))  # the server's stderr, kept
    read, write = await stack.enter_async_context(stdio_client(params, errlog=errlog))
    session = await stack.enter_async_context(ClientSession(read, write))
    await session.initialize()
    return Agent(session)


def in_session(story) -> None:
    """Run an async story with an exit stack for its sessions, within the deadline."""

    async def main() -> None:
        with anyio.fail_after(SESSION_DEADLINE):
            async with AsyncExitStack() as stack:
                await story(stack)

    try:
        anyio.run(main)
    except BaseExceptionGroup as group:  # the task groups of the SDK wrap a failed assertion: show it plainly
        raise first_leaf(group) from None


def first_leaf(error: BaseException) -> BaseException:
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


def test_every_tool_has_an_action_that_takes_exactly_its_arguments() -> None:
    for tool in TOOLS:
        parameters = inspect.signature(getattr(Actions, tool.name)).parameters
        names = [name for name in parameters if name != "self"]
        assert set(names) == set(tool.input_schema["properties"]), tool.name
        required = {name for name in names if parameters[name].default is inspect.Parameter.empty}
        assert required == set(tool.input_schema["required"]), tool.name


def test_the_tools_are_listed_with_their_schemas(daemon: GitOpsDaemon) -> None:
    async def story(stack: AsyncExitStack) -> None:
        session = (await agent(stack, daemon, "ada")).session
        tools = {tool.name: tool for tool in (await session.list_tools()).tools}
        assert set(tools) == EXPECTED_TOOLS
        for tool in tools.values():
            assert tool.description and len(tool.description) > 40, tool.name
            schema = tool.input_schema
            assert schema["type"] == "object" and schema["additionalProperties"] is False, tool.name
            for name, prop in schema["properties"].items():
                assert prop.get("description") or prop.get("enum") or prop.get("type") == "integer", (tool.name, name)
        assert set(tools["decide"].input_schema["required"]) == {"run_id", "step", "decision"}
        assert tools["decide"].input_schema["properties"]["decision"]["enum"] == ["approve", "reject",
                                                                                 "request_changes"]
        assert tools["list_pending"].annotations.read_only_hint is True
        # arguments that do not fit the schema are an error result, and the server goes on
        error = (await Agent(session).refused("decide", run_id="x", step="review", decision="maybe"))["error"]
        assert error["code"] == "usage" and any("decision" in reason for reason in error["reasons"])
        assert (await Agent(session).refused("no_such_tool"))["error"]["code"] == "not_found"
        assert (await Agent(session).call("list_runs", flow="hello"))["runs"] == []

    in_session(story)


def test_an_agent_authors_runs_has_it_approved_and_releases(daemon: GitOpsDaemon) -> None:
    async def story(stack: AsyncExitStack) -> None:
        ada, bob = await agent(stack, daemon, "ada"), await agent(stack, daemon, "bob")

        # the agent authors the flow on a branch; validate at the ref finds the mistake, with its place
        daemon.branch("ship-note", {"ship-note": broken_flow("ship-note")}, message="ship-note: first try")
        report = await ada.call("validate_flows", ref="ship-note", paths=["flows/ship-note.yaml"])
        assert report["ok"] is False and report["flows"][0]["errors"][0]["line"] >= 1
        daemon.branch("ship-note", {"ship-note": SHIP_NOTE}, message="ship-note: reviewed release notes")
        report = await ada.call("validate_flows", ref="ship-note")
        assert report["ok"] is True and {f["name"] for f in report["flows"]} == {"hello", "ship-note"}
        diff = await ada.call("diff_flow", flow="ship-note", ref="ship-note")
        assert diff["live"] is None and "review" in diff["steps"]["added"] and "+name: ship-note" in diff["diff"]

        # the draft runs through the daemon until it waits for a person
        run = await ada.call("run_draft", flow="ship-note", ref="ship-note", inputs={"note": "v2"}, wait_seconds=20)
        assert run["draft"] is True and run["ref"] == "refs/heads/ship-note" and run["started_by"] == "ada"
        assert run["status"] == "waiting" and run["current_step"] == "review"

        # the approver sees it with its rendered context, links and reviewer inputs
        pending = await bob.call("list_pending")
        assert pending["user"] == "bob"
        [entry] = [p for p in pending["pending"] if p["run"] == run["id"]]
        assert entry["step"] == "review" and entry["started_by"] == "ada"
        assert "**Release note: v2**" in entry["context"] and len(entry["context_sha256"]) == 64
        assert entry["links"] == [{"title": "the note", "url": "https://notes.example.com/v2"}]
        assert entry["reviewer_inputs"]["ticket"]["required"] is True

        # the author's own approval is refused exactly as the API refuses it
        refusal = await ada.refused("decide", run_id=run["id"], step="review", decision="approve",
                                    inputs={"ticket": "CHG-1"})
        direct = daemon.decide(run["id"], "review", "ada", inputs={"ticket": "CHG-1"})
        assert direct.status_code == 403 and refusal["status"] == 403
        assert refusal["error"] == direct.json()["error"] and refusal["error"]["code"] == "forbidden"
        assert "ada started this run and may not approve it" in refusal["error"]["message"]
        # a context that is not the one shown is refused too (409), and nothing is decided
        stale = await bob.refused("decide", run_id=run["id"], step="review", decision="approve",
                                  inputs={"ticket": "CHG-1"}, context_sha256="0" * 64)
        assert stale["status"] == 409 and stale["error"]["code"] == "conflict"

        answer = await bob.call("decide", run_id=run["id"], step="review", decision="approve",
                                comment="reads well", inputs={"ticket": "CHG-1"},
                                context_sha256=entry["context_sha256"])
        assert answer["accepted"] is True and answer["final"] is True

        # the agent waits for the end and reads the decision
        done = await ada.call("show_run", run_id=run["id"], wait_until="ended", wait_seconds=20, events=True)
        assert done["status"] == "succeeded", done
        assert done["steps"]["review"]["decided_by"] == "bob" and done["steps"]["review"]["comment"] == "reads well"
        assert done["steps"]["publish"]["outputs"] == {"ticket": "CHG-1"}
        assert "decision" in {event["type"] for event in done["history"]}
        events = await ada.call("run_events", run_id=run["id"], after=-1)
        assert [e["seq"] for e in events["events"]] == [e["seq"] for e in done["history"]]
        listed = await ada.call("list_runs", flow="ship-note")
        assert [r["id"] for r in listed["runs"]] == [run["id"]]

        # a release of a broken ref is refused with its errors, and nothing is tagged
        daemon.branch("broken", {"ship-note": broken_flow("ship-note")}, message="ship-note: broken")
        invalid = await ada.refused("release_flow", flow="ship-note", version="1.0.0", ref="broken")
        assert invalid["status"] == 422 and invalid["error"]["code"] == "flow_invalid"
        assert invalid["error"]["errors"] and "nothing was tagged" in invalid["error"]["message"]
        assert (await ada.refused("release_flow", flow="ship-note", version="one"))["error"]["code"] == "usage"

        # the agent releases the branch (the daemon validates it, then tags) and sees it live
        release = await ada.call("release_flow", flow="ship-note", version="1.0.0", ref="ship-note",
                                 message="ship-note reviewed in run " + run["id"])
        assert release["tag"] == "ship-note/v1.0.0" and release["by"] == "ada" and release["via"] == "daemon"
        releases = await ada.call("list_releases", flow="ship-note")
        [flow] = releases["flows"]
        assert flow["live"]["tag"] == "ship-note/v1.0.0" and flow["live"]["commit"] == release["commit"]

        # now live: a live run starts from the release, and its starter may cancel it
        live = await ada.call("start_run", flow="ship-note", inputs={"note": "v2"}, wait_seconds=20)
        assert live["draft"] is False and live["commit"] == release["commit"] and live["status"] == "waiting"
        assert (await ada.call("cancel_run", run_id=live["id"]))["status"] == "cancelled"

    in_session(story)


def test_a_non_approver_is_refused_with_the_apis_error(daemon: GitOpsDaemon) -> None:
    async def story(stack: AsyncExitStack) -> None:
        dave = await agent(stack, daemon, "dave")
        daemon.branch("gate", {"gate": SHIP_NOTE.replace("ship-note", "gate")}, message="gate")
        run = await dave.call("run_draft", flow="gate", ref="gate", inputs={"note": "x"}, wait_seconds=20)
        assert run["status"] == "waiting"
        assert (await dave.call("list_pending"))["pending"] == []
        refusal = await dave.refused("decide", run_id=run["id"], step="review", decision="reject", comment="no")
        direct = daemon.decide(run["id"], "review", "dave", "reject", comment="no")
        assert refusal == {"error": direct.json()["error"], "status": 403}
        assert "dave may not decide approvals" in refusal["error"]["message"]

        # nor may dave release (that needs the release role); his own run he may cancel
        release = await dave.refused("release_flow", flow="gate", version="1.0.0", ref="gate")
        assert release["status"] == 403 and "release role" in release["error"]["message"]
        assert (await dave.call("cancel_run", run_id=run["id"]))["status"] == "cancelled"

        # a callback any user (or worker) may post, by its URL; the same one again is a replay
        daemon.branch("worker", {"worker": WORKER}, message="worker")
        run = await dave.call("run_draft", flow="worker", ref="worker", wait_seconds=20)
        assert run["status"] == "waiting" and run["current_step"] == "done"
        url = daemon.callback_url(run, "done")
        accepted = await dave.call("post_callback", target=url, payload={"result": "ok"})
        assert accepted["status"] == 202 and accepted["accepted"] is True and accepted["run"] == run["id"]
        assert (await dave.call("post_callback", target=url, payload={"result": "ok"}))["status"] == 200
        done = await dave.call("show_run", run_id=run["id"], wait_until="ended", wait_seconds=20)
        assert done["status"] == "succeeded" and done["steps"]["done"]["outputs"]["payload"] == {"result": "ok"}

    in_session(story)
