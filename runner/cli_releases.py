"""CLI commands of the release model: releases, release, pin/unpin, yank/unyank, diff."""

from __future__ import annotations

import difflib
from typing import Any

import click
import semver

from runner import render
from runner.cli import Env, cli, common, emit
from runner.errors import FlowInvalid, NotFound, UsageError
from runner.flowfile import check_bytes
from runner.live import Resolver
from runner.releases import FlowRepo
from runner.yamldoc import parse_bytes


def _resolver(env: Env) -> Resolver:
    cfg = env.config() if env.config_path else None
    return Resolver(env.repo, env.data, config=cfg)


@cli.command()
@click.option("--flow", help="Only this flow.")
@common
def releases(flow, data, repo, config, as_json) -> None:
    """Live version of every flow: tag, commit, tagger, pins, yanks, refusals, drafts, history.

    JSON: {tagged, flows: [{flow, live: {tag, version, commit, tagger, date, message, scope} | null, pinned,
    yanked, refused: [{tag, commit, errors}], prereleases, removed, drafts: [{branch, commit}], history}],
    problems: [{tag, problem, message}], ignored_tags}.
    """
    env = Env(data, repo, config)
    resolver = _resolver(env)
    resolution = resolver.resolve()
    document = resolution.to_dict()
    drafts = _drafts(env, {name: f.release.commit if f.release else None for name, f in resolution.flows.items()})
    document["flows"] = [f for f in document["flows"] if not flow or f["flow"] == flow]
    history = resolver.state.history_by_flow()
    for entry in document["flows"]:
        entry["drafts"] = drafts.get(entry["flow"], [])
        entry["history"] = history.get(entry["flow"], [])[-20:]
    rows = []
    for entry in document["flows"]:
        live = entry["live"]
        note = []
        if entry["pinned"]:
            note.append(f"PINNED {entry['pinned']}")
        if entry["yanked"]:
            note.append("yanked " + ",".join(entry["yanked"]))
        if entry["refused"]:
            note.append("refused " + ",".join(r["tag"] for r in entry["refused"]))
        if entry["removed"]:
            note.append("removed in the newest release")
        if entry["drafts"]:
            note.append("drafts: " + ",".join(d["branch"] for d in entry["drafts"]))
        rows.append([entry["flow"], live["tag"] if live else "-", live["commit"][:12] if live else "",
                     (live.get("tagger") or "").split(" <")[0] if live else "", (live.get("date") or "")[:10] if live
                     else "", "; ".join(note)])
    human = render.table(rows, ["FLOW", "LIVE", "COMMIT", "TAGGER", "DATE", "NOTES"]) if rows else "no flows released"
    if not resolution.tagged:
        human += "\n(no release tags yet: tag v1.0.0, or `signoff release FLOW 1.0.0`)"
    for problem in resolution.problems:
        human += f"\nwarning: {problem['message']}"
    for entry in document["flows"]:
        for refused in entry["refused"]:
            first = refused["errors"][0] if refused["errors"] else {}
            human += f"\nrefused {refused['tag']}: {first.get('file', '')}:{first.get('line', '')}: {first.get('message', '')}"
    emit(as_json, document, human)


def _drafts(env: Env, live_commits: dict[str, str | None]) -> dict[str, list[dict[str, str]]]:
    """Branches whose version of a flow differs from the live one."""
    drafts: dict[str, list[dict[str, str]]] = {}
    listings: dict[str, dict[str, str]] = {}
    with FlowRepo(env.repo) as repo:

        def blobs(commit: str) -> dict[str, str]:
            if commit not in listings:
                listings[commit] = repo.flow_blobs(commit)
            return listings[commit]

        live_blobs = {name: blobs(commit).get(name) if commit else None for name, commit in live_commits.items()}
        for branch, commit in repo.refs().branches.items():
            for name, blob in blobs(commit).items():
                if blob != live_blobs.get(name):
                    drafts.setdefault(name, []).append({"branch": branch, "commit": commit})
    return drafts


@cli.command()
@click.argument("flow")
@click.argument("version")
@click.option("--ref", default="HEAD", show_default=True, help="Release the flow as committed here.")
@click.option("--message", "-m", help="The tag message (default: 'Release FLOW VERSION').")
@click.option("--rollback", is_flag=True, help="Allow a version that is not higher than the live one.")
@common
def release(flow, version, ref, message, rollback, data, repo, config, as_json) -> None:
    """Validate FLOW at REF, then create the annotated tag FLOW/vVERSION (and push it to the remote).

    Rollback is a new, higher tag on an older commit (`--ref <old commit>`); tags are never moved.
    JSON: {flow, tag, version, commit, pushed_to, previous}.
    """
    env = Env(data, repo, config)
    try:
        wanted = semver.Version.parse(version.removeprefix("v"))
    except ValueError:
        raise UsageError(f"{version!r} is not a semantic version", hint="write e.g. 1.4.0") from None
    tag = f"{flow}/v{wanted}"
    cfg = env.config() if env.config_path else None
    with FlowRepo(env.repo) as git_repo:
        full, commit = git_repo.resolve(ref)
        source = git_repo.flow_file(commit, flow)
        if source is None:
            raise NotFound(f"flows/{flow}.yaml does not exist at {full} ({commit[:12]})")
        report = check_bytes(source, f"flows/{flow}.yaml@{full}", expect_name=flow, config=cfg)
        if not report.ok:
            raise FlowInvalid(f"flows/{flow}.yaml at {full} is invalid; nothing was tagged\n"
                              + "\n".join(str(p) for p in report.errors), report.errors)
    current = _resolver(env).resolve().flows.get(flow)
    previous = current.release if current else None
    if previous and wanted <= previous.version and not rollback:
        raise UsageError(f"{tag} is not higher than the live {previous.tag}",
                         hint="pick a higher version (a rollback is a higher tag on an older commit), "
                              "or pass --rollback")
    with FlowRepo(env.repo) as git_repo:
        git_repo.create_tag(tag, commit, message or f"Release {flow} {wanted}")
        pushed = git_repo.push_tag(tag)
    document = {"flow": flow, "tag": tag, "version": str(wanted), "commit": commit, "pushed_to": pushed,
                "previous": previous.tag if previous else None}
    emit(as_json, document, f"released {tag} at {commit[:12]}" + (f", pushed to {pushed}" if pushed else "")
         + (f" (was {previous.tag})" if previous else ""))


