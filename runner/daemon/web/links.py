"""Per-approver decision links: a signed token that opens one step's (or release's) decision page as one user.

Each notification of a wait carries, for each approver, a link whose token says
which run, which step, which user and until when. The token is an HMAC
(itsdangerous, SHA-256, compared in constant time) over those four values under
a daemon secret and a salt of its own, so a token made for anything else (a
session cookie, say) never passes here, and changing any of the four breaks it.

The expiry is written into the token and checked against the caller's clock
(not itsdangerous' wall-clock max_age), so tests of a four-hour deadline take no
time. Whether the step is still waiting is not known here: the page checks it,
and a link stops working once its step has ended because the page says so.

A release pending approval gets the same kind of link (`sign_release`: flow, tag,
user, expiry) under a salt of its own, so neither kind ever passes for the other.

The secret may be a list (oldest first, newest last): tokens are signed with the
newest and accepted under any, so a secret can be rotated without breaking the
links already sent.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

from itsdangerous import BadSignature, URLSafeSerializer

from runner.errors import Forbidden, Unauthorized
from runner.timeutil import rfc3339

SALT = "signoff.decision-link"  # ties a token to this one purpose
Secret = str | bytes | Sequence[str | bytes]


@dataclass(frozen=True)
class LinkGrant:
    """What a valid link permits: `user` may open and decide `step_id` of `run_id` until `expires_at`."""

    run_id: str
    step_id: str
    user: str
    expires_at: datetime


def link_expiry(deadline: datetime | None, now: datetime, max_age: timedelta | None = None) -> datetime:
    """When a link made `now` for a wait ending at `deadline` should expire: the deadline, or sooner by config.

    A wait has a deadline by contract (every approval has a timeout); `max_age` shortens it.
    """
    candidates = [moment for moment in (deadline, now + max_age if max_age is not None else None) if moment]
    if not candidates:
        raise ValueError("a decision link needs an expiry: the step's deadline or a maximum age")
    return min(candidates)


def sign(secret: Secret, run_id: str, step_id: str, user: str, expires_at: datetime) -> str:
    """A URL-safe token for `user` to decide `step_id` of `run_id`, valid until `expires_at`.

    The expiry is kept in whole seconds, rounded down: a link may end a moment early, never late.
    """
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must carry a time zone")
    expires = math.floor(expires_at.timestamp())
    return _serializer(secret).dumps([run_id, step_id, user, expires])


def verify(secret: Secret, token: str, now: datetime, *, run_id: str | None = None,
           step_id: str | None = None) -> LinkGrant:
    """The grant a token carries, if it was signed with `secret` and has not expired at `now`.

    A page passes the `run_id` and `step_id` of its own URL, so a link cannot open another
    run or step. Raises Unauthorized for a forged, malformed or expired token and Forbidden
    for a valid one that was made for another run or step.
    """
    grant = _verified(secret, SALT, token, now)
    if (run_id is not None and grant.run_id != run_id) or (step_id is not None and grant.step_id != step_id):
        raise Forbidden("this decision link was made for another step",
                        hint="use the link of the notification about this step, or sign in with your token")
    return grant


def _verified(secret: Secret, salt: str, token: str, now: datetime) -> LinkGrant:
    """The four values under a valid, unexpired token of `salt`'s purpose (Unauthorized otherwise)."""
    try:
        payload = _serializer(secret, salt).loads(token)
    except (BadSignature, UnicodeError, ValueError, TypeError):
        raise Unauthorized("this decision link is not valid",
                           hint="open the link exactly as it was sent, or sign in with your token") from None
    grant = _grant(payload)
    if now >= grant.expires_at:
        raise Unauthorized(f"this decision link expired at {rfc3339(grant.expires_at)}",
                           hint="sign in with your token, or ask for a new link")
    return grant


def _grant(payload: object) -> LinkGrant:
    # a payload under a valid signature was made by sign(); the shape check guards against an old format
    if (not isinstance(payload, list) or len(payload) != 4
            or not all(isinstance(value, str) and value for value in payload[:3])
            or not isinstance(payload[3], int) or isinstance(payload[3], bool)):
        raise Unauthorized("this decision link is not valid", hint="ask for a new link")
    run_id, step_id, user, expires = payload
    return LinkGrant(run_id, step_id, user, datetime.fromtimestamp(expires, timezone.utc))


def _serializer(secret: Secret, salt: str = SALT) -> URLSafeSerializer:
    keys = [secret] if isinstance(secret, (str, bytes)) else list(secret)
    if not keys or not all(keys):
        raise ValueError("a signed link needs a non-empty secret")
    return URLSafeSerializer(keys, salt=salt, signer_kwargs={"digest_method": hashlib.sha256})


RESOURCE_SALT = "signoff.resource-link"  # an artifact link never opens a decision page, nor the other way


@dataclass(frozen=True)
class ResourceGrant:
    """What a valid artifact link permits: open resource `sha256` of run `run_id` until `expires_at`."""

    run_id: str
    sha256: str
    expires_at: datetime


def sign_resource(secret: Secret, run_id: str, sha256: str, expires_at: datetime) -> str:
    """A URL-safe token that opens one artifact (a `res://` link in a notification) until `expires_at`."""
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must carry a time zone")
    return _serializer(secret, RESOURCE_SALT).dumps([run_id, sha256, math.floor(expires_at.timestamp())])


def verify_resource(secret: Secret, token: str, now: datetime) -> ResourceGrant:
    """The grant an artifact token carries; Unauthorized for a forged, malformed or expired one."""
    try:
        payload = _serializer(secret, RESOURCE_SALT).loads(token)
    except (BadSignature, UnicodeError, ValueError, TypeError):
        raise Unauthorized("this artifact link is not valid",
                           hint="open the link exactly as it was sent, or sign in with your token") from None
    if (not isinstance(payload, list) or len(payload) != 3 or not all(isinstance(v, str) and v for v in payload[:2])
            or not isinstance(payload[2], int) or isinstance(payload[2], bool)):
        raise Unauthorized("this artifact link is not valid", hint="ask for a new link")
    grant = ResourceGrant(payload[0], payload[1], datetime.fromtimestamp(payload[2], timezone.utc))
    if now >= grant.expires_at:
        raise Unauthorized(f"this artifact link expired at {rfc3339(grant.expires_at)}",
                           hint="sign in with your token to see the run's artifacts")
    return grant


RELEASE_SALT = "signoff.release-link"  # a release's link never opens a step, nor the other way round


@dataclass(frozen=True)
class ReleaseGrant:
    """What a valid release link permits: `user` may open and decide release `tag` of `flow` until `expires_at`."""

    flow: str
    tag: str
    user: str
    expires_at: datetime


def sign_release(secret: Secret, flow: str, tag: str, user: str, expires_at: datetime) -> str:
    """A URL-safe token for `user` to decide the release `tag` of `flow` pending approval, until `expires_at`.

    The same token as a step's (`sign`) under a salt of its own: a release has no deadline, so the
    caller gives the expiry (`server.link_max_age`, or a week).
    """
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must carry a time zone")
    return _serializer(secret, RELEASE_SALT).dumps([flow, tag, user, math.floor(expires_at.timestamp())])


def verify_release(secret: Secret, token: str, now: datetime) -> ReleaseGrant:
    """The grant a release token carries; Unauthorized for a forged, malformed or expired one (or a step's)."""
    grant = _verified(secret, RELEASE_SALT, token, now)
    return ReleaseGrant(grant.run_id, grant.step_id, grant.user, grant.expires_at)
