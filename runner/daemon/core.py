"""The daemon's core: composes its services, starts and stops them, and keeps one public surface.

One asyncio loop runs everything. The services, each in its own module:

    running      start runs, advance each in one task at a time, the concurrency queue, cancel
    timers       one heap of typed timers (a run's wake-up, a reminder, a schedule slot)
    scheduler    schedule slots of live flows, claimed once across restarts
    callbacks    a token resolved once; which steps still take a callback; accept into the inbox
    approvals    decide, and what a user may decide (pending)
    announce     notifications when a run waits, times out, or is due a reminder
    visibility   who may read which run and resource
    hooks        the webhook trigger and the git push webhook
    catalog      the flows offered, and changes of what is live
    inspection   a run's verification and logs, the releases and a diff, as the CLI prints them
    release_approvals + release_replay   releases pending approval: decisions, links, the replay summary
    detached     kills of detached remote jobs a run asked for
    listeners    the ordered, contained listeners of the engine's events
    tasks        named supervised side tasks, and short background ones
    threads      the thread pools the daemon's blocking work runs on
    backends     what is kept beside the runs, by store (the inbox, schedule slots, release state ...)
    cluster      with PostgreSQL, several daemons: wake-ups by LISTEN, the sweep for runs nobody holds

Decisions and callbacks are recorded (fsynced) before their calls return, so the HTTP
layer may acknowledge them.
"""

from __future__ import annotations

import gc
import logging
import os
import secrets as random_tokens
from datetime import timedelta
from pathlib import Path
from typing import Any

from runner import __version__
from runner.auth import User, Users
from runner.config import Config
from runner.daemon.announce import Announcer, NotificationLinks
from runner.daemon.approvals import Approvals
from runner.daemon.callbacks import Callbacks, CallbackTarget
from runner.daemon.catalog import LIVE_CHANGES, Catalog
from runner.daemon.detached import DetachedKills
from runner.daemon.hooks import Hooks
from runner.daemon.backends import backend_for
from runner.daemon.listeners import Listeners, inbox_consumption, metrics_counting
from runner.daemon.inspection import Inspection
from runner.daemon.longpoll import LongPolls
from runner.daemon.metrics import Metrics
from runner.daemon.pools import ThreadPools
from runner.daemon.release_approvals import ReleaseApprovals
from runner.daemon.release_replay import ReleaseReplays
from runner.daemon.running import RunTasks
from runner.daemon.scheduler import Scheduler
from runner.daemon.startup import active_runs, parked_quietly
from runner.daemon.tasks import SideTasks
from runner.daemon.timers import Reminder, ScheduleSlot, Timer, Timers, Wake
from runner.daemon.visibility import Visibility, page_start, run_status
from runner.datadir import FILE_MODE, fsync_dir, make_dir, tmp_name
from runner.errors import ConfigError
from runner.notify import Notifier
from runner.releases.service import GitOps
from runner.runs.engine import Engine
from runner.runs.store import Store
from runner.steps.base import Pools, Receipt, kind_named, kind_names
from runner.timeutil import Clock
from runner.status import RunStatus

__all__ = ["Daemon", "User", "LIVE_CHANGES", "CallbackTarget", "run_status", "page_start"]
log = logging.getLogger(__name__)
STOP_GRACE_SECONDS = 5.0
LINK_SECRET_FILE = "link_secret"


