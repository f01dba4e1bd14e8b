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

from runner import __version__
from runner.cli import render
from runner.releases import repo as releases
from runner.cli.client import Client
from runner.config import ClientView, client_view, load_config
from runner.runs.engine import Engine
from runner.errors import Interrupted, SignoffError, UsageError
from runner.flows.load import check_bytes, check_file, expand_paths, find_flow_file, load_flow_bytes
from runner.flows.inputs import check_values, parse_pairs, resolve_inputs
from runner.runs.events import apply as apply_event
from runner.status import RunStatus
from runner.runs.store import Store
from runner.flows.yamldoc import DocumentError, parse_bytes


class Env:
    """What every command may need, found from options, then environment, then defaults."""

    def __init__(self, data: str | None, repo: str | None, config: str | None) -> None:
        self.repo = Path(repo).resolve() if repo else releases.find_root(Path.cwd())
        view = client_view(config) if config else ClientView()
        self.data = Path(data) if data else view.data or Path(".signoff")
        self.data_given = bool(data)
        self.config_path = config
        self.daemon_url = view.server_url  # --server and SIGNOFF_SERVER win over it

    def client(self, server: str | None) -> Client:
        """The daemon's API: at --server / SIGNOFF_SERVER, else where the config says it listens."""
        return Client(server or os.environ.get("SIGNOFF_SERVER") or self.daemon_url, self.data)

    @property
    def flows_dir(self) -> Path:
        return self.repo / "flows"

    def store(self) -> Store:
        return Store(self.data)

    def config(self):
        return load_config(self.config_path)


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


class Body(click.ParamType):
    """`--data`: a JSON text, `@FILE` to read it from a file, or `@-` from stdin; the value is the bytes."""

    name = "JSON|@FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        if not value.startswith("@"):
            return os.fsencode(value)  # the bytes given, even those that are not UTF-8
        if value == "@-":
            return click.get_binary_stream("stdin").read()
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            self.fail(f"cannot read {value[1:]!r}: {exc.strerror}.", param, ctx)


def common(func: Callable) -> Callable:
    func = click.option("--json", "as_json", is_flag=True, help="Print one JSON document (stable keys) on stdout.")(func)
    func = click.option("--config", envvar="SIGNOFF_CONFIG", metavar="FILE",
                        type=click.Path(exists=True, dir_okay=False),
                        help="Config file (signoff.yaml) [env: SIGNOFF_CONFIG].")(func)
    func = click.option("--repo", envvar="SIGNOFF_REPO", metavar="DIR", type=click.Path(exists=True, file_okay=False),
                        help="Flows repository [env: SIGNOFF_REPO; default: the git repo around the current dir].")(func)
    func = click.option("--data", envvar="SIGNOFF_DATA", metavar="DIR", type=click.Path(file_okay=False),
                        help="Data directory, made on first use [env: SIGNOFF_DATA; default: the config's "
                             "data, else ./.signoff].")(func)
    return func


SERVER_HELP = ("The daemon [env: SIGNOFF_SERVER; default: the config's server, else http://127.0.0.1:8080; "
               "token: SIGNOFF_TOKEN].")


def server_option(func: Callable) -> Callable:
    return click.option("--server", envvar="SIGNOFF_SERVER", metavar="URL", help=SERVER_HELP)(func)


def open_output(path: str):
    """A file named by -o, opened for writing; a failure is the user's to fix, with the reason."""
    try:
        return open(path, "wb")
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}",
                         hint="give -o a file in a directory that exists and that you may write") from None


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

    Flows live in flows/<name>.yaml in a git repository: validate them, release
    them with tags, run them through the daemon (`signoff serve`) or in this
    process (`run --local`), decide approvals, and inspect every run's record.
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
    return releases.flow_paths_at(env.repo, ref)


def _check_at_ref(env: Env, ref: str, relative: Path, cfg: Any):
    source = releases.at_ref(env.repo, ref, relative.as_posix())
    return check_bytes(source.data, source.label, expect_name=relative.stem, config=cfg)


