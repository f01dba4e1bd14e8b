"""Where an inspection command reads from: this machine's files, or a daemon's API. One document either way.

`runs list|show|verify`, `logs`, `resource get`, `releases` and `diff` ask a `Reader`; the
`LocalReader` reads the data directory and the repository, the `ApiReader` the daemon's
routes, and both hand back the same JSON documents, which the commands then print the
same way. Which one a command gets: the most explicit source wins.

    1. --server URL on the command line              the daemon's API
    2. --data DIR on the command line                the files in DIR
    3. SIGNOFF_SERVER                                the daemon's API
    4. SIGNOFF_DATA                                  the files there
    5. a config (--config / SIGNOFF_CONFIG)          its data directory when it exists here, else its daemon
    6. nothing                                       ./.signoff

A local read of runs that finds no data directory says so (exit 1) and how to point
at a daemon, instead of answering as if nothing had run.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO, Protocol

import click
from click.core import ParameterSource

from runner.cli.app import Env
from runner.cli.client import Client
from runner.errors import NotFound
from runner.releases.live import Resolver, drafts as live_drafts
from runner.releases.reports import diff_document, releases_document
from runner.runs.logs import step_logs
from runner.runs.store import RES_PREFIX, SHA256, Store

PAGE = 1000  # the most runs the daemon answers in one page of GET /api/v1/runs
RESOURCE_META_HEADER = "X-Signoff-Resource"


class Reader(Protocol):
    """The inspection documents, from wherever this reader reads."""

    def list_runs(self, *, flow: str | None, status: str | None, draft: bool | None, limit: int) -> list[dict]: ...

    def run(self, run_id: str) -> dict[str, Any]: ...

    def events(self, run_id: str) -> list[dict[str, Any]]: ...

    def verify(self, run_id: str) -> dict[str, Any]: ...

    def logs(self, run_id: str, step: str | None) -> dict[str, Any]: ...

    def resource_meta(self, ref: str) -> dict[str, Any]: ...

    def copy_resource(self, ref: str, out: BinaryIO) -> int: ...

    def releases(self, flow: str | None) -> dict[str, Any]: ...

    def diff(self, flow: str, ref: str | None) -> dict[str, Any]: ...

    def close(self) -> None: ...


class LocalReader:
    """The data directory and the repository on this machine."""

    def __init__(self, env: Env) -> None:
        self.env = env

    def _store(self) -> Store:
        if not self.env.data.is_dir():
            raise NotFound(f"no data directory at {self.env.data}: no run was recorded here",
                           hint="point --data / SIGNOFF_DATA at the data directory of the runs, or read them "
                                "through their daemon with --server URL (or SIGNOFF_SERVER) and SIGNOFF_TOKEN")
        return self.env.store()

    def list_runs(self, *, flow: str | None, status: str | None, draft: bool | None, limit: int) -> list[dict]:
        return self._store().list_runs(flow=flow, status=status, draft=draft, limit=limit)

    def run(self, run_id: str) -> dict[str, Any]:
        return self._store().read_run(run_id)

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return list(self._store().read_events(run_id))

    def verify(self, run_id: str) -> dict[str, Any]:
        return self._store().verify(run_id).to_dict()

    def logs(self, run_id: str, step: str | None) -> dict[str, Any]:
        store = self._store()
        return step_logs(store, store.read_run(run_id), step)

    def resource_meta(self, ref: str) -> dict[str, Any]:
        return self._store().resource_meta(ref)

    def copy_resource(self, ref: str, out: BinaryIO) -> int:
        return self._store().copy_resource(ref, out)

    def _resolver(self) -> Resolver:
        return Resolver(self.env.repo, self.env.release_state(),
                        config=self.env.config() if self.env.config_path else None)

    def releases(self, flow: str | None) -> dict[str, Any]:
        resolver = self._resolver()
        resolution = resolver.resolve()
        return releases_document(resolution, live_drafts(self.env.repo, resolution), resolver.state.history_by_flow(),
                                 flow=flow)

    def diff(self, flow: str, ref: str | None) -> dict[str, Any]:
        live = self._resolver().resolve().flows.get(flow)
        return diff_document(self.env.repo, live, flow, ref, self.env.repo)

    def close(self) -> None:
        pass


class ApiReader:
    """A daemon's API, as the user whose token the client holds: what they may not see is not there."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def _get(self, path: str, **params: Any) -> Any:
        return self.client.call("GET", path, params={k: v for k, v in params.items() if v is not None})[1]

    def list_runs(self, *, flow: str | None, status: str | None, draft: bool | None, limit: int) -> list[dict]:
        found: list[dict] = []
        before = None
        while len(found) < limit:
            page = self._get("/api/v1/runs", flow=flow, status=status, before=before,
                             draft=None if draft is None else str(draft).lower(), limit=min(PAGE, limit - len(found)))
            found += page["runs"]
            before = page.get("next")
            if not before:
                break
        return found[:limit]

    def run(self, run_id: str) -> dict[str, Any]:
        return self._get(f"/api/v1/runs/{_segment(run_id)}")

    def events(self, run_id: str) -> list[dict[str, Any]]:
        return self._get(f"/api/v1/runs/{_segment(run_id)}/events")["events"]

    def verify(self, run_id: str) -> dict[str, Any]:
        return self._get(f"/api/v1/runs/{_segment(run_id)}/verify")

    def logs(self, run_id: str, step: str | None) -> dict[str, Any]:
        return self._get(f"/api/v1/runs/{_segment(run_id)}/logs", step=step)

    def resource_meta(self, ref: str) -> dict[str, Any]:
        with self.client.stream("GET", f"/api/v1/resources/{_sha(ref)}") as response:
            return _meta_of(response.headers, ref)  # the headers alone: the bytes are left unread

    def copy_resource(self, ref: str, out: BinaryIO) -> int:
        size = 0
        with self.client.stream("GET", f"/api/v1/resources/{_sha(ref)}") as response:
            for chunk in response.iter_bytes():
                out.write(chunk)
                size += len(chunk)
        return size

    def releases(self, flow: str | None) -> dict[str, Any]:
        document = self._get("/api/v1/releases")
        document["flows"] = [entry for entry in document["flows"] if not flow or entry["flow"] == flow]
        return document

    def diff(self, flow: str, ref: str | None) -> dict[str, Any]:
        return self._get(f"/api/v1/flows/{_segment(flow, 'flow')}/diff", ref=ref)

    def close(self) -> None:
        self.client.close()


