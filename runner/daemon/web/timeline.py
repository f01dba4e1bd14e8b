"""The run page's timeline: an SVG Gantt chart of a run, one row per step.

A bar per attempt, from its start to its end (or to now while it runs),
coloured by how it ended; the waiting part of an attempt is hatched and
outlined, so time spent waiting for people or systems never reads as work;
a backoff between attempts is a thin line; skips, decisions, callbacks and
jumps are marks. Every bar and mark has a <title>, the hover text.

The SVG is self-contained and inert, so it passes the pages' strict CSP when
inlined: no script, no style element or attribute (presentation attributes
only), no external references (the hatch pattern is an in-document url(#id)).
Every text is XML-escaped, and the same input always gives the same bytes.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from html import escape
from typing import Any

from runner.daemon.web.spans import BACKOFF, INTERRUPTED, WAIT, History, Mark, Span, history
from runner.timeutil import rfc3339

WIDTH = 960
LABEL_WIDTH = 180
RIGHT_PAD = 24
ROW_HEIGHT = 26
BAR_HEIGHT = 16
TOP = 8
AXIS_HEIGHT = 28
LEGEND_HEIGHT = 26
MIN_BAR = 3.0  # an instant step still shows
FONT = 'font-family="system-ui, sans-serif" font-size="12"'
LABEL_CHARS = 26

COLOURS = {
    "succeeded": "#2e7d32", "failed": "#c62828", "running": "#1565c0", "waiting": "#e68a00",
    "rejected": "#6a1b9a", "timed_out": "#d84315", "cancelled": "#616161", INTERRUPTED: "#37474f",
    "retrying": "#9e9e9e", "skipped": "#9e9e9e", "pending": "#bdbdbd",
}
DECISION_COLOURS = {"approve": "#2e7d32", "reject": "#6a1b9a", "request_changes": "#e68a00"}
OTHER = "#757575"
TICK_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400,
              172800, 604800, 1209600, 2592000)
MAX_TICKS = 8


def timeline_svg(run: dict[str, Any], events: list[dict[str, Any]], now: datetime, *,
                 id_prefix: str = "timeline", labels: dict[str, str] | None = None) -> str:
    """The SVG of `run` from its record and `events`, as of `now`.

    `id_prefix` keeps the ids inside the SVG unique when a page shows more than one;
    `labels` gives a step's display name (its `name`), the id otherwise.
    """
    past = history(run, events, now)
    chart = _Chart(past, now, id_prefix)
    names = labels or {}
    out = [chart.open_svg(run), chart.defs()]
    for row, step in enumerate(past.steps):
        out.append(chart.row(row, step, names.get(step) or step))
    out.append(chart.axis())
    for span in past.spans:
        out.append(chart.span(span))
    for mark in past.marks:
        out.append(chart.mark(mark))
    if not past.finished:
        out.append(chart.now_line())
    out.append(chart.legend())
    out.append("</svg>")
    return "\n".join(part for part in out if part)


def _tick_label(seconds: int) -> str:
    if seconds == 0:
        return "0"
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m"), (secs, "s")]
    return "+" + "".join(f"{value}{unit}" for value, unit in parts if value)


def _clip(text: str) -> str:
    return text if len(text) <= LABEL_CHARS else text[:LABEL_CHARS - 1] + "\u2026"


def _n(value: float) -> str:
    """A coordinate, always written the same way."""
    return f"{value:.1f}"


def _e(text: Any) -> str:
    return escape(str(text), quote=True)


class _Chart:
    def __init__(self, past: History, now: datetime, id_prefix: str) -> None:
        self.past = past
        self.now = now
        self.ids = "".join(c if c.isalnum() or c in "-_" else "-" for c in id_prefix) or "timeline"
        self.start = past.start or now
        end = past.end or now
        for span in past.spans:  # an open wait shows its deadline: what happens if nobody answers
            if span.open and span.deadline is not None:
                end = max(end, span.deadline)
        self.end = end if end > self.start else self.start + timedelta(seconds=1)
        self.rows = {step: index for index, step in enumerate(past.steps)}
        self.plot_width = WIDTH - LABEL_WIDTH - RIGHT_PAD
        self.axis_y = TOP + len(past.steps) * ROW_HEIGHT
        self.height = self.axis_y + AXIS_HEIGHT + LEGEND_HEIGHT
        self.used: dict[str, None] = {}  # legend entries in order of first use

    def x(self, moment: datetime) -> float:
        fraction = (moment - self.start).total_seconds() / (self.end - self.start).total_seconds()
        return LABEL_WIDTH + max(0.0, min(1.0, fraction)) * self.plot_width

    def row_y(self, step: str) -> float:
        return TOP + self.rows.get(step, 0) * ROW_HEIGHT

    def open_svg(self, run: dict[str, Any]) -> str:
        title = f"Timeline of run {run.get('id', '')} of {run.get('flow', '')}: {run.get('status', '')}"
        return (f'<svg xmlns="http://www.w3.org/2000/svg" class="timeline" width="{WIDTH}" height="{self.height}" '
                f'viewBox="0 0 {WIDTH} {self.height}" role="img" aria-labelledby="{self.ids}-title">\n'
                f'<title id="{self.ids}-title">{_e(title)}</title>')

    def defs(self) -> str:
        return (f'<defs><pattern id="{self.ids}-hatch" width="6" height="6" patternUnits="userSpaceOnUse" '
                f'patternTransform="rotate(45)"><line x1="0" y1="0" x2="0" y2="6" stroke="#ffffff" '
                f'stroke-width="3" stroke-opacity="0.7"/></pattern></defs>')

    def row(self, index: int, step: str, label: str) -> str:
        y = TOP + index * ROW_HEIGHT
        stripe = "#f5f5f5" if index % 2 == 0 else "#ffffff"
        return (f'<g class="row" data-step="{_e(step)}"><title>{_e(label)}</title>'
                f'<rect x="0" y="{_n(y)}" width="{WIDTH}" height="{ROW_HEIGHT}" fill="{stripe}"/>'
                f'<text x="{LABEL_WIDTH - 8}" y="{_n(y + ROW_HEIGHT / 2 + 4)}" text-anchor="end" fill="#212121" '
                f'{FONT}>{_e(_clip(label))}</text></g>')

    def axis(self) -> str:
        total = (self.end - self.start).total_seconds()
        step = next((s for s in TICK_STEPS if total / s <= MAX_TICKS), TICK_STEPS[-1])
        y = self.axis_y
        parts = [f'<g class="axis"><line x1="{LABEL_WIDTH}" y1="{_n(y)}" x2="{LABEL_WIDTH + self.plot_width}" '
                 f'y2="{_n(y)}" stroke="#9e9e9e"/>']
        offset = 0
        while offset <= total:
            x = self.x(self.start + timedelta(seconds=offset))
            parts.append(f'<line x1="{_n(x)}" y1="{TOP}" x2="{_n(x)}" y2="{_n(y + 4)}" stroke="#e0e0e0"/>'
                         f'<text x="{_n(x)}" y="{_n(y + 16)}" text-anchor="middle" fill="#616161" {FONT}>'
                         f'{_tick_label(offset)}</text>')
            offset += step
        parts.append(f'<text x="{LABEL_WIDTH - 8}" y="{_n(y + 16)}" text-anchor="end" fill="#616161" {FONT}>'
                     f'<title>{_e(rfc3339(self.start))}</title>{_e(self.start.strftime("%Y-%m-%d %H:%M:%S"))} UTC'
                     f'</text></g>')
        return "".join(parts)

    def span(self, span: Span) -> str:
        colour = COLOURS.get(span.status, OTHER)
        left, right = self.x(span.start), self.x(span.end)
        width = max(MIN_BAR, right - left)
        top = self.row_y(span.step) + (ROW_HEIGHT - BAR_HEIGHT) / 2
        attrs = (f'class="span {span.kind} {_e(span.status)}" data-step="{_e(span.step)}" '
                 f'data-attempt="{span.attempt}" data-kind="{span.kind}" data-status="{_e(span.status)}"')
        title = f"<title>{_e(self.describe(span))}</title>"
        if span.kind == BACKOFF:
            self.used.setdefault("backoff")
            middle = top + BAR_HEIGHT / 2
            return (f'<g {attrs}>{title}<rect x="{_n(left)}" y="{_n(middle - 1)}" width="{_n(width)}" height="2" '
                    f'fill="{colour}"/></g>')
        self.used.setdefault(span.status)
        box = f'x="{_n(left)}" y="{_n(top)}" width="{_n(width)}" height="{BAR_HEIGHT}"'
        if span.kind == WAIT:
            self.used.setdefault("wait")
            return (f'<g {attrs}>{title}<rect {box} rx="2" fill="{colour}" fill-opacity="0.35" stroke="{colour}" '
                    f'stroke-width="1.5"/><rect {box} rx="2" fill="url(#{self.ids}-hatch)"/>'
                    f'{self.deadline(span, top)}</g>')
        return f'<g {attrs}>{title}<rect {box} rx="2" fill="{colour}"/></g>'

    def deadline(self, span: Span, top: float) -> str:
        """An open wait: a dashed outline on to its deadline, then a tick at the deadline."""
        if not (span.open and span.deadline and span.deadline > span.end):
            return ""
        left, right = self.x(span.end), self.x(span.deadline)
        colour = COLOURS.get(span.status, OTHER)
        return (f'<rect class="until-deadline" x="{_n(left)}" y="{_n(top)}" width="{_n(max(0.0, right - left))}" '
                f'height="{BAR_HEIGHT}" fill="none" stroke="{colour}" stroke-dasharray="3 3"/>'
                f'<line class="deadline" x1="{_n(right)}" y1="{_n(top - 3)}" x2="{_n(right)}" '
                f'y2="{_n(top + BAR_HEIGHT + 3)}" stroke="{colour}" stroke-width="2"/>')

    def describe(self, span: Span) -> str:
        ends = "now" if span.open else rfc3339(span.end)
        seconds = (span.end - span.start).total_seconds()
        what = {WAIT: "waiting", BACKOFF: "backoff before the next attempt"}.get(span.kind, f"attempt {span.attempt}")
        visit = f", visit {span.visit}" if span.visit > 1 else ""
        text = f"{span.step}: {what}{visit}, {span.status}; {rfc3339(span.start)} to {ends} ({seconds:.0f}s)"
        if span.deadline is not None:
            text += f"; {'deadline' if span.kind == WAIT else 'next attempt at'} {rfc3339(span.deadline)}"
        return text + (f"; {span.detail}" if span.detail else "")

    def mark(self, mark: Mark) -> str:
        x, y = self.x(mark.at), self.row_y(mark.step) + ROW_HEIGHT / 2
        attrs = f'class="mark {mark.kind}" data-step="{_e(mark.step)}" data-kind="{mark.kind}"'
        title = f"<title>{_e(mark.step)}: {_e(mark.label)} at {_e(rfc3339(mark.at))}</title>"
        self.used.setdefault(mark.kind)
        if mark.kind == "jump" and mark.value in self.rows:
            target = self.row_y(mark.value) + ROW_HEIGHT / 2
            head = -5 if target < y else 5
            shape = (f'<line x1="{_n(x)}" y1="{_n(y)}" x2="{_n(x)}" y2="{_n(target)}" stroke="{OTHER}" '
                     f'stroke-dasharray="2 2"/><polygon points="{_n(x - 4)},{_n(target - head)} '
                     f'{_n(x + 4)},{_n(target - head)} {_n(x)},{_n(target)}" fill="{OTHER}"/>')
        else:
            shape = _symbol(mark.kind, x, y, DECISION_COLOURS.get(mark.value, OTHER))
        return f"<g {attrs}>{title}{shape}</g>"

    def now_line(self) -> str:
        x = self.x(self.now)
        return (f'<g class="now"><title>now: {_e(rfc3339(self.now))}</title><line x1="{_n(x)}" y1="{TOP}" '
                f'x2="{_n(x)}" y2="{_n(self.axis_y)}" stroke="#1565c0" stroke-dasharray="4 3"/></g>')

    def legend(self) -> str:
        y = self.axis_y + AXIS_HEIGHT + 4
        x = float(LABEL_WIDTH)
        parts = ['<g class="legend">']
        for entry in self.used:
            label = entry.replace("_", " ")
            if entry == "wait":
                swatch = (f'<rect x="{_n(x)}" y="{_n(y)}" width="14" height="12" fill="#bdbdbd" stroke="#616161"/>'
                          f'<rect x="{_n(x)}" y="{_n(y)}" width="14" height="12" fill="url(#{self.ids}-hatch)"/>')
            elif entry == "backoff":
                swatch = f'<rect x="{_n(x)}" y="{_n(y + 5)}" width="14" height="2" fill="{COLOURS["retrying"]}"/>'
            elif entry in ("skipped", "decision", "callback", "jump"):
                swatch = _symbol(entry, x + 7, y + 6 + (4 if entry == "decision" else 0), OTHER)
            else:
                colour = COLOURS.get(entry, OTHER)
                swatch = f'<rect x="{_n(x)}" y="{_n(y)}" width="14" height="12" rx="2" fill="{colour}"/>'
            parts.append(f'<g class="legend-entry" data-entry="{_e(entry)}">{swatch}<text x="{_n(x + 18)}" '
                         f'y="{_n(y + 10)}" fill="#424242" {FONT}>{_e(label)}</text></g>')
            x += 26 + 7 * len(label)
        parts.append("</g>")
        return "".join(parts)


def _symbol(kind: str, x: float, y: float, colour: str) -> str:
    """The shape of a mark centred on its row at (x, y): a diamond for a skip, a flag for a decision."""
    if kind == "skipped":
        return (f'<polygon points="{_n(x)},{_n(y - 6)} {_n(x + 6)},{_n(y)} {_n(x)},{_n(y + 6)} {_n(x - 6)},{_n(y)}" '
                f'fill="#ffffff" stroke="{COLOURS["skipped"]}" stroke-width="1.5"/>')
    if kind == "decision":
        return (f'<polygon points="{_n(x)},{_n(y - 11)} {_n(x + 5)},{_n(y - 3)} {_n(x - 5)},{_n(y - 3)}" '
                f'fill="{colour}" stroke="#ffffff"/>')
    if kind == "jump":
        return f'<polygon points="{_n(x - 4)},{_n(y - 4)} {_n(x + 4)},{_n(y - 4)} {_n(x)},{_n(y + 4)}" fill="{OTHER}"/>'
    return f'<circle cx="{_n(x)}" cy="{_n(y)}" r="4" fill="#ffffff" stroke="{OTHER}" stroke-width="1.5"/>'
