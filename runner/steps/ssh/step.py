"""`ssh`: run a command on the host of an ssh connection.

The connection comes from the config: host, port, user, `key_file` (without
one, the daemon user's agent and default keys), `known_hosts` (default: the
daemon user's `~/.ssh/known_hosts`), an optional `jump` connection and a
`connect_timeout`. How hosts are reached and trusted, how the command is
wrapped and killed on the host, and the connection pool are the transport's:
runner.steps.ssh.hosts, .session, .pool, .scripts and .sftp. This module is the
step kind: it plans a step (checked before any I/O), runs or detaches it, and
turns what came back into outputs. Its connections and threads are the owner's
`SshPool` (the step context's `pools`).

The command gets the step's env plus `SIGNOFF_RUN_ID`, `SIGNOFF_FLOW`,
`SIGNOFF_STEP`, `SIGNOFF_OUTPUT` and, when the flow has a callback step for
it, `SIGNOFF_CALLBACK_URL`. On timeout or cancel its whole remote process
group is killed before the step lets go.

Output is spooled as in `shell` (tails inline, the rest to res://) and streamed
to `ctx.on_output` as it arrives. `detach: true` starts the job with
setsid/nohup, its output in the job's `log`, and returns at once with `pid`,
`log`, `host`, `connection`, `job` and `callback`; `kill_detached` stops such
a job and `detached_workers` finds the ones a run may still have running.
Every job is recorded (`ssh_job_started`) before it starts; what a run's end
leaves running becomes durable kill requests, and a retry after a restart
adopts or stops the job its cut-short attempt left (runner.steps.ssh.jobs).
`upload` / `download` copy files over sftp before / after the command;
downloads become resources.
Connections and their threads come from the owner's SshPool (`ctx.pools`), which
the owner closes when it stops.
"""

from __future__ import annotations

import asyncio
import codecs
import logging
import posixpath
import re
import secrets
import shlex
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from runner.errors import NotFound, StepFailed
from runner.steps.base import BaseKind, Done, Pools, StepContext
from runner.steps.output import MAX_SPOOL, Spool, parse_output_file, stdout_json, store_file
from runner.steps.ssh import jobs as sshjobs
from runner.steps.ssh.hosts import Hop, route
from runner.steps.ssh.jobs import claim_job, detached_workers, kill_job  # noqa: F401  (detached_workers: re-exported)
from runner.steps.ssh.pool import SshPool, settled
from runner.steps.ssh.scripts import detach_script, job_dir, run_script
from runner.steps.ssh.session import MAX_OUTPUT_FILE, POLL_MS, Session, capture, run_command
from runner.steps.ssh.sftp import download, remote_path, upload

log = logging.getLogger(__name__)

ENV_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


# ---- the step -----------------------------------------------------------------------


@dataclass
class _Plan:
    """Everything the step will do, checked before any I/O."""

    hops: list[Hop]
    run: str
    cwd: str | None
    env: dict[str, str]
    detach: bool
    job: str
    callback: str | None
    output_json: bool
    uploads: list[tuple[Path, str]] = field(default_factory=list)
    downloads: list[tuple[str, str]] = field(default_factory=list)

    @classmethod
    def build(cls, ctx: StepContext) -> "_Plan":
        spec = ctx.spec
        hops = route(ctx.config, str(spec["connection"]), draft=ctx.draft)
        detach = _flag(spec.get("detach"), "detach")
        callback = _callback_step(ctx)
        env = {str(k): str(v) for k, v in ctx.env.items()}
        env.update({"SIGNOFF_RUN_ID": ctx.run["id"], "SIGNOFF_FLOW": ctx.run["flow"], "SIGNOFF_STEP": ctx.step.id})
        url = ctx.callback_url(callback) if callback else None
        if url:
            env["SIGNOFF_CALLBACK_URL"] = url
        for key in env:
            if not ENV_KEY.match(key):
                raise StepFailed(f"env name {key!r} is not a valid variable name", retryable=False)
        cwd = str(spec["cwd"]) if spec.get("cwd") else None
        job = f"{ctx.run['id']}-{ctx.step.id}-{ctx.attempt}-{secrets.token_hex(6)}"
        plan = cls(hops=hops, run=str(spec["run"]), cwd=cwd, env=env, detach=detach, job=job, callback=callback,
                   output_json=spec.get("output") == "json")
        for item in spec.get("upload") or []:
            plan.uploads.append((_local_file(ctx, str(item["from"])), _upload_target(ctx, item, cwd)))
        names: set[str] = set()
        for item in spec.get("download") or []:
            name = str(item.get("to") or posixpath.basename(str(item["from"]).rstrip("/")))
            if not name or name.startswith("/") or ".." in name.split("/"):
                raise StepFailed(f"download name {name!r} must be a relative name without '..'", retryable=False)
            if name in names:
                raise StepFailed(f"two downloads are named {name!r}; give one a `to:`", retryable=False)
            names.add(name)
            plan.downloads.append((remote_path(str(item["from"]), cwd), name))
        if detach and plan.downloads:
            raise StepFailed("download needs the command to end, and a detached job does not wait for that; "
                             "have the worker post its results to the callback, or download in a later step",
                             retryable=False)
        if detach and plan.output_json:
            raise StepFailed("output: json needs the command's stdout, which a detached job writes to its log",
                             retryable=False)
        return plan


