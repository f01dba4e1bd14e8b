"""The `signoff` command line: thin over the core, one `emit` for every result.

Exit codes: 0 success, 1 the thing failed (invalid flow, run not succeeded,
integrity problem), 2 usage error. With `--json` every command prints exactly
one JSON document on stdout; progress and messages go to stderr.
"""

from __future__ import annotations

import asyncio
import getpass
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

import click

from runner import __version__, render, releases
from runner.config import load_config
from runner.engine import Engine
from runner.errors import SignoffError, UsageError
from runner.flowfile import check_file, expand_paths, find_flow_file, load_flow_bytes
from runner.inputs import parse_pairs, resolve_inputs
from runner.store import Store


class Env:
    """What every command may need, found from options, then environment, then defaults."""

    def __init__(self, data: str | None, repo: str | None, config: str | None) -> None:
        self.repo = Path(repo).resolve() if repo else releases.find_root(Path.cwd())
        self.data = Path(data) if data else Path(".signoff")
        self.config_path = config

    @property
    def flows_dir(self) -> Path:
        return self.repo / "flows"

    def store(self) -> Store:
        return Store(self.data)

    def config(self):
        return load_config(self.config_path)


def common(func: Callable) -> Callable:
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON document (stable keys) on stdout.")(func)
    func = click.option("--config", envvar="SIGNOFF_CONFIG", metavar="FILE",
                        help="Config file (signoff.yaml) [env: SIGNOFF_CONFIG].")(func)
    func = click.option("--repo", envvar="SIGNOFF_REPO", metavar="DIR",
                        help="Flows repository [env: SIGNOFF_REPO; default: the git repo around the current dir].")(func)
    func = click.option("--data", envvar="SIGNOFF_DATA", metavar="DIR",
                        help="Data directory [env: SIGNOFF_DATA; default: ./.signoff].")(func)
    return func


def emit(as_json: bool, document: Any, human: str, *, exit_code: int = 0) -> None:
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    elif human:
        click.echo(human)
    if exit_code:
        sys.exit(exit_code)


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="signoff")
def cli() -> None:
    """signoff: declarative YAML workflows with human checkpoints.

    Flows live in flows/<name>.yaml in a git repository. Validate them, run them
    locally, and inspect every run's record under the data directory.
    """


@cli.command()
@click.argument("paths", nargs=-1, type=click.Path())
@click.option("--ref", help="Validate flows as committed at this branch, tag or commit.")
@common
def validate(paths: tuple[str, ...], ref: str | None, data, repo, config, as_json: bool) -> None:
    """Check flows (default: every file in flows/) against the schema and for meaning.

    JSON: {ok, flows: [{file, name, ok, errors: [{file, line, column, path, rule,
    message, hint}], warnings: [...]}]}. Exit 1 if any flow has an error.
    """
    env = Env(data, repo, config)
    cfg = env.config() if config else None
    if ref:
        reports = [_check_at_ref(env, ref, Path(p), cfg) for p in _flow_files_at(env, ref, paths)]
    else:
        files = expand_paths(list(paths) or [env.flows_dir])
        reports = [check_file(path, config=cfg) for path in files]
    ok = all(r.ok for r in reports)
    lines = []
    for report in reports:
        lines.extend(str(problem) for problem in report.errors + report.warnings)
    bad = sum(not r.ok for r in reports)
    lines.append(f"{len(reports)} flow{'s' if len(reports) != 1 else ''} checked: "
                 + ("all valid" if ok else f"{bad} invalid"))
    emit(as_json, {"ok": ok, "flows": [r.to_dict() for r in reports]}, "\n".join(lines), exit_code=0 if ok else 1)


def _flow_files_at(env: Env, ref: str, paths: tuple[str, ...]) -> list[str]:
    if paths:
        return [os.path.relpath(Path(p).resolve(), env.repo) if Path(p).exists() else p for p in paths]
    listing = releases._git(env.repo, "ls-tree", "--name-only", releases.resolve_ref(env.repo, ref)[1], "flows/")
    return [p for p in (listing or "").splitlines() if p.endswith((".yaml", ".yml"))]


def _check_at_ref(env: Env, ref: str, relative: Path, cfg: Any):
    from runner.flowfile import check_bytes

    source = releases.at_ref(env.repo, ref, relative.as_posix())
    return check_bytes(source.data, source.label, expect_name=relative.stem, config=cfg)


@cli.command()
@click.argument("flow")
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input value (repeatable).")
@click.option("--inputs-file", type=click.File("r"), help="A JSON (or YAML) file of inputs.")
@click.option("--ref", help="Run the flow as committed on this branch, tag or commit (a draft run).")
@click.option("--local", is_flag=True, help="Run in this process, from the working tree (or --ref).")
@click.option("--follow/--no-follow", default=True, help="Show steps live as they happen (default).")
@common
def run(flow: str, pairs: tuple[str, ...], inputs_file, ref: str | None, local: bool, follow: bool,
        data, repo, config, as_json: bool) -> None:
    """Start a run of FLOW (a name in flows/ or a path) and wait for it to end.

    JSON: the run record (as in run.json). Exit 0 if the run succeeded, 1 otherwise.
    """
    if not local:
        raise UsageError("there is no daemon to send this run to", hint="add --local to run it in this process")
    env = Env(data, repo, config)
    cfg = env.config()
    path = find_flow_file(env.flows_dir, flow) if not ref else None
    if ref:
        relative = flow if flow.endswith((".yaml", ".yml")) else f"flows/{flow}.yaml"
        source = releases.at_ref(env.repo, ref, relative)
        expect = Path(relative).stem
    else:
        source = releases.working_tree(env.repo, path)
        expect = path.stem
    parsed = load_flow_bytes(source.data, source.label, expect_name=expect, config=cfg)
    given: dict[str, Any] = {}
    if inputs_file:
        from ruamel.yaml import YAML

        loaded = YAML(typ="safe").load(inputs_file.read())
        if not isinstance(loaded, dict):
            raise UsageError("--inputs-file must hold a mapping of input names to values")
        given.update(loaded)
    given.update(parse_pairs(pairs))
    values = resolve_inputs(parsed, given)
    progress = render.Progress(show_output=follow and not as_json)
    engine = Engine(env.store(), work_dir=env.repo, config=cfg, masker=cfg.masker,
                    listener=progress if follow else None, on_output=progress.output)
    run_id = engine.create_run(parsed, values, started_by=getpass.getuser(), draft=True, ref=source.ref,
                               commit=source.commit)
    record = asyncio.run(_advance_interruptibly(engine, run_id))
    emit(as_json, record, "" if follow else render.run_detail(record),
         exit_code=0 if record["status"] == "succeeded" else 1)


