"""CLI commands on flow files: validate."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

import click

from runner.cli import render
from runner.cli.app import Env, common, emit
from runner.flows.load import FlowReport, check_bytes, check_file, expand_paths
from runner.releases import repo as flow_sources


@click.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--ref", help="Validate flows as committed at this branch, tag or commit.")
@common
def validate(paths: tuple[str, ...], ref: str | None, data, repo, config, as_json: bool) -> None:
    """Check flows (default: every file in flows/) against the schema and for meaning.

    JSON: {ok, flows: [{file, name, ok, errors: [{file, line, column, path, rule,
    message, hint}], warnings: [...]}]}. Exit 1 if any flow has an error.
    """
    document, reports = validation(Env(data, repo, config), paths, ref)
    emit(as_json, document, render.validation(reports), exit_code=0 if document["ok"] else 1)


def validation(env: Env, paths: Sequence[str], ref: str | None) -> tuple[dict[str, Any], list[FlowReport]]:
    """`validate`'s JSON document (and its reports): the files at `paths` (default flows/), or as committed at `ref`."""
    cfg = env.config() if env.config_path else None
    if ref:
        reports = [_check_at_ref(env, ref, Path(p), cfg) for p in _flow_files_at(env, ref, paths)]
    else:
        files = expand_paths(list(paths) or [env.flows_dir])
        reports = [check_file(path, config=cfg) for path in files]
    return {"ok": all(r.ok for r in reports), "flows": [r.to_dict() for r in reports]}, reports


def _flow_files_at(env: Env, ref: str, paths: Sequence[str]) -> list[str]:
    if paths:
        return [os.path.relpath(Path(p).resolve(), env.repo) if Path(p).exists() else p for p in paths]
    return flow_sources.flow_paths_at(env.repo, ref)


def _check_at_ref(env: Env, ref: str, relative: Path, cfg: Any) -> FlowReport:
    source = flow_sources.at_ref(env.repo, ref, relative.as_posix())
    return check_bytes(source.data, source.label, expect_name=relative.stem, config=cfg)


def register(group: click.Group) -> None:
    group.add_command(validate)
