"""Git refs and drafts: where a flow's source comes from.

Today: the repository root, the current branch and commit, and a flow's bytes
at any ref (read from git's object store, no checkout), so `--ref BRANCH`
runs a draft exactly as committed. Refs are matched by full name.
"""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from runner.errors import NotFound, UsageError


def _git(repo: Path, *args: str) -> str | None:
    """stdout of a git command, or None if it failed (not a repo, unknown ref)."""
    try:
        done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise UsageError("git is not installed; signoff needs git to read flows at a ref") from None
    return done.stdout.strip() if done.returncode == 0 else None


def find_root(start: Path) -> Path:
    """The git work tree around `start`, or `start` itself outside git."""
    root = _git(start, "rev-parse", "--show-toplevel")
    return Path(root) if root else start


@dataclass
class Source:
    data: bytes
    label: str
    ref: str | None
    commit: str | None
    dirty: bool = False


def working_tree(repo: Path, path: Path) -> Source:
    """A flow file from the working tree, with the branch and commit it sits on."""
    ref = _git(repo, "symbolic-ref", "-q", "HEAD")
    commit = _git(repo, "rev-parse", "-q", "--verify", "HEAD^{commit}")
    dirty = bool(commit) and bool(_git(repo, "status", "--porcelain", "--", str(path)))
    return Source(path.read_bytes(), str(path), ref, commit, dirty)


def resolve_ref(repo: Path, ref: str) -> tuple[str, str]:
    """`main`, `refs/heads/main`, `v1.2.0` -> (full ref name, commit sha). Branches before tags."""
    candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}",
                                                         f"refs/remotes/{ref}"]
    for name in candidates:
        commit = _git(repo, "rev-parse", "-q", "--verify", f"{name}^{{commit}}")
        if commit:
            return name, commit
    commit = _git(repo, "rev-parse", "-q", "--verify", f"{ref}^{{commit}}")
    if commit:
        return ref, commit
    raise NotFound(f"no branch, tag or commit named {ref!r} in {repo}", hint="list them with `git show-ref`")


def at_ref(repo: Path, ref: str, relative: str) -> Source:
    """A file's bytes as committed at `ref`."""
    full, commit = resolve_ref(repo, ref)
    try:
        data = subprocess.run(["git", "-C", str(repo), "show", f"{commit}:{relative}"], capture_output=True,
                              timeout=30, check=True).stdout
    except subprocess.CalledProcessError:
        raise NotFound(f"{relative} does not exist at {full} ({commit[:12]})") from None
    return Source(data, f"{relative}@{full}", full, commit)
