"""What a command leaves behind, for the steps that run commands (shell, ssh).

Output is spooled to disk as it arrives (a command printing 100 MB costs disk,
not memory): up to the threshold it becomes the `stdout`/`stderr` text output,
beyond it a res:// resource (secrets masked) plus a short tail.
`$SIGNOFF_OUTPUT` holds key=value lines, `key<<EOF` blocks, or one JSON object.
"""

from __future__ import annotations

import codecs
import json
import re
from pathlib import Path
from typing import Any

from runner.errors import StepFailed
from runner.steps.base import StepContext

THRESHOLD = 64 * 1024
MAX_SPOOL = 64 * 1024 * 1024
TAIL = 2048
RESERVED = frozenset({"exit_code", "stdout", "stderr", "json", "artifacts"})
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Spool:
    """Writes a stream to a file up to a cap and remembers its tail."""

    def __init__(self, path: Path, cap: int) -> None:
        self.path = path
        self.cap = cap
        self.size = 0
        self.tail = b""
        self.handle = open(path, "wb")

    def write(self, chunk: bytes) -> None:
        room = self.cap - self.size
        if room > 0:
            self.handle.write(chunk[:room])
        self.size += len(chunk)
        self.tail = (self.tail + chunk)[-THRESHOLD:]

    @property
    def truncated(self) -> bool:
        return self.size > self.cap

    def outputs(self, name: str, ctx: StepContext) -> dict[str, Any]:
        self.handle.close()
        if self.size <= THRESHOLD:
            return {name: self.path.read_bytes().decode("utf-8", "replace")}
        content = self.path
        if ctx.masker is not None and ctx.masking:  # a printed secret must never reach the store
            masked = self.path.with_name(self.path.name + ".masked")
            if ctx.masker.mask_file(self.path, masked):
                content = masked
        ref = ctx.store.put_resource(content, media_type="text/plain", name=f"{ctx.step.id}.{name}",
                                     run_id=ctx.run["id"], step=ctx.step.id)
        result = {name: ref, f"{name}_bytes": self.size,
                  f"{name}_tail": self.tail[-TAIL:].decode("utf-8", "replace")}
        if self.truncated:
            result[f"{name}_truncated"] = True
        return result


def store_file(ctx: StepContext, path: Path, *, name: str) -> str:
    """A file a step left behind (an artifact, a download) as a res:// resource, never holding a secret.

    A text file (UTF-8) that holds a secret value is stored masked, as output is; a binary one
    cannot be masked without breaking it, so it is refused: the step fails and names the file.
    """
    content = path
    if ctx.masker is not None and ctx.masking and ctx.masker.found_in_file(path):
        if not is_text(path):
            raise StepFailed(f"'{name}' holds the value of a secret and is binary, so it cannot be masked; "
                             "it was not stored", retryable=False)
        content = path.with_name(f".{path.name}.masked")
        ctx.masker.mask_file(path, content)
    try:
        return ctx.store.put_resource(content, name=name, run_id=ctx.run["id"], step=ctx.step.id)
    finally:
        if content != path:
            content.unlink(missing_ok=True)


def is_text(path: Path, chunk_size: int = 1 << 20) -> bool:
    """Whether the file is UTF-8 text (no NUL bytes), read once, streaming."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    try:
        with open(path, "rb") as handle:
            while chunk := handle.read(chunk_size):
                if b"\0" in chunk:
                    return False
                decoder.decode(chunk)
            decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return False
    return True


def parse_output_file(path: Path) -> dict[str, Any]:
    """`key=value` lines (`key<<EOF ... EOF` for multi-line), or one JSON object."""
    if not path.exists():
        return {}
    text = path.read_text(errors="replace")
    if text.lstrip().startswith("{"):
        try:
            values = json.loads(text)
        except ValueError as exc:
            raise StepFailed(f"$SIGNOFF_OUTPUT holds invalid JSON: {exc}", retryable=False) from None
    else:
        values, lines = {}, iter(text.splitlines())
        for line in lines:
            if not line.strip():
                continue
            if "<<" in line and ("=" not in line or line.index("<<") < line.index("=")):
                key, marker = line.split("<<", 1)
                body, closed = [], False
                for inner in lines:
                    if inner == marker:
                        closed = True
                        break
                    body.append(inner)
                if not closed:
                    raise StepFailed(f"$SIGNOFF_OUTPUT: {key.strip()}<<{marker} is never closed by a line "
                                     f"{marker!r}", retryable=False)
                values[key.strip()] = "\n".join(body)
            elif "=" in line:
                key, value = line.split("=", 1)
                values[key.strip()] = value
            else:
                raise StepFailed(f"$SIGNOFF_OUTPUT line {line[:60]!r} is not key=value", retryable=False)
    for key in values:
        if not KEY.match(key) or key in RESERVED:
            raise StepFailed(f"$SIGNOFF_OUTPUT may not set output {key!r}", retryable=False)
    return values


def stdout_json(spool: Spool, outputs: dict[str, Any]) -> Any:
    """`output: json`: the whole stdout parsed, or a failure that keeps the outputs."""
    if spool.truncated:
        raise StepFailed("output: json, but stdout was cut at the output limit", retryable=False, outputs=outputs)
    try:
        return json.loads(spool.path.read_bytes())
    except ValueError as exc:
        raise StepFailed(f"output: json, but stdout is not JSON ({exc})", retryable=False,
                         outputs=outputs) from None
