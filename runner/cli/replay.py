"""CLI: `signoff replay`, a recorded run (or a flow's recent runs) replayed against a draft, nothing executed."""

from __future__ import annotations

from typing import Any

import click

from runner.cli.app import Env, common, emit
from runner.errors import NotFound, UsageError
from runner.flows.load import find_flow_file, load_flow_bytes
from runner.flows.model import Flow
from runner.releases import repo as flow_sources
from runner.runs.replay import replay_recent, replay_run
from runner.status import RunStatus

DEFAULT_LAST = 10


@click.command()
@click.argument("run_id", metavar="[RUN]", required=False)
@click.option("--flow", "flow_name", metavar="FLOW", help="Replay the recent runs of this flow (with --last).")
@click.option("--ref", help="The draft: a branch, tag or commit (default: the working tree).")
@click.option("--last", type=click.IntRange(min=1), metavar="N",
              help=f"With --flow: how many of its latest ended runs [default: {DEFAULT_LAST}].")
@click.option("--drafts", "include_drafts", is_flag=True, help="With --flow: draft runs too, not only live ones.")
@common
def replay(run_id: str | None, flow_name: str | None, ref: str | None, last: int | None, include_drafts: bool,
           data, repo, config, as_json: bool) -> None:
    """Replay a recorded RUN (or --flow F --last N runs) against a draft, touching nothing in the world.

    The draft gets the recorded inputs, decisions, callback payloads and, for every shell, ssh, http
    and notify step whose rendered command, request or message is unchanged, the recorded outputs.
    A step that differs is not executed: it is shown with what it would run and assumed to succeed.
    Exit 0 if the draft reaches `succeeded` on every replayed run, 1 otherwise.

    JSON (RUN): {run, flow, recorded, draft, status, error, stopped_at, assumed, steps: [{step, kind,
    visit, verdict, status, old_status, error, rendered: {old, new}, outputs: {old, new}, would_run,
    assumed, fed}], counts}. JSON (--flow): {flow, draft, runs: [report...], summary: {runs, verdicts,
    statuses, recorded_statuses, outcome_changed, not_replayed}}.
    """
    if bool(run_id) == bool(flow_name):
        raise UsageError("give either a RUN or --flow FLOW", hint="signoff replay RUN --ref DRAFT, or "
                                                                 "signoff replay --flow FLOW --ref DRAFT --last N")
    if run_id and (last or include_drafts):
        raise UsageError("--last and --drafts go with --flow", hint="signoff replay --flow FLOW --last N")
    env = Env(data, repo, config)
    cfg = env.config()
    store = env.store()
    if run_id:
        flow_name = store.read_run(run_id)["flow"]
    draft, where = _draft(env, flow_name, ref, cfg)
    if run_id:
        report = replay_run(store, run_id, draft, config=cfg)
        report["draft"].update(where)
        emit(as_json, report, _human(report), exit_code=0 if report["status"] == RunStatus.SUCCEEDED else 1)
        return
    result = replay_recent(store, flow_name, draft, last=last or DEFAULT_LAST, config=cfg,
                           include_drafts=include_drafts)
    result = {"flow": result["flow"], "draft": {"file": draft.file, "flow_sha256": draft.sha256, **where},
              "runs": result["runs"], "summary": result["summary"]}
    ok = all(report["status"] == RunStatus.SUCCEEDED for report in result["runs"])
    emit(as_json, result, _human_recent(result), exit_code=0 if ok else 1)


def _draft(env: Env, flow: str, ref: str | None, cfg: Any) -> tuple[Flow, dict[str, Any]]:
    """The flow as it is on the draft (committed at `ref`, else in the working tree), validated."""
    if ref:
        try:
            source = flow_sources.at_ref(env.repo, ref, f"flows/{flow}.yaml")
        except NotFound as missing:
            try:
                source = flow_sources.at_ref(env.repo, ref, f"flows/{flow}.yml")
            except NotFound:
                raise missing from None
    else:
        source = flow_sources.working_tree(env.repo, find_flow_file(env.flows_dir, flow))
    parsed = load_flow_bytes(source.data, source.label, expect_name=flow, config=cfg)
    return parsed, {"ref": source.ref if ref else "working tree", "commit": source.commit}


def _human(report: dict[str, Any]) -> str:
    recorded = report["recorded"]
    lines = [f"replay of run {report['run']} ({report['flow']}, recorded {recorded['status']}) against "
             f"{report['draft'].get('ref') or report['draft']['file']}"]
    for entry in report["steps"]:
        if entry["status"] is None:  # removed: only the recording has it
            change = f"(recorded {entry['old_status']})"
        elif entry["old_status"] not in (None, entry["status"]):
            change = f"{entry['old_status']} -> {entry['status']}"
        else:
            change = entry["status"]
        line = f"  {entry['verdict']:<10} {entry['step']:<20} {entry['kind']:<9} {change}"
        if entry["assumed"]:
            line += " (assumed)"
        if entry["would_run"]:
            line += f"\n{'':13}would run: {entry['would_run']}"
        lines.append(line)
    if report.get("replay_error"):
        lines.append(f"  not replayed: {report['error']}")
        return "\n".join(lines)
    end = f"the draft would end {report['status']}"
    if report["stopped_at"]:
        end = f"the draft would wait at '{report['stopped_at']}' (no recorded answer); the replay stops there"
    elif report["error"]:
        end += f": {report['error']}"
    if report["assumed"]:
        end += f" (assuming {', '.join(report['assumed'])} succeed{'s' if len(report['assumed']) == 1 else ''})"
    return "\n".join(lines + [end])


def _human_recent(result: dict[str, Any]) -> str:
    if not result["runs"]:
        return f"no ended runs of {result['flow']} to replay"
    summary = result["summary"]
    blocks = [_human(report) for report in result["runs"]]
    counts = ", ".join(f"{count} {verdict}" for verdict, count in summary["verdicts"].items() if count)
    statuses = ", ".join(f"{count} {status}" for status, count in summary["statuses"].items())
    recorded = ", ".join(f"{count} {status}" for status, count in summary["recorded_statuses"].items())
    blocks.append(f"{summary['runs']} run(s) replayed: steps {counts or 'none'}; the draft would end {statuses} "
                  f"(recorded: {recorded})")
    return "\n\n".join(blocks)


def register(group: click.Group) -> None:
    group.add_command(replay)
