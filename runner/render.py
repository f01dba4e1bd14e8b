"""Human-readable output: tables, run summaries and live progress lines."""

from __future__ import annotations

import sys
from datetime import datetime
from typing import Any, TextIO

from runner.timeutil import format_duration, parse_rfc3339

MARKS = {"succeeded": "✓", "failed": "✗", "skipped": "–", "cancelled": "⊘", "timed_out": "⏱", "rejected": "✗",
         "waiting": "…", "running": "▶", "pending": " "}


def table(rows: list[list[Any]], headers: list[str]) -> str:
    cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[i]) for i, cell in enumerate(row)).rstrip() for row in cells]
    return "\n".join(lines)


def elapsed(start: str | None, end: str | None) -> str:
    if not start:
        return ""
    finish = parse_rfc3339(end) if end else datetime.now(parse_rfc3339(start).tzinfo)
    return format_duration((finish - parse_rfc3339(start)).total_seconds())


def short(value: Any, width: int = 60) -> str:
    text = " ".join(str(value).split())
    return text if len(text) <= width else text[: width - 1] + "…"


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
    outputs = state.get("outputs") or {}
    shown = [f"{k}={short(v, 30)}" for k, v in outputs.items() if k not in ("headers", "stderr")]
    return ", ".join(shown)


def run_detail(run: dict) -> str:
    head = [f"run      {run['id']}",
            f"flow     {run['flow']}  ({'draft' if run.get('draft') else 'live ' + (run.get('version') or '(working tree)')}"
            f"{', ref ' + run['ref'] if run.get('ref') else ''}{', commit ' + run['commit'][:12] if run.get('commit') else ''})",
            f"status   {run['status']}" + (f": {run['error']}" if run.get("error") else ""),
            f"started  {run['created_at']} by {run.get('started_by')}"
            + (f", took {elapsed(run['created_at'], run.get('finished_at'))}" if run.get("finished_at") else ""),
            f"inputs   {short(run.get('inputs') or {}, 100)}", ""]
    rows = [[f"{MARKS.get(s['status'], ' ')} {step_id}", s["status"], s.get("attempts") or "",
             elapsed(s.get("started_at"), s.get("finished_at")) if s.get("started_at") else "",
             short(_step_note(s), 70)] for step_id, s in run["steps"].items()]
    return "\n".join(head) + table(rows, ["STEP", "STATUS", "TRIES", "TOOK", "NOTE"])


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
        if kind == "run_created":
            line = f"run {run['id']} of {run['flow']} created"
        elif kind == "step_started":
            line = f"▶ {step}" + (f" (attempt {event['attempt']})" if event["attempt"] > 1 else "")
        elif kind == "step_waiting":
            line = f"… {step} waiting until {event['wake_at']} ({event['reason']})"
            if event["reason"].startswith("awaiting approval"):
                line += f"\n  decide with: signoff approve {run['id']} {step}   (or reject / request-changes)"
        elif kind == "step_retrying":
            line = f"↻ {step} attempt {event['attempt']} failed: {short(event['error'], 80)}; retrying in " \
                   f"{format_duration(event['delay_seconds'])}"
        elif kind == "step_finished":
            took = elapsed(state.get("started_at"), state.get("finished_at"))
            line = f"{MARKS.get(event['status'], '?')} {step} {event['status']} in {took}" + (
                f": {short(event['error'], 100)}" if event.get("error") else "")
        elif kind == "step_skipped":
            line = f"– {step} skipped ({event['reason']})"
        elif kind == "step_output" and self.show_output:
            self.output(step, event["stream"], event["text"])
            if event.get("truncated"):
                self.stream.write(f"  {step} | ... (more output in the step's outputs)\n")
        elif kind == "jump":
            line = f"→ jump to {event['to']} ({event['reason']})"
        elif kind == "run_finished":
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
