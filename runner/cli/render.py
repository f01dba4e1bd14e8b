"""Human-readable output: tables, run and release summaries, and live progress lines.

Values are shown as JSON (a string as itself), never as Python reprs, and a
`res://` reference is never cut: it is what `signoff resource get` takes.
"""

from __future__ import annotations

import json
import re
import sys
from datetime import datetime
from typing import TYPE_CHECKING, Any, TextIO

from runner.timeutil import format_duration, parse_rfc3339
from runner.status import EventType

if TYPE_CHECKING:
    from runner.flows.load import FlowReport
    from runner.runs.store import Verification

RESOURCE_REF = re.compile(r"res://[0-9a-f]{64}")
MARKS = {"succeeded": "✓", "failed": "✗", "skipped": "–", "cancelled": "⊘", "timed_out": "⏱", "rejected": "✗",
         "waiting": "…", "running": "▶", "pending": " "}


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else value(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def elapsed(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    finish = parse_rfc3339(end) if end else datetime.now(parse_rfc3339(start).tzinfo)
    return format_duration((finish - parse_rfc3339(start)).total_seconds())


def value(data: Any) -> str:
    """A value as a person reads it: a string as itself, anything else as compact JSON."""
    if isinstance(data, str):
        return data
    return json.dumps(data, ensure_ascii=False, default=str)


def short(data: Any, width: int = 60) -> str:
    """One line of at most about `width` characters; a res:// reference in it is kept whole."""
    text = " ".join(value(data).split())
    if len(text) <= width:
        return text
    cut = width - 1
    for ref in RESOURCE_REF.finditer(text):
        if ref.start() < cut < ref.end():
            cut = ref.end()
    return text if cut >= len(text) else text[:cut] + "…"


def validation(reports: list[FlowReport]) -> str:
    """Every error and warning of the flows checked, then how many were checked and how many are invalid."""
    lines = []
    for report in reports:
        lines.extend(str(problem) for problem in report.errors + report.warnings)
    bad = sum(not r.ok for r in reports)
    lines.append(f"{len(reports)} flow{'s' if len(reports) != 1 else ''} checked: "
                 + ("all valid" if not bad else f"{bad} invalid"))
    return "\n".join(lines)


def run_list(runs: list[dict]) -> str:
    if not runs:
        return "no runs yet"
    rows = [[r["id"], r["flow"], r["status"], "draft" if r.get("draft") else (r.get("version") or "live"),
             r["created_at"][:19].replace("T", " "), elapsed(r["created_at"], r.get("finished_at")),
             short(r.get("error") or r.get("current_step") or "", 50)] for r in runs]
    return table(rows, ["RUN", "FLOW", "STATUS", "VERSION", "STARTED (UTC)", "TOOK", "NOTE"])


def _step_note(state: dict) -> str:
    if state.get("error"):
        return state["error"]
    if state.get("skip_reason"):
        return state["skip_reason"]
    if state.get("wake_at"):
        return f"until {state['wake_at']}"
    outputs = {k: v for k, v in (state.get("outputs") or {}).items() if k not in ("headers", "stderr")}
    return ", ".join(f"{k}={short(v, 30)}" for k, v in _flat(outputs))


def _flat(values: dict, prefix: str = ""):
    """`artifacts.report.md=res://...` rather than a JSON object cut short."""
    for key, item in values.items():
        if isinstance(item, dict) and 0 < len(item) <= 5:
            yield from _flat(item, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", item


def _origin(run: dict) -> str:
    kind = "draft" if run.get("draft") else "live " + (run.get("version") or "(working tree)")
    where = f", ref {run['ref']}" if run.get("ref") else ""
    if run.get("commit"):
        where += f", commit {run['commit'][:12]}" + (" + uncommitted changes" if run.get("dirty") else "")
    elif run.get("flow_sha256"):
        where += ", not from a commit"
    return kind + where


def run_detail(run: dict) -> str:
    head = [f"run      {run['id']}",
            f"flow     {run['flow']}  ({_origin(run)})",
            f"status   {run['status']}" + (f": {run['error']}" if run.get("error") else ""),
            f"started  {run['created_at']} by {run.get('started_by')}"
            + (f", took {elapsed(run['created_at'], run.get('finished_at'))}" if run.get("finished_at") else ""),
            f"inputs   {short(run.get('inputs') or {}, 100)}", ""]
    rows = [[f"{MARKS.get(s['status'], ' ')} {step_id}", s["status"], s.get("attempts") or "",
             elapsed(s.get("started_at"), s.get("finished_at")) if s.get("started_at") else "",
             short(_step_note(s), 70)] for step_id, s in run["steps"].items()]
    return "\n".join(head) + table(rows, ["STEP", "STATUS", "TRIES", "TOOK", "NOTE"])


def history(events: list[dict]) -> str:
    """A run's events, one line each: sequence number, time, type and step."""
    return "\n".join(f"{e['seq']:>5} {e['at']} {e['type']} {e.get('step', '')}" for e in events)


def verification(run_id: str, result: Verification) -> str:
    if result.ok:
        return f"run {run_id}: {result.events} events, chain intact, run.json matches"
    return f"run {run_id}: INTEGRITY PROBLEM\n" + "\n".join(f"  - {p}" for p in result.problems)


def step_logs(document: dict[str, Any]) -> str:
    """Each step's recorded stdout and stderr under a heading; steps that wrote nothing are one line."""
    blocks = []
    for entry in document["steps"]:
        head = f"{MARKS.get(entry['status'] or '', '?')} {entry['step']} {entry['status']} (attempts {entry['attempts']})"
        streams = [(name, entry.get(name)) for name in ("stdout", "stderr") if entry.get(name)]
        blocks.append("\n".join([head] + [f"--- {name}\n{text.rstrip()}" for name, text in streams]))
    return "\n\n".join(blocks) if blocks else f"run {document['run']} has no steps yet"


def pending(user: str, items: list[dict]) -> str:
    """Approvals waiting for `user`: each with its quorum, its page, what the reviewer fills in, and how to decide."""
    if not items:
        return f"nothing waits for {user}"
    blocks = []
    for item in items:
        approvals, needed = len(item.get("approvals") or []), item.get("min_approvals") or 1
        lines = [f"{item['run']}  {item['flow']} / {item['step']}",
                 f"  started by {item['started_by']}, approvals {approvals}/{needed}, deadline {item['deadline']}"]
        if item.get("url"):
            lines.append(f"  page:    {item['url']}#step-{item['step']}  (sign in with your token)")
        if item.get("context"):
            lines.append(f"  context: {short(item['context'], 200)}")
        if item.get("links"):
            lines.append("  links:")
            lines.extend(f"    {item['run']} {item['step']}: {link.get('title') or ''} {link.get('url') or ''}".rstrip()
                         for link in item["links"])
        fields = item.get("reviewer_inputs") or {}
        if fields:
            lines.append("  reviewer inputs: " + ", ".join(_field(name, spec) for name, spec in fields.items()))
        comment = item.get("require_comment")
        if comment in (True, "always"):
            lines.append("  a comment is required (-m)")
        elif comment == "reject":
            lines.append("  a comment is required to reject or request changes (-m)")
        wanted = " ".join(f"-i {name}=..." for name, spec in fields.items() if (spec or {}).get("required"))
        lines.append(f"  decide:  signoff approve {item['run']} {item['step']}" + (f" {wanted}" if wanted else "")
                     + "   |   signoff reject ...")
        lines.append(f"  request-changes: allowed (reruns from {item['rewind_to']})" if item.get("rewind_to")
                     else "  request-changes: not allowed here (the step has no rewind_to)")
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def _field(name: str, spec: dict | None) -> str:
    spec = spec or {}
    facts = [spec.get("type", "string")] + (["required"] if spec.get("required") else [])
    if "enum" in spec:
        facts.append("one of " + "|".join(value(v) for v in spec["enum"]))
    if "default" in spec:
        facts.append(f"default {value(spec['default'])}")
    return f"{name} ({', '.join(facts)})" + (f": {spec['description']}" if spec.get("description") else "")


def releases(flows: list[dict[str, Any]], *, tagged: bool, problems: list[dict[str, Any]]) -> str:
    """What is live per flow, with its overrides, refusals and drafts; then warnings, refusals and last changes."""
    rows = []
    for entry in flows:
        live = entry["live"]
        note = []
        if entry["pinned"]:
            note.append(f"PINNED {entry['pinned']}")
        if entry["yanked"]:
            note.append("yanked " + ",".join(entry["yanked"]))
        if entry["refused"]:
            note.append("refused " + ",".join(r["tag"] for r in entry["refused"]))
        if entry["removed"]:
            note.append("removed in the newest release")
        for item in entry.get("pending") or []:
            note.append(f"PENDING APPROVAL {item['tag']} ({len(item['approvals'])}/{item['rule']['min_approvals']})"
                        + replay_note(item.get("replay")))
        if entry["drafts"]:
            note.append("drafts: " + ",".join(d["branch"] for d in entry["drafts"]))
        rows.append([entry["flow"], live["tag"] if live else "-", live["commit"][:12] if live else "",
                     (live.get("tagger") or "").split(" <")[0] if live else "", (live.get("date") or "")[:10] if live
                     else "", "; ".join(note)])
    human = table(rows, ["FLOW", "LIVE", "COMMIT", "TAGGER", "DATE", "NOTES"]) if rows else "no flows released"
    if not tagged:
        human += "\n(no release tags yet: tag v1.0.0, or `signoff release FLOW 1.0.0`)"
    for problem in problems:
        human += f"\nwarning: {problem['message']}"
    return human + _refusals(flows) + _last_changes(flows)


def _last_changes(flows: list[dict[str, Any]]) -> str:
    """Per flow, the latest change of what is live that someone made: what, who, how, when and why."""
    lines = []
    for entry in flows:
        made = [h for h in entry["history"] if h.get("by") and ("override" in h or "released" in h)]
        if not made:
            continue
        last = made[-1]
        what = f"released {last['released']}" if "released" in last else \
            f"{last['override']}{' ' + last['version'] if last.get('version') else ''}"
        how = "through the daemon" if last.get("via") == "daemon" else "directly in the repository"
        lines.append(f"\n{entry['flow']}: {what} by {last['by']} {how} at {last['at']}"
                     + (f": {last['reason']}" if last.get("reason") else ""))
    return "".join(lines)


def _refusals(flows: list[dict]) -> str:
    """Each refused tag once, with its first error: a whole-repository tag is refused for every flow at once."""
    lines, seen = [], set()
    for entry in flows:
        for refused in entry["refused"]:
            if (refused["tag"], refused["commit"]) in seen:
                continue
            seen.add((refused["tag"], refused["commit"]))
            first = refused["errors"][0] if refused["errors"] else {}
            scope = " (the whole repository)" if "/" not in refused["tag"] else ""
            lines.append(f"\nrefused {refused['tag']}{scope}: {first.get('file', '')}:{first.get('line', '')}: "
                         f"{first.get('message', '')}")
    return "".join(lines)


def how_changed(document: dict[str, Any]) -> str:
    """How a change of what is live was made, in words: through which daemon as whom, or on which files with no
    authorization."""
    if document.get("via") == "daemon":
        return f" (through the daemon at {document.get('server')}, as {document.get('by')})"
    return (f" (directly in the repository {document.get('repository')} and data {document.get('data')}: no daemon "
            f"configured, so no authorization; recorded as {document.get('by')})")


class Progress:
    """Prints each step transition of a run as it happens (to stderr)."""

    def __init__(self, stream: TextIO | None = None, show_output: bool = True) -> None:
        self.stream = stream or sys.stderr
        self.show_output = show_output
        self._partial: dict[tuple[str, str], str] = {}

    def __call__(self, run: dict, event: dict) -> None:
        kind, step = event["type"], event.get("step")
        state = run["steps"].get(step, {}) if step else {}
        line = None
        if kind == EventType.RUN_CREATED:
            line = f"run {run['id']} of {run['flow']} created"
        elif kind == EventType.STEP_STARTED:
            line = f"▶ {step}" + (f" (attempt {event['attempt']})" if event["attempt"] > 1 else "")
        elif kind == EventType.STEP_WAITING:
            line = f"… {step} waiting until {event['wake_at']} ({event['reason']})"
            if event["reason"].startswith("awaiting approval"):
                line += f"\n  decide with: signoff approve {run['id']} {step}   (or reject / request-changes)"
        elif kind == EventType.STEP_RETRYING:
            line = f"↻ {step} attempt {event['attempt']} failed: {short(event['error'], 80)}; retrying in " \
                   f"{format_duration(event['delay_seconds'])}"
        elif kind == EventType.STEP_FINISHED:
            took = elapsed(state.get("started_at"), state.get("finished_at"))
            line = f"{MARKS.get(event['status'], '?')} {step} {event['status']} in {took}" + (
                f": {short(event['error'], 100)}" if event.get("error") else "")
        elif kind == EventType.STEP_SKIPPED:
            line = f"– {step} skipped ({event['reason']})"
        elif kind == EventType.STEP_OUTPUT and self.show_output:
            self.output(step, event["stream"], event["text"])
            if event.get("truncated"):
                self.stream.write(f"  {step} | ... (more output in the step's outputs)\n")
        elif kind == EventType.JUMP:
            line = f"→ jump to {event['to']} ({event['reason']})"
        elif kind == EventType.RUN_FINISHED:
            line = f"run {run['id']} {event['status']}" + (f": {event['error']}" if event.get("error") else "")
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()

    def output(self, step: str, stream: str, text: str) -> None:
        if not self.show_output:
            return
        buffered = self._partial.get((step, stream), "") + text
        *lines, rest = buffered.split("\n")
        self._partial[(step, stream)] = rest[-4096:]
        for line in lines[:200]:
            self.stream.write(f"  {step} | {line[:400]}\n")
        if len(lines) > 200:
            self.stream.write(f"  {step} | ... {len(lines) - 200} more lines\n")
        self.stream.flush()


def replay_note(replay: dict[str, Any] | None) -> str:
    """How the pending release fares against the live version's recent runs, in a few words."""
    if not replay:
        return ""
    if replay.get("error"):
        return " not replayed"
    summary = replay.get("summary") or {}
    if not summary.get("runs"):
        return " replayed: no runs"
    ends = ",".join(f"{count} {status}" for status, count in summary["statuses"].items())
    was = ",".join(f"{count} {status}" for status, count in summary["recorded_statuses"].items())
    return f" replayed {summary['runs']} run(s): would end {ends} (recorded {was})"
