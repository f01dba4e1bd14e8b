"""runner.daemon.web.sessions: the signed session cookie and the CSRF token of every form."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from starlette.responses import Response

from runner.daemon.web import links, sessions
from runner.errors import Forbidden, Unauthorized

SECRET = "daemon-secret-for-sessions"
NOW = datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)


def test_a_session_round_trips_through_its_cookie_value():
    value, session = sessions.issue(SECRET, "alice", NOW)
    again = sessions.verify(SECRET, value, NOW + timedelta(hours=1))
    assert again == session
    assert again.user == "alice" and again.limited_to is None
    assert again.expires_at == NOW + sessions.DEFAULT_MAX_AGE


def test_a_session_ends_at_its_max_age_and_a_shorter_max_age_ends_older_sessions():
    value, _ = sessions.issue(SECRET, "alice", NOW, max_age=timedelta(hours=2))
    sessions.verify(SECRET, value, NOW + timedelta(minutes=119), max_age=timedelta(hours=2))
    with pytest.raises(Unauthorized, match="expired"):
        sessions.verify(SECRET, value, NOW + timedelta(hours=2), max_age=timedelta(hours=2))
    with pytest.raises(Unauthorized, match="expired"):
        sessions.verify(SECRET, value, NOW + timedelta(minutes=31), max_age=timedelta(minutes=30))


@pytest.mark.parametrize("value", [None, "", "garbage", "eyJ1IjoiYWxpY2UifQ.forged"])
def test_a_missing_or_forged_session_is_unauthorized(value):
    with pytest.raises(Unauthorized):
        sessions.verify(SECRET, value, NOW)


def test_a_session_cannot_be_edited_or_signed_elsewhere():
    value, _ = sessions.issue(SECRET, "alice", NOW)
    payload, signature = value.rsplit(".", 1)
    bob_value, _ = sessions.issue(SECRET, "bob", NOW)
    with pytest.raises(Unauthorized):
        sessions.verify(SECRET, bob_value.rsplit(".", 1)[0] + "." + signature, NOW)
    with pytest.raises(Unauthorized):
        sessions.verify("another-secret", value, NOW)
    link = links.sign(SECRET, "r", "s", "alice", NOW + timedelta(hours=1))
    with pytest.raises(Unauthorized):
        sessions.verify(SECRET, link, NOW)


def test_a_decision_link_session_is_limited_to_its_step_and_ends_with_the_link():
    link_expiry = NOW + timedelta(minutes=20)
    value, session = sessions.issue(SECRET, "alice", NOW, limited_to=("run-1", "review"), expires_at=link_expiry)
    again = sessions.verify(SECRET, value, NOW)
    assert again.limited_to == ("run-1", "review")
    assert again.permits("run-1") and again.permits("run-1", "review")
    assert not again.permits("run-1", "deploy") and not again.permits("run-2")
    assert sessions.Session("bob", "n", NOW, NOW).permits("any-run", "any-step")
    with pytest.raises(Unauthorized, match="expired"):
        sessions.verify(SECRET, value, link_expiry)


def test_csrf_tokens_belong_to_one_session():
    _, alice = sessions.issue(SECRET, "alice", NOW)
    _, alice_again = sessions.issue(SECRET, "alice", NOW)
    token = sessions.csrf_token(alice)
    assert token == sessions.csrf_token(alice) and len(token) == 64
    sessions.check_csrf(alice, token)
    for wrong in (None, "", token[:-1], token.upper(), sessions.csrf_token(alice_again)):
        with pytest.raises(Forbidden):
            sessions.check_csrf(alice, wrong)
    assert alice.csrf_nonce not in token  # the form never shows the nonce the cookie carries


def test_the_cookie_is_httponly_samesite_strict_and_scoped_to_the_pages():
    value, session = sessions.issue(SECRET, "alice", NOW, max_age=timedelta(hours=1))
    response = Response()
    response.set_cookie(sessions.COOKIE_NAME, value, **sessions.cookie_options(session, NOW, secure=True))
    header = response.headers["set-cookie"]
    assert header.startswith(f"{sessions.COOKIE_NAME}={value};")
    for part in ("HttpOnly", "SameSite=strict", "Path=/ui", "Max-Age=3600", "Secure"):
        assert part.lower() in header.lower(), header
    cleared = Response()
    cleared.delete_cookie(sessions.COOKIE_NAME, **sessions.clearing_cookie_options(secure=False))
    assert "max-age=0" in cleared.headers["set-cookie"].lower()
    assert "secure" not in cleared.headers["set-cookie"].lower()