def _flag(value: Any, name: str) -> bool:
    if isinstance(value, str):
        if value.strip().lower() in ("true", "false"):
            return value.strip().lower() == "true"
        raise StepFailed(f"{name} must be true or false, not {value!r}", retryable=False)
    return bool(value)


def _callback_step(ctx: StepContext) -> str | None:
    """The callback step a job reports to: the one named by `callback:`, else the flow's next one."""
    callbacks = ctx.run.get("callbacks") or {}
    named = ctx.spec.get("callback")
    if named:
        if named not in callbacks:
            raise StepFailed(f"callback: '{named}' is not a callback step of this flow", retryable=False)
        return str(named)
    order = list(ctx.run.get("steps") or {})
    return next((step_id for step_id in order[ctx.step.index + 1:] if step_id in callbacks), None)


def _local_file(ctx: StepContext, source: str) -> Path:
    if source.startswith("res://"):
        try:
            return ctx.store.resource_path(source)
        except NotFound as exc:
            raise StepFailed(f"upload: {exc.message}", retryable=False) from None
    path = Path(source).expanduser()
    path = path if path.is_absolute() else ctx.work_dir / path
    if not path.is_file():
        raise StepFailed(f"upload: {path} is not a file", retryable=False)
    return path


def _upload_target(ctx: StepContext, item: dict, cwd: str | None) -> str:
    target = str(item["to"])
    if target.endswith("/"):
        source = str(item["from"])
        base = (ctx.store.resource_meta(source).get("name") or source[len("res://"):]) \
            if source.startswith("res://") else Path(source).name
        target += posixpath.basename(base)
    return remote_path(target, cwd)


def _prepare_work(work: Path, cap: int) -> dict[str, Spool]:
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    return {"stdout": Spool(work / "stdout", cap), "stderr": Spool(work / "stderr", cap)}


def _remove_work(work: Path, spools: dict[str, Spool]) -> None:
    for spool in spools.values():
        spool.handle.close()
    shutil.rmtree(work, ignore_errors=True)


