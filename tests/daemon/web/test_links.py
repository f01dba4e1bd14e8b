"""runner.daemon.web.links: per-approver decision links, signed, single-purpose, expiring on an injected clock."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from runner.daemon.web import links, sessions
from runner.errors import Forbidden, Unauthorized

SECRET = "daemon-secret-for-links"
NOW = datetime(2030, 1, 2, 3, 4, 5, 600000, tzinfo=timezone.utc)
DEADLINE = NOW + timedelta(hours=4)
RUN, STEP = "20300102t030405z-3f9a2c1b", "review"


def make_link(**overrides) -> str:
    values = {"run_id": RUN, "step_id": STEP, "user": "alice", "expires_at": DEADLINE} | overrides
    return links.sign(SECRET, values["run_id"], values["step_id"], values["user"], values["expires_at"])


def test_a_link_carries_its_run_step_user_and_expiry():
    token = make_link()
    grant = links.verify(SECRET, token, NOW, run_id=RUN, step_id=STEP)
    assert grant == links.LinkGrant(RUN, STEP, "alice", DEADLINE.replace(microsecond=0))
    assert token.replace("-", "").replace("_", "").replace(".", "").isalnum()  # URL-safe as it is


def test_a_link_expires_with_its_deadline_never_after():
    token = make_link()
    links.verify(SECRET, token, DEADLINE - timedelta(seconds=1))
    for later in (DEADLINE, DEADLINE + timedelta(days=30)):
        with pytest.raises(Unauthorized, match="expired"):
            links.verify(SECRET, token, later)


def test_a_link_made_for_another_run_or_step_is_refused():
    token = make_link()
    with pytest.raises(Forbidden):
        links.verify(SECRET, token, NOW, run_id=RUN, step_id="deploy")
    with pytest.raises(Forbidden):
        links.verify(SECRET, token, NOW, run_id="20300102t030405z-00000000", step_id=STEP)


@pytest.mark.parametrize("tamper", [
    lambda token: token[:-2] + ("AA" if not token.endswith("AA") else "BB"),  # another signature
    lambda token: "X" + token[1:],  # another payload under the same signature
    lambda token: token.split(".")[0],  # no signature at all
    lambda token: "",
    lambda token: "not a token",
    lambda token: "." + token,  # the compressed-payload marker
])
def test_a_forged_or_malformed_link_is_unauthorized(tamper):
    with pytest.raises(Unauthorized, match="not valid"):
        links.verify(SECRET, tamper(make_link()), NOW)


def test_a_link_signed_with_another_secret_or_for_another_user_cannot_be_rewritten():
    with pytest.raises(Unauthorized):
        links.verify(SECRET, links.sign("another-secret", RUN, STEP, "alice", DEADLINE), NOW)
    alice, mallory = make_link(user="alice"), make_link(user="mallory")
    spliced = alice.split(".")[0] + "." + mallory.split(".")[1]
    with pytest.raises(Unauthorized):
        links.verify(SECRET, spliced, NOW)


def test_a_session_cookie_never_passes_as_a_link():
    value, _ = sessions.issue(SECRET, "alice", NOW)
    with pytest.raises(Unauthorized):
        links.verify(SECRET, value, NOW)


def test_rotating_the_secret_keeps_the_links_already_sent():
    old = links.sign("old-secret", RUN, STEP, "alice", DEADLINE)
    rotated = ["old-secret", "new-secret"]
    assert links.verify(rotated, old, NOW).user == "alice"
    assert links.verify("new-secret", links.sign(rotated, RUN, STEP, "alice", DEADLINE), NOW).user == "alice"


def test_link_expiry_is_the_deadline_or_sooner_by_config():
    assert links.link_expiry(DEADLINE, NOW) == DEADLINE
    assert links.link_expiry(DEADLINE, NOW, timedelta(hours=1)) == NOW + timedelta(hours=1)
    assert links.link_expiry(DEADLINE, NOW, timedelta(days=1)) == DEADLINE
    with pytest.raises(ValueError):
        links.link_expiry(None, NOW)


def test_a_naive_expiry_or_an_empty_secret_is_a_programming_error():
    with pytest.raises(ValueError):
        links.sign(SECRET, RUN, STEP, "alice", DEADLINE.replace(tzinfo=None))
    with pytest.raises(ValueError):
        links.sign("", RUN, STEP, "alice", DEADLINE)