async def _advance_interruptibly(engine: Engine, run_id: str) -> dict:
    """Advance the run; SIGINT/SIGTERM cancel it cleanly (recorded as cancelled)."""
    loop = asyncio.get_running_loop()
    task = asyncio.ensure_future(engine.advance(run_id))
    for sig, name in ((signal.SIGINT, "SIGINT"), (signal.SIGTERM, "SIGTERM")):
        loop.add_signal_handler(sig, lambda n=name: task.cancel(f"cancelled by {n}"))
    try:
        return await task
    except asyncio.CancelledError:
        return engine.store.read_run(run_id)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


@cli.group()
def runs() -> None:
    """Inspect recorded runs."""


@runs.command("list")
@click.option("--flow", help="Only runs of this flow.")
@click.option("--status", type=click.Choice(["queued", "running", "waiting", "succeeded", "failed", "rejected",
                                              "cancelled", "timed_out"]), help="Only runs with this status.")
@click.option("--draft/--live", default=None, help="Only draft runs, or only live ones.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@common
def runs_list(flow, status, draft, limit, data, repo, config, as_json) -> None:
    """Runs, newest first. JSON: {runs: [run record, ...]}."""
    found = Env(data, repo, config).store().list_runs(flow=flow, status=status, draft=draft, limit=limit)
    emit(as_json, {"runs": found}, render.run_list(found))


@runs.command("show")
@click.argument("run_id")
@click.option("--events", "with_events", is_flag=True, help="Include the event history.")
@common
def runs_show(run_id, with_events, data, repo, config, as_json) -> None:
    """One run: its record, and with --events its history. JSON: the run record (+ events)."""
    store = Env(data, repo, config).store()
    record = store.read_run(run_id)
    human = render.run_detail(record)
    if with_events:
        events = list(store.read_events(run_id))
        record = {**record, "history": events}
        human += "\n\n" + "\n".join(f"{e['seq']:>5} {e['at']} {e['type']} {e.get('step', '')}" for e in events)
    emit(as_json, record, human)


@runs.command("verify")
@click.argument("run_id")
@common
def runs_verify(run_id, data, repo, config, as_json) -> None:
    """Check a run's event chain and that run.json matches it. JSON: {run, ok, events, problems}."""
    result = Env(data, repo, config).store().verify(run_id)
    human = (f"run {run_id}: {result.events} events, chain intact, run.json matches" if result.ok
             else f"run {run_id}: INTEGRITY PROBLEM\n" + "\n".join(f"  - {p}" for p in result.problems))
    emit(as_json, result.to_dict(), human, exit_code=0 if result.ok else 1)


@cli.group()
def resource() -> None:
    """Read stored resources (res://...)."""


@resource.command("get")
@click.argument("ref")
@click.option("-o", "--output", type=click.Path(dir_okay=False), help="Write to FILE instead of stdout.")
@common
def resource_get(ref, output, data, repo, config, as_json) -> None:
    """Print a resource's bytes (or save them with -o). JSON: its metadata."""
    store = Env(data, repo, config).store()
    meta = store.resource_meta(ref)
    if as_json and not output:
        emit(True, meta, "")
        return
    if output:
        with open(output, "wb") as out:
            store.copy_resource(ref, out)
        emit(as_json, {**meta, "written_to": output}, f"wrote {meta['size']:,} bytes to {output}")
    else:
        store.copy_resource(ref, sys.stdout.buffer)


def main() -> None:
    as_json = "--json" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except SignoffError as exc:
        _fail(as_json, exc.to_dict(), exc.message, exc.hint, exc.exit_code)
    except click.exceptions.Abort:
        _fail(as_json, {"code": "aborted", "message": "aborted"}, "aborted", None, 1)
    except click.ClickException as exc:
        _fail(as_json, {"code": "usage", "message": exc.format_message()}, exc.format_message(), None,
              exc.exit_code if exc.exit_code else 2)
    except KeyboardInterrupt:
        _fail(as_json, {"code": "interrupted", "message": "interrupted"}, "interrupted", None, 130)
    except BrokenPipeError:
        sys.exit(1)
    sys.exit(0)


def _fail(as_json: bool, document: dict, message: str, hint: str | None, code: int) -> None:
    if as_json:
        click.echo(json.dumps({"error": document}, indent=2, ensure_ascii=False))
    click.echo(f"error: {message}" + (f"\n  hint: {hint}" if hint else ""), err=True)
    sys.exit(code)
