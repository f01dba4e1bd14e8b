"""`shell`: run a command locally in its own process group.

Output is handled as for every command (`runner.commandoutput`): spooled to
disk, large output as a res:// resource, `$SIGNOFF_OUTPUT` as outputs; files
left in `$SIGNOFF_ARTIFACTS` become resources. On timeout or cancel the whole
process group gets SIGTERM, then SIGKILL.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from runner.commandoutput import MAX_SPOOL, Spool, parse_output_file, stdout_json
from runner.errors import StepFailed
from runner.steps import Done, StepContext

KILL_GRACE = 2.0


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
        spools = {"stdout": Spool(work / "stdout", cap), "stderr": Spool(work / "stderr", cap)}
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
                outputs["json"] = stdout_json(spools["stdout"], outputs)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return Done(outputs)

    async def _pump(self, stream: asyncio.StreamReader, spool: Spool, name: str, ctx: StepContext) -> None:
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