def reader(env: Env, server: str | None) -> Reader:
    """The reader for this command line (the order of the module's docstring)."""
    ctx = click.get_current_context(silent=True)

    def from_command_line(name: str) -> bool:
        return ctx is not None and ctx.get_parameter_source(name) is ParameterSource.COMMANDLINE

    if server and from_command_line("server"):
        return ApiReader(env.client(server))
    if env.data_given and from_command_line("data"):
        return LocalReader(env)
    if server:
        return ApiReader(env.client(server))
    if not env.data_given and env.config_path and env.daemon_url and not env.data.is_dir():
        return ApiReader(env.client(None))  # the config names a daemon, and its data directory is not here
    return LocalReader(env)


def _segment(value: str, what: str = "run") -> str:
    """A path segment as given, but one that cannot leave its route (`..`, `/`, `?`): NotFound, as for any
    name the daemon does not know."""
    if not value or value in (".", "..") or any(char in value for char in "/?#%\\"):
        raise NotFound(f"no {what} {value!r}")
    return value


def _sha(ref: str) -> str:
    sha = ref[len(RES_PREFIX):] if ref.startswith(RES_PREFIX) else ref
    if not SHA256.match(sha):
        raise NotFound(f"{ref!r} is not a resource reference", hint="resources look like res://<64 hex digits>")
    return sha


def _meta_of(headers: Any, ref: str) -> dict[str, Any]:
    """The metadata the daemon sent with a resource; what the response itself says, if it sent none."""
    try:
        meta = json.loads(headers.get(RESOURCE_META_HEADER) or "null")
    except ValueError:
        meta = None
    if isinstance(meta, dict):
        return meta
    return {"sha256": _sha(ref), "size": int(headers.get("content-length") or 0),
            "media_type": headers.get("content-type") or "application/octet-stream"}
