"""CLI commands of the release model: releases, release, pin/unpin, yank/unyank, diff."""

from __future__ import annotations

import getpass
from contextlib import closing
from pathlib import Path
from typing import Any

import click

from runner.releases import changes as liveops
from runner.cli import render
from runner.cli.app import Env, common, emit, server_option
from runner.cli.client import Client, address_of
from runner.cli.remote import LocalReader, reader
from runner.errors import ConfigError, SignoffError, Unauthorized
from runner.yamldoc import DocumentError, read_file


def daemon_option(func):
    return click.option("--server", envvar="SIGNOFF_SERVER", metavar="URL",
                        help="Make the change through this daemon, with SIGNOFF_TOKEN [env: SIGNOFF_SERVER; default: "
                             "the config's daemon if it declares users, else the repository directly].")(func)


@click.command()
@click.option("--flow", help="Only this flow.")
@server_option
@common
def releases(flow, server, data, repo, config, as_json) -> None:
    """Live version of every flow: tag, commit, tagger, pins, yanks, refusals, drafts, history.

    JSON: {tagged, flows: [{flow, live: {tag, version, commit, tagger, date, message, scope} | null, pinned,
    yanked, refused: [{tag, commit, errors}], prereleases, removed, pending: [{flow, tag, version, commit,
    status, since, base, rule, authors, approvals, diff, validation, ...}], drafts: [{branch, commit}],
    history}], problems: [{tag, problem, message}], ignored_tags}.
    """
    with closing(reader(Env(data, repo, config), server)) as source:
        document = source.releases(flow)
    emit(as_json, document, render.releases(document["flows"], tagged=document["tagged"],
                                            problems=document["problems"]))


@click.command()
@click.argument("flow")
@click.argument("version")
@click.option("--ref", default="HEAD", show_default=True,
              help="Release the flow as committed here (through a daemon: in the daemon's repository).")
@click.option("--message", "-m", help="Why: the tag message (default: 'Release FLOW VERSION'), kept in the history.")
@click.option("--rollback", is_flag=True, help="Allow a version that is not higher than the live one.")
@daemon_option
@common
def release(flow, version, ref, message, rollback, server, data, repo, config, as_json) -> None:
    """Validate FLOW at REF, then create the annotated tag FLOW/vVERSION (and push it to the remote).

    Through the daemon when one is configured (needs the release role), else directly in the repository.
    Rollback is a new, higher tag on an older commit (`--ref <old commit>`); tags are never moved.
    JSON: {flow, tag, version, commit, pushed_to, push_error, previous, by, via, reason, at, live}.
    """
    env = Env(data, repo, config)
    liveops.parse_version(version)
    body = {"version": version, "ref": ref, "message": message, "rollback": rollback}
    document = _change_live("release", flow, body, env, server)
    if document["via"] == "repository" and document.get("push_error"):
        raise SignoffError(document["push_error"], hint=f"push it yourself: git push <remote> {document['tag']}")
    pushed, previous = document.get("pushed_to"), document.get("previous")
    human = (f"released {document['tag']} at {document['commit'][:12]}" + (f", pushed to {pushed}" if pushed else "")
             + (f" (was {previous})" if previous else ""))
    if document.get("push_error"):
        human += f"\nwarning: {document['push_error']}"
    if any(item["tag"] == document["tag"] for item in (document.get("live") or {}).get("pending") or []):
        live = ((document.get("live") or {}).get("live") or {}).get("tag") or "nothing"
        human += f"\npending approval (signoff-release.yaml): live stays {live} until it is approved"
    emit(as_json, document, human + render.how_changed(document))


def _change_live(change: str, flow: str, body: dict[str, Any], env: Env, server: str | None) -> dict[str, Any]:
    """A change of what is live through the daemon when one is configured, else on the repository directly.

    A daemon is configured by --server / SIGNOFF_SERVER, or by a config that declares users (their daemon
    decides who may change what is live: without a token such a config refuses, never works around it).
    """
    declared = _declared_config(env)
    if server or declared.get("users"):
        with Client(server or address_of(declared), env.data) as client:
            if not client.token:
                why = (f"{env.config_path} declares users, so a change of what is live goes through its daemon"
                       f" at {client.server} and" if declared.get("users")
                       else f"a change of what is live through the daemon at {client.server}")
                raise Unauthorized(f"{why} needs a user's token; none was given",
                                   hint="set SIGNOFF_TOKEN to your token (and --server / SIGNOFF_SERVER if the daemon "
                                        "listens elsewhere)")
            fields = {key: value for key, value in body.items() if value is not None}
            _, answer = client.call("POST", f"/api/v1/flows/{flow}/{change}", json=fields)
            return {**answer, "server": client.server}
    cfg = env.config() if env.config_path else None
    actor = liveops.Actor(getpass.getuser(), "repository", body.get("reason") or body.get("message"))
    fields = liveops.request_fields(change, {k: v for k, v in body.items() if v is not None})
    document = liveops.apply(change, env.repo, env.release_state(), flow, fields, actor, config=cfg)
    return {**document, "repository": str(env.repo), "data": str(env.data)}


