"""The quick per-kind flow check must accept exactly what the full schema accepts."""

import copy
import glob
import os

import pytest

from runner.schemas import _quickly_valid, validator
from runner.yamldoc import read_file

EXAMPLES = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "flows", "*.yaml")))
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
        for kind in ("shell", "set", "wait", "http", "approval", "callback", "notify", "ssh", "shel"):
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
