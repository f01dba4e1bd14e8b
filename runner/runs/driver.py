"""The per-run driver: runs a run's steps in order, with the bookkeeping every step kind goes through.

`Driver.drive()` starts or resumes a run (from the start, a step a crash
interrupted, or a wait in progress) and runs its steps: it renders a step's
fields, evaluates its `if`, runs the kind with its timeout and retry policy,
and records the result, outputs over the threshold as resources. Where the
run goes next is `Transitions`'; waits and answers are `Waits`'.
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
from datetime import timedelta
from pathlib import Path
from typing import Any

from runner import jsonvalue
from runner.errors import ExpressionError, StepFailed
from runner.flows.model import Step
from runner.runs.transitions import PARKED
from runner.runs.waits import Waits
from runner.status import TERMINAL_STEP, EventType, RunStatus, StepStatus, is_terminal
from runner.steps.base import Done, Park, StepContext, StepKind
from runner.timeutil import format_duration, parse_rfc3339, rfc3339

log = logging.getLogger(__name__)

CONTROL_FIELDS = frozenset({"id", "kind", "name", "if", "retry", "timeout", "on_error"})  # read, never rendered
SHUTDOWN = "daemon shutting down"  # a cancel with this reason leaves the run resumable, not cancelled
_SUCCEEDED, _WAITING, _RUNNING = StepStatus.SUCCEEDED.value, StepStatus.WAITING.value, StepStatus.RUNNING.value


class Driver(Waits):
    """Advances one run; owns the bookkeeping every step kind goes through."""

    # ---- the state machine ----------------------------------------------------

    async def drive(self, *, hold: bool) -> None:
        if is_terminal(self.run["status"]):
            return
        self.hold = hold
        try:
            await self.run_steps()
            if is_terminal(self.run["status"]):
                await self.close_mailbox()
            # the end or the park of the run (events, snapshot) is written here, off the event loop
            await self.recorder.flush_off_loop()
        except asyncio.CancelledError as exc:
            # also while the park is being written: the park is on disk by then, and the cancel follows it
            reason = str(exc.args[0]) if exc.args and exc.args[0] else "cancelled"
            if reason != SHUTDOWN and not is_terminal(self.run["status"]):
                self.cancel(reason)
            self.flush(force=True)
            raise
        except BaseException:
            self.flush(force=True)
            raise

    def cancel(self, reason: str) -> None:
        self.recorder.pending.clear()  # a half-built batch was never acknowledged
        if self.engine.mailbox is not None:
            for step_id in self.run.get("callbacks") or {}:
                self.record_unused(step_id, self.engine.mailbox.get(self.run_id, step_id))
        current = self.run.get("current_step")
        if current and self.run["steps"][current]["status"] not in TERMINAL_STEP:
            self.record(EventType.STEP_FINISHED, step=current, status=StepStatus.CANCELLED.value, error=reason,
                        flush=False)
        self.record(EventType.RUN_FINISHED, status=RunStatus.CANCELLED.value, error=reason, force=True)

    async def run_steps(self) -> None:
        if self.run["status"] == RunStatus.QUEUED:
            self.record(EventType.RUN_STARTED, force=True)
        index = await self.recover()
        steps, max_steps = self.flow.steps, self.flow.max_steps
        while index is not None and index != PARKED:
            if index >= len(steps):
                self.finish_path()
                return
            step = steps[index]
            if self.run["steps_executed"] >= max_steps:
                self.finish(RunStatus.FAILED, f"the run executed {self.run['steps_executed']} steps, the "
                            f"limit (max_steps: {max_steps}); is a jump looping?")
                return
            index = self.after(step, await self.run_step(step, attempt=1))

    async def recover(self) -> int | str | None:
        """Where to go on from: the start, a step interrupted by a crash, or a wait in progress."""
        current = self.run.get("current_step")
        if current is None:
            return 0
        step = self.flow.step(current)
        state = self.run["steps"][current]
        if state["status"] == _WAITING:
            return self.after(step, await self.finish_wait(step, parse_rfc3339(state["wake_at"])))
        if state["status"] == _RUNNING:
            policy = step.retry
            if state.get("retry_at"):
                await self.engine.clock.sleep(
                    (parse_rfc3339(state["retry_at"]) - self.engine.clock.now()).total_seconds())
                return self.after(step, await self.run_step(step, attempt=state["attempts"] + 1))
            if state["attempts"] < policy.attempts:
                self.record(EventType.STEP_INTERRUPTED, step=step.id, reason="interrupted by a restart; retrying")
                return self.after(step, await self.run_step(step, attempt=state["attempts"] + 1))
            self.record(EventType.STEP_FINISHED, step=step.id, status=StepStatus.FAILED.value,
                        error="interrupted by a restart", interrupted=True)
            return self.after(step, StepStatus.FAILED)
        return self.after(step, StepStatus(state["status"]))

    # ---- one step -------------------------------------------------------------

    async def run_step(self, step: Step, *, attempt: int) -> StepStatus | str:
        if step.condition is not None and attempt == 1:
            try:
                wanted = self.engine.evaluator.truthy(step.condition, self.context(), step=step.id)
            except ExpressionError as exc:
                self.record(EventType.STEP_STARTED, step=step.id, attempt=1, flush=False)
                return self.fail(step, exc.message)
            if not wanted:
                self.record(EventType.STEP_SKIPPED, step=step.id, reason="its `if` was false", by_jump=False)
                return StepStatus.SKIPPED
        kind = self.engine.kind_named(step.kind)
        instant = bool(kind and kind.instant)
        if attempt == 1:
            self.recorder.output_sent.pop(step.id, None)
            self.clear_routing(step, kind)
        self.record(EventType.STEP_STARTED, step=step.id, attempt=attempt, flush=not instant)
        if kind is None:
            return self.fail(step, f"'{step.kind}' steps are not available in this build")
        if kind.waits and not self.engine.accepts_messages:
            return self.fail(step, f"'{step.kind}' steps wait for people or systems, which need the daemon: "
                                   "start `signoff serve` and run the flow without --local")
        policy = step.retry
        while True:
            status, error, retryable, outputs = StepStatus.FAILED, "", False, {}
            timeout = None
            try:
                ctx = self.step_context(step, kind, attempt)
                timeout = ctx.duration("timeout") if step.spec.get("timeout") else None
                if timeout and not kind.waits:
                    async with asyncio.timeout(timeout):
                        result = await kind.execute(ctx)
                else:
                    result = await kind.execute(ctx)
                if isinstance(result, Park):
                    return await self.park(step, kind, ctx, result)
                # the last step's end is written together with the run's end (one fsync for both)
                last = instant and (step.index == len(self.flow.steps) - 1 or kind.ends_run)
                return self.succeed(step, result, flush=not last)
            except StepFailed as exc:
                error, retryable, outputs = exc.message, exc.retryable, exc.outputs
            except ExpressionError as exc:
                error = exc.message
            except TimeoutError:
                status, retryable = StepStatus.TIMED_OUT, True
                error = f"timed out after {format_duration(timeout or 0)}"
            except Exception as exc:  # a bug in a kind must not lose the run
                log.exception("step %s of run %s raised", step.id, self.run_id,
                              extra={"event": "step_crashed", "run_id": self.run_id, "step_id": step.id})
                error = f"internal error in the {step.kind} step: {type(exc).__name__}: {exc}"
            if not (retryable and attempt < policy.attempts):
                return self.fail(step, error, status=status, outputs=outputs)
            delay = policy.delay(attempt, self.engine.rng)
            retry_at = self.engine.clock.now() + timedelta(seconds=delay)
            self.record(EventType.STEP_RETRYING, step=step.id, attempt=attempt, error=self.engine.masker.mask(error),
                        delay_seconds=round(delay, 3), retry_at=rfc3339(retry_at), force=True)
            await self.engine.clock.sleep(delay)
            attempt += 1
            self.record(EventType.STEP_STARTED, step=step.id, attempt=attempt)

    def step_context(self, step: Step, kind: StepKind, attempt: int, *, render: bool = True) -> StepContext:
        engine = self.engine
        context = self.context()
        evaluator = engine.evaluator
        spec, env = dict(step.spec), {}
        if render:
            unrendered = kind.unrendered_fields
            for field, value in step.spec.items():
                if field not in CONTROL_FIELDS and field not in unrendered:
                    spec[field] = evaluator.render(value, context, shell=field in kind.shell_fields,
                                                   step=step.id, field=field)
            env = {k: str(evaluator.render(v, context, step=step.id, field=f"env.{k}"))
                   for k, v in {**self.flow.env, **(step.spec.get("env") or {})}.items()}
        tokens = self.run.get("callbacks") or {}
        masker = engine.masker
        return StepContext(
            run=self.run, step=step, spec=spec, attempt=attempt, run_dir=self.run_dir,
            work_dir=engine.work_dir, env=env, clock=engine.clock, store=engine.store,
            config=engine.config, users=engine.users, mailbox=engine.mailbox, pools=engine.pools,
            callback_url=lambda step_id: engine.callback_url(tokens[step_id]) if step_id in tokens else None,
            evaluate=lambda value, field: evaluator.render(value, context, step=step.id, field=field),
            public_url=engine.public_url, artifact_link=engine.artifact_link,
            mask=masker.mask, masking=bool(masker.values), masker=masker,
            on_output=lambda stream, text: self.recorder.output(step.id, stream, text),
            record_event=lambda kind, **fields: self.record(kind, step=step.id, **masker.mask(fields)))

    @functools.cached_property
    def run_dir(self) -> Path:
        """The run's folder, found once per advance (its log is open, so it stays)."""
        return self.engine.store.run_dir(self.run_id)

    def context(self) -> dict[str, Any]:
        """What a step's expressions see: inputs, steps, callbacks, run."""
        run = self.run
        callbacks = {step_id: {"url": self.engine.callback_url(token)}
                     for step_id, token in (run.get("callbacks") or {}).items()}
        return {"inputs": run["inputs"], "steps": run["steps"], "callbacks": callbacks,
                "run": {k: run.get(k) for k in ("id", "flow", "version", "ref", "commit", "started_by", "draft")}}

    def succeed(self, step: Step, result: Done, *, flush: bool = True) -> StepStatus:
        reason = jsonvalue.problem(result.outputs, "outputs")
        if reason is not None:  # NaN from `output: json`, say: the step fails; the run can still be written
            raise StepFailed(f"{reason}; a step's outputs must be strict JSON", retryable=False)
        self.recorder.flush_output()
        outputs = self.compact(step, self.engine.masker.mask(result.outputs))
        self.record(EventType.STEP_FINISHED, step=step.id, status=_SUCCEEDED, outputs=outputs, flush=flush)
        return StepStatus.SUCCEEDED

    def fail(self, step: Step, error: str, *, status: StepStatus = StepStatus.FAILED,
             outputs: dict | None = None) -> StepStatus:
        self.recorder.flush_output()
        outputs = self.compact(step, self.engine.masker.mask(outputs or {}))
        self.record(EventType.STEP_FINISHED, step=step.id, status=status.value, error=self.engine.masker.mask(error),
                    outputs=outputs)
        return status

    def compact(self, step: Step, outputs: dict[str, Any]) -> dict[str, Any]:
        """Outputs over the threshold become res:// references, so the snapshot stays small."""
        compacted = {}
        for key, value in outputs.items():
            if isinstance(value, str):
                data, media = value.encode(), "text/plain; charset=utf-8"
            else:
                data, media = json.dumps(value, default=str).encode(), "application/json"
            if len(data) > self.engine.output_threshold:
                value = self.engine.store.put_resource(data, media_type=media, name=f"{step.id}.{key}",
                                                       run_id=self.run_id, step=step.id,
                                                       created_at=rfc3339(self.engine.clock.now()))
            compacted[key] = value
        return compacted