def _declared_config(env: Env) -> dict[str, Any]:
    """The config file as written (secrets unresolved: the CLI may not hold the daemon's)."""
    if not env.config_path:
        return {}
    try:
        plain = read_file(Path(env.config_path)).plain
    except DocumentError as exc:
        raise ConfigError(str(exc.problem)) from None
    return plain if isinstance(plain, dict) else {}


def _override(kind: str, flow: str, version: str | None, reason: str | None, server: str | None, env: Env,
              as_json: bool) -> None:
    document = _change_live(kind, flow, {"version": version, "reason": reason}, env, server)
    live = document.get("live") or {}
    now = (live.get("live") or {}).get("tag") or "nothing"
    emit(as_json, document,
         f"{kind} {flow}{' ' + version if version else ''}: live is now {now}" + render.how_changed(document))


@click.command()
@click.argument("flow")
@click.argument("version")
@click.option("--reason", "-m", help="Why (kept in the history).")
@daemon_option
@common
def pin(flow, version, reason, server, data, repo, config, as_json) -> None:
    """Emergency override: keep FLOW at VERSION until `signoff unpin` (admin).

    JSON: {flow, overrides, live, by, via, reason, at}."""
    _override("pin", flow, version, reason, server, Env(data, repo, config), as_json)


@click.command()
@click.argument("flow")
@click.option("--reason", "-m", help="Why (kept in the history).")
@daemon_option
@common
def unpin(flow, reason, server, data, repo, config, as_json) -> None:
    """Lift a pin (admin). JSON: {flow, overrides, live, by, via, reason, at}."""
    _override("unpin", flow, None, reason, server, Env(data, repo, config), as_json)


@click.command()
@click.argument("flow")
@click.argument("version")
@click.option("--undo", is_flag=True, help="Lift the yank.")
@click.option("--reason", "-m", help="Why (kept in the history).")
@daemon_option
@common
def yank(flow, version, undo, reason, server, data, repo, config, as_json) -> None:
    """Emergency override: never use FLOW VERSION (the next lower valid one goes live) (admin).

    JSON: {flow, overrides, live, by, via, reason, at}."""
    _override("unyank" if undo else "yank", flow, version, reason, server, Env(data, repo, config), as_json)


@click.command()
@click.argument("flow")
@click.option("--ref", help="The draft: a branch, tag or commit (default: the working tree; through a daemon, "
                            "its repository's).")
@server_option
@common
def diff(flow, ref, server, data, repo, config, as_json) -> None:
    """Unified diff of a draft of FLOW against its live version, and the steps that changed.

    JSON: {flow, live: {tag, commit} | null, draft: {ref, commit}, diff, steps: {added, removed, changed}}.
    """
    with closing(reader(Env(data, repo, config), server)) as source:
        document = source.diff(flow, ref)
    emit(as_json, document, diff_text(document))


def diff_document(env: Env, flow: str, ref: str | None) -> tuple[dict[str, Any], str]:
    """`diff`'s JSON document and its text, from this machine's repository and data (for callers holding an Env)."""
    document = LocalReader(env).diff(flow, ref)
    return document, diff_text(document)


def diff_text(document: dict[str, Any]) -> str:
    """A diff document for a person: the unified diff, then the steps that changed."""
    summary = document["steps"]
    human = document["diff"] or "no difference\n"
    if any(summary.values()):
        return human + "steps: " + ", ".join(f"{k} {', '.join(v)}" for k, v in summary.items() if v)
    return human + "steps: unchanged"


def release_decision_command(name: str, decision: str, summary: str) -> click.Command:
    """`release-approve` / `release-reject`: a decision on a release pending approval, through the daemon."""

    @click.command(name, help=summary + "\n\nJSON: {flow, tag, version, decision, status, final, release, live}.")
    @click.argument("flow")
    @click.argument("version")
    @click.option("--comment", "-m", help="Why (kept in the release history).")
    @server_option
    @common
    def command(flow, version, comment, server, data, repo, config, as_json) -> None:
        env = Env(data, repo, config)
        with env.client(server) as client:
            _, answer = client.call("POST", f"/api/v1/releases/{flow}/v{version.removeprefix('v')}/decision",
                                    json={"decision": decision, "comment": comment})
        live = ((answer.get("live") or {}).get("live") or {}).get("tag") or "nothing"
        state = {"pending": "recorded; more approvals needed", "approved": "approved",
                 "rejected": "rejected: it will never go live"}.get(answer["status"], answer["status"])
        emit(as_json, answer, f"{decision} {flow} {answer['tag']}: {state}; live is {live}")

    return command


release_approve = release_decision_command("release-approve", "approve",
                                           "Approve a release pending approval (FLOW VERSION, e.g. deploy 1.2.0).")
release_reject = release_decision_command("release-reject", "reject",
                                          "Reject a release pending approval: it is recorded and never goes live.")


def register(group: click.Group) -> None:
    for command in (releases, release, pin, unpin, yank, diff, release_approve, release_reject):
        group.add_command(command)