@cli.command()
@click.argument("flow")
@click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="An input value (repeatable).")
@click.option("--inputs-file", type=click.File("rb"), help="A JSON (or YAML) file of inputs.")
@click.option("--ref", help="Run the flow as committed on this branch, tag or commit (a draft run).")
@click.option("--local", is_flag=True, help="Run in this process, from the working tree (or --ref).")
@click.option("--server", envvar="SIGNOFF_SERVER", metavar="URL", help=SERVER_HELP)
@click.option("--follow/--no-follow", default=True, help="Show steps live as they happen (default).")
@common
def run(flow: str, pairs: tuple[str, ...], inputs_file, ref: str | None, local: bool, server: str | None,
        follow: bool, data, repo, config, as_json: bool) -> None:
    """Start a run of FLOW through the daemon (or in this process with --local).

    With --follow (the default) it shows each step as it happens and waits for the
    end. JSON: the final run record. Exit 0 if the run succeeded, 1 otherwise.
    """
    env = Env(data, repo, config)
    if not local:
        given = _inputs_from(inputs_file, pairs)
        with env.client(server) as client:
            _, record = client.call("POST", f"/api/v1/flows/{flow}/runs", json={"inputs": given, "ref": ref})
            if follow:
                record = _follow(client, record, show=not as_json)
        emit(as_json, record, render.run_detail(record) if follow else f"started run {record['id']}",
             exit_code=(0 if record["status"] == "succeeded" else 1) if follow else 0)
        return
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
    values = resolve_inputs(parsed, _inputs_from(inputs_file, pairs))
    progress = render.Progress(show_output=follow and not as_json)
    engine = Engine(env.store(), work_dir=env.repo, config=cfg, masker=cfg.masker,
                    listener=progress if follow else None)
    run_id = engine.create_run(parsed, values, started_by=getpass.getuser(), draft=True, ref=source.ref,
                               commit=source.commit, dirty=source.dirty)
    record = asyncio.run(_advance_interruptibly(engine, run_id))
    if record.get("kills"):  # workers its end left running on hosts: no daemon will stop them for us
        from runner.steps.ssh import jobs as sshjobs  # ssh's libraries load only for runs that used ssh

        record = asyncio.run(sshjobs.carry_out(engine, run_id))
    emit(as_json, record, render.run_detail(record), exit_code=0 if record["status"] == "succeeded" else 1)


INPUTS_FILE_HINT = "write a YAML or JSON mapping of input names to values"


def _inputs_from(inputs_file, pairs: tuple[str, ...]) -> dict[str, Any]:
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


@cli.group()
def runs() -> None:
    """Inspect recorded runs."""


@runs.command("list")
@click.option("--flow", help="Only runs of this flow.")
@click.option("--status", type=click.Choice([status.value for status in RunStatus]), help="Only runs with this status.")
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
    emit(as_json, record, render.run_detail(record), exit_code=0 if record["status"] == "succeeded" else 1)


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
@click.option("-o", "--output", type=OutputFile(), help="Write to FILE instead of stdout.")
@common
def resource_get(ref, output, data, repo, config, as_json) -> None:
    """Print a resource's bytes (or save them with -o). JSON: its metadata."""
    store = Env(data, repo, config).store()
    meta = store.resource_meta(ref)
    if as_json and not output:
        emit(True, meta, "")
        return
    if output:
        with open_output(output) as out:
            store.copy_resource(ref, out)
        emit(as_json, {**meta, "written_to": output}, f"wrote {meta['size']:,} bytes to {output}")
    else:
        store.copy_resource(ref, sys.stdout.buffer)


def _decide(decision: str, run_id: str, step: str, comment: str | None, pairs: tuple[str, ...], context_sha256,
            server, data, repo, config, as_json: bool) -> None:
    env = Env(data, repo, config)
    body = {"decision": decision, "comment": comment, "inputs": parse_pairs(pairs) if pairs else {},
            "context_sha256": context_sha256}
    with env.client(server) as client:
        _, answer = client.call("POST", f"/api/v1/runs/{run_id}/steps/{step}/decision", json=body)
    verb = {"approve": "approved", "reject": "rejected", "request_changes": "requested changes on"}[decision]
    state = "decided" if answer["final"] else "recorded; more approvals needed"
    emit(as_json, answer, f"{verb} {run_id} / {step} ({state}); run is {answer['run']['status']}")


def decision_command(name: str, decision: str, summary: str) -> None:
    @cli.command(name, help=summary + "\n\nJSON: {accepted, final, decision, run}.")
    @click.argument("run_id")
    @click.argument("step")
    @click.option("--comment", "-m", help="Why (some steps require it).")
    @click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="A reviewer input (repeatable).")
    @click.option("--context-sha256", help="The context hash you reviewed; refused if the context changed since.")
    @server_option
    @common
    def command(run_id, step, comment, pairs, context_sha256, server, data, repo, config, as_json) -> None:
        _decide(decision, run_id, step, comment, pairs, context_sha256, server, data, repo, config, as_json)


decision_command("approve", "approve", "Approve a waiting approval step.")
decision_command("reject", "reject", "Reject a waiting approval step (the run goes to on_reject, or ends rejected).")
decision_command("request-changes", "request_changes",
                 "Send a step back: the run reruns from the step's rewind_to, with your comment.")


@cli.command()
@server_option
@common
def pending(server, data, repo, config, as_json) -> None:
    """Approvals waiting for me. JSON: {user, pending: [{run, flow, step, started_by, context, context_sha256,
    deadline, approvals, min_approvals, links, reviewer_inputs, require_comment, rewind_to, url}]}."""
    with Env(data, repo, config).client(server) as client:
        _, answer = client.call("GET", "/api/v1/pending")
    emit(as_json, answer, render.pending(answer["user"], answer["pending"]))