def _override(kind: str, flow: str, version: str | None, env: Env, as_json: bool) -> None:
    if kind == "pin":
        known = _resolver(env).resolve(record=False).flows.get(flow)
        if known is None or version.removeprefix("v") not in known.versions:
            raise NotFound(f"{flow} has no release {version}",
                           hint=f"its releases: {', '.join(known.versions) if known else 'none'}")
        verdict = _resolver(env).verdict_for(flow, version) or {}
        if not verdict.get("ok"):
            first = (verdict.get("errors") or [{}])[0]
            raise UsageError(f"{flow} {version} was refused, so it cannot be pinned: {first.get('message', '')}",
                             hint="pin a release that passed validation")
    overrides = _resolver(env).set_override(kind, flow, version)
    resolution = _resolver(env).resolve()
    live = resolution.flows.get(flow)
    document = {"flow": flow, "overrides": overrides, "live": live.to_dict() if live else None}
    now = live.release.tag if live and live.release else "nothing"
    emit(as_json, document, f"{kind} {flow}{' ' + version if version else ''}: live is now {now}")


@cli.command()
@click.argument("flow")
@click.argument("version")
@common
def pin(flow, version, data, repo, config, as_json) -> None:
    """Emergency override: keep FLOW at VERSION until `signoff unpin`. JSON: {flow, overrides, live}."""
    _override("pin", flow, version, Env(data, repo, config), as_json)


@cli.command()
@click.argument("flow")
@common
def unpin(flow, data, repo, config, as_json) -> None:
    """Lift a pin. JSON: {flow, overrides, live}."""
    _override("unpin", flow, None, Env(data, repo, config), as_json)


@cli.command()
@click.argument("flow")
@click.argument("version")
@click.option("--undo", is_flag=True, help="Lift the yank.")
@common
def yank(flow, version, undo, data, repo, config, as_json) -> None:
    """Emergency override: never use FLOW VERSION (the next lower valid one goes live). JSON: {flow, overrides, live}."""
    _override("unyank" if undo else "yank", flow, version, Env(data, repo, config), as_json)


def step_summary(old: dict[str, Any], new: dict[str, Any]) -> dict[str, list[str]]:
    before = {s.get("id"): s for s in (old.get("steps") or []) if isinstance(s, dict)}
    after = {s.get("id"): s for s in (new.get("steps") or []) if isinstance(s, dict)}
    return {"added": [s for s in after if s not in before], "removed": [s for s in before if s not in after],
            "changed": [s for s in after if s in before and after[s] != before[s]]}


@cli.command()
@click.argument("flow")
@click.option("--ref", help="The draft: a branch, tag or commit (default: the working tree).")
@common
def diff(flow, ref, data, repo, config, as_json) -> None:
    """Unified diff of a draft of FLOW against its live version, and the steps that changed.

    JSON: {flow, live: {tag, commit} | null, draft: {ref, commit}, diff, steps: {added, removed, changed}}.
    """
    env = Env(data, repo, config)
    live = _resolver(env).resolve().flows.get(flow)
    with FlowRepo(env.repo) as git_repo:
        old = (git_repo.flow_file(live.release.commit, flow) or b"") if live and live.release else b""
        if ref:
            full, commit = git_repo.resolve(ref)
            new = git_repo.flow_file(commit, flow) or b""
        else:
            path = env.flows_dir / f"{flow}.yaml"
            full, commit = "working tree", None
            new = path.read_bytes() if path.exists() else b""
    if not old and not new:
        raise NotFound(f"flow {flow} is neither live nor in the draft")
    label_old = f"live {live.release.tag}" if live and live.release else "live (none)"
    lines = list(difflib.unified_diff(old.decode(errors="replace").splitlines(keepends=True),
                                      new.decode(errors="replace").splitlines(keepends=True),
                                      fromfile=f"flows/{flow}.yaml ({label_old})", tofile=f"flows/{flow}.yaml ({full})"))
    summary = step_summary(_plain(old), _plain(new))
    document = {"flow": flow, "live": {"tag": live.release.tag, "commit": live.release.commit}
                if live and live.release else None, "draft": {"ref": full, "commit": commit},
                "diff": "".join(lines), "steps": summary}
    human = "".join(lines) or "no difference\n"
    human += "steps: " + ", ".join(f"{k} {', '.join(v)}" for k, v in summary.items() if v) if any(summary.values()) \
        else "steps: unchanged"
    emit(as_json, document, human)


def _plain(data: bytes) -> dict[str, Any]:
    if not data:
        return {}
    try:
        plain = parse_bytes(data, "flow").plain
    except Exception:  # a broken draft still gets a text diff
        return {}
    return plain if isinstance(plain, dict) else {}


