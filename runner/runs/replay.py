"""Replay a recorded run against a draft of its flow, touching nothing in the world.

`replay_run(store, run_id, draft_flow)` runs the draft with the real engine on a
MemoryStore (nothing is written to `store`), fed the recorded run's inputs, its
`run` values (id, version, ref, commit, started_by), decisions, callback
payloads and, for every step with an effect on the world, the recorded outcome
of the same visit as long as the step's rendered effect is the recorded one
(runner.runs.replay_kinds). What each recorded visit rendered is learnt first
by a baseline pass of the recorded flow copy itself. Everything runs inside
runner.dryrun's guard, so a real command, request, notification or ssh
connection raises instead of happening.

The rule for a step that differs: it is not executed; it is reported with what
it would run, assumed to succeed with no outputs, and the replay goes on as far
as it can (the report lists these steps in `assumed`). A wait with no recorded
answer stops the replay there (`would_wait`, status `waiting`).

`replay_recent(store, flow, draft_flow, last=N)` replays the last N ended live
runs of a flow (failed ones first) and sums them up.
"""

from __future__ import annotations

import asyncio
import tempfile
import threading
from pathlib import Path
from typing import Any, Awaitable, Callable, TypeVar

from runner.dryrun import no_side_effects
from runner.errors import SignoffError, UsageError
from runner.flows.inputs import resolve_inputs
from runner.flows.model import Flow
from runner.runs.engine import Engine
from runner.runs.memory import MemoryStore
from runner.runs.recording import ANSWERED, Recording
from runner.runs.replay_kinds import Feed, ReplayClock
from runner.runs.store import Store
from runner.status import EventType, RunStatus, StepStatus, is_terminal
from runner.timeutil import parse_rfc3339

__all__ = ["VERDICTS", "replay_run", "replay_recent", "areplay_run", "areplay_recent"]

VERDICTS = ("same", "changed", "added", "removed", "would_run", "would_wait")
FAILED_FIRST = (RunStatus.FAILED.value, RunStatus.TIMED_OUT.value)
T = TypeVar("T")


def replay_run(store: Store, run_id: str, draft_flow: Flow, *, config: Any = None) -> dict[str, Any]:
    """The replay report of run `run_id` of `store` against `draft_flow` (see the module's docstring)."""
    return _blocking(lambda: areplay_run(store, run_id, draft_flow, config=config))


def replay_recent(store: Store, flow_name: str, draft_flow: Flow, *, last: int, config: Any = None,
                  include_drafts: bool = False) -> dict[str, Any]:
    """`{flow, runs: [report, ...], summary}` for the last `last` ended runs of `flow_name` (live runs
    only unless `include_drafts`), failed ones first."""
    return _blocking(lambda: areplay_recent(store, flow_name, draft_flow, last=last, config=config,
                                            include_drafts=include_drafts))


async def areplay_run(store: Store, run_id: str, draft_flow: Flow, *, config: Any = None) -> dict[str, Any]:
    recording = Recording.read(store, run_id)
    if recording.run.get("flow") != draft_flow.name:
        raise UsageError(f"run {run_id} is a run of {recording.run.get('flow')}, not of {draft_flow.name}",
                         hint=f"replay it against a draft of {recording.run.get('flow')}")
    with tempfile.TemporaryDirectory(prefix="signoff-replay-") as scratch, no_side_effects("a replay"):
        baseline = Feed(recording, baseline=None)
        await _pass(recording, recording.flow, baseline, config, Path(scratch) / "recorded")
        feed = Feed(recording, baseline=baseline.effects)
        run, events = await _pass(recording, draft_flow, feed, config, Path(scratch) / "draft")
    report = _report(recording, draft_flow, feed, run, events)
    masker = getattr(config, "masker", None)  # a rendered command may hold a value that must not be shown
    return masker.mask(report) if masker is not None else report


async def areplay_recent(store: Store, flow_name: str, draft_flow: Flow, *, last: int, config: Any = None,
                         include_drafts: bool = False) -> dict[str, Any]:
    if last < 1:
        raise UsageError(f"--last must be 1 or more, not {last}")
    runs = _recent(store, flow_name, last, include_drafts)
    reports = []
    for run in sorted(runs, key=lambda r: r["status"] not in FAILED_FIRST):  # stable: newest first within
        try:
            reports.append(await areplay_run(store, run["id"], draft_flow, config=config))
        except SignoffError as exc:  # one run that cannot be replayed does not hide the others
            reports.append({"run": run["id"], "flow": flow_name, "recorded": _recorded(run), "status": None,
                            "error": exc.message, "replay_error": exc.to_dict(), "steps": [],
                            "counts": dict.fromkeys(VERDICTS, 0), "assumed": [], "stopped_at": None})
    return {"flow": flow_name, "runs": reports, "summary": summarize(reports)}


