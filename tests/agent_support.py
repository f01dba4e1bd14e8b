"""What the agent stories share (tests/cli/test_mcp.py through MCP, test_remote_agent_story.py through the
CLI): a daemon whose config adds an author, ada (run, approve, release; group ops), beside the usual users,
and the flow an agent authors (a release note a person must read and sign off, with a reviewer input).
"""

from __future__ import annotations

import secrets
from pathlib import Path

from yamlcompat import YAML

from gitops_support import GitOpsDaemon
from support import flow_text, simple_flow

AUTHOR = {"roles": ["run", "approve", "release"], "groups": ["ops"]}

SHIP_NOTE = """
name: ship-note
description: Ship a release note once a person has read it
inputs:
  note: {type: string, required: true}
steps:
  - id: prepare
    kind: set
    values: {summary: "Release note: ${{ inputs.note }}"}
  - id: review
    kind: approval
    approvers: [group:ops]
    context: |
      Please read **${{ steps.prepare.outputs.summary }}** before it ships.
    links:
      - {title: the note, url: "https://notes.example.com/${{ inputs.note }}"}
    inputs:
      ticket: {type: string, required: true, description: The change ticket}
    timeout: 1h
    on_timeout: reject
  - id: publish
    kind: set
    values: {ticket: "${{ steps.review.outputs.inputs.ticket }}"}
"""


def daemon_with_author(root: Path) -> GitOpsDaemon:
    """A started daemon over a repository with the flow `hello`, whose users include the author ada."""
    world = GitOpsDaemon(root, flows={"hello": simple_flow("hello")}, poll_interval="1h")
    world.tokens["ada"] = secrets.token_urlsafe(24)
    config = YAML(typ="safe", pure=True).load(world.config_path.read_text())
    config["users"]["ada"] = {"token": {"env": "ADA_TOKEN"}, **AUTHOR}
    world.config_path.write_text(flow_text(config), encoding="utf-8")
    world.start()
    return world
