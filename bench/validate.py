"""`signoff validate` over 500 generated flow files.

TARGET: `signoff validate <dir> --json` on 500 flows (5-30 steps each) finishes
in under 5 s as a real subprocess (wall time, Python start-up included), and
reports every flow ok.
Also reported (no target): the in-process `check_file` loop over the same
files, and the CLI's fixed cost (the same command on an empty directory).

The flows are varied and valid: shell, set, wait and http steps; inputs of
every type with defaults, enums and required flags; triggers; flow and step
env; expressions reading inputs, run and earlier steps; `if`, retries,
timeouts and `on_error` jumps. The generator is seeded, so every run checks the
same files.

Run: .venv/bin/python bench/validate.py [--flows N] [--breakdown | --profile]
  --breakdown  skip the CLI; time each phase of check_file over the same files
               (YAML alias-count pass, YAML round-trip load, schema, meaning, Flow)
  --profile    skip the CLI; cProfile check_file over the first 100 flows, print the top functions
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml as pyyaml

from runner.flows.load import check_file, expand_paths

TARGET_SECONDS = 5.0
FLOWS = 500
MIN_STEPS, MAX_STEPS = 5, 30
SEED = 20261125
PROFILE_FLOWS = 100


def make_inputs(rng: random.Random) -> dict:
    inputs: dict = {}
    for index in range(rng.randint(0, 4)):
        kind = rng.choice(["string", "number", "integer", "boolean"])
        name = f"{kind[:3]}_{index}"
        spec: dict = {"type": kind, "description": f"the {kind} input number {index}"}
        if kind == "string":
            if rng.random() < 0.3:
                spec["enum"] = ["eu", "us", "ap"]
                spec["default"] = "eu"
            elif rng.random() < 0.5:
                spec["required"] = True
            else:
                spec["default"] = "main"
        elif kind == "number":
            spec["default"] = round(rng.uniform(0, 100), 2)
        elif kind == "integer":
            spec["default"] = rng.randint(1, 10)
        else:
            spec["default"] = rng.random() < 0.5
        inputs[name] = spec
    return inputs


def input_expr(rng: random.Random, inputs: dict) -> str:
    if not inputs:
        return rng.choice(["run.started_by", "run.id", "run.flow"])
    name = rng.choice(list(inputs))
    kind = inputs[name]["type"]
    if kind in ("number", "integer"):
        return f"inputs.{name} * {rng.randint(2, 9)}"
    if kind == "boolean":
        return f"'yes' if inputs.{name} else 'no'"
    return f"inputs.{name} | upper"


def make_step(rng: random.Random, index: int, ids: list[str], kinds: list[str], inputs: dict) -> dict:
    kind = kinds[index]
    step: dict = {"id": ids[index], "kind": kind}
    if rng.random() < 0.3:
        step["name"] = f"{kind} step {index}"
    earlier = [i for i in range(index) if kinds[i] in ("shell", "set", "http")]
    prev_ref = None
    if earlier:
        j = rng.choice(earlier)
        prev_ref = {"shell": f"steps.{ids[j]}.outputs.stdout", "set": f"steps.{ids[j]}.outputs.value",
                    "http": f"steps.{ids[j]}.outputs.status"}[kinds[j]]
    if kind == "shell":
        parts = [f"echo step {index}", f"${{{{ {input_expr(rng, inputs)} }}}}"]
        if prev_ref:
            parts.append(f"${{{{ {prev_ref} }}}}")
        step["run"] = " ".join(parts)
        if rng.random() < 0.3:
            step["run"] += "\nprintf '{\"ok\": true}'"
            step["output"] = "json"
        step["timeout"] = rng.choice(["30s", "5m", "1h"])
        if rng.random() < 0.4:
            step["env"] = {"STEP_INDEX": str(index), "WHO": "${{ run.started_by }}"}
    elif kind == "set":
        values = {"value": f"${{{{ {input_expr(rng, inputs)} }}}}", "index": index}
        if prev_ref:
            values["previous"] = f"${{{{ {prev_ref} }}}}"
        if rng.random() < 0.5:
            values["label"] = f"flow ${{{{ run.flow }}}} step {index}"
        step["values"] = values
    elif kind == "wait":
        if rng.random() < 0.7:
            step["duration"] = rng.choice(["500ms", "10s", "2m"])
        else:
            step["until"] = rng.choice(["2026-12-01T09:00:00Z", "${{ run.id and '2026-12-01T09:00:00Z' }}"])
    elif kind == "http":
        step["connection"] = rng.choice(["payments", "status-api", "inventory"])
        step["method"] = rng.choice(["GET", "POST", "PUT"])
        step["path"] = f"/items/{index}"
        if step["method"] == "GET":
            step["query"] = {"q": f"${{{{ {input_expr(rng, inputs)} }}}}", "page": rng.randint(1, 5)}
        else:
            step["json"] = {"index": index, "value": f"${{{{ {input_expr(rng, inputs)} }}}}",
                            "tags": ["bench", f"step-{index}"]}
        step["headers"] = {"X-Run": "${{ run.id }}"}
        step["expect"] = rng.choice([200, [200, 201], [200, 202, 204]])
        step["timeout"] = "10s"
    if prev_ref and rng.random() < 0.25:
        step["if"] = f"${{{{ {prev_ref} is not none }}}}"
    if kind in ("shell", "http") and rng.random() < 0.5:
        step["retry"] = {"attempts": rng.randint(2, 5), "backoff": rng.choice(["500ms", "1s", "5s"])}
        if rng.random() < 0.5:
            step["retry"]["max_backoff"] = "30s"
    later = ids[index + 1:]
    roll = rng.random()
    if roll < 0.15:
        step["on_error"] = "continue"
    elif roll < 0.25 and later:
        step["on_error"] = rng.choice(later)
    return step


def make_flow(rng: random.Random, number: int) -> dict:
    name = f"bench-flow-{number:03d}"
    count = rng.randint(MIN_STEPS, MAX_STEPS)
    kinds = [rng.choice(["shell", "shell", "set", "set", "wait", "http"]) for _ in range(count)]
    ids = [f"{kind}_{i}" for i, kind in enumerate(kinds)]
    inputs = make_inputs(rng)
    flow: dict = {"name": name, "description": f"generated flow {number} for the validate benchmark"}
    if inputs:
        flow["inputs"] = inputs
    roll = rng.random()
    if roll < 0.3:
        flow["triggers"] = [{"manual": {}}, {"schedule": {"cron": "0 9 * * 1-5", "timezone": "Europe/Oslo"}}]
    elif roll < 0.5:
        flow["triggers"] = [{"schedule": {"cron": f"*/{rng.randint(5, 30)} * * * *"}}]
    if rng.random() < 0.3:
        flow["concurrency"] = rng.randint(1, 3)
    if rng.random() < 0.3:
        flow["env"] = {"FLOW": "${{ run.flow }}", "STAGE": "bench"}
    flow["steps"] = [make_step(rng, i, ids, kinds, inputs) for i in range(count)]
    return flow


def write_flows(directory: Path, count: int) -> tuple[int, int]:
    rng = random.Random(SEED)
    total_steps = total_bytes = 0
    for number in range(count):
        flow = make_flow(rng, number)
        buffer = io.StringIO()
        buffer.write("# yaml-language-server: $schema=../schema/flow.schema.json\n")
        pyyaml.safe_dump(flow, buffer, sort_keys=False, default_flow_style=False, width=4096)
        path = directory / f"{flow['name']}.yaml"
        path.write_text(buffer.getvalue())
        total_steps += len(flow["steps"])
        total_bytes += path.stat().st_size
    return total_steps, total_bytes


def breakdown(files: list[Path]) -> None:
    """Time the phases `check_file` goes through, separately, without a profiler's distortion."""
    from runner.flows import checks
    from runner import schemas
    from runner import yamldoc
    from runner.flows.model import Flow

    phases = dict.fromkeys(["yaml: alias-count pass (yaml.parse)", "yaml: round-trip load (yaml.load)",
                            "yaml: to_plain", "schema (jsonschema)", "meaning (checks.semantic_problems)",
                            "Flow.from_dict"], 0.0)
    names = list(phases)
    total_start = time.perf_counter()
    for path in files:
        text = path.read_text()
        t0 = time.perf_counter()
        doc = yamldoc.parse_bytes(text.encode(), str(path))
        t1 = t2 = t3 = time.perf_counter()
        assert not schemas.schema_problems(doc, "flow")
        t4 = time.perf_counter()
        assert not [p for p in checks.semantic_problems(doc, expect_name=path.stem) if p.severity != "warning"]
        t5 = time.perf_counter()
        Flow.from_dict(doc.plain, source=text, file=str(path))
        t6 = time.perf_counter()
        for name, seconds in zip(names, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4, t6 - t5)):
            phases[name] += seconds
    total = time.perf_counter() - total_start
    print(f"phase breakdown over {len(files)} flows (no profiler), total {total:.2f} s:")
    for name, seconds in phases.items():
        print(f"  {name:<40} {seconds:>7.2f} s  {seconds / total:>5.0%}")


