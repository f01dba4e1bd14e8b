"""Shared fixtures: flow files, real git repositories and the real CLI.

- `make_flow(name, content)` writes `flows/<name>.yaml` under the test's
  `tmp_path` (or `root=`) from a dict or a YAML string and returns its path.
- `repo` is `tmp_path` made into a real git repository (branch `main`, a
  committer identity, a `flows/` dir, nothing committed yet); `git(...)` runs
  git in it. `make_flow` writes into the same tree, so the two combine.
- `cli(args)` runs `python -m runner ARGS` as a real subprocess (cwd defaults
  to `tmp_path`, `SIGNOFF_DATA` to a fresh temp dir outside it) and returns a
  `CliResult(code, out, err, json)`; `json` is the parsed stdout when `--json`
  was passed, else None. It unpacks as `code, out, err, doc = cli([...])`.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Callable, NamedTuple

import pytest
from daemon_support import git as run_git
from support import clean_environ
from yamlcompat import YAML

PROJECT_ROOT = Path(__file__).resolve().parent.parent
CLI_TIMEOUT = 120  # a safety net against a hung child, not a performance check


def write_flow(root: Path, name: str, content: dict | str | bytes, *, suffix: str = ".yaml") -> Path:
    """Write flows/<name><suffix> under `root`.

    A dict is dumped as block YAML; a str is dedented and one leading newline
    dropped (so triple-quoted YAML keeps its line numbers from 1); bytes are
    written as they are.
    """
    path = Path(root) / "flows" / f"{name}{suffix}"
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif isinstance(content, str):
        text = textwrap.dedent(content)
        path.write_text(text[1:] if text.startswith("\n") else text, encoding="utf-8")
    else:
        yaml = YAML(typ="safe", pure=True)
        yaml.default_flow_style = False
        with path.open("w", encoding="utf-8") as handle:
            yaml.dump(content, handle)
    return path


@pytest.fixture
def make_flow(tmp_path: Path) -> Callable[..., Path]:
    """make_flow(name, content, *, root=tmp_path, suffix=".yaml") -> the written path."""

    def make(name: str, content: dict | str | bytes, *, root: Path | None = None, suffix: str = ".yaml") -> Path:
        return write_flow(root or tmp_path, name, content, suffix=suffix)

    return make


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """tmp_path as a fresh git repository on branch main, with a flows/ dir."""
    run_git(tmp_path, "init", "-q", "-b", "main")
    for key, value in (("user.name", "Test Author"), ("user.email", "author@example.com"),
                       ("commit.gpgsign", "false"), ("tag.gpgsign", "false")):
        run_git(tmp_path, "config", key, value)
    (tmp_path / "flows").mkdir(exist_ok=True)
    return tmp_path


@pytest.fixture
def git(tmp_path: Path) -> Callable[..., str]:
    """git(*args, cwd=tmp_path) -> stdout; fails the test if git fails."""

    def call(*args: str, cwd: Path | None = None) -> str:
        return run_git(cwd or tmp_path, *args)

    return call


class CliResult(NamedTuple):
    code: int
    out: str
    err: str
    json: Any


@pytest.fixture
def signoff_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A data directory of its own, outside tmp_path (so never inside a test repo)."""
    return tmp_path_factory.mktemp("signoff-data")


@pytest.fixture
def cli(tmp_path: Path, signoff_data: Path) -> Callable[..., CliResult]:
    """cli(args, cwd=tmp_path, env=None) runs the real `signoff` in a subprocess.

    `env` entries are added to a clean environment (no inherited SIGNOFF_*);
    SIGNOFF_DATA defaults to the `signoff_data` fixture's directory.
    """

    def run(args: list[str], *, cwd: Path | None = None, env: dict[str, str] | None = None) -> CliResult:
        environ = clean_environ()
        environ["SIGNOFF_DATA"] = str(signoff_data)
        environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), os.environ.get("PYTHONPATH")]))
        environ.update(env or {})
        done = subprocess.run([sys.executable, "-m", "runner", *map(str, args)], cwd=cwd or tmp_path, env=environ,
                              capture_output=True, text=True, timeout=CLI_TIMEOUT)
        document = None
        if "--json" in args and done.stdout.strip():
            try:
                document = json.loads(done.stdout)
            except ValueError as exc:
                pytest.fail(f"--json output is not one JSON document ({exc}):\nstdout:\n{done.stdout}\n"
                            f"stderr:\n{done.stderr}")
        return CliResult(done.returncode, done.stdout, done.stderr, document)

    return run


@pytest.fixture
def running(daemon):
    """The module's `daemon` fixture, started again if a test that failed half-way through a restart left it down.

    Daemon test modules define `daemon` (one per module) and use this with
    `pytestmark = pytest.mark.usefixtures("running")` or by name.
    """
    if daemon.process is None:
        daemon.start()
    return daemon
