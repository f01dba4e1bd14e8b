"""runner.steps.base: the registry of kinds, their protocol's defaults, the daemon's hooks, and Pools."""

from __future__ import annotations

import pytest

from runner.errors import Invalid
from runner.flows.checks import WAITING_KINDS
from runner.schemas import load_schema
from runner.steps.base import BaseKind, Pools, kind_named, kind_names


def test_the_registry_has_every_kind_the_schema_knows_and_nothing_else():
    assert set(kind_names()) == set(load_schema("flow")["$defs"]["step"]["properties"]["kind"]["enum"])
    assert kind_named("nope") is None
    for name in kind_names():
        kind = kind_named(name)
        assert isinstance(kind, BaseKind) and kind.name == name


def test_the_waiting_kinds_of_the_checks_are_the_kinds_that_wait():
    assert set(WAITING_KINDS) == {name for name in kind_names() if kind_named(name).waits}


def test_a_wait_announces_itself_with_the_daemons_wording():
    run = {"id": "20301124t190812z-3f9a2c1b", "flow": "refund"}
    event = {"wake_at": "2030-11-24T20:08:12Z", "state": {"approvers": ["alice", "group:ops"], "context": "Plan"}}
    assert kind_named("approval").announce(run, "review", event) == (
        "refund: waiting at review",
        "Run 20301124t190812z-3f9a2c1b of refund waits for approval of 'review' by alice, group:ops until "
        "2030-11-24T20:08:12Z.\n\nPlan")
    assert kind_named("callback").announce(run, "done", event) == (
        "refund: waiting at done",
        "Run 20301124t190812z-3f9a2c1b of refund waits for a callback at 'done' until 2030-11-24T20:08:12Z.")


def test_the_callback_kind_checks_a_payload_against_its_schema():
    callback = kind_named("callback")
    assert callback.parse_payload(b'{"n": 1}', {"type": "object", "required": ["n"]}) == {"n": 1}
    with pytest.raises(Invalid):
        callback.parse_payload(b'{"m": 1}', {"type": "object", "required": ["n"]})


class _Pool:
    closed: list[str] = []

    def close(self) -> None:
        _Pool.closed.append(type(self).__name__)


class _First(_Pool):
    pass


class _Second(_Pool):
    def close(self) -> None:
        super().close()
        raise OSError("a close that fails does not stop the others")


def test_pools_make_one_instance_per_class_and_close_them_in_reverse_order():
    pools = Pools()
    first = pools.get(_First)
    assert pools.get(_First) is first
    pools.get(_Second)
    _Pool.closed = []
    pools.close()
    assert _Pool.closed == ["_Second", "_First"]
    assert pools.get(_First) is not first  # closed pools are forgotten
