"""The release model as documents: `signoff releases` and `signoff diff`, built once for the CLI and the API.

The CLI computes the live versions from the repository it reads; the daemon passes the
ones it last reconciled. Either way the document is made here, so `signoff releases
--json` and `GET /api/v1/releases` (and `diff --json` and `GET /api/v1/flows/{flow}/diff`)
print the same keys from the same code.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

from runner.errors import NotFound
from runner.releases.live import LiveFlow, Resolution
from runner.releases.repo import FlowRepo
from runner.yamldoc import parse_bytes

FLOW_NAME = re.compile(r"^[a-z0-9][a-z0-9-]{0,63}$")
HISTORY_SHOWN = 20  # the newest activations per flow in a releases document


def releases_document(resolution: Resolution, drafts: dict[str, list[dict[str, str]]],
                      history: dict[str | None, list[dict[str, Any]]], *, flow: str | None = None) -> dict[str, Any]:
    """{tagged, flows: [{flow, live, pinned, yanked, refused, prereleases, versions, removed, drafts, history}],
    problems, ignored_tags}; with `flow`, only that flow's entry."""
    document = resolution.to_dict()
    document["flows"] = [entry for entry in document["flows"] if not flow or entry["flow"] == flow]
    for entry in document["flows"]:
        entry["drafts"] = drafts.get(entry["flow"], [])
        entry["history"] = history.get(entry["flow"], [])[-HISTORY_SHOWN:]
    return document


def diff_document(repo_path: Path, live: LiveFlow | None, flow: str, ref: str | None,
                  working_tree: Path | None) -> dict[str, Any]:
    """A draft of `flow` against its live version: {flow, live: {tag, commit} | null, draft: {ref, commit}, diff,
    steps: {added, removed, changed}}.

    The draft is `ref` resolved in the repository, or with no ref the file in `working_tree`
    (None: the repository's HEAD, for a repository with no work tree of its own).
    """
    if not FLOW_NAME.match(flow):
        raise NotFound(f"no flow named {flow!r}", hint="flow names are lower-case letters, digits and -")
    release = live.release if live else None
    with FlowRepo(repo_path) as git_repo:
        old = (git_repo.flow_file(release.commit, flow) or b"") if release else b""
        if ref or working_tree is None:
            full, commit = git_repo.resolve(ref or "HEAD")
            new = git_repo.flow_file(commit, flow) or b""
        else:
            path = working_tree / "flows" / f"{flow}.yaml"
            full, commit = "working tree", None
            new = path.read_bytes() if path.exists() else b""
    if not old and not new:
        raise NotFound(f"flow {flow} is neither live nor in the draft",
                       hint="name a flow that is released, or a ref (--ref) where flows/<flow>.yaml exists")
    label_old = f"live {release.tag}" if release else "live (none)"
    lines = list(difflib.unified_diff(old.decode(errors="replace").splitlines(keepends=True),
                                      new.decode(errors="replace").splitlines(keepends=True),
                                      fromfile=f"flows/{flow}.yaml ({label_old})", tofile=f"flows/{flow}.yaml ({full})"))
    return {"flow": flow, "live": {"tag": release.tag, "commit": release.commit} if release else None,
            "draft": {"ref": full, "commit": commit}, "diff": "".join(lines),
            "steps": step_summary(_plain(old), _plain(new))}


def step_summary(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    """Step ids added, removed and changed between two versions of a flow document."""
    before = {s.get("id"): s for s in (old.get("steps") or []) if isinstance(s, dict)}
    after = {s.get("id"): s for s in (new.get("steps") or []) if isinstance(s, dict)}
    return {"added": [s for s in after if s not in before], "removed": [s for s in before if s not in after],
            "changed": [s for s in after if s in before and after[s] != before[s]]}


def _plain(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        plain = parse_bytes(data, "flow").plain
    except Exception:  # a broken draft still gets a text diff, whatever its parse raised
        return {}
    return plain if isinstance(plain, dict) else {}
