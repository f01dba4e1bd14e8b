"""What the daemon keeps beside its runs, by store: with files for one daemon, in PostgreSQL for several.

    inbox           callbacks accepted and not yet recorded (a journal file, or the `inbox` table)
    schedules       the last slot claimed per schedule trigger (schedules.json, or `schedule_claims`)
    link secret     what signs links when the config names none (<data>/link_secret, or `settings`)
    release state   verdicts, pins, yanks, history (<data>/releases, or `release_state`)
    once            things done once across daemons: a reminder, a kill (always yes with one daemon,
                    a claim in the database with several)

With a file store one daemon serves the data dir (its lock says so), so what it holds
in memory is the truth; with PostgreSQL any number of daemons share the database, and
nothing of a run's state is trusted from memory (`shared`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Callable

from runner.daemon.inbox import Inbox
from runner.daemon.triggers import ScheduleState
from runner.releases.dbstate import release_state
from runner.releases.live import State

LINK_SECRET = "link_secret"


@dataclass
class Backend:
    shared: bool                     # several daemons may serve this store
    inbox: Any                       # an Inbox, or a DatabaseInbox (the same calls)
    schedules: ScheduleState
    release_state: State
    link_secret: Callable[[], str]
    once: Callable[..., bool]        # once(key, lapse=None) -> whether this daemon does `key`
    settle: Callable[[str], None]    # the thing claimed by once(key, lapse) is done


def backend_for(store: Any, *, pool: Any, kept_link_secret: Callable[[Any], str]) -> Backend:
    if getattr(store, "shared", False):  # PostgreSQL (its modules, and psycopg, only imported by who uses it)
        from runner.daemon.dbinbox import DatabaseInbox

        return Backend(shared=True, inbox=DatabaseInbox(store, pool=pool), schedules=DatabaseSchedules(store),
                       release_state=release_state(store), link_secret=lambda: store.kept_secret(LINK_SECRET),
                       once=store.claim, settle=store.settle)
    return Backend(shared=False, inbox=Inbox(store.data_dir / "inbox.jsonl", fsync=store.fsync, pool=pool),
                   schedules=ScheduleState(store.data_dir), release_state=release_state(store),
                   link_secret=lambda: kept_link_secret(store.data_dir),
                   once=lambda key, lapse=None: True, settle=lambda key: None)


class DatabaseSchedules(ScheduleState):
    """`ScheduleState` in the database: a slot is claimed by the first daemon to move it forward."""

    def __init__(self, store: Any) -> None:  # a PostgresStore
        self.store = store

    @property
    def claims(self) -> dict[str, dict[str, Any]]:  # type: ignore[override]
        return self.store.schedule_claims()

    def last(self, flow: str, index: int) -> datetime | None:
        return self.store.last_slot(self.key(flow, index))

    def claim(self, flow: str, index: int, slot: datetime, run_id: str) -> bool:
        return self.store.claim_slot(self.key(flow, index), slot, run_id)

    def created(self, flow: str, index: int) -> None:
        self.store.slot_created(self.key(flow, index))
