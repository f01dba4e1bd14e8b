"""Git, read without a checkout: refs, tags, and flow files at any commit.

All git access goes through `FlowRepo`, used in a `with` block so the
persistent `git cat-file` processes GitPython keeps are closed every time;
GitPython is not thread-safe, so callers use one FlowRepo per thread and
operation. Refs are matched by full name and annotated tags are peeled.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path, PurePosixPath

import git
from git.exc import BadName, GitCommandError, InvalidGitRepositoryError, NoSuchPathError

from runner.errors import NotFound, SignoffError, UsageError

FLOWS_DIR = "flows"


def ref_problem(ref: str) -> str | None:
    """Why `ref` cannot name a branch, tag or commit here (None if it may): see git-check-ref-format."""
    if not ref or len(ref) > 255:
        return "it must be 1 to 255 characters"
    if ref.startswith("-"):
        return "it may not start with '-'"
    if any(ord(c) < 0x21 or c in "\x7f\\" for c in ref):
        return "it may not hold spaces, control characters or backslashes"
    if "@{" in ref:
        return "reflog entries (@{...}) are this machine's history, not the repository's"
    return None


@dataclass
class Source:
    """A flow file's bytes and where they came from."""

    data: bytes
    label: str
    ref: str | None
    commit: str | None
    dirty: bool = False


@dataclass
class TagInfo:
    ref: str                   # refs/tags/v1.2.0
    commit: str                # peeled
    annotated: bool = False
    tagger: str | None = None
    date: str | None = None
    message: str | None = None


@dataclass
class Refs:
    tags: dict[str, TagInfo] = field(default_factory=dict)      # by full ref name
    branches: dict[str, str] = field(default_factory=dict)      # full ref name -> commit


class FlowRepo:
    """One git repository, opened for one operation (use `with`)."""

    def __init__(self, path: str | Path) -> None:
        try:
            self.repo = git.Repo(path)
        except (InvalidGitRepositoryError, NoSuchPathError):
            raise NotFound(f"{path} is not a git repository", hint="point --repo at your flows repository") from None
        self.path = Path(self.repo.working_tree_dir or self.repo.git_dir)

    def __enter__(self) -> "FlowRepo":
        return self

    def __exit__(self, *exc: object) -> None:
        self.repo.close()

    # ---- refs -------------------------------------------------------------------

    def refs(self) -> Refs:
        found = Refs()
        for ref in self.repo.refs:
            name = ref.path
            try:
                if name.startswith("refs/tags/"):
                    tag = ref.tag  # None for a lightweight tag
                    info = TagInfo(name, ref.commit.hexsha, annotated=tag is not None)
                    if tag is not None:
                        info.tagger = f"{tag.tagger.name} <{tag.tagger.email}>" if tag.tagger else None
                        info.date = datetime.fromtimestamp(tag.tagged_date, timezone.utc).isoformat().replace(
                            "+00:00", "Z")
                        info.message = (tag.message or "").strip()
                    found.tags[name] = info
                elif name.startswith("refs/heads/"):
                    found.branches[name] = ref.commit.hexsha
            except (ValueError, BadName):
                continue  # a tag pointing at a tree or blob is not a release
        return found

    def resolve(self, ref: str) -> tuple[str, str]:
        """`main`, `refs/heads/main`, `v1.2.0`, a sha -> (full ref name, commit). Branches before tags.

        git itself reads the name (GitPython's own rev-parse raises a different error for each odd
        name); a name git would take as an option, or one of the daemon's own reflog, is refused.
        """
        problem = ref_problem(ref)
        if problem:
            raise UsageError(f"{ref[:80]!r} is not a branch, tag or commit name: {problem}",
                             hint="name a branch (main), a tag (v1.2.0), a full ref (refs/heads/x) or a commit sha")
        candidates = [ref] if ref.startswith("refs/") else [f"refs/heads/{ref}", f"refs/tags/{ref}",
                                                             f"refs/remotes/{ref}"]
        for name in [*candidates, ref]:
            try:
                return name, self.repo.git.rev_parse("--verify", "--quiet", "--end-of-options", f"{name}^{{commit}}")
            except GitCommandError:
                continue
        raise NotFound(f"no branch, tag or commit named {ref!r} in {self.path}", hint="list them with `git show-ref`")

    def head(self) -> tuple[str | None, str | None]:
        """(current branch ref, HEAD commit), either None when unborn or detached."""
        try:
            commit = self.repo.head.commit.hexsha
        except ValueError:
            return None, None
        try:
            return self.repo.head.ref.path, commit
        except TypeError:
            return None, commit

    # ---- content ------------------------------------------------------------------

    def read(self, commit: str, path: str) -> bytes:
        try:
            blob = self.repo.commit(commit).tree / path
        except KeyError:
            raise NotFound(f"{path} does not exist at {commit[:12]}") from None
        return blob.data_stream.read()

    def _flow_entries(self, commit: str) -> dict[str, git.Blob]:
        """flows/*.yaml|yml at a commit by flow name (the file stem): one tree listing, no file read."""
        try:
            tree = self.repo.commit(commit).tree / FLOWS_DIR
        except KeyError:
            return {}
        return {PurePosixPath(b.name).stem: b for b in tree.blobs if b.name.endswith((".yaml", ".yml"))}

    def flow_files(self, commit: str) -> dict[str, bytes]:
        """Every flow's bytes at a commit, by flow name."""
        return {name: blob.data_stream.read() for name, blob in self._flow_entries(commit).items()}

    def flow_names(self, commit: str) -> set[str]:
        return set(self._flow_entries(commit))

    def flow_blobs(self, commit: str) -> dict[str, str]:
        """Flow name -> blob id at a commit: equal ids mean equal content."""
        return {name: blob.hexsha for name, blob in self._flow_entries(commit).items()}

    def flow_paths(self, commit: str) -> list[str]:
        return sorted(blob.path for blob in self._flow_entries(commit).values())

    def _flow_blob(self, commit: str, name: str) -> git.Blob | None:
        """One flow's blob, looked up directly (no listing of the folder)."""
        for suffix in (".yaml", ".yml"):
            try:
                return self.repo.commit(commit).tree / f"{FLOWS_DIR}/{name}{suffix}"
            except KeyError:
                continue
        return None

    def flow_blob_id(self, commit: str, name: str) -> str | None:
        blob = self._flow_blob(commit, name)
        return blob.hexsha if blob is not None else None

    def flow_file(self, commit: str, name: str) -> bytes | None:
        """One flow's bytes at a commit, or None if it is not there."""
        blob = self._flow_blob(commit, name)
        return blob.data_stream.read() if blob is not None else None

    def file_at(self, commit: str, path: str) -> bytes | None:
        """A file's bytes at a commit, or None if it is not there."""
        try:
            return self.read(commit, path)
        except NotFound:
            return None

    def committer(self, commit: str) -> str:
        found = self.repo.commit(commit).committer
        return f"{found.name} <{found.email}>"

    def committed_at(self, commit: str) -> int:
        return self.repo.commit(commit).committed_date

    def authors_since(self, base: str | None, commit: str, *, limit: int = 500) -> list[str]:
        """`Name <email>` of every author of a commit reachable from `commit` and not from `base` (at most
        `limit` commits, newest first), in order of first appearance."""
        span = f"{base}..{commit}" if base else commit
        out = self.repo.git.log("--format=%an <%ae>", f"--max-count={limit}", span, "--")
        return list(dict.fromkeys(line for line in out.splitlines() if line.strip()))

    # ---- writing tags -------------------------------------------------------------

    def create_tag(self, name: str, commit: str, message: str, *, tagger: tuple[str, str] | None = None) -> TagInfo:
        """An annotated tag; `tagger` (name, email) instead of the repository's own identity."""
        if f"refs/tags/{name}" in {r.path for r in self.repo.tags}:
            raise UsageError(f"tag {name} already exists", hint="releases are never moved: pick a higher version")
        if tagger is None:
            self.repo.create_tag(name, ref=commit, message=message)
        else:
            self.repo.git.tag("-a", name, commit, "-m", message,
                              env={"GIT_COMMITTER_NAME": tagger[0], "GIT_COMMITTER_EMAIL": tagger[1]})
        return self.refs().tags[f"refs/tags/{name}"]

    def delete_tag(self, name: str) -> None:
        self.repo.git.tag("-d", name)

    def push_tag(self, name: str) -> str | None:
        """Push to the first remote, if there is one; returns the remote's name."""
        if not self.repo.remotes:
            return None
        remote = self.repo.remotes[0]
        try:  # to the URL: a mirror's `remote.<name>.mirror` would refuse a push of one ref by name
            self.repo.git.push(remote.url, f"refs/tags/{name}:refs/tags/{name}")
        except GitCommandError as exc:
            said = " ".join(line.strip() for line in str(exc.stderr or "").replace("stderr:", "").strip(" \n'")
                            .splitlines() if line.strip())
            raise SignoffError(f"tag {name} was created but pushing it to {remote.name} failed: {said[:300]}",
                               hint=f"push it yourself: git push {remote.name} {name}")
        return remote.name


