"""`signoff mcp`: the Model Context Protocol over stdio, for coding agents.

The tools (runner/cli/mcp/catalogue.py) validate, diff, run drafts and live runs,
read runs and their events, list the approvals waiting for this user with their
context, decide them, post callbacks and release, as the user whose token the
server was given (SIGNOFF_TOKEN), through the daemon at --server / SIGNOFF_SERVER.
"""

from __future__ import annotations

import gc
import logging

import click

from runner.cli.app import Env, common, server_option


@click.command("mcp")
@server_option
@common
def mcp(server, data, repo, config, as_json) -> None:
    """Serve the Model Context Protocol on stdin/stdout: signoff's tools for a coding agent.

    The agent acts as the user of SIGNOFF_TOKEN, through the daemon at --server /
    SIGNOFF_SERVER, under the same rules as the API; validate and diff read the
    local repository (--repo). Every tool answers the JSON document of the matching
    command's --json (so --json changes nothing here). Logs go to stderr.
    """
    import anyio  # the SDK only for this command: the rest of the CLI starts without it

    from runner.cli.mcp.actions import Actions
    from runner.cli.mcp.server import serve_stdio

    logging.basicConfig(level=logging.WARNING, format="signoff mcp: %(levelname)s %(message)s")
    actions = Actions(Env(data, repo, config), server)
    # the SDK's many models would make the collections at exit last seconds: they live as long as we do
    gc.freeze()
    anyio.run(serve_stdio, actions)


def register(group: click.Group) -> None:
    group.add_command(mcp)
