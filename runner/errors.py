"""The one exception tree of signoff.

    SignoffError                 code, exit_code, message, hint
    ├── UsageError               wrong arguments or inputs (exit 2)
    ├── FlowInvalid              a flow file failed validation; carries Problems
    ├── ConfigError              the daemon/CLI config is wrong or a secret is missing
    ├── ExpressionError          a ${{ }} expression failed; names step and field
    ├── NotFound                 a run, flow, resource or connection does not exist
    ├── StoreError               the data directory cannot be read or written
    │   └── IntegrityError       an event chain or record was altered
    ├── RunLocked                another process is advancing the run
    ├── StepFailed               a step's own failure (recorded, never printed raw)
    ├── Unauthorized / Forbidden who is asking, and whether they may (401 / 403)
    ├── Conflict                 the run's state says no (409)
    ├── Invalid                  a request's content is wrong (422), with reasons
    ├── Interrupted              ^C (exit 130), with what goes on without us
    ├── TooLarge                 a body over its limit (413)
    └── SideEffectRefused        a replay reached something that would touch the world

Every error carries what a user needs to fix it: a message, and where it helps a
hint. The CLI turns any SignoffError into a message and its exit code; nothing
else reaches the user as a traceback.
"""

from __future__ import annotations

from typing import Any


class SignoffError(Exception):
    code = "error"
    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.hint:
            data["hint"] = self.hint
        return data


class UsageError(SignoffError):
    code = "usage"
    exit_code = 2


class FlowInvalid(SignoffError):
    code = "flow_invalid"

    def __init__(self, message: str, problems: list | None = None, *, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.problems = problems or []

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        data["errors"] = [p.to_dict() for p in self.problems]
        return data


class ConfigError(SignoffError):
    code = "config_invalid"


class ExpressionError(SignoffError):
    code = "expression"

    def __init__(self, message: str, *, step: str | None = None, field: str | None = None,
                 hint: str | None = None) -> None:
        where = ".".join(part for part in (step, field) if part)
        super().__init__(f"{where}: {message}" if where else message, hint=hint)
        self.step = step
        self.field = field


class NotFound(SignoffError):
    code = "not_found"


class StoreError(SignoffError):
    code = "store"


class IntegrityError(StoreError):
    code = "integrity"


class RunLocked(SignoffError):
    code = "run_locked"


class StepFailed(SignoffError):
    """Raised by a step kind; the engine records it as the step's error.

    `retryable=False` marks failures a retry cannot fix (bad configuration,
    authentication), so the engine does not burn attempts on them.
    """

    code = "step_failed"

    def __init__(self, message: str, *, retryable: bool = True, outputs: dict | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.outputs = outputs or {}


class Unauthorized(SignoffError):
    """No or an unknown bearer token (HTTP 401)."""

    code = "unauthorized"


class Forbidden(SignoffError):
    """Authenticated, but not allowed to do this (HTTP 403)."""

    code = "forbidden"


class Conflict(SignoffError):
    """The request contradicts the run's current state (HTTP 409)."""

    code = "conflict"


class Invalid(SignoffError):
    """A well-formed request whose content is wrong (HTTP 422); `reasons` lists why.

    `fields` names the parts of the request at fault (`comment`, `inputs.amount`), so a
    client can point its user at the flag or form field that sets them.
    """

    code = "invalid"

    def __init__(self, message: str, reasons: list[str] | None = None, *, hint: str | None = None,
                 fields: list[str] | None = None) -> None:
        super().__init__(message, hint=hint)
        self.reasons = reasons or []
        self.fields = fields or []

    def to_dict(self) -> dict[str, Any]:
        data = super().to_dict()
        if self.reasons:
            data["reasons"] = self.reasons
        if self.fields:
            data["fields"] = self.fields
        return data


class Interrupted(SignoffError):
    """The user pressed ^C (exit 130)."""

    code = "interrupted"
    exit_code = 130


class TooLarge(SignoffError):
    """A body over its size limit (HTTP 413)."""

    code = "too_large"


class SideEffectRefused(SignoffError):
    """A replay (runner.runs.replay) reached a command, request, notification or connection: refused."""

    code = "side_effect_refused"
