"""The `signoff` group and what every command family shares: the context, the options, one `emit`.

Exit codes: 0 success, 1 the thing failed (invalid flow, run not succeeded,
integrity problem), 2 usage error. With `--json` every command prints exactly
one JSON document on stdout; progress and messages go to stderr. Errors become
a message and an exit code in one place, `run_and_exit`.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any, Callable, NoReturn

import click

from runner import __version__
from runner.cli.client import Client
from runner.config import ClientView, Config, client_view, load_config
from runner.errors import Interrupted, SignoffError
from runner.releases.repo import find_root
from runner.runs.files import FileStore
from runner.runs.store import Store


class Env:
    """What every command may need, found from options, then environment, then defaults."""

    def __init__(self, data: str | None, repo: str | None, config: str | None) -> None:
        self.repo = Path(repo).resolve() if repo else find_root(Path.cwd())
        view = client_view(config) if config else ClientView()
        self.data = Path(data) if data else view.data or Path(".signoff")
        self.data_given = bool(data)
        self.config_path = config
        self.daemon_url = view.server_url  # --server and SIGNOFF_SERVER win over it
        self.database = view.database

    def client(self, server: str | None) -> Client:
        """The daemon's API: at --server / SIGNOFF_SERVER, else where the config says it listens."""
        return Client(server or os.environ.get("SIGNOFF_SERVER") or self.daemon_url, self.data)

    @property
    def flows_dir(self) -> Path:
        return self.repo / "flows"

    def store(self) -> Store:
        """The runs as the config keeps them: the data directory, or the PostgreSQL database it names."""
        if self.database:
            from runner.daemon.serve import open_store  # psycopg only for those who use it

            return open_store(self.config(), self.data)
        return FileStore(self.data)

    def release_state(self) -> Any:
        """Where the release state is: `<data>/releases` (the data dir is given), or the config's database."""
        if self.database:
            from runner.releases.dbstate import release_state

            return release_state(self.store())
        return self.data

    def config(self) -> Config:
        return load_config(self.config_path)


def common(func: Callable) -> Callable:
    """--data, --repo, --config and --json: the options every command that reads the project takes."""
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
    """--server: the daemon a command talks to."""
    return click.option("--server", envvar="SIGNOFF_SERVER", metavar="URL", help=SERVER_HELP)(func)


def emit(as_json: bool, document: Any, human: str, *, exit_code: int = 0) -> None:
    """A command's one result: the JSON document with --json, else the text for a person; then the exit code."""
    if as_json:
        click.echo(json.dumps(document, indent=2, ensure_ascii=False, default=str))
    elif human:
        click.echo(human)
    if exit_code:
        sys.exit(exit_code)


def new_group() -> click.Group:
    """The top-level `signoff` group, with no commands yet: the families add theirs."""

    @click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
    @click.version_option(__version__, prog_name="signoff")
    def cli() -> None:
        """signoff: declarative YAML workflows with human checkpoints.

        Flows live in flows/<name>.yaml in a git repository: validate them, release
        them with tags, run them through the daemon (`signoff serve`) or in this
        process (`run --local`), decide approvals, and inspect every run's record.
        """

    return cli


def run_and_exit(group: click.Group) -> NoReturn:
    """Run `group` on the command line; every error becomes one message (and with --json one document) and a code."""
    as_json = "--json" in sys.argv[1:]
    try:
        # the completion script's variable, however signoff was started (`signoff`, `python -m runner`)
        group.main(standalone_mode=False, complete_var="_SIGNOFF_COMPLETE")
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


def _fail(as_json: bool, document: dict, message: str, hint: str | None, code: int) -> NoReturn:
    if as_json:
        click.echo(json.dumps({"error": document}, indent=2, ensure_ascii=False))
    click.echo(f"error: {message}" + (f"\n  hint: {hint}" if hint else ""), err=True)
    sys.exit(code)
