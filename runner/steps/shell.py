"""`shell`: run a command locally in its own process group.

Output is spooled to disk as it arrives (a command printing 100 MB costs disk,
not memory): up to the threshold it becomes the `stdout`/`stderr` text output,
beyond it a res:// resource plus a short tail. `$SIGNOFF_OUTPUT` collects
key=value lines (or one JSON object) as outputs; files left in
`$SIGNOFF_ARTIFACTS` become resources. On timeout or cancel the whole process
group gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
from pathlib import Path
from typing import Any

from runner.errors import StepFailed
from runner.steps import Done, StepContext

THRESHOLD = 64 * 1024
MAX_SPOOL = 64 * 1024 * 1024
TAIL = 2048
KILL_GRACE = 2.0
RESERVED = frozenset({"exit_code", "stdout", "stderr", "json", "artifacts"})
KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class _Spool:
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


async def kill_group(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            await asyncio.wait_for(asyncio.shield(process.wait()), grace)
            return
        except TimeoutError:
            continue


class ShellKind:
    instant = False
    shell_fields = ("run",)

    async def execute(self, ctx: StepContext) -> Done:
        work = ctx.run_dir / "work" / f"{ctx.step.id}-{ctx.attempt}"
        shutil.rmtree(work, ignore_errors=True)
        artifacts = work / "artifacts"
        artifacts.mkdir(parents=True)
        output_file = work / "output"
        env = {**os.environ, **ctx.env, "SIGNOFF_OUTPUT": str(output_file), "SIGNOFF_ARTIFACTS": str(artifacts),
               "SIGNOFF_RUN_ID": ctx.run["id"], "SIGNOFF_FLOW": ctx.run["flow"], "SIGNOFF_STEP": ctx.step.id}
        cwd = ctx.work_dir / ctx.spec["cwd"] if ctx.spec.get("cwd") else ctx.work_dir
        if not cwd.is_dir():
            raise StepFailed(f"cwd {cwd} is not a directory", retryable=False)
        shell = shutil.which(ctx.spec.get("shell", "bash")) or "/bin/sh"
        cap = int((ctx.config.limits if ctx.config else {}).get("max_output_bytes", MAX_SPOOL))
        spools = {"stdout": _Spool(work / "stdout", cap), "stderr": _Spool(work / "stderr", cap)}
        try:
            process = await asyncio.create_subprocess_exec(
                shell, "-c", ctx.spec["run"], cwd=cwd, env=env, stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        except OSError as exc:
            raise StepFailed(f"cannot start {shell}: {exc.strerror}", retryable=False) from None
        try:
            await asyncio.gather(self._pump(process.stdout, spools["stdout"], "stdout", ctx),
                                 self._pump(process.stderr, spools["stderr"], "stderr", ctx))
            code = await process.wait()
        finally:
            await kill_group(process)
            for spool in spools.values():
                spool.handle.close()
        outputs: dict[str, Any] = {"exit_code": code}
        for name, spool in spools.items():
            outputs.update(spool.outputs(name, ctx))
        try:
            outputs.update(parse_output_file(output_file))
            stored = self._artifacts(artifacts, ctx)
            if stored:
                outputs["artifacts"] = stored
            if code != 0:
                last = spools["stderr"].tail.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
                reason = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
                raise StepFailed(f"{reason}{': ' + last[0][:300] if last[0] else ''}", outputs=outputs)
            if ctx.spec.get("output") == "json":
                outputs["json"] = self._json(spools["stdout"], outputs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Done(outputs)

    def _json(self, spool: _Spool, outputs: dict[str, Any]) -> Any:
        if spool.truncated:
            raise StepFailed("output: json, but stdout was cut at the output limit", retryable=False, outputs=outputs)
        try:
            return json.loads(spool.path.read_bytes())
        except ValueError as exc:
            raise StepFailed(f"output: json, but stdout is not JSON ({exc})", retryable=False,
                             outputs=outputs) from None

    async def _pump(self, stream: asyncio.StreamReader, spool: _Spool, name: str, ctx: StepContext) -> None:
        while chunk := await stream.read(65536):
            spool.write(chunk)
            ctx.on_output(name, chunk.decode("utf-8", "replace"))

    def _artifacts(self, folder: Path, ctx: StepContext) -> dict[str, str]:
        stored = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            name = path.relative_to(folder).as_posix()
            stored[name] = ctx.store.put_resource(path, name=name, run_id=ctx.run["id"], step=ctx.step.id)
        return stored


KIND = ShellKind()