@cli.command()
@click.argument("target")
@click.option("--data", "payload", required=True, type=Body(),
              help="The JSON body, or @FILE to read it from a file (@- from stdin).")
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: the answer is always JSON.")
@server_option
def callback(target, payload, as_json, server) -> None:
    """Post a callback to a URL or token (as an external worker would).

    JSON: the daemon's answer {accepted, replay, run, step, sha256, at, bytes, status}; exit 0 for 200/202.
    """
    url = target if "://" in target else None
    token = target.rstrip("/").rsplit("/", 1)[-1]
    with Client(url.rsplit("/callbacks/", 1)[0] if url else server, Path(".")) as client:
        status, answer = client.call("POST", f"/callbacks/{token}", content=payload,
                                     headers={"Content-Type": "application/json"})
    click.echo(json.dumps({**answer, "status": status}, indent=2))


@cli.command()
@click.argument("run_id")
@server_option
@common
def cancel(run_id, server, data, repo, config, as_json) -> None:
    """Cancel a run (a running command's process group is killed). JSON: the run record."""
    with Env(data, repo, config).client(server) as client:
        _, record = client.call("POST", f"/api/v1/runs/{run_id}/cancel")
    emit(as_json, record, f"run {run_id} is {record['status']}")


@cli.command()
@click.option("--host", help="Address to listen on [default: config server.host or 127.0.0.1].")
@click.option("--port", type=int, help="Port [default: config server.port or 8080].")
@common
def serve(host, port, data, repo, config, as_json) -> None:
    """Run the daemon: the API, the engine, timers and notifications, until SIGTERM."""
    from runner.daemon.serve import serve as run_daemon

    run_daemon(Env(data, repo, config), host=host, port=port)


def main() -> None:
    as_json = "--json" in sys.argv[1:]
    try:
        cli.main(standalone_mode=False)
    except SignoffError as exc:
        reasons = "".join(f"\n  - {reason}" for reason in getattr(exc, "reasons", []) or [])
        hint = _cli_hint(exc) or exc.hint
        _fail(as_json, {**exc.to_dict(), **({"hint": hint} if hint else {})}, exc.message + reasons, hint,
              exc.exit_code)
    except click.exceptions.Abort:
        _fail(as_json, {"code": "aborted", "message": "aborted"}, "aborted", None, 1)
    except click.ClickException as exc:
        hint = _usage_hint(exc)
        document = {"code": "usage", "message": exc.format_message(), **({"hint": hint} if hint else {})}
        _fail(as_json, document, exc.format_message(), hint, exc.exit_code if exc.exit_code else 2)
    except KeyboardInterrupt:
        _fail(as_json, Interrupted("interrupted").to_dict(), "interrupted", None, Interrupted.exit_code)
    except BrokenPipeError:
        sys.exit(1)
    except OSError as exc:  # a file no option check could foresee (permissions, a full disk): never a traceback
        where = f" {exc.filename}" if exc.filename else ""
        message = f"cannot use{where}: {exc.strerror or exc}"
        _fail(as_json, {"code": "os_error", "message": message}, message,
              "check the path exists and that you may read (or write) it", 1)
    sys.exit(0)


def _cli_hint(exc: SignoffError) -> str | None:
    """The daemon words its hints for API users; for the request fields it names, the CLI names its flags."""
    fields = getattr(exc, "fields", None) or []
    if "comment" in fields:
        return 'give a comment with -m "..." (--comment)'
    names = [field.split(".", 1)[1] for field in fields if field.startswith("inputs.")]
    if names:
        return "give " + " ".join(f"-i {name}=..." for name in names)
    return None


def _usage_hint(exc: click.ClickException) -> str | None:
    """For a wrong argument: where the value came from (an environment variable), and where help is."""
    ctx = getattr(exc, "ctx", None)
    if ctx is None:
        return None
    param = getattr(exc, "param", None)
    envvar = getattr(param, "envvar", None)
    if envvar and param.name and ctx.get_parameter_source(param.name) is click.core.ParameterSource.ENVIRONMENT:
        return f"the value came from the environment variable {envvar}; fix or unset it"
    return f"see `{ctx.command_path} --help`"


def _fail(as_json: bool, document: dict, message: str, hint: str | None, code: int) -> None:
    if as_json:
        click.echo(json.dumps({"error": document}, indent=2, ensure_ascii=False))
    click.echo(f"error: {message}" + (f"\n  hint: {hint}" if hint else ""), err=True)
    sys.exit(code)


from runner.cli import releases as cli_releases  # noqa: E402,F401  (registers the release commands on `cli`)
from runner.cli import setup as cli_setup  # noqa: E402,F401  (registers init and doctor)
