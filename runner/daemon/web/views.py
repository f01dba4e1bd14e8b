"""Small pieces of presentation the templates share: times, durations, diffs, JSON values.

Everything here returns plain text (escaped by the templates) or a list of
(class, text) pairs the templates escape line by line, so no helper can
smuggle markup into a page.
"""

from __future__ import annotations

import json
import re
from html import escape, unescape
from datetime import datetime, timezone
from typing import Any

DIFF_HEAD = re.compile(r"^(--- |\+\+\+ |@@ |diff --git )", re.MULTILINE)
TAIL_LINES = 40


def moment(value: Any) -> datetime | None:
    """An RFC 3339 string (or a datetime) as an aware datetime; None for anything else."""
    if isinstance(value, datetime):
        return value if value.tzinfo else value.replace(tzinfo=timezone.utc)
    if not isinstance(value, str) or not value:
        return None
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


def when(value: Any) -> str:
    """A moment as `2030-01-02 03:04:05 UTC`, or a dash."""
    found = moment(value)
    return found.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC") if found else "–"


def span(seconds: float) -> str:
    """A duration in words a reviewer reads at a glance: `3h 20m`, `45s`."""
    seconds = int(max(0, seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [(days, "d"), (hours, "h"), (minutes, "m")] if seconds >= 60 else [(secs, "s")]
    shown = [f"{value}{unit}" for value, unit in parts if value][:2]
    return " ".join(shown) or "0s"


def time_left(deadline: Any, now: datetime) -> str:
    """`2h 10m left`, or `overdue` once the deadline has passed."""
    found = moment(deadline)
    if found is None:
        return "no deadline"
    left = (found - now).total_seconds()
    return f"{span(left)} left" if left > 0 else "overdue"


def took(start: Any, end: Any, now: datetime) -> str:
    begun = moment(start)
    if begun is None:
        return "–"
    return span(((moment(end) or now) - begun).total_seconds())


def looks_like_diff(text: Any) -> bool:
    return isinstance(text, str) and len(DIFF_HEAD.findall(text)) >= 2


def diff_lines(text: str) -> list[tuple[str, str]]:
    """A unified diff as (class, line): added, removed, hunk, file or plain."""
    shown = []
    for line in text.splitlines():
        if line.startswith(("+++ ", "--- ", "diff --git ")):
            kind = "diff-file"
        elif line.startswith("@@"):
            kind = "diff-hunk"
        elif line.startswith("+"):
            kind = "diff-add"
        elif line.startswith("-"):
            kind = "diff-del"
        else:
            kind = "diff-same"
        shown.append((kind, line))
    return shown


CODE_BLOCK = re.compile(r"<pre><code>(.*?)</code></pre>", re.DOTALL)


def diff_code_blocks(html: str) -> str:
    """Sanitized Markdown HTML with its code blocks that hold a diff shown as a diff view.

    The code's text is already escaped (markdown.py leaves no tags inside a code block); only
    spans of our own are added around its lines, so nothing in the text becomes markup.
    """
    def view(match: re.Match[str]) -> str:
        body = match.group(1)
        if not looks_like_diff(unescape(body)):
            return match.group(0)
        lines = "".join(f'<span class="{kind}">{escape(line)}</span>' for kind, line in diff_lines(unescape(body)))
        return f'<pre class="diff"><code>{lines}</code></pre>'

    return CODE_BLOCK.sub(view, html)


def tail(text: Any, lines: int = TAIL_LINES) -> str:
    """The last `lines` lines of a log output."""
    if not isinstance(text, str):
        return ""
    kept = text.splitlines()[-lines:]
    return "\n".join(kept)


def as_json(value: Any) -> str:
    """A value as indented JSON text, for outputs, inputs and payloads."""
    if isinstance(value, str):
        return value
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def short(value: Any, length: int = 12) -> str:
    return str(value or "")[:length] or "–"


FILTERS = {"when": when, "span": span, "json": as_json, "short": short, "tail": tail,
           "looks_like_diff": looks_like_diff, "diff_lines": diff_lines}
