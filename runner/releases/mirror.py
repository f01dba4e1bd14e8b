"""Keeping the flows repository current: a local path, or a bare mirror of a clone URL.

For a URL the mirror lives in <data>/mirror.git; `ls-remote` is asked first and
the (forced, pruning) fetch runs only when a ref changed, so a moved tag is
seen and reported. Failures leave the last good state in place and are
reported by `refresh()` for the health endpoint.
"""

from __future__ import annotations

from pathlib import Path

import git
from git.exc import GitCommandError

FETCH_SPECS = ["+refs/heads/*:refs/heads/*", "+refs/tags/*:refs/tags/*"]


class RepoSource:
    def __init__(self, *, path: Path | None = None, url: str | None = None, data_dir: Path | None = None) -> None:
        self.url = url
        self.path = path if url is None else (data_dir or Path(".")) / "mirror.git"

    @property
    def remote(self) -> bool:
        return self.url is not None

    def refresh(self) -> bool:
        """Bring the mirror up to date; True if anything changed. Raises GitCommandError when unreachable."""
        if not self.remote:
            return True  # a local repository is read directly
        if not (self.path / "HEAD").exists():
            git.Repo.clone_from(self.url, self.path, mirror=True).close()
            return True
        repo = git.Repo(self.path)
        try:
            remote_refs = self._parse(repo.git.ls_remote("--heads", "--tags", self.url))
            local_refs = self._parse(repo.git.for_each_ref("--format=%(objectname) %(refname)", "refs/heads",
                                                          "refs/tags"))
            if remote_refs == local_refs:
                return False
            repo.git.fetch("--prune", "--force", self.url, *FETCH_SPECS)
            return True
        finally:
            repo.close()

    @staticmethod
    def _parse(listing: str) -> dict[str, str]:
        refs = {}
        for line in listing.splitlines():
            sha, _, name = line.strip().partition("\t") if "\t" in line else line.strip().partition(" ")
            if name and not name.endswith("^{}"):
                refs[name.strip()] = sha
        return refs


def describe_git_error(exc: Exception) -> str:
    """git's own words (its `fatal:` lines first), on one line."""
    if isinstance(exc, GitCommandError):
        text = (exc.stderr or "").replace("stderr:", "").strip().strip("'").strip()
        lines = [line.strip() for line in text.splitlines() if line.strip()]
        fatal = [line for line in lines if line.startswith(("fatal:", "error:"))]
        return " ".join(fatal or lines or [str(exc)])[:300]
    return f"{type(exc).__name__}: {exc}"[:300]