class Daemon:
    def __init__(self, *, config: Config, store: Store, users: Users, gitops: GitOps, work_dir: Path,
                 public_url: str, clock: Clock | None = None) -> None:
        self.config, self.store, self.users, self.gitops = config, store, users, gitops
        self.repo = work_dir
        self.public_url = public_url.rstrip("/")
        self.clock = clock or Clock()
        self.threads = ThreadPools()
        self.backend = backend_for(store, pool=self.threads.files, kept_link_secret=kept_link_secret)
        self.shared = self.backend.shared  # several daemons may serve this store
        # what signs the links in notifications and the web pages check them with: a rotation list, newest last
        self.web_secrets: list[str] = list(config.link_secrets) or [self.backend.link_secret()]
        self.link_max_age: timedelta | None = config.link_max_age
        for secret in self.web_secrets:
            config.masker.add(secret)
        self.metrics = Metrics()
        self.kind_pools = Pools()  # what step kinds share across runs (ssh connections), closed at stop
        self.side = SideTasks()
        gitops.pool = self.threads.git
        self.inbox = self.backend.inbox
        self.timers = Timers(self.clock)
        self.polls = LongPolls(store)
        self.listeners = Listeners([])  # filled below, once the services that listen exist
        self.links = NotificationLinks(public_url=self.public_url, run_url=self.run_url, users=users,
                                       secrets=lambda: self.web_secrets, max_age=lambda: self.link_max_age,
                                       clock=self.clock)
        self.engine = Engine(store, work_dir=work_dir, config=config, clock=self.clock, masker=config.masker,
                             users=users, public_url=self.public_url, listener=self.listeners,
                             accepts_messages=True, mailbox=self.inbox, pools=self.kind_pools,
                             artifact_link=self.links.artifact)
        self.visibility = Visibility(engine=self.engine, store=store, users=users)
        self.inspection = Inspection(store=store, visibility=self.visibility, gitops=gitops, pool=self.threads.files)
        self.callbacks = Callbacks(engine=self.engine, store=store, inbox=self.inbox, clock=self.clock,
                                   schedule=self.schedule, pool=self.threads.files, remembers_open=not self.shared)
        self.runs = RunTasks(engine=self.engine, store=store, gitops=gitops, metrics=self.metrics, timers=self.timers,
                             callbacks=self.callbacks, inbox=self.inbox, visibility=self.visibility,
                             stopping=lambda: self.side.stopping, shared=self.shared,
                             writer_wait=2 * getattr(store, "lease", 0.0))
        self.approvals = Approvals(engine=self.engine, store=store, users=users, runs=self.runs,
                                   visibility=self.visibility, run_url=self.run_url)
        self.announcer = Announcer(engine=self.engine, store=store, notifier=Notifier(config.channels),
                                   metrics=self.metrics, clock=self.clock, timers=self.timers, runs=self.runs,
                                   spawn=self.side.spawn, links=self.links, once=self.backend.once)
        self.kills = DetachedKills(engine=self.engine, store=store, config=config, runs=self.runs,
                                   pools=self.kind_pools, spawn=self.side.spawn, once=self.backend.once)
        self.scheduler = Scheduler(engine=self.engine, store=store, gitops=gitops, clock=self.clock,
                                   metrics=self.metrics, timers=self.timers, schedule_run=self.schedule,
                                   spawn=self.side.spawn, state=self.backend.schedules)
        self.hooks = Hooks(engine=self.engine, store=store, gitops=gitops, config=config, metrics=self.metrics,
                           schedule_run=self.schedule)
        self.catalog = Catalog(gitops=gitops, config=config, work_dir=work_dir)
        self.release_replays = ReleaseReplays(gitops=gitops, store=store, config=config, pool=self.threads.replay,
                                              spawn=self.side.spawn, run_url=self.run_url, clock=self.clock)
        self.release_approvals = ReleaseApprovals(gitops=gitops, users=users, notifier=self.announcer.notifier,
                                                  links=self.links, replays=self.release_replays,
                                                  spawn=self.side.spawn)
        gitops.on_change = self.scheduler.live_changed
        self.listeners.listeners = [
            ("long-poll wake-ups", self.polls.on_event),
            ("detached-job kills", self.kills.on_event),
            ("open-step tracking", self.callbacks.on_event),
            ("inbox consumption", inbox_consumption(self.inbox)),
            ("metrics", metrics_counting(self.metrics)),
            ("concurrency queue", self.runs.on_event),
            ("announcements", self.announcer.on_event),
        ]

    # ---- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        """Read the refs, rebuild timers and resume every active run from its files."""
        for kind in kind_names():  # import now, not on the loop in the middle of a run
            kind_named(kind)
        await self.gitops.reconcile("start")
        kept = self.inbox.load(self.callbacks.still_expected)
        self.store.sweep_shared()
        self.side.supervise(self.timers.run(self._due), "timers")
        self.side.supervise(self.gitops.watch(), "ref-watcher")
        if self.shared:
            from runner.daemon.cluster import Cluster  # psycopg's async side, for several daemons only

            self.cluster = Cluster(store=self.store, runs=self.runs, polls=self.polls, kills_sweep=self.kills.sweep,
                                   pool=self.threads.files)
            self.side.supervise(self.cluster.listen(), "wake-ups")
            self.side.supervise(self.cluster.sweep(), "sweeper")
        resumed = parked = 0
        for run in active_runs(self.engine, self.store):
            self.callbacks.expect(run)
            if run["status"] == RunStatus.WAITING and parked_quietly(run, self.clock, self.inbox):
                self.timers.watch(run)
                parked += 1  # nothing to do until its timer fires or an answer comes
            else:
                self.schedule(run["id"])
                resumed += 1
        swept = self.kills.sweep()
        # what start-up keeps (timers, callback targets, flows) lives as long as the daemon: left out
        # of the collector's full passes, which would otherwise stall the loop for tens of ms under load
        gc.collect()
        gc.freeze()
        if swept:
            log.info("%d kills of remote jobs left outstanding are under way", swept, extra={"event": "kills_swept"})
        log.info("daemon started; %d runs resumed, %d waiting, %d callbacks accepted and not yet recorded", resumed,
                 parked, kept, extra={"event": "daemon_started"})

    async def stop(self, grace: float = STOP_GRACE_SECONDS) -> None:
        """Stop taking work, let runs reach a safe point, leave the rest resumable."""
        self.side.stopping = True
        self.side.cancel_supervised()
        await self.runs.stop(grace)
        self.side.cancel_background()
        self.kind_pools.close()
        self.inbox.close()
        self.threads.shutdown()

    def _due(self, timer: Timer) -> None:
        """What a due timer sets off."""
        if isinstance(timer, Wake):
            self.schedule(timer.run_id)
        elif isinstance(timer, Reminder):
            self.side.spawn(self.announcer.remind(timer.run_id, timer.step_id))
        elif isinstance(timer, ScheduleSlot):
            self.side.spawn(self.scheduler.fire(timer))

    @property
    def stopping(self) -> bool:
        return self.side.stopping

    @property
    def failed(self) -> str | None:
        """The supervised side task that died, if one did."""
        return self.side.failed

    def health(self) -> dict[str, Any]:
        repo = self.gitops.health()
        store: dict[str, Any] = {"kind": "postgres" if self.shared else "files"}
        if self.shared:  # the daemons serving the same database, as each last said it was alive
            try:
                store["daemons"] = self.store.live_daemons()
            except Exception as exc:  # the database away: health says so instead of failing
                store["error"] = f"the database does not answer: {type(exc).__name__}"
        return {"ok": repo["error"] is None and self.failed is None and "error" not in store,
                "version": __version__, "stopping": self.stopping, "failed_task": self.failed,
                "active_runs": len(self.runs.tasks), "timers": len(self.timers), "public_url": self.public_url,
                "repo": repo, "store": store}

    def run_url(self, run_id: str) -> str:
        """The run's page in the web UI."""
        return f"{self.public_url}/ui/runs/{run_id}"

    # ---- what tests and benchmarks look into ------------------------------------------

    @property
    def _tasks(self) -> dict:
        """run id -> the task advancing it now."""
        return self.runs.tasks

    @property
    def _timers(self) -> Timers:
        """The timer heap; iterating gives (when, key, label)."""
        return self.timers

    @property
    def _side_tasks(self) -> set:
        return self.side.background

    # ---- the services' calls, for callers that hold only the daemon ----------------------

    async def start_run(self, name: str, inputs: dict[str, Any], user: User, *, ref: str | None = None,
                        trigger: str = "manual") -> dict[str, Any]:
        return await self.runs.start_run(name, inputs, user, ref=ref, trigger=trigger)

    def schedule(self, run_id: str) -> None:
        """Advance the run soon; if it is being advanced now, once more after that."""
        self.runs.schedule(run_id)

    async def cancel(self, run_id: str, user: User) -> dict[str, Any]:
        return await self.runs.cancel(run_id, user)

    async def decide(self, run_id: str, step_id: str, user: User, body: dict[str, Any]) -> tuple[Receipt, dict]:
        return await self.approvals.decide(run_id, step_id, user, body)

    def pending_for(self, user: User) -> list[dict[str, Any]]:
        return self.approvals.pending_for(user)

    def callback_target(self, token: str) -> CallbackTarget:
        return self.callbacks.target(token)

    async def callback(self, token: str, body: bytes) -> tuple[int, dict[str, Any]]:
        return await self.callbacks.accept(self.callbacks.target(token), body)

    async def events_after(self, run_id: str, after: int, wait: float = 0.0) -> list[dict[str, Any]]:
        return await self.polls.events_after(run_id, after, wait)

    def may_see(self, user: User, run: dict[str, Any]) -> bool:
        return self.visibility.may_see(user, run)

    def readable_run(self, run_id: str, user: User) -> dict[str, Any]:
        return self.visibility.readable_run(run_id, user)

    def visible_runs(self, user: User, *, limit: int, before: str | None = None, **filters: Any) -> list[dict]:
        return self.visibility.visible_runs(user, limit=limit, before=before, **filters)

    def readable_resource(self, ref: str, user: User) -> tuple[Path, dict[str, Any]]:
        return self.visibility.readable_resource(ref, user)

    async def hook(self, name: str, body: bytes, signature: str | None) -> dict[str, Any]:
        return await self.hooks.hook(name, body, signature)

    def git_webhook(self, body: bytes, signature: str | None, delivery: str | None) -> dict[str, Any]:
        return self.hooks.git_webhook(body, signature, delivery)

    def flows(self) -> dict[str, Any]:
        return self.catalog.flows()

    async def change_live(self, change: str, flow: str, body: dict[str, Any], user: User) -> dict[str, Any]:
        return await self.catalog.change_live(change, flow, body, user)

    async def decide_release(self, flow: str, version: str, user: User, body: dict[str, Any]) -> dict[str, Any]:
        """A decision on a release pending approval (the API, the pages, signed links and MCP all call this)."""
        return await self.release_approvals.decide(flow, version, user, body)


def kept_link_secret(data_dir: Path) -> str:
    """The daemon's own link secret when the config names none: 256 random bits made on first start and
    kept in `<data>/link_secret` (0600, durable), so links already sent survive a restart.

    The file appears whole or not at all (written and fsynced under a temporary name, then linked
    into place), and two daemons starting at once end up with the same secret.
    """
    path = data_dir / LINK_SECRET_FILE
    if not path.exists():
        make_dir(data_dir)
        tmp = tmp_name(path)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            with os.fdopen(fd, "w") as handle:
                handle.write(random_tokens.token_urlsafe(32) + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            os.link(tmp, path)  # never replaces a secret another daemon made meanwhile
            fsync_dir(data_dir)
        except FileExistsError:
            pass
        finally:
            os.unlink(tmp)
    try:
        secret = path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read the link secret {path}: {getattr(exc, 'strerror', None) or exc}") from None
    if not secret:
        raise ConfigError(f"the link secret {path} is empty",
                          hint="delete it to have a new one made (links already sent stop working)")
    if path.stat().st_mode & 0o077:
        os.chmod(path, FILE_MODE)
    return secret
