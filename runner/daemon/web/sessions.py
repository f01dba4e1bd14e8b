"""The web session: a signed cookie naming the user, and the CSRF tokens of its forms.

Signing in with a token (or through a decision link) issues a cookie value
signed with the daemon's secret (itsdangerous, SHA-256, its own salt). The value
is readable by whoever holds the cookie but cannot be changed; the cookie is
HttpOnly, SameSite=Strict and scoped to /ui, so page scripts never see it and
other sites never send it. Nothing is kept on the server: signing out deletes
the cookie, and a session ends at its expiry whatever the browser does.

A session opened by a decision link is `limited_to` that one (run, step): the
pages let it see and decide that step and nothing else, and it ends when the
link would have. A release's link limits its session to `release_scope(flow,
version)`, which no run id can equal (run ids have no colon), so it reaches that
release's page and form and no run at all.

Every form carries a CSRF token derived from the session's own random nonce
(HMAC-SHA256), checked in constant time: a page from another origin cannot know
it, and it changes with every sign-in. Times come from the caller's clock.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from itsdangerous import BadSignature, URLSafeSerializer

from runner.errors import Forbidden, Unauthorized

SALT = "signoff.session"  # a session value never passes as a decision link, nor the other way round
COOKIE_NAME = "signoff_session"
COOKIE_PATH = "/ui"
DEFAULT_MAX_AGE = timedelta(hours=12)
CSRF_FIELD = "csrf_token"  # the name of the hidden field in every form
Secret = str | bytes | Sequence[str | bytes]
RELEASE_SCOPE = "release:"


def release_scope(flow: str, version: str) -> tuple[str, str]:
    """The (run id, step id) stand-in a release link's session is limited to: `release:<flow>`, `<version>`."""
    return f"{RELEASE_SCOPE}{flow}", version.removeprefix("v")


@dataclass(frozen=True)
class Session:
    """A signed-in user; `limited_to` is the (run id, step id) a decision-link session may act on."""

    user: str
    csrf_nonce: str
    issued_at: datetime
    expires_at: datetime
    limited_to: tuple[str, str] | None = None

    def permits(self, run_id: str, step_id: str | None = None) -> bool:
        """Whether this session may see `run_id` (and act on `step_id`) at all; roles are checked elsewhere."""
        if self.limited_to is None:
            return True
        return self.limited_to[0] == run_id and step_id in (None, self.limited_to[1])


def issue(secret: Secret, user: str, now: datetime, *, max_age: timedelta = DEFAULT_MAX_AGE,
          limited_to: tuple[str, str] | None = None, expires_at: datetime | None = None) -> tuple[str, Session]:
    """A new session for `user` and its signed cookie value.

    It expires after `max_age`, or at `expires_at` when that is sooner (a decision link's expiry).
    """
    if not user:
        raise ValueError("a session needs a user")
    ends = now + max_age if expires_at is None else min(now + max_age, expires_at)
    session = Session(user=user, csrf_nonce=secrets.token_urlsafe(32), issued_at=_whole_seconds(now),
                      expires_at=_whole_seconds(ends), limited_to=tuple(limited_to) if limited_to else None)
    payload = {"u": session.user, "n": session.csrf_nonce, "i": _epoch(session.issued_at),
               "e": _epoch(session.expires_at)}
    if session.limited_to:
        payload["l"] = list(session.limited_to)
    return _serializer(secret).dumps(payload), session


def verify(secret: Secret, value: str | None, now: datetime, *, max_age: timedelta = DEFAULT_MAX_AGE) -> Session:
    """The session a cookie value carries. Raises Unauthorized if it is missing, forged or expired at `now`.

    `max_age` is checked again here, so shortening it in the config also ends older sessions.
    """
    if not value:
        raise Unauthorized("sign in to continue", hint="sign in with your token")
    try:
        payload = _serializer(secret).loads(value)
    except (BadSignature, UnicodeError, ValueError, TypeError):
        raise Unauthorized("your session is not valid; sign in again", hint="sign in with your token") from None
    session = _session(payload)
    if now >= session.expires_at or now >= session.issued_at + max_age:
        raise Unauthorized("your session has expired; sign in again", hint="sign in with your token")
    return session


def csrf_token(session: Session) -> str:
    """The token every form of this session carries in its `csrf_token` field."""
    return hmac.new(session.csrf_nonce.encode(), b"signoff.csrf", hashlib.sha256).hexdigest()


def check_csrf(session: Session, submitted: str | None) -> None:
    """Raise Forbidden unless `submitted` is this session's CSRF token (compared in constant time)."""
    if not submitted or not hmac.compare_digest(csrf_token(session).encode(), str(submitted).encode()):
        raise Forbidden("this form has expired or did not come from signoff; reload the page and try again")


def cookie_options(session: Session, now: datetime, *, secure: bool) -> dict[str, Any]:
    """Keyword arguments for starlette's `Response.set_cookie(COOKIE_NAME, value, **options)`.

    `secure` is true when the daemon is reached over https (its public_url says so).
    """
    return {"max_age": max(0, int((session.expires_at - now).total_seconds())), "path": COOKIE_PATH,
            "httponly": True, "samesite": "strict", "secure": secure}


def clearing_cookie_options(*, secure: bool) -> dict[str, Any]:
    """Keyword arguments for `Response.delete_cookie(COOKIE_NAME, **options)` on sign-out."""
    return {"path": COOKIE_PATH, "httponly": True, "samesite": "strict", "secure": secure}


def _session(payload: object) -> Session:
    # a payload under a valid signature was made by issue(); the shape check guards against an old format
    invalid = Unauthorized("your session is not valid; sign in again", hint="sign in with your token")
    if not isinstance(payload, dict):
        raise invalid
    user, nonce, limited = payload.get("u"), payload.get("n"), payload.get("l")
    if not (isinstance(user, str) and user and isinstance(nonce, str) and nonce):
        raise invalid
    if limited is not None and not (isinstance(limited, list) and len(limited) == 2
                                    and all(isinstance(part, str) and part for part in limited)):
        raise invalid
    try:
        issued_at, expires_at = _moment(payload.get("i")), _moment(payload.get("e"))
    except (TypeError, ValueError, OverflowError, OSError):
        raise invalid from None
    return Session(user=user, csrf_nonce=nonce, issued_at=issued_at, expires_at=expires_at,
                   limited_to=(limited[0], limited[1]) if limited else None)


def _moment(epoch: object) -> datetime:
    if not isinstance(epoch, int) or isinstance(epoch, bool):
        raise TypeError("not a time")
    return datetime.fromtimestamp(epoch, timezone.utc)


def _epoch(moment: datetime) -> int:
    return int(moment.timestamp())


def _whole_seconds(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc).replace(microsecond=0)


def _serializer(secret: Secret) -> URLSafeSerializer:
    keys = [secret] if isinstance(secret, (str, bytes)) else list(secret)
    if not keys or not all(keys):
        raise ValueError("a session needs a non-empty secret")
    return URLSafeSerializer(keys, salt=SALT, signer_kwargs={"digest_method": hashlib.sha256})
