"""CLI commands on runs: start (through the daemon or here) and follow, list, show, verify, logs, cancel,
resource get. The inspection commands read through runner.cli.remote (local files or a daemon's API)."""

from __future__ import annotations

import asyncio
import getpass
import signal
import sys
from contextlib import closing
from pathlib import Path
from typing import IO, Any

import click

from runner.cli import render
from runner.cli.app import SERVER_HELP, Env, common, emit, server_option
from runner.cli.client import Client
from runner.cli.remote import reader
from runner.errors import Interrupted, UsageError
from runner.flows.inputs import check_values, parse_pairs, resolve_inputs
from runner.flows.load import find_flow_file, load_flow_bytes
from runner.yamldoc import DocumentError, parse_bytes
from runner.releases import repo as flow_sources
from runner.runs import kills
from runner.runs.engine import Engine
from runner.runs.events import apply as apply_event
from runner.runs.store import Verification
from runner.status import RunStatus
from runner.steps.base import kind_named


@click.command()
@click.argument("flow")
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input value (repeatable).")
@click.option("--inputs-file", type=click.File("rb"), help="A JSON (or YAML) file of inputs.")
@click.option("--ref", help="Run the flow as committed on this branch, tag or commit (a draft run).")
@click.option("--local", is_flag=True, help="Run in this process, from the working tree (or --ref).")
@click.option("--server", envvar="SIGNOFF_SERVER", metavar="URL", help=SERVER_HELP)
@click.option("--follow/--no-follow", default=True, help="Show steps live as they happen (default).")
@click.option("--allow-self-approval", is_flag=True,
              help="With --local: let me approve my own run where a step allows it (allow_self_approval: true).")
@common
def run(flow: str, pairs: tuple[str, ...], inputs_file, ref: str | None, local: bool, server: str | None,
        follow: bool, allow_self_approval: bool, data, repo, config, as_json: bool) -> None:
    """Start a run of FLOW through the daemon (or in this process with --local).

    With --follow (the default) it shows each step as it happens and waits for the
    end. JSON: the final run record. Exit 0 if the run succeeded, 1 otherwise.

    A --local run that waits serves its callbacks and decisions on a loopback port
    (printed), and on a terminal asks for its approvals as the local user.
    """
    env = Env(data, repo, config)
    if allow_self_approval and not local:
        raise UsageError("--allow-self-approval is for --local runs",
                         hint="through the daemon, the step's allow_self_approval alone decides")
    if not local:
        given = _inputs_from(inputs_file, pairs)
        with env.client(server) as client:
            _, record = client.call("POST", f"/api/v1/flows/{flow}/runs", json={"inputs": given, "ref": ref})
            if follow:
                record = _follow(client, record, show=not as_json)
        emit(as_json, record, render.run_detail(record) if follow else f"started run {record['id']}",
             exit_code=(0 if record["status"] == RunStatus.SUCCEEDED else 1) if follow else 0)
        return
    cfg = env.config()
    path = find_flow_file(env.flows_dir, flow) if not ref else None
    if ref:
        relative = flow if flow.endswith((".yaml", ".yml")) else f"flows/{flow}.yaml"
        source = flow_sources.at_ref(env.repo, ref, relative)
        expect = Path(relative).stem
    else:
        source = flow_sources.working_tree(env.repo, path)
        expect = path.stem
    parsed = load_flow_bytes(source.data, source.label, expect_name=expect, config=cfg)
    values = resolve_inputs(parsed, _inputs_from(inputs_file, pairs))
    progress = render.Progress(show_output=follow and not as_json)
    if any((kind := kind_named(step.kind)) is not None and kind.waits for step in parsed.steps):
        from runner.cli.local_wait import run_local  # the loopback server and the prompt: only for a run that waits
        record = run_local(store=env.store(), flow=parsed, inputs=values, source=source, config=cfg,
                                      work_dir=env.repo, listener=progress if follow else None,
                                      allow_self_approval=allow_self_approval)
        emit(as_json, record, render.run_detail(record),
             exit_code=0 if record["status"] == RunStatus.SUCCEEDED else 1)
        return
    engine = Engine(env.store(), work_dir=env.repo, config=cfg, masker=cfg.masker,
                    listener=progress if follow else None)
    run_id = engine.create_run(parsed, values, started_by=getpass.getuser(), draft=True, ref=source.ref,
                               commit=source.commit, dirty=source.dirty)
    try:
        record = asyncio.run(_advance_interruptibly(engine, run_id))
        if record.get("kills"):  # workers its end left running on hosts: no daemon will stop them for us
            record = asyncio.run(kills.carry_out(engine, run_id))
    finally:
        engine.pools.close()
    emit(as_json, record, render.run_detail(record), exit_code=0 if record["status"] == RunStatus.SUCCEEDED else 1)


