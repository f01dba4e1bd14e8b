"""The command line: `signoff` put together from its command families."""

from __future__ import annotations

from typing import NoReturn

import click

from runner.cli import completion, db, decisions, flows, mcp, releases, replay, runs, setup
from runner.cli.app import new_group, run_and_exit

FAMILIES = (flows, runs, decisions, releases, replay, setup, db, completion, mcp)


def build() -> click.Group:
    """The `signoff` group with every family's commands (`--help` lists them by name)."""
    group = new_group()
    for family in FAMILIES:
        family.register(group)
    return group


def main() -> NoReturn:
    run_and_exit(build())


__all__ = ["build", "main"]