class _Sink:
    """Spools a stream as shell does and streams it to ctx.on_output on the loop's thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, ctx: StepContext, spools: dict[str, Spool]) -> None:
        self.loop = loop
        self.ctx = ctx
        self.spools = spools
        self.decoders = {name: codecs.getincrementaldecoder("utf-8")("replace") for name in spools}

    def __call__(self, stream: str, data: bytes) -> None:
        self.spools[stream].write(data)
        text = self.decoders[stream].decode(data)
        if text:
            try:
                self.loop.call_soon_threadsafe(self.ctx.on_output, stream, text)
            except RuntimeError:  # the loop is closing; the spool still has it
                pass


class SshKind(BaseKind):
    name = "ssh"
    shell_fields = ("run",)
    leaves_work = True
    leftovers = staticmethod(sshjobs.leftovers)  # the engine asks: what an event leaves running on hosts

    def rendered_effect(self, ctx: StepContext) -> dict[str, Any]:
        """The remote command as it would run: connection, command, folder, env, detach and file copies."""
        spec = ctx.spec
        return {"connection": spec["connection"], "run": spec["run"], "cwd": spec.get("cwd"), "env": dict(ctx.env),
                "detach": spec.get("detach", False), "output": spec.get("output"),
                "upload": spec.get("upload"), "download": spec.get("download")}

    def describe_effect(self, effect: dict[str, Any]) -> str:
        return f"ssh {effect['connection']}: {effect['run']}" + ("  (detached)" if effect.get("detach") else "")

    async def kill_leftover(self, request: dict[str, Any], *, config: Any, draft: bool,
                            pools: Pools) -> dict[str, Any]:
        """Carry out one kill request of a run (runner.steps.ssh.jobs.kill); its `detached_killed` fields."""
        return await sshjobs.kill(config, request, draft=draft, pool=pools.get(SshPool))

    async def execute(self, ctx: StepContext) -> Done:
        plan = _Plan.build(ctx)
        pool = _pool_of(ctx)
        earlier = sshjobs.cut_short(ctx.run["steps"][ctx.step.id])
        if earlier is not None:
            adopted = await self._settle_earlier(ctx, pool, plan, earlier)
            if adopted is not None:
                return adopted
        session = await pool.in_thread(pool.take, plan.hops, cleanup=pool.give)
        clean = False
        try:
            if plan.uploads:
                await pool.in_thread(upload, session, plan.uploads)
            target = plan.hops[-1]
            # durable before the job exists: a restart that cuts this attempt short finds the job by its name
            ctx.record_event("ssh_job_started", name=plan.job, connection=target.name, host=target.host,
                             attempt=ctx.attempt, detach=plan.detach)
            if plan.detach:
                result = await self._detach(pool, plan, session)
            else:
                result = await self._run(ctx, pool, plan, session)
            clean = True
            return result
        except StepFailed as exc:
            clean = "exit_code" in exc.outputs  # the command ran to its end: the connection is fine
            raise
        finally:
            await settled(pool.in_thread(pool.give if clean else Session.close, session))

    async def _settle_earlier(self, ctx: StepContext, pool: SshPool, plan: _Plan,
                              earlier: dict[str, Any]) -> Done | None:
        """The job of the attempt a restart cut short: adopt it (detached, started), or make sure it is gone.

        Over a new connection to where that job ran. Returns the adopted job's
        outputs, or None once the earlier job is fenced or killed.
        """
        hops = route(ctx.config, str(earlier["connection"]), draft=ctx.draft)
        where = job_dir(shlex.quote(str(earlier["name"])))
        if not (plan.detach and earlier.get("detach")):
            result = await settled(pool.in_thread(kill_job, hops, where, not earlier.get("detach")))
            log.info("ssh job %s on %s, cut short by a restart: %s", earlier["name"], hops[-1].label, result,
                     extra={"event": "ssh_job_killed"})
            return None
        found = await settled(pool.in_thread(claim_job, hops, where))
        if not found.get("pid", "").isdigit() or not found.get("job"):
            return None  # it never started, and now it never will
        ctx.record_event("ssh_job_started", name=earlier["name"], connection=hops[-1].name, host=hops[-1].host,
                         attempt=earlier.get("attempt"), detach=True, adopted=True)
        log.info("ssh job %s on %s, started before a restart, adopted", earlier["name"], hops[-1].label,
                 extra={"event": "ssh_job_adopted"})
        return Done({"pid": int(found["pid"]), "log": f"{found['job']}/log", "host": hops[-1].host,
                     "connection": hops[-1].name, "job": found["job"], "callback": plan.callback, "adopted": True})

    async def _remote(self, pool: SshPool, plan: _Plan, session: Session, command: str,
                      sink: Callable[[str, bytes], None]) -> int:
        """Run the job; on cancel (a timeout, a cancelled run) kill it on the host before letting go."""
        stop = threading.Event()
        job = pool.in_thread(run_command, session, command, sink, stop)
        job.add_done_callback(lambda done: done.cancelled() or done.exception())  # never "not retrieved"
        try:
            code = await asyncio.shield(job)
        except asyncio.CancelledError:
            stop.set()
            await self._kill_after(pool, plan, "cancelled")
            await asyncio.wait([job], timeout=POLL_MS / 1000 + 1)  # the reader sees `stop` and lets go
            raise
        if code == -1:
            await self._kill_after(pool, plan, "connection lost")
            raise StepFailed(f"ssh {plan.hops[-1].label}: the connection was lost before the command ended")
        return code

    async def _kill_after(self, pool: SshPool, plan: _Plan, why: str) -> None:
        try:
            result = await settled(pool.in_thread(kill_job, plan.hops, job_dir(plan.job), not plan.detach))
            log.info("ssh job %s on %s (%s): %s", plan.job, plan.hops[-1].label, why, result,
                     extra={"event": "ssh_job_killed"})
        except StepFailed as exc:
            log.warning("ssh job %s on %s (%s) may still run: %s", plan.job, plan.hops[-1].label, why, exc.message,
                        extra={"event": "ssh_kill_failed"})

    async def _run(self, ctx: StepContext, pool: SshPool, plan: _Plan, session: Session) -> Done:
        work = ctx.run_dir / "work" / f"{ctx.step.id}-{ctx.attempt}"
        cap = int((ctx.config.limits if ctx.config else {}).get("max_output_bytes", MAX_SPOOL))
        spools = await pool.in_thread(_prepare_work, work, cap)  # files stay off the loop's thread
        try:
            code = await self._remote(pool, plan, session, run_script(plan.job, plan.run, plan.cwd, plan.env),
                                      _Sink(asyncio.get_running_loop(), ctx, spools))
            return Done(await pool.in_thread(self._collect, ctx, plan, session, work, spools, code, cap))
        finally:
            await settled(pool.in_thread(_remove_work, work, spools))

    def _collect(self, ctx: StepContext, plan: _Plan, session: Session, work: Path, spools: dict[str, Spool],
                 code: int, cap: int) -> dict[str, Any]:
        """The outputs of a finished command (in a pool thread): tails, resources, $SIGNOFF_OUTPUT, downloads."""
        for spool in spools.values():
            spool.handle.close()
        # the job dir: read $SIGNOFF_OUTPUT, then remove it
        status, written, err = capture(session, f'd={job_dir(plan.job)}\ncat "$d/output" 2>/dev/null\nrm -rf "$d"\n')
        outputs: dict[str, Any] = {"exit_code": code}
        for name, spool in spools.items():
            outputs.update(spool.outputs(name, ctx))
        if status != 0:
            raise StepFailed(f"ssh {plan.hops[-1].label}: reading $SIGNOFF_OUTPUT failed: {err.strip()[:300]}",
                             outputs=outputs)
        if len(written.encode()) > MAX_OUTPUT_FILE:
            raise StepFailed(f"$SIGNOFF_OUTPUT is over {MAX_OUTPUT_FILE:,} bytes", retryable=False, outputs=outputs)
        (work / "output").write_text(written)
        outputs.update(parse_output_file(work / "output"))
        if plan.downloads:
            files = download(session, plan.downloads, work, cap, code == 0)
            try:
                outputs["downloads"] = {name: store_file(ctx, path, name=name) for name, path in files.items()}
            except StepFailed as exc:
                raise StepFailed(f"download {exc.message}", retryable=False, outputs=outputs) from None
        if code != 0:
            last = spools["stderr"].tail.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
            raise StepFailed(f"exit code {code}{': ' + last[0][:300] if last[0] else ''}", outputs=outputs)
        if plan.output_json:
            outputs["json"] = stdout_json(spools["stdout"], outputs)
        return outputs

    async def _detach(self, pool: SshPool, plan: _Plan, session: Session) -> Done:
        out = {"stdout": bytearray(), "stderr": bytearray()}
        code = await self._remote(pool, plan, session, detach_script(plan.job, plan.run, plan.cwd, plan.env),
                                  lambda stream, data: out[stream].extend(data[:MAX_OUTPUT_FILE]))
        stdout, stderr = (out[k].decode("utf-8", "replace") for k in ("stdout", "stderr"))
        fields = dict(line.split("=", 1) for line in stdout.splitlines() if "=" in line)
        if code != 0 or not fields.get("pid", "").isdigit() or not fields.get("job"):
            await self._kill_after(pool, plan, "did not start")  # a late start must not leave a worker nobody knows
            last = stderr.strip().splitlines()[-1:] or [f"exit code {code}"]
            raise StepFailed(f"ssh {plan.hops[-1].label}: the detached job did not start: {last[0][:300]}")
        target = plan.hops[-1]
        job = fields["job"]
        return Done({"pid": int(fields["pid"]), "log": f"{job}/log", "host": target.host,
                     "connection": target.name, "job": job, "callback": plan.callback})


KIND = SshKind()


# ---- detached workers: the engine's clean-up ---------------------------------------


async def kill_detached(ctx_or_config: Any, outputs: dict[str, Any], *, draft: bool | None = None,
                        pool: SshPool | None = None) -> str:
    """Kill a detached job's process group (its `outputs` from the ssh step) over a new connection.

    Returns what happened: killed, terminated, gone or ended (it had finished).
    Raises StepFailed when the host cannot be reached. The blocking part runs on
    `pool`'s threads: given a step context, its owner's; given neither, a pool of
    this call's own, closed as it returns.
    """
    if isinstance(ctx_or_config, StepContext):
        config, draft = ctx_or_config.config, ctx_or_config.draft if draft is None else draft
        pool = pool if pool is not None else _pool_of(ctx_or_config)
    else:
        config = ctx_or_config
    for key in ("connection", "job", "pid"):
        if not outputs.get(key):
            raise StepFailed(f"these are not the outputs of a detached ssh step (no {key!r})", retryable=False)
    hops = route(config, str(outputs["connection"]), draft=bool(draft))
    own = pool is None
    pool = SshPool() if own else pool
    try:
        return await settled(pool.in_thread(kill_job, hops, shlex.quote(str(outputs["job"])), False))
    finally:
        if own:
            pool.close()


def _pool_of(ctx: StepContext) -> SshPool:
    """The ssh pool of the step context's owner."""
    return ctx.pools.get(SshPool)
