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
- `postgres_server` (session), `pg_dsn` and `pg_empty_dsn`: a real PostgreSQL
  the tests start themselves, a fresh database per test (tests/postgres_support.py).
  With SIGNOFF_TEST_STORE=postgres every daemon the tests start (DaemonProcess,
  InProcessDaemon) keeps its runs in a fresh database of that server instead of files.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from postgres_support import close_shared, pg_dsn, pg_empty_dsn, postgres_server  # noqa: F401 (fixtures)
from support import CliResult, init_repo, run_cli, write_flow
from support import git as run_git


@pytest.fixture
def make_flow(tmp_path: Path) -> Callable[..., Path]:
    """make_flow(name, content, *, root=tmp_path, suffix=".yaml") -> the written path."""

    def make(name: str, content: dict | str | bytes, *, root: Path | None = None, suffix: str = ".yaml") -> Path:
        return write_flow(root or tmp_path, name, content, suffix=suffix)

    return make


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """tmp_path as a fresh git repository on branch main, with a flows/ dir."""
    return init_repo(tmp_path)


@pytest.fixture
def git(tmp_path: Path) -> Callable[..., str]:
    """git(*args, cwd=tmp_path) -> stdout; fails the test if git fails."""

    def call(*args: str, cwd: Path | None = None) -> str:
        return run_git(cwd or tmp_path, *args)

    return call


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
        return run_cli(args, cwd=cwd or tmp_path, env={"SIGNOFF_DATA": str(signoff_data), **(env or {})})

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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    close_shared()  # the PostgreSQL server, if any test or daemon started it
