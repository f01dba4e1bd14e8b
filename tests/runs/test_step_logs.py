"""A run's logs from its record (runner/runs/logs.py): streams as recorded, small resources as their text."""

from __future__ import annotations

import pytest

from runner.errors import NotFound
from runner.runs.logs import TEXT_LIMIT, step_logs
from runner.runs.memory import MemoryStore


def record(store: MemoryStore) -> dict:
    small = store.put_resource(b"small \xff text", media_type="text/plain")
    large = store.put_resource(b"y" * (TEXT_LIMIT + 1), media_type="text/plain")
    gone = "res://" + "0" * 64
    return {"id": "20261201t000000z-00000001", "steps": {
        "plain": {"status": "succeeded", "attempts": 2, "outputs": {"stdout": "out\n", "stderr": ""}},
        "kept": {"status": "failed", "attempts": 1, "outputs": {"stdout": small, "stderr": large}},
        "lost": {"status": "succeeded", "attempts": 1, "outputs": {"stdout": gone}},
        "review": {"status": "waiting", "attempts": 1},
    }}


def test_streams_are_given_as_recorded_and_resources_up_to_the_limit_as_text(tmp_path) -> None:
    store = MemoryStore(tmp_path)
    run = record(store)
    steps = {entry["step"]: entry for entry in step_logs(store, run)["steps"]}
    assert list(steps) == ["plain", "kept", "lost", "review"]
    assert steps["plain"] == {"step": "plain", "status": "succeeded", "attempts": 2, "stdout": "out\n", "stderr": ""}
    assert steps["kept"]["stdout"] == "small \ufffd text"  # bytes that are not UTF-8 are replaced, not fatal
    assert steps["kept"]["stderr"] == run["steps"]["kept"]["outputs"]["stderr"]  # over the limit: the reference
    assert steps["lost"]["stdout"] == run["steps"]["lost"]["outputs"]["stdout"]  # a resource gone: the reference
    assert steps["review"]["stdout"] == "" and steps["review"]["stderr"] == ""  # no stream: empty text


def test_one_step_or_a_clear_not_found(tmp_path) -> None:
    store = MemoryStore(tmp_path)
    run = record(store)
    assert [e["step"] for e in step_logs(store, run, "plain")["steps"]] == ["plain"]
    with pytest.raises(NotFound, match="has no step 'nope'") as caught:
        step_logs(store, run, "nope")
    assert "plain, kept, lost, review" in caught.value.hint
