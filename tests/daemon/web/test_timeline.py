"""runner.daemon.web.timeline: the SVG Gantt of a run, from hand-written events and from a real engine run."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from datetime import datetime, timedelta, timezone

from runner.daemon.web.spans import history
from runner.daemon.web.timeline import timeline_svg
from runner.timeutil import rfc3339

from support import Harness

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime(2030, 1, 2, 3, 0, 0, tzinfo=timezone.utc)


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def event(kind: str, seconds: float, **fields) -> dict:
    return {"type": kind, "at": rfc3339(at(seconds)), **fields}


def created(*steps: str) -> dict:
    return event("run_created", 0, run={"id": "20300102t030000z-0000abcd", "flow": "demo", "step_ids": list(steps)})


def make_run(status: str = "running", **fields) -> dict:
    return {"id": "20300102t030000z-0000abcd", "flow": "demo", "status": status, "steps": {}, **fields}


def parse(svg: str) -> ET.Element:
    return ET.fromstring(svg)  # well-formed XML, or this raises


def groups(root: ET.Element, css_class: str, **data: str) -> list[ET.Element]:
    return [g for g in root.iter(f"{SVG}g") if css_class in (g.get("class") or "").split()
            and all(g.get(f"data-{key}") == value for key, value in data.items())]


def title(element: ET.Element) -> str:
    return element.find(f"{SVG}title").text or ""


RETRIED_THEN_APPROVED = [
    created("build", "lint", "review", "deploy"),
    event("run_started", 0),
    event("step_started", 0, step="build", attempt=1),
    event("step_retrying", 20, step="build", attempt=1, error="exit code 1", retry_at=rfc3339(at(30))),
    event("step_started", 30, step="build", attempt=2),
    event("step_retrying", 40, step="build", attempt=2, error="exit code 1", retry_at=rfc3339(at(60))),
    event("step_started", 60, step="build", attempt=3),
    event("step_finished", 90, step="build", status="succeeded", outputs={}),
    event("step_skipped", 90, step="lint", reason="its `if` was false", by_jump=False),
    event("step_started", 90, step="review", attempt=1),
    event("step_waiting", 91, step="review", wake_at=rfc3339(at(4 * 3600)), reason="approval by 2 of group:ops"),
    event("decision", 600, step="review", by="alice", decided_by="alice", decision="approve", final=False),
    event("decision", 900, step="review", by="bob", decided_by="bob", decision="approve", final=True),
    event("step_finished", 900, step="review", status="succeeded", outputs={"decision": "approve"}),
    event("step_started", 900, step="deploy", attempt=1),
    event("step_finished", 960, step="deploy", status="succeeded", outputs={}),
    event("run_finished", 960, status="succeeded", error=None),
]


def test_one_row_per_step_in_flow_order():
    root = parse(timeline_svg(make_run("succeeded"), RETRIED_THEN_APPROVED, at(2000)))
    assert [g.get("data-step") for g in groups(root, "row")] == ["build", "lint", "review", "deploy"]


def test_every_attempt_is_a_bar_and_the_backoffs_between_them_show():
    root = parse(timeline_svg(make_run("succeeded"), RETRIED_THEN_APPROVED, at(2000)))
    bars = groups(root, "work", step="build")
    assert [(g.get("data-attempt"), g.get("data-status")) for g in bars] == [
        ("1", "failed"), ("2", "failed"), ("3", "succeeded")]
    assert len(groups(root, "backoff", step="build")) == 2
    lefts = [float(g.find(f"{SVG}rect").get("x")) for g in bars]
    assert lefts == sorted(lefts) and len(set(lefts)) == 3
    assert "exit code 1" in title(bars[0]) and "attempt 1" in title(bars[0])


def test_a_wait_is_drawn_as_a_wait_with_its_decisions_on_it():
    root = parse(timeline_svg(make_run("succeeded"), RETRIED_THEN_APPROVED, at(2000)))
    (wait,) = groups(root, "wait", step="review")
    rects = wait.findall(f"{SVG}rect")
    assert any(r.get("fill", "").startswith("url(#timeline-hatch)") for r in rects)
    assert "approval by 2 of group:ops" in title(wait)
    decisions = groups(root, "decision", step="review")
    assert ["approve by alice", "approve by bob"] == [title(g).split(": ", 1)[1].split(" at ")[0] for g in decisions]
    assert groups(root, "skipped", step="lint")
    legend = [g.get("data-entry") for g in groups(root, "legend-entry")]
    assert {"failed", "succeeded", "wait", "backoff", "skipped", "decision"} <= set(legend)


def test_a_run_still_waiting_runs_to_now_and_shows_its_deadline():
    events = RETRIED_THEN_APPROVED[:11]  # review is waiting
    now = at(1800)
    root = parse(timeline_svg(make_run("waiting"), events, now))
    (wait,) = groups(root, "wait", step="review")
    assert wait.get("data-status") == "waiting"
    assert "to now" in title(wait) and rfc3339(at(4 * 3600)) in title(wait)
    assert wait.find(f"{SVG}line[@class='deadline']") is not None
    assert groups(root, "now")
    spans = history(make_run("waiting"), events, now).spans
    assert spans[-1].open and spans[-1].end == now and not spans[-2].open  # the work before the wait is over


def test_a_running_attempt_ends_at_now_and_an_interrupted_one_says_so():
    events = [created("job"), event("step_started", 0, step="job", attempt=1),
              event("step_interrupted", 50, step="job", reason="interrupted by a restart; retrying"),
              event("step_started", 50, step="job", attempt=2)]
    spans = history(make_run(), events, at(80)).spans
    assert [(s.attempt, s.status, s.open, (s.end - T0).total_seconds()) for s in spans] == [
        (1, "interrupted", False, 50.0), (2, "running", True, 80.0)]
    root = parse(timeline_svg(make_run(), events, at(80)))
    assert len(groups(root, "work", step="job")) == 2


def test_jumps_and_a_second_visit_are_visible():
    events = [created("apply", "check"), event("step_started", 0, step="apply", attempt=1),
              event("step_finished", 10, step="apply", status="succeeded"),
              event("step_started", 10, step="check", attempt=1),
              event("step_finished", 20, step="check", status="failed", error="drift"),
              event("jump", 20, step="check", to="apply", reason="on_error of 'check'"),
              event("step_started", 20, step="apply", attempt=1),
              event("step_finished", 30, step="apply", status="succeeded")]
    root = parse(timeline_svg(make_run(), events, at(30)))
    (jump,) = groups(root, "jump", step="check")
    assert "jump to apply" in title(jump)
    second = groups(root, "work", step="apply")[1]
    assert "visit 2" in title(second)


def test_every_text_is_escaped_and_nothing_active_or_external_is_emitted():
    hostile = '<script>alert(1)</script>'
    events = [event("run_created", 0, run={"id": "r", "flow": "demo", "step_ids": [hostile]}),
              event("step_started", 0, step=hostile, attempt=1),
              event("step_finished", 5, step=hostile, status="failed", error='"/><script>alert(2)</script>'),
              event("decision", 5, step=hostile, by="</title><script>", decision="reject", comment="a & b")]
    svg = timeline_svg(make_run(flow=hostile), events, at(10), labels={hostile: f"{hostile} & more"})
    root = parse(svg)
    assert not list(root.iter(f"{SVG}script")) and "<script" not in svg
    assert not list(root.iter(f"{SVG}style")) and not list(root.iter(f"{SVG}foreignObject"))
    for element in root.iter():
        assert "style" not in element.attrib and not any(name.startswith("on") for name in element.attrib)
        for name, value in element.attrib.items():
            if name == "fill" and value.startswith("url("):
                assert value.startswith("url(#")
            assert "http" not in value
    assert hostile in "".join(root.itertext())  # shown as text
    assert [g.get("data-step") for g in groups(root, "row")] == [hostile]


def test_the_same_run_always_gives_the_same_bytes():
    run = make_run("succeeded")
    once = timeline_svg(run, RETRIED_THEN_APPROVED, at(2000))
    assert once == timeline_svg(run, [dict(e) for e in RETRIED_THEN_APPROVED], at(2000))
    other = timeline_svg(run, RETRIED_THEN_APPROVED, at(2000), id_prefix="run 2")
    assert 'id="run-2-hatch"' in other and "url(#run-2-hatch)" in other


def test_a_record_without_events_still_draws_its_steps():
    run = make_run("running", created_at=rfc3339(T0), steps={
        "a": {"status": "succeeded", "attempts": 1, "started_at": rfc3339(at(0)), "finished_at": rfc3339(at(5))},
        "b": {"status": "skipped", "attempts": 0, "started_at": None, "finished_at": rfc3339(at(5))},
        "c": {"status": "waiting", "attempts": 1, "started_at": rfc3339(at(5)), "finished_at": None,
              "wake_at": rfc3339(at(100))}})
    root = parse(timeline_svg(run, [], at(50)))
    assert groups(root, "work", step="a") and groups(root, "skipped", step="b") and groups(root, "wait", step="c")


def test_a_real_engine_run_with_a_retry_a_skip_a_wait_and_a_jump(tmp_path):
    harness = Harness(tmp_path)
    record = harness.run("""\
name: demo
steps:
  - id: flaky
    kind: shell
    run: 'test -f marker || { touch marker; exit 1; }'
    retry: {attempts: 3, backoff: 10s}
  - id: never
    kind: shell
    if: ${{ false }}
    run: echo no
  - id: nap
    kind: wait
    duration: 10m
  - id: bad
    kind: shell
    run: exit 3
    on_error: last
  - id: passed-over
    kind: set
    values: {a: 1}
  - id: last
    kind: set
    values: {b: 2}
""")
    assert record["status"] == "succeeded", record["error"]
    root = parse(timeline_svg(record, harness.history(record["id"]), harness.clock.now()))
    assert [g.get("data-step") for g in groups(root, "row")] == ["flaky", "never", "nap", "bad", "passed-over", "last"]
    assert [g.get("data-status") for g in groups(root, "work", step="flaky")] == ["failed", "succeeded"]
    assert len(groups(root, "backoff", step="flaky")) == 1
    assert len(groups(root, "wait", step="nap")) == 1
    assert groups(root, "skipped", step="never") and groups(root, "skipped", step="passed-over")
    assert groups(root, "jump", step="bad")
    assert not groups(root, "now")  # the run is over
