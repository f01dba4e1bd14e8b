"""A small HTTP client for the daemon's API, used by the CLI.

The server comes from --server / SIGNOFF_SERVER (default http://127.0.0.1:8080)
and the token from SIGNOFF_TOKEN, or, for a daemon on this machine, from the
0600 token file the daemon wrote into the data directory.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import httpx

from runner import jsonvalue
from runner.auth import TOKEN_FILE
from runner.errors import (Conflict, Forbidden, Invalid, NotFound, SignoffError, TooLarge, Unauthorized,
                           UsageError)

DEFAULT_SERVER = "http://127.0.0.1:8080"
BY_STATUS = {401: Unauthorized, 403: Forbidden, 404: NotFound, 409: Conflict, 413: TooLarge, 422: Invalid}


def _is_local(server: str) -> bool:
    host = urlparse(server).hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_of(config_data: dict[str, Any]) -> str | None:
    """Where the daemon of a config listens, as the CLI on its machine reaches it (None: the default)."""
    server = config_data.get("server") or {}
    if not server:
        return None
    if server.get("public_url"):
        return str(server["public_url"])
    host = str(server.get("host", "127.0.0.1"))
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"http://{'[' + host + ']' if ':' in host else host}:{server.get('port', 8080)}"


class Client:
    def __init__(self, server: str | None, data_dir: Path, *, timeout: float = 40.0) -> None:
        self.server = (server or os.environ.get("SIGNOFF_SERVER") or DEFAULT_SERVER).rstrip("/")
        token = os.environ.get("SIGNOFF_TOKEN")
        self.token_source = "the environment variable SIGNOFF_TOKEN" if token else None
        if not token and _is_local(self.server) and (data_dir / TOKEN_FILE).is_file():
            token = (data_dir / TOKEN_FILE).read_text().strip()
            self.token_source = f"the token file {data_dir / TOKEN_FILE}"
        self.token = token
        self.http = httpx.Client(base_url=self.server, timeout=timeout,
                                 headers={"Authorization": f"Bearer {token}"} if token else {})

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: object) -> None:
        self.http.close()

    def call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any]:
        reason = jsonvalue.problem(kwargs.get("json"), "the request")
        if reason is not None:  # NaN, or text that is not Unicode (from the command line, say)
            raise UsageError(f"{reason}; it cannot be sent as JSON",
                             hint="numbers must be finite, and text valid Unicode (UTF-8)")
        try:
            response = self.http.request(method, path, **kwargs)
        except httpx.ConnectError:
            raise SignoffError(f"cannot reach the daemon at {self.server}",
                               hint="start it with `signoff serve`, or set --server / SIGNOFF_SERVER") from None
        except httpx.HTTPError as exc:
            raise SignoffError(f"{method} {self.server}{path}: {exc}") from None
        try:
            body = response.json()
        except ValueError:
            body = {"raw": response.text[:500]}
        if response.status_code >= 400:
            error = body.get("error", {}) if isinstance(body, dict) else {}
            kind = BY_STATUS.get(response.status_code, SignoffError)
            message = error.get("message") or f"HTTP {response.status_code}"
            if kind is Invalid:
                failure = Invalid(message, error.get("reasons"), hint=error.get("hint"), fields=error.get("fields"))
            elif kind is Unauthorized:
                failure = Unauthorized(message, hint=self._token_hint())
            else:
                failure = kind(message, hint=error.get("hint"))
            # the daemon's own answer, for callers that pass it on as it was (the MCP server's tool errors)
            failure.status, failure.answer = response.status_code, error  # type: ignore[attr-defined]
            raise failure
        return response.status_code, body

    def _token_hint(self) -> str:
        """Where the token the daemon refused came from, and how to give the right one."""
        if not self.token:
            return ("set SIGNOFF_TOKEN to your token (a daemon with no users writes its local token to "
                    "<data>/token on first start; point --data at that directory)")
        if self.token_source and self.token_source.startswith("the token file"):
            return (f"the token came from {self.token_source}, which the daemon at {self.server} does not "
                    "know: point --data / SIGNOFF_DATA at that daemon's data directory, or set SIGNOFF_TOKEN")
        return (f"the token came from {self.token_source}; the daemon at {self.server} knows no such token: "
                "set SIGNOFF_TOKEN to a token from its config")

    @contextlib.contextmanager
    def stream(self, method: str, path: str, **kwargs: Any) -> Iterator[httpx.Response]:
        """A response whose body is read as it comes (a resource's bytes, written as they arrive).

        A failure (no daemon there, an error status) is asked for once more through `call`,
        which turns it into the error every command reports.
        """
        try:
            with self.http.stream(method, path, **kwargs) as response:
                if response.status_code < 400:
                    yield response
                    return
        except httpx.HTTPError:
            pass  # `call` says what went wrong, as for any request
        self.call(method, path, **kwargs)
        raise SignoffError(f"{method} {self.server}{path} failed, and then did not", hint="try again")

    def close(self) -> None:
        self.http.close()
