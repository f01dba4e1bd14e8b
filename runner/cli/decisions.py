"""CLI commands that answer a waiting step: pending, approve, reject, request-changes, callback."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import click

from runner.cli import render
from runner.cli.app import Env, common, emit, server_option
from runner.cli.client import Client
from runner.flows.inputs import parse_pairs

VERBS = {"approve": "approved", "reject": "rejected", "request_changes": "requested changes on"}


def _decide(decision: str, run_id: str, step: str, comment: str | None, pairs: tuple[str, ...], context_sha256,
            server, data, repo, config, as_json: bool) -> None:
    env = Env(data, repo, config)
    body = {"decision": decision, "comment": comment, "inputs": parse_pairs(pairs) if pairs else {},
            "context_sha256": context_sha256}
    with env.client(server) as client:
        _, answer = client.call("POST", f"/api/v1/runs/{run_id}/steps/{step}/decision", json=body)
    state = "decided" if answer["final"] else "recorded; more approvals needed"
    emit(as_json, answer, f"{VERBS[decision]} {run_id} / {step} ({state}); run is {answer['run']['status']}")


def decision_command(name: str, decision: str, summary: str) -> click.Command:
    """One decision's command: the three differ only in their name, their decision and their help."""

    @click.command(name, help=summary + "\n\nJSON: {accepted, final, decision, run}.")
    @click.argument("run_id")
    @click.argument("step")
    @click.option("--comment", "-m", help="Why (some steps require it).")
    @click.option("-i", "--input", "pairs", multiple=True, metavar="KEY=VALUE", help="A reviewer input (repeatable).")
    @click.option("--context-sha256", help="The context hash you reviewed; refused if the context changed since.")
    @server_option
    @common
    def command(run_id, step, comment, pairs, context_sha256, server, data, repo, config, as_json) -> None:
        _decide(decision, run_id, step, comment, pairs, context_sha256, server, data, repo, config, as_json)

    return command


approve = decision_command("approve", "approve", "Approve a waiting approval step.")
reject = decision_command("reject", "reject",
                          "Reject a waiting approval step (the run goes to on_reject, or ends rejected).")
request_changes = decision_command("request-changes", "request_changes",
                                   "Send a step back: the run reruns from the step's rewind_to, with your comment.")


@click.command()
@server_option
@common
def pending(server, data, repo, config, as_json) -> None:
    """Approvals waiting for me. JSON: {user, pending: [{run, flow, step, started_by, context, context_sha256,
    deadline, approvals, min_approvals, links, reviewer_inputs, require_comment, rewind_to, url}]}."""
    with Env(data, repo, config).client(server) as client:
        _, answer = client.call("GET", "/api/v1/pending")
    emit(as_json, answer, render.pending(answer["user"], answer["pending"]))


class Body(click.ParamType):
    """`--data`: a JSON text, `@FILE` to read it from a file, or `@-` from stdin; the value is the bytes."""

    name = "JSON|@FILE"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> bytes:
        if isinstance(value, bytes):
            return value
        if not value.startswith("@"):
            return os.fsencode(value)  # the bytes given, even those that are not UTF-8
        if value == "@-":
            return click.get_binary_stream("stdin").read()
        try:
            return Path(value[1:]).read_bytes()
        except OSError as exc:
            self.fail(f"cannot read {value[1:]!r}: {exc.strerror}.", param, ctx)


@click.command()
@click.argument("target")
@click.option("--data", "payload", required=True, type=Body(),
              help="The JSON body, or @FILE to read it from a file (@- from stdin).")
@click.option("--json", "as_json", is_flag=True, help="Accepted for symmetry: the answer is always JSON.")
@server_option
def callback(target, payload, as_json, server) -> None:
    """Post a callback to a URL or token (as an external worker would).

    JSON: the daemon's answer {accepted, replay, run, step, sha256, at, bytes, status}; exit 0 for 200/202.
    """
    url = target if "://" in target else None
    token = target.rstrip("/").rsplit("/", 1)[-1]
    with Client(url.rsplit("/callbacks/", 1)[0] if url else server, Path(".")) as client:
        status, answer = client.call("POST", f"/callbacks/{token}", content=payload,
                                     headers={"Content-Type": "application/json"})
    click.echo(json.dumps({**answer, "status": status}, indent=2))


def register(group: click.Group) -> None:
    for command in (approve, reject, request_changes, pending, callback):
        group.add_command(command)