INPUTS_FILE_HINT = "write a YAML or JSON mapping of input names to values"


def _inputs_from(inputs_file: IO[bytes] | None, pairs: tuple[str, ...]) -> dict[str, Any]:
    given: dict[str, Any] = {}
    if inputs_file:
        try:
            values = parse_bytes(inputs_file.read(), inputs_file.name, limit=None).plain
        except DocumentError as exc:
            where = exc.problem
            if where.rule == "not-a-mapping":
                raise UsageError(f"--inputs-file: {inputs_file.name} is not a mapping of input names to values",
                                 hint=INPUTS_FILE_HINT) from None
            raise UsageError(f"--inputs-file: {where.file}:{where.line}:{where.column}: {where.message}",
                             hint=INPUTS_FILE_HINT) from None
        given.update(values)
    given.update(parse_pairs(pairs))
    return check_values(given)


def _follow(client: Client, record: dict, *, show: bool) -> dict:
    """Print the run's events as they happen (long-polling the daemon) until it ends; ^C stops only the watching."""
    try:
        return _follow_events(client, record, show=show)
    except KeyboardInterrupt:
        raise Interrupted(f"stopped following run {record['id']}; the run goes on in the daemon",
                          hint=f"follow it again with `signoff runs follow {record['id']}`, or see it with "
                               f"`signoff runs show {record['id']}`") from None


def _follow_events(client: Client, record: dict, *, show: bool) -> dict:
    progress = render.Progress(show_output=show)
    folded: dict = {}
    seq = -1
    while True:
        _, page = client.call("GET", f"/api/v1/runs/{record['id']}/events", params={"after": seq, "wait": 20})
        for event in page["events"]:
            apply_event(folded, event)
            if show:
                progress(folded, event)
            seq = event["seq"]
        if folded.get("status") and folded["status"] not in ("queued", "running", "waiting"):
            _, final = client.call("GET", f"/api/v1/runs/{record['id']}")
            return final


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


@click.group()
def runs() -> None:
    """Inspect recorded runs."""


