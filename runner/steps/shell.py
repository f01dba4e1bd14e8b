"""`shell`: run a command locally in its own process group.

Output is handled as for every command (`runner.steps.output`): spooled to
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

from runner.children import Child, child_environment, spawn
from runner.steps.output import MAX_SPOOL, Spool, parse_output_file, stdout_json, store_file
from runner.errors import StepFailed
from runner.steps.base import BaseKind, Done, StepContext

KILL_GRACE = 2.0
GROUP_POLL = 0.05


async def kill_group(process: Child) -> None:
    """SIGTERM to the command's whole process group, SIGKILL to whatever of it is left after the grace.

    The group outlives its leader when a member ignores SIGTERM, so the grace runs out on the group.
    """
    loop = asyncio.get_running_loop()
    give_up = loop.time() + KILL_GRACE
    try:
        os.killpg(process.pid, signal.SIGTERM)
        while loop.time() < give_up:
            await asyncio.sleep(GROUP_POLL)
            os.killpg(process.pid, 0)  # ProcessLookupError once nothing of the group is left
        os.killpg(process.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left, or only what is not ours to signal
        pass
    await process.wait()


class ShellKind(BaseKind):
    name = "shell"
    shell_fields = ("run",)

    def rendered_effect(self, ctx: StepContext) -> dict[str, Any]:
        """The command as it would run: its text, shell, folder, environment and output mode."""
        return {"run": ctx.spec["run"], "shell": ctx.spec.get("shell", "bash"), "cwd": ctx.spec.get("cwd"),
                "env": dict(ctx.env), "output": ctx.spec.get("output")}

    def describe_effect(self, effect: dict[str, Any]) -> str:
        return f"$ {effect['run']}" + (f"  (in {effect['cwd']})" if effect.get("cwd") else "")

    async def execute(self, ctx: StepContext) -> Done:
        work = ctx.run_dir / "work" / f"{ctx.step.id}-{ctx.attempt}"
        try:
            return await self._attempt(ctx, work)
        finally:
            # however the attempt ends (done, failed, timed out, cancelled): its raw output goes with it
            shutil.rmtree(work, ignore_errors=True)

    async def _attempt(self, ctx: StepContext, work: Path) -> Done:
        shutil.rmtree(work, ignore_errors=True)
        artifacts = work / "artifacts"
        artifacts.mkdir(parents=True)
        output_file = work / "output"
        env = child_environment(ctx.env, {"SIGNOFF_OUTPUT": str(output_file), "SIGNOFF_ARTIFACTS": str(artifacts),
                                          "SIGNOFF_RUN_ID": ctx.run["id"], "SIGNOFF_FLOW": ctx.run["flow"],
                                          "SIGNOFF_STEP": ctx.step.id, "SIGNOFF_ATTEMPT": str(ctx.attempt)})
        cwd = ctx.work_dir / ctx.spec["cwd"] if ctx.spec.get("cwd") else ctx.work_dir
        if not cwd.is_dir():
            raise StepFailed(f"cwd {cwd} is not a directory", retryable=False)
        shell = shutil.which(ctx.spec.get("shell", "bash")) or "/bin/sh"
        cap = int((ctx.config.limits if ctx.config else {}).get("max_output_bytes", MAX_SPOOL))
        spools = {"stdout": Spool(work / "stdout", cap), "stderr": Spool(work / "stderr", cap)}
        try:
            process = await spawn([shell, "-c", ctx.spec["run"]], cwd=cwd, env=env)
        except OSError as exc:
            raise StepFailed(f"cannot start {shell}: {exc.strerror}", retryable=False) from None
        try:
            await asyncio.gather(self._pump(process.stdout, spools["stdout"], "stdout", ctx),
                                 self._pump(process.stderr, spools["stderr"], "stderr", ctx))
            code = await process.wait()
        except BaseException:  # a timeout or a cancel: the command is cut short
            await kill_group(process)
            raise
        finally:
            process.close()
            for spool in spools.values():
                spool.handle.close()
        outputs: dict[str, Any] = {"exit_code": code}
        for name, spool in spools.items():
            outputs.update(spool.outputs(name, ctx))
        outputs.update(parse_output_file(output_file))
        stored = self._artifacts(artifacts, ctx, outputs)
        if stored:
            outputs["artifacts"] = stored
        if code != 0:
            last = spools["stderr"].tail.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            reason = f"exit code {code}" if code > 0 else f"killed by signal {-code}"
            raise StepFailed(f"{reason}{': ' + last[0][:300] if last[0] else ''}", outputs=outputs)
        if ctx.spec.get("output") == "json":
            outputs["json"] = stdout_json(spools["stdout"], outputs)
        return Done(outputs)

    async def _pump(self, stream: asyncio.StreamReader, spool: Spool, name: str, ctx: StepContext) -> None:
        while chunk := await stream.read(65536):
            spool.write(chunk)
            ctx.on_output(name, chunk.decode("utf-8", "replace"))

    def _artifacts(self, folder: Path, ctx: StepContext, outputs: dict[str, Any]) -> dict[str, str]:
        stored = {}
        for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink()):
            name = path.relative_to(folder).as_posix()
            try:
                stored[name] = store_file(ctx, path, name=name)
            except StepFailed as exc:
                raise StepFailed(f"artifact {exc.message}", retryable=False, outputs=outputs) from None
        return stored


KIND = ShellKind()
