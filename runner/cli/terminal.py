"""Asking for an approval on the terminal a local run was started from.

What a reviewer is shown (`describe_approval`) is what the daemon's `pending` shows:
the context rendered when the wait began, its links, who may decide, the deadline,
the reviewer inputs the step declares. The prompt reads a decision, a comment and
those inputs, and hands them to the same `decide` the decision route calls, so the
terminal obeys the same rules (runner.auth.may_decide; the context hash; a required
comment). Lines are read without a thread (the event loop watches stdin), so the
prompt is dropped the moment the decision comes another way, and ^C stays the run's.
Everything is written to stderr: stdout keeps only the run's result.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Awaitable, Callable, TextIO

from runner.errors import Conflict, Forbidden, Invalid, NotFound, SignoffError
from runner.flows.inputs import parse_pairs

CONTEXT_LINES = 200
CHOICES = {"a": "approve", "approve": "approve", "r": "reject", "reject": "reject",
           "c": "request_changes", "changes": "request_changes", "request-changes": "request_changes",
           "request_changes": "request_changes"}
SAID = {"approve": "approved", "reject": "rejected", "request_changes": "requested changes on"}

Decide = Callable[[dict[str, Any]], Awaitable[tuple[Any, dict[str, Any]]]]


def describe_approval(run: dict[str, Any], step_id: str, spec: dict[str, Any], context: str) -> str:
    """The approval as a reviewer sees it: context, links, approvers, deadline, what a decision carries."""
    state = run["steps"][step_id]
    lines = [f"── approval '{step_id}' of run {run['id']} ({run['flow']}), started by {run.get('started_by')} ──"]
    shown = context.rstrip("\n").split("\n") if context else []
    lines += [f"  │ {line}" for line in shown[:CONTEXT_LINES]]
    if len(shown) > CONTEXT_LINES:
        lines.append(f"  │ ... {len(shown) - CONTEXT_LINES} more lines")
    for link in state.get("links") or []:
        lines.append(f"  link: {link.get('title') or link.get('url')}: {link.get('url')}")
    lines.append(f"  approvers: {', '.join(state.get('approvers') or [])}   "
                 f"approvals: {len(state.get('approvals') or [])} of {state.get('min_approvals', 1)}   "
                 f"deadline: {state.get('deadline')}")
    for name, field in (spec.get("inputs") or {}).items():
        field = field or {}
        lines.append(f"  reviewer input {name}: {field.get('type', 'string')}"
                     + (", required to approve" if field.get("required") else "")
                     + (f", default {field['default']}" if "default" in field else "")
                     + (f" - {field['description']}" if field.get("description") else ""))
    setting = spec.get("require_comment")
    if setting not in (None, "never", False):
        when = "always" if setting in (True, "always") else "to reject or request changes"
        lines.append(f"  a comment is required ({when})")
    lines.append(f"  context sha256: {state.get('context_sha256')}")
    return "\n".join(lines) + "\n"


class Terminal:
    """The terminal on stdin (a tty) and stderr; `ask` runs one approval's prompt."""

    def __init__(self, fd: int, out: TextIO) -> None:
        self.fd, self.out = fd, out
        self._lines: asyncio.Queue[str | None] = asyncio.Queue()
        self._pending = b""
        self._reading = False
        self.closed = False  # stdin reached its end: nothing more can be asked

    def start(self) -> None:
        asyncio.get_running_loop().add_reader(self.fd, self._readable)
        self._reading = True

    def stop(self) -> None:
        if self._reading:
            asyncio.get_running_loop().remove_reader(self.fd)
            self._reading = False

    def say(self, text: str) -> None:
        self.out.write(text if text.endswith("\n") else text + "\n")
        self.out.flush()

    async def ask(self, shown: str, step_id: str, spec: dict[str, Any], context_sha256: str | None,
                  approve_refusal: SignoffError | None, decide: Decide) -> None:
        """Show the approval, then read decisions until one is recorded (or it is decided elsewhere)."""
        while not self._lines.empty():  # what was typed before the question is not an answer to it
            self._lines.get_nowait()
        self.say(shown)
        offered = ["approve", "reject"] if approve_refusal is None else ["reject"]
        if spec.get("rewind_to"):
            offered.append("request_changes")
        if approve_refusal is not None:
            self.say(f"  you cannot approve here: {approve_refusal.message}"
                     + (f"\n  hint: {approve_refusal.hint}" if approve_refusal.hint else "")
                     + "\n  you may still " + " or ".join(choice.replace("_", " ") for choice in offered)
                     + ", here or through the decision route")
        keys = {"approve": "[a]pprove", "reject": "[r]eject", "request_changes": f"request [c]hanges "
                f"(back to {spec.get('rewind_to')})"}
        question = "decide: " + ", ".join(keys[choice] for choice in offered) + "? "
        while True:
            answer = await self._read(question)
            if answer is None:
                return
            decision = CHOICES.get(answer.strip().lower())
            if decision not in offered:
                if answer.strip():
                    self.say(f"  answer one of: {', '.join(keys[choice] for choice in offered)}")
                continue
            comment = await self._read("comment (enter for none): ")
            if comment is None:
                return
            inputs = await self._inputs(spec, decision)
            if inputs is None:
                return
            body = {"decision": decision, "comment": comment.strip() or None, "inputs": inputs,
                    "context_sha256": context_sha256}
            try:
                receipt, run = await decide(body)
            except (Invalid, Forbidden) as exc:  # the same refusals the route answers 422 / 403
                reasons = "".join(f"\n    - {reason}" for reason in exc.reasons or [])
                self.say(f"  not recorded: {exc.message}{reasons}" + (f"\n  hint: {exc.hint}" if exc.hint else ""))
                continue
            except (Conflict, NotFound) as exc:  # decided another way, or its deadline passed
                self.say(f"  not recorded: {exc.message}")
                return
            state = "" if receipt.outcome else "; more approvals are needed"
            self.say(f"  {SAID[decision]} '{step_id}' as {receipt.event['by']}{state}")
            return

    async def _inputs(self, spec: dict[str, Any], decision: str) -> dict[str, Any] | None:
        declared = spec.get("inputs") or {}
        if decision != "approve" or not declared:
            return {}
        pairs = []
        for name, field in declared.items():
            field = field or {}
            extra = ", required" if field.get("required") else ""
            extra += f", enter for {field['default']}" if "default" in field else ""
            value = await self._read(f"  {name} ({field.get('type', 'string')}{extra}): ")
            if value is None:
                return None
            if value.strip():
                pairs.append(f"{name}={value.strip()}")
        return parse_pairs(pairs)  # as `-i KEY=VALUE` gives them: the step's types are applied when it receives them

    async def _read(self, prompt: str) -> str | None:
        if self.closed:
            return None
        self.out.write(prompt)
        self.out.flush()
        line = await self._lines.get()
        if line is None:
            self.closed = True
            self.say("\n  (the terminal's input ended: waiting for the decision route)")
        return line

    def _readable(self) -> None:
        try:
            data = os.read(self.fd, 4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        if not data:
            self.stop()
            self._lines.put_nowait(None)
            return
        self._pending += data
        while b"\n" in self._pending:
            line, self._pending = self._pending.split(b"\n", 1)
            self._lines.put_nowait(line.decode("utf-8", errors="replace").rstrip("\r"))