def summarize(reports: list[dict[str, Any]]) -> dict[str, Any]:
    """Counts per verdict, final statuses (the draft's and the recordings'), and runs whose outcome changes."""
    verdicts = dict.fromkeys(VERDICTS, 0)
    statuses: dict[str, int] = {}
    recorded: dict[str, int] = {}
    for report in reports:
        for verdict, count in report["counts"].items():
            verdicts[verdict] += count
        key = report["status"] or "not_replayed"
        statuses[key] = statuses.get(key, 0) + 1
        recorded[report["recorded"]["status"]] = recorded.get(report["recorded"]["status"], 0) + 1
    return {"runs": len(reports), "verdicts": verdicts, "statuses": statuses, "recorded_statuses": recorded,
            "outcome_changed": [r["run"] for r in reports if r["status"] != r["recorded"]["status"]],
            "not_replayed": [r["run"] for r in reports if r["status"] is None]}


# ---- one pass -------------------------------------------------------------------------------


async def _pass(recording: Recording, flow: Flow, feed: Feed, config: Any,
                scratch: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run `flow` as the recorded run ran, on a store of its own in memory; its record and events."""
    scratch.mkdir(parents=True)
    recorded = recording.run
    store = MemoryStore(scratch)
    server = ((getattr(config, "data", None) or {}).get("server") or {})
    engine = Engine(store, work_dir=scratch, config=config, clock=ReplayClock(parse_rfc3339(recorded["created_at"])),
                    masker=getattr(config, "masker", None), accepts_messages=True, kinds=feed.kind_named,
                    public_url=server.get("public_url"))
    try:
        given = {k: v for k, v in (recorded.get("inputs") or {}).items() if k in flow.inputs}
        run_id = engine.create_run(flow, resolve_inputs(flow, given), started_by=recorded.get("started_by") or "",
                                   draft=bool(recorded.get("draft")), ref=recorded.get("ref"),
                                   version=recorded.get("version"), commit=recorded.get("commit"),
                                   run_id=recorded["id"])
        run = await engine.advance(run_id, hold=False)
        return run, list(store.read_events(run_id))
    finally:
        engine.pools.close()


# ---- the report -----------------------------------------------------------------------------


def _report(recording: Recording, draft: Flow, feed: Feed, run: dict[str, Any],
            events: list[dict[str, Any]]) -> dict[str, Any]:
    steps = _entries(recording, draft, feed, events)
    waiting = run["status"] == RunStatus.WAITING
    counts = dict.fromkeys(VERDICTS, 0)
    for entry in steps:
        counts[entry["verdict"]] += 1
    return {"run": recording.run["id"], "flow": draft.name, "recorded": _recorded(recording.run),
            "draft": {"file": draft.file, "flow_sha256": draft.sha256},
            "status": run["status"], "error": run.get("error"),
            "stopped_at": run.get("current_step") if waiting else None,
            "assumed": [e["step"] for e in steps if e["assumed"]], "steps": steps, "counts": counts}


def _recorded(run: dict[str, Any]) -> dict[str, Any]:
    return {key: run.get(key) for key in ("status", "error", "version", "ref", "commit", "draft", "created_at")}


def _entries(recording: Recording, draft: Flow, feed: Feed, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One entry per visit the draft made (in order), then one per recorded step the draft no longer has."""
    entries: list[dict[str, Any]] = []
    open_: dict[str, dict[str, Any]] = {}
    started: dict[str, int] = {}
    skipped: dict[str, int] = {}
    for event in events:
        kind, step_id = event["type"], event.get("step")
        if kind == EventType.STEP_STARTED and event.get("attempt") == 1:
            started[step_id] = started.get(step_id, 0) + 1
            note = feed.notes.get((step_id, event["at"]))
            entry = open_[step_id] = _entry(draft.step(step_id).kind, step_id,
                                            note["visit"] if note else started[step_id], note)
            entries.append(entry)
        elif kind == EventType.STEP_SKIPPED:
            skipped[step_id] = skipped.get(step_id, 0) + 1
            entry = _entry(draft.step(step_id).kind, step_id, skipped[step_id], None)
            entry.update(status=StepStatus.SKIPPED.value, skipped=True)
            entries.append(entry)
        elif kind == EventType.STEP_WAITING and step_id in open_:
            open_[step_id]["status"] = StepStatus.WAITING.value
        elif kind == EventType.STEP_FINISHED and step_id in open_:
            open_[step_id].update(status=event["status"], error=event.get("error"))
            open_[step_id]["outputs"]["new"] = event.get("outputs") or {}
    for entry in entries:
        _judge(entry, recording, feed.baseline or {})
    draft_ids = {step.id for step in draft.steps}
    for step_id, visits in recording.visits.items():
        if step_id not in draft_ids:
            entry = _entry(recording.kind_of(step_id) or "", step_id, len(visits), None)
            entry.update(verdict="removed", status=None, old_status=visits[-1]["status"],
                         outputs={"old": visits[-1]["outputs"], "new": None})
            entries.append(entry)
    for entry in entries:
        for scratch in ("skipped", "effect"):
            entry.pop(scratch, None)
    return entries


def _entry(kind: str, step_id: str, visit: int, note: dict[str, Any] | None) -> dict[str, Any]:
    return {"step": step_id, "kind": kind, "visit": visit, "verdict": "", "status": None, "old_status": None,
            "error": None, "rendered": None, "outputs": {"old": None, "new": None},
            "would_run": note["would_run"] if note else None, "assumed": bool(note and note["assumed"]),
            "fed": bool(note and note["fed"]), "effect": note["effect"] if note else None, "skipped": False}


def _judge(entry: dict[str, Any], recording: Recording, baseline: dict[tuple[str, int], dict[str, Any]]) -> None:
    """The entry's verdict, against the recorded visit of the same number (the README's table)."""
    step_id, number = entry["step"], entry["visit"]
    recorded_kind = recording.kind_of(step_id)
    if entry["skipped"]:
        old = {"status": StepStatus.SKIPPED.value} if recording.skips.get(step_id, 0) >= number else None
    else:
        old = recording.visit(step_id, number)
        before = (baseline.get((step_id, number)) or {}).get("effect")
        if before is not None or entry["effect"] is not None:
            entry["rendered"] = {"old": before, "new": entry["effect"]}
    if old is not None:
        entry["old_status"] = old["status"]
        entry["outputs"]["old"] = old.get("outputs")
    rendered = entry["rendered"]
    if entry["status"] == StepStatus.WAITING:  # no recorded answer: the replay stops here
        verdict = "would_wait"
    elif recorded_kind is None:
        verdict = "added"
    elif entry["skipped"]:
        verdict = "same" if old is not None else (
            "changed" if recording.visits.get(step_id) or recording.skips.get(step_id) else "would_run")
    elif old is None or old["status"] not in ANSWERED:  # the recording never got here, or has no outcome
        verdict = "would_run" if rendered is None or rendered["old"] in (None, rendered["new"]) else "changed"
    elif recorded_kind != entry["kind"] or entry["assumed"]:
        verdict = "changed"
    elif entry["fed"]:
        verdict = "same"
    else:  # evaluated for real (set, end), or failed before its kind ran
        same = old["status"] == entry["status"] and (old.get("outputs") or {}) == (entry["outputs"]["new"] or {})
        verdict = "same" if same else "changed"
    entry["verdict"] = verdict


def _recent(store: Store, flow_name: str, last: int, include_drafts: bool) -> list[dict[str, Any]]:
    """The newest `last` ended runs of the flow (live ones unless `include_drafts`), newest first."""
    found: list[dict[str, Any]] = []
    before = None
    while len(found) < last:
        page = store.list_runs(flow=flow_name, draft=None if include_drafts else False, limit=200, before=before)
        if not page:
            break
        found += [run for run in page if is_terminal(run["status"])]
        before = page[-1]["id"]
    return found[:last]


def _blocking(start: Callable[[], Awaitable[T]]) -> T:
    """Run the replay to its end; from inside an event loop (a daemon's), in a thread of its own."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(start())
    result: dict[str, Any] = {}

    def work() -> None:
        try:
            result["value"] = asyncio.run(start())
        except BaseException as exc:  # handed to the caller's thread
            result["error"] = exc
    thread = threading.Thread(target=work, name="signoff-replay")
    thread.start()
    thread.join()
    if "error" in result:
        raise result["error"]
    return result["value"]