def find_root(start: Path) -> Path:
    """The git work tree around `start`, or `start` itself outside git."""
    try:
        repo = git.Repo(start, search_parent_directories=True)
    except (InvalidGitRepositoryError, NoSuchPathError):
        return start
    try:
        return Path(repo.working_tree_dir or start)
    finally:
        repo.close()


def working_tree(repo: Path, path: Path) -> Source:
    """A flow file from the working tree, with the branch and commit it sits on.

    `dirty` when the file differs from that commit (changed, staged or untracked); a file
    outside the repository's work tree comes from no commit at all.
    """
    data = path.read_bytes()
    try:
        with FlowRepo(repo) as flow_repo:
            ref, commit = flow_repo.head()
            if not path.resolve().is_relative_to(flow_repo.path.resolve()):
                return Source(data, str(path), None, None, False)
            dirty = bool(commit) and flow_repo.repo.is_dirty(untracked_files=True, path=str(path.resolve()))
    except NotFound:
        ref, commit, dirty = None, None, False
    return Source(data, str(path), ref, commit, dirty)


def resolve_ref(repo: Path, ref: str) -> tuple[str, str]:
    with FlowRepo(repo) as flow_repo:
        return flow_repo.resolve(ref)


def at_ref(repo: Path, ref: str, relative: str) -> Source:
    """A file's bytes as committed at `ref`."""
    with FlowRepo(repo) as flow_repo:
        full, commit = flow_repo.resolve(ref)
        try:
            data = flow_repo.read(commit, relative)
        except NotFound:
            raise NotFound(f"{relative} does not exist at {full} ({commit[:12]})") from None
    return Source(data, f"{relative}@{full}", full, commit)


def flow_paths_at(repo: Path, ref: str) -> list[str]:
    """Paths of flows/*.yaml|yml as committed at `ref`."""
    with FlowRepo(repo) as flow_repo:
        return flow_repo.flow_paths(flow_repo.resolve(ref)[1])
