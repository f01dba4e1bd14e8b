"""The `signoff` group is put together from its command families, explicitly and with no import circle."""

from __future__ import annotations

import ast
from pathlib import Path

import click

import runner.cli
from runner.cli import FAMILIES, build

COMMANDS = ["approve", "callback", "cancel", "completion", "db", "diff", "doctor", "init", "logs", "mcp", "pending", "pin", "reject",
            "release", "release-approve", "release-reject",
            "releases", "replay", "request-changes", "resource", "run", "runs", "serve", "unpin", "validate", "yank"]
CLI_DIR = Path(runner.cli.__file__).parent


def test_build_lists_every_command_by_name() -> None:
    group = build()
    assert group.list_commands(click.Context(group)) == COMMANDS


def test_each_build_is_a_group_of_its_own() -> None:
    first, second = build(), build()
    assert first is not second
    first.add_command(click.Command("extra"))
    assert "extra" not in second.commands


def test_each_command_comes_from_exactly_one_family() -> None:
    seen: list[str] = []
    for family in FAMILIES:
        group = click.Group("probe")
        family.register(group)
        seen.extend(group.commands)
    assert sorted(seen) == COMMANDS


def test_families_import_the_shared_helpers_never_the_assembler() -> None:
    for family in FAMILIES:
        name = family.__name__.rsplit('.', 1)[1]
        source = CLI_DIR / f"{name}.py" if (CLI_DIR / f"{name}.py").exists() else CLI_DIR / name / "__init__.py"
        tree = ast.parse(source.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "runner.cli":
                names = {alias.name for alias in node.names}
                assert names <= {"render", "client", "app"}, (family.__name__, names)
            if isinstance(node, ast.Import):
                assert all(alias.name != "runner.cli" for alias in node.names), family.__name__
