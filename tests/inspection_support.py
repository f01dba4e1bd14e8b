"""The daemon the inspection tests read (tests/daemon/test_inspection_routes.py through the routes,
tests/cli/test_remote_inspection.py through the CLI): two flows, released as v1.0.0, and a draft.

    speak        a shell step with stdout and stderr, one whose 70 KB output is kept as res://,
                 and a set step (no streams)
    bob-reviews  an approval only bob may decide (so who may see what differs per user)

The branch `feature` is a draft of speak in which the step `note` is called `remark`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

from daemon_support import DaemonProcess
from gitops_support import commit, tag
from support import git

SPEAK = """
name: speak
steps:
  - id: talk
    kind: shell
    run: printf 'hello out\\n'; printf 'hello err\\n' >&2
    timeout: 1m
  - id: loud
    kind: shell
    run: head -c 70000 /dev/zero | tr '\\0' x
    timeout: 1m
  - id: note
    kind: set
    values: {done: true}
"""

BOB_REVIEWS = """
name: bob-reviews
steps:
  - id: review
    kind: approval
    approvers: [bob]
    context: please look
    timeout: 1h
"""


def inspection_daemon(root: Path) -> Iterator[DaemonProcess]:
    """The daemon, started (a generator for a module fixture: stopped when the fixture ends)."""
    process = DaemonProcess(root, flows={"speak": SPEAK, "bob-reviews": BOB_REVIEWS})
    tag(process.repo, "v1.0.0")
    git(process.repo, "checkout", "-q", "-b", "feature")
    commit(process.repo, "a draft of speak", flows={"speak": SPEAK.replace("id: note", "id: remark")})
    git(process.repo, "checkout", "-q", "main")
    with process:
        yield process
