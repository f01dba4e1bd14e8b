"""The quick per-kind flow check must accept exactly what the full schema accepts."""

import copy
import json
import os
from types import SimpleNamespace

import pytest

from runner.flows.load import check_bytes
from runner.schemas import _quickly_valid, validator
from runner.yamldoc import read_file

from support import PROJECT_FLOWS

EXAMPLES = sorted(str(path) for path in PROJECT_FLOWS.glob("*.yaml"))
ODD_VALUES = [None, 0, -1, 5, 1.5, True, "", "x", "5", "30s", "7d", [], ["a"], {}, {"a": 1}, "${{ inputs.x }}",
              "group:ops", "fail"]


def mutations(document):
    """Every step field replaced by odd values, removed, or joined by an unknown field."""
    for index, step in enumerate(document["steps"]):
        for key in list(step):
            removed = copy.deepcopy(document)
            del removed["steps"][index][key]
            yield removed
            for value in ODD_VALUES:
                changed = copy.deepcopy(document)
                changed["steps"][index][key] = value
                yield changed
        for extra in ("bogus", "runn", "duration", "approvers", "connection", "values", "detach"):
            added = copy.deepcopy(document)
            added["steps"][index][extra] = "x"
            yield added
        for kind in ("shell", "set", "wait", "http", "approval", "callback", "notify", "ssh", "end", "shel"):
            rekinded = copy.deepcopy(document)
            rekinded["steps"][index]["kind"] = kind
            yield rekinded


@pytest.mark.parametrize("path", EXAMPLES, ids=[os.path.basename(p) for p in EXAMPLES])
def test_quick_and_full_schema_checks_agree(path):
    document = read_file(path).plain
    checked = 0
    for candidate in mutations(document):
        assert _quickly_valid("flow", candidate) == validator("flow").is_valid(candidate), candidate
        checked += 1
    assert checked > 50



BROKEN = {  # every field the meaning checks read, to be broken one at a time
    "name": "x",
    "inputs": {"who": {"type": "string"}},
    "triggers": [{"schedule": {"cron": "0 9 * * *", "timezone": "Europe/Oslo"}}, {"webhook": {"secret": "hook"}}],
    "steps": [
        {"id": "draft", "kind": "ssh", "connection": "vm", "run": "echo ${{ inputs.who | upper }}", "timeout": "1m",
         "on_error": "continue"},
        {"id": "review", "kind": "approval", "approvers": ["alice"], "min_approvals": 1, "timeout": "1h",
         "remind_before": "10m", "on_timeout": "reject", "on_reject": "note", "rewind_to": "draft",
         "notify": ["audit"], "if": "${{ run.draft is true }}"},
        {"id": "nap", "kind": "wait", "until": "2030-01-01T00:00:00Z"},
        {"id": "done", "kind": "end", "status": "succeeded"},
        {"id": "note", "kind": "notify", "channel": "audit", "message": "no"},
    ],
}


def test_the_meaning_checks_read_any_broken_document_without_raising():
    """Schema and meaning are checked in one pass, so the meaning checks meet every kind of broken field."""
    config = SimpleNamespace(declared=True, connections={"vm": {}}, channels={"audit": {}}, secrets={"hook": {}})
    candidates = list(mutations(BROKEN))
    for key in BROKEN:
        for value in ODD_VALUES:
            candidates.append({**copy.deepcopy(BROKEN), key: value})
    for candidate in candidates:
        report = check_bytes(json.dumps(candidate).encode(), "flows/x.yaml", config=config)  # JSON is YAML
        assert all(p.line >= 1 and p.rule for p in report.errors + report.warnings), candidate
    assert len(candidates) > 400