@runs.command("list")
@click.option("--flow", help="Only runs of this flow.")
@click.option("--status", type=click.Choice([status.value for status in RunStatus]), help="Only runs with this status.")
@click.option("--draft/--live", default=None, help="Only draft runs, or only live ones.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(1, 100_000))
@server_option
@common
def runs_list(flow, status, draft, limit, server, data, repo, config, as_json) -> None:
    """Runs, newest first (through a daemon: those you may see). JSON: {runs: [run record, ...]}."""
    with closing(reader(Env(data, repo, config), server)) as source:
        found = source.list_runs(flow=flow, status=status, draft=draft, limit=limit)
    emit(as_json, {"runs": found}, render.run_list(found))


@runs.command("show")
@click.argument("run_id")
@click.option("--events", "with_events", is_flag=True, help="Include the event history.")
@server_option
@common
def runs_show(run_id, with_events, server, data, repo, config, as_json) -> None:
    """One run: its record, and with --events its history. JSON: the run record (+ history: [event, ...])."""
    with closing(reader(Env(data, repo, config), server)) as source:
        record = source.run(run_id)
        events = source.events(run_id) if with_events else None
    human = render.run_detail(record)
    if events is not None:
        record = {**record, "history": events}
        human += "\n\n" + render.history(events)
    emit(as_json, record, human)


@runs.command("follow")
@click.argument("run_id")
@server_option
@common
def runs_follow(run_id, server, data, repo, config, as_json) -> None:
    """Show a daemon run's steps live until it ends (^C stops watching, not the run).

    JSON: the final run record. Exit 0 if the run succeeded, 1 otherwise.
    """
    with Env(data, repo, config).client(server) as client:
        record = _follow(client, {"id": run_id}, show=not as_json)
    emit(as_json, record, render.run_detail(record), exit_code=0 if record["status"] == RunStatus.SUCCEEDED else 1)


@runs.command("verify")
@click.argument("run_id")
@server_option
@common
def runs_verify(run_id, server, data, repo, config, as_json) -> None:
    """Check a run's event chain and that run.json matches it. JSON: {run, ok, events, problems}."""
    with closing(reader(Env(data, repo, config), server)) as source:
        result = source.verify(run_id)
    emit(as_json, result, render.verification(run_id, Verification(run_id, result["events"], result["problems"])),
         exit_code=0 if result["ok"] else 1)


@click.command()
@click.argument("run_id")
@click.argument("step", required=False)
@server_option
@common
def logs(run_id, step, server, data, repo, config, as_json) -> None:
    """The stdout and stderr each step of a run recorded (or STEP's alone).

    An output kept as a resource is shown as its text up to 1 MiB, else as its res:// reference
    (read it with `signoff resource get`). JSON: {run, steps: [{step, status, attempts, stdout, stderr}]}.
    """
    with closing(reader(Env(data, repo, config), server)) as source:
        document = source.logs(run_id, step)
    emit(as_json, document, render.step_logs(document))


@click.command()
@click.argument("run_id")
@server_option
@common
def cancel(run_id, server, data, repo, config, as_json) -> None:
    """Cancel a run (a running command's process group is killed). JSON: the run record."""
    with Env(data, repo, config).client(server) as client:
        _, record = client.call("POST", f"/api/v1/runs/{run_id}/cancel")
    emit(as_json, record, f"run {run_id} is {record['status']}")


class OutputFile(click.Path):
    """A file to write: not a directory, and its directory must exist (the file need not)."""

    def __init__(self) -> None:
        super().__init__(dir_okay=False, writable=True)

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        path = super().convert(value, param, ctx)
        parent = Path(path).parent
        if not parent.is_dir():
            self.fail(f"directory {str(parent)!r} does not exist.", param, ctx)
        return path


def open_output(path: str) -> IO[bytes]:
    """A file named by -o, opened for writing; a failure is the user's to fix, with the reason."""
    try:
        return open(path, "wb")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}",
                         hint="give -o a file in a directory that exists and that you may write") from None


@click.group()
def resource() -> None:
    """Read stored resources (res://...)."""


@resource.command("get")
@click.argument("ref")
@click.option("-o", "--output", type=OutputFile(), help="Write to FILE instead of stdout.")
@server_option
@common
def resource_get(ref, output, server, data, repo, config, as_json) -> None:
    """Print a resource's bytes (or save them with -o). JSON: its metadata."""
    with closing(reader(Env(data, repo, config), server)) as source:
        meta = source.resource_meta(ref)
        if as_json and not output:
            emit(True, meta, "")
            return
        if output:
            with open_output(output) as out:
                source.copy_resource(ref, out)
            emit(as_json, {**meta, "written_to": output}, f"wrote {meta['size']:,} bytes to {output}")
        else:
            source.copy_resource(ref, sys.stdout.buffer)


def register(group: click.Group) -> None:
    for command in (run, runs, cancel, resource, logs):
        group.add_command(command)