def run_cli(directory: Path, cwd: Path) -> tuple[float, subprocess.CompletedProcess]:
    command = [sys.executable, "-m", "runner", "validate", str(directory), "--json"]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=cwd, timeout=300)
    return time.perf_counter() - start, done


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", type=int, default=FLOWS)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--breakdown", action="store_true", help="skip the CLI; time each phase of check_file")
    mode.add_argument("--profile", action="store_true", help="skip the CLI; cProfile the in-process loop")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")

    with tempfile.TemporaryDirectory(prefix="signoff-bench-validate-") as name:
        tmp = Path(name)
        flows_dir, empty_dir = tmp / "flows", tmp / "empty"
        flows_dir.mkdir()
        empty_dir.mkdir()
        total_steps, total_bytes = write_flows(flows_dir, args.flows)
        if args.breakdown:
            breakdown(expand_paths([flows_dir]))
            return 0
        if args.profile:
            import cProfile
            import pstats

            profiler = cProfile.Profile()
            sample = expand_paths([flows_dir])[:PROFILE_FLOWS]  # cProfile slows this ~5x: a sample keeps it < 2 min
            profiler.runcall(lambda: [check_file(path) for path in sample])
            print(f"profile of the in-process check_file loop over {len(sample)} flows (cumulative, top 40):")
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)
            return 0

        empty_seconds, empty = run_cli(empty_dir, tmp)
        assert empty.returncode == 0, empty.stderr
        cli_seconds, done = run_cli(flows_dir, tmp)
        try:
            result = json.loads(done.stdout)
        except ValueError:
            print(done.stdout[-2000:], done.stderr[-2000:], sep="\n")
            raise
        bad = [f for f in result.get("flows", []) if not f["ok"]]
        warnings = sum(len(f["warnings"]) for f in result.get("flows", []))
        all_ok = done.returncode == 0 and result.get("ok") is True and not bad and len(result["flows"]) == args.flows

        files = expand_paths([flows_dir])
        start = time.perf_counter()
        reports = [check_file(path) for path in files]
        loop_seconds = time.perf_counter() - start
        loop_ok = all(r.ok for r in reports) and len(reports) == args.flows

    met = cli_seconds < TARGET_SECONDS and all_ok
    print(f"bench/validate.py: {args.flows} flows, {total_steps:,} steps, {total_bytes:,} bytes, "
          f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    print(f"  CLI validate --json (wall)   {cli_seconds:>8.2f} s   ({args.flows / cli_seconds:,.0f} flows/s), "
          f"exit {done.returncode}, ok={result.get('ok')}, {len(result.get('flows', []))} reports, "
          f"{len(bad)} invalid, {warnings} warnings")
    print(f"    of which fixed cost        {empty_seconds:>8.2f} s   (same command on an empty directory)")
    print(f"  in-process check_file loop   {loop_seconds:>8.2f} s   ({loop_seconds / args.flows * 1e3:.1f} ms/flow, "
          f"{loop_seconds / total_steps * 1e3:.2f} ms/step), all ok: {loop_ok}")
    for report in bad[:3]:
        print(f"  INVALID {report['file']}: {report['errors'][:2]}")
    print(f"  load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(f"TARGET CLI < {TARGET_SECONDS:.0f} s with every flow ok: {'MET' if met else 'MISSED'} "
          f"({cli_seconds:.2f} s, all ok: {all_ok})")
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
