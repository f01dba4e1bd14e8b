"""The release rules: `signoff-release.yaml` at the root of the flows repository (schema/release.schema.json).

    all:                          # every flow without a rule of its own
      approvers: [group:ops]
      min_approvals: 1
      allow_self_approval: false  # the default: a release's own authors may not approve it
      notify: [ops-chat]
    flows:
      refund: {approvers: [carol, group:finance], min_approvals: 2}

The file is validated like a flow (a tag with an invalid one is refused), and
the rules in force are always read from the live release: a tag cannot lower
its own bar. A live rule file that cannot be read at all holds every new
release pending, and nobody is its approver (it fails closed).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from runner.schemas import schema_problems
from runner.yamldoc import DocumentError, Problem, parse_bytes

RULE_FILE = "signoff-release.yaml"


@dataclass(frozen=True)
class Rule:
    """Who must approve a new release of one flow."""

    approvers: tuple[str, ...]
    min_approvals: int = 1
    allow_self_approval: bool = False
    notify: tuple[str, ...] = ()
    error: str | None = None      # the live rule file could not be read: nobody may approve

    def to_dict(self) -> dict[str, Any]:
        return {"approvers": list(self.approvers), "min_approvals": self.min_approvals,
                "allow_self_approval": self.allow_self_approval, "notify": list(self.notify), "error": self.error}


def check_rules(data: bytes, label: str) -> list[Problem]:
    """The problems of a rule file's text (YAML, then the schema), each located."""
    try:
        doc = parse_bytes(data, label)
    except DocumentError as exc:
        return [exc.problem]
    return schema_problems(doc, "release")


def rule_for(data: bytes | None, flow: str, label: str) -> Rule | None:
    """The rule governing `flow` in a rule file's text (None: no file, or no rule for the flow)."""
    if data is None:
        return None
    problems = check_rules(data, label)
    if problems:
        return Rule((), error=f"{label} is invalid: {problems[0]}")
    plain = parse_bytes(data, label).plain or {}
    spec = (plain.get("flows") or {}).get(flow) or plain.get("all")
    if not spec:
        return None
    return Rule(tuple(spec["approvers"]), int(spec.get("min_approvals", 1)), bool(spec.get("allow_self_approval")),
                tuple(spec.get("notify") or ()))
