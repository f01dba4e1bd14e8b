"""The Model Context Protocol server over stdio: the catalogue's tools, answered by `Actions`.

Each call's arguments are checked against the tool's JSON Schema, then the tool
runs in a worker thread (it waits on HTTP and git; the protocol loop stays free).
Its JSON document comes back twice, as JSON text content and as structured
content. Whatever goes wrong in one call comes back as that call's error result
(`is_error`), never as the end of the server:

    {"error": {"code": "forbidden", "message": "...", "hint": "..."}, "status": 403}

with the daemon's own error when the daemon refused (its code, message, hint,
reasons, errors; `status` its HTTP status), else the local error's. stdout is
the protocol's: nothing else may write there, so logs go to stderr.
"""

from __future__ import annotations

import functools
import json
import logging
from typing import Any

import anyio
import mcp_types as types
from jsonschema import Draft202012Validator
from mcp.server import Server, ServerRequestContext
from mcp.server.stdio import stdio_server

from runner import __version__
from runner.cli.mcp.actions import Actions
from runner.cli.mcp.catalogue import BY_NAME, TOOLS, ToolSpec
from runner.errors import SignoffError

log = logging.getLogger(__name__)

INSTRUCTIONS = """\
signoff runs declarative YAML workflows (flows/<name>.yaml in a git repository) with human checkpoints.
A branch is a draft, a tag is a live release. You act as the user whose token this server holds.
The usual way of a change: write and commit flows/<name>.yaml on a branch; validate_flows with that ref
(fix every error at its line and column); diff_flow to see what changes against live; run_draft with the
ref; show_run / run_events to follow it; when it waits for an approval, a person with the right to decide
finds it in list_pending (with its rendered context, links and reviewer inputs) and decides; show_run with
wait_until: ended waits for that decision and the run's end; then release_flow tags it, and list_releases
shows what is live. Where the repository requires release approval, a new tag waits until an approver
decides it: list_pending_releases shows it (the diff against live, the validation, and the replay of the
live version's recent runs against it) and decide_release approves or rejects it. You cannot approve your own run unless the step allows it; a refusal is an error result
with the daemon's code and message: read its hint."""

VALIDATORS = {tool.name: Draft202012Validator(tool.input_schema) for tool in TOOLS}


def tool_definition(spec: ToolSpec) -> types.Tool:
    hints = types.ToolAnnotations(title=spec.title, read_only_hint=spec.read_only,
                                  idempotent_hint=spec.idempotent or None, open_world_hint=False,
                                  **spec.annotations)
    return types.Tool(name=spec.name, title=spec.title, description=spec.description,
                      input_schema=spec.input_schema, annotations=hints)


def error_document(exc: BaseException) -> dict[str, Any]:
    """A tool error's document: the daemon's answer as it sent it, else the local error's, else 'internal'."""
    if isinstance(exc, SignoffError):
        answer = getattr(exc, "answer", None)
        error = exc.to_dict()
        if isinstance(answer, dict) and answer.get("code"):  # as the daemon said it; the client's hint knows more
            error = {**answer, **({"hint": exc.hint} if exc.hint else {})}
        status = getattr(exc, "status", None)
        return {"error": error, **({"status": status} if status else {})}
    return {"error": {"code": "internal", "message": f"{type(exc).__name__}: {exc}",
                      "hint": "this is a bug in signoff; the server goes on, and its stderr has the details"}}


def result(document: dict[str, Any], *, failed: bool = False) -> types.CallToolResult:
    text = json.dumps(document, indent=2, ensure_ascii=False, default=str)
    return types.CallToolResult(content=[types.TextContent(text=text)], structured_content=json.loads(text),
                                is_error=failed)


def argument_problems(name: str, arguments: dict[str, Any]) -> list[str]:
    """Why the arguments do not fit the tool's schema, one line per problem (empty when they fit)."""
    return [f"{'.'.join(str(p) for p in error.absolute_path) or 'arguments'}: {error.message}"
            for error in sorted(VALIDATORS[name].iter_errors(arguments), key=lambda e: list(e.absolute_path))]


def build_server(actions: Actions) -> Server:
    """The protocol server over `actions` (no globals: two servers can live in one process)."""

    async def list_tools(ctx: ServerRequestContext, params: types.PaginatedRequestParams | None
                         ) -> types.ListToolsResult:
        return types.ListToolsResult(tools=[tool_definition(spec) for spec in TOOLS])

    async def call_tool(ctx: ServerRequestContext, params: types.CallToolRequestParams) -> types.CallToolResult:
        return await call(actions, params.name, params.arguments or {})

    return Server("signoff", version=__version__, title="signoff", instructions=INSTRUCTIONS,
                  description="Declarative YAML workflows with human checkpoints: validate, run, decide, release.",
                  on_list_tools=list_tools, on_call_tool=call_tool)


async def call(actions: Actions, name: str, arguments: dict[str, Any]) -> types.CallToolResult:
    """One tool call, answered whatever happens: the document, or an error result."""
    if name not in BY_NAME:
        return result({"error": {"code": "not_found", "message": f"no tool named {name!r}",
                                 "hint": "list the tools: " + ", ".join(BY_NAME)}}, failed=True)
    problems = argument_problems(name, arguments)
    if problems:
        return result({"error": {"code": "usage", "message": f"{name}: the arguments do not fit its schema",
                                 "reasons": problems, "hint": "see the tool's inputSchema"}}, failed=True)
    try:
        document = await anyio.to_thread.run_sync(functools.partial(getattr(actions, name), **arguments),
                                                  abandon_on_cancel=True)
    except SignoffError as exc:
        log.info("tool %s refused: %s", name, exc.message)
        return result(error_document(exc), failed=True)
    except Exception as exc:  # a bug must not end the agent's session: say so, in this call's answer
        log.exception("tool %s failed", name)
        return result(error_document(exc), failed=True)
    return result(document)


async def serve_stdio(actions: Actions) -> None:
    """Serve one client on stdin/stdout until it closes its end."""
    server = build_server(actions)
    async with stdio_server() as (read_stream, write_stream):
        await server.run(read_stream, write_stream, server.create_initialization_options())
