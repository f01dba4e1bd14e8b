"""Engine throughput: a 1,000-step flow of `set` steps, fsync on.

TARGET: at least 1,000 steps/s (wall time of `Engine.advance`, fsync ON).
Also reported (no target): a bare append-one-line + fsync loop in the same
directory, and the ratio steps/s / fsyncs/s (how close the engine gets to the
disk's limit of one fsync per step).

Each step is `n: ${{ steps.<previous>.outputs.n + 1 }}`, so every step
evaluates a (distinct) expression on the previous step's output. The flow is
written to a YAML file and built with `runner.flowfile.load_flow`; the run is
created outside the timing, and only `asyncio.run(engine.advance(run_id))` is
timed. The listener splits that time into "before the first event" (advance
re-reads and re-validates the run's flow copy) and the step loop itself.

Run: .venv/bin/python bench/steps.py [--steps N] [--profile]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

from runner.engine import Engine
from runner.flowfile import load_flow
from runner.store import Store

TARGET_STEPS_PER_S = 1_000
STEPS = 1_000
FSYNC_LOOPS = 1_000


def flow_yaml(steps: int, name: str = "bench-steps") -> str:
    lines = [f"name: {name}", "description: engine throughput benchmark", "steps:",
             "  - {id: s0000, kind: set, values: {n: 0}}"]
    for i in range(1, steps):
        lines.append(f"  - {{id: s{i:04d}, kind: set, values: {{n: '${{{{ steps.s{i - 1:04d}.outputs.n + 1 }}}}'}}}}")
    return "\n".join(lines) + "\n"


def fsync_loop(directory: Path, loops: int) -> float:
    """fsyncs per second: append one line, flush, fsync; `loops` times."""
    path = directory / "fsync-probe.jsonl"
    line = b'{"type":"probe","at":"2026-11-25T00:00:00.000000Z","seq":0}\n'
    with open(path, "ab") as handle:
        start = time.perf_counter()
        for _ in range(loops):
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())
        elapsed = time.perf_counter() - start
    path.unlink()
    return loops / elapsed


def run_once(steps: int, tmp: Path, profile: bool = False) -> dict:
    flow_path = tmp / "bench-steps.yaml"
    flow_path.write_text(flow_yaml(steps))
    flow = load_flow(flow_path)
    marks: dict[str, float] = {}

    def listener(run: dict, event: dict) -> None:
        if event["type"] in ("run_started", "run_finished"):
            marks[event["type"]] = time.perf_counter()

    engine = Engine(Store(tmp / "data"), work_dir=tmp, listener=listener)  # Store fsyncs by default
    assert engine.store.fsync, "the bench must run with fsync on"
    run_id = engine.create_run(flow, {}, started_by="bench")

    profiler = None
    if profile:
        import cProfile

        profiler = cProfile.Profile()
        profiler.enable()
    start = time.perf_counter()
    record = asyncio.run(engine.advance(run_id))
    elapsed = time.perf_counter() - start
    if profiler:
        profiler.disable()

    last = record["steps"][f"s{steps - 1:04d}"]
    assert record["status"] == "succeeded", record.get("error")
    assert record["steps_executed"] == steps
    assert last["outputs"] == {"n": steps - 1}, last["outputs"]
    verified = engine.store.verify(run_id)
    assert verified.ok, verified.problems
    run_dir = engine.store.run_dir(run_id)
    return {
        "elapsed": elapsed,
        "before_first_event": marks["run_started"] - start,
        "loop": marks["run_finished"] - marks["run_started"],
        "events": verified.events,
        "flow_bytes": flow_path.stat().st_size,
        "events_bytes": (run_dir / "events.jsonl").stat().st_size,
        "run_json_bytes": (run_dir / "run.json").stat().st_size,
        "profiler": profiler,
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=STEPS)
    parser.add_argument("--profile", action="store_true", help="cProfile the advance and print the top functions")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="signoff-bench-steps-") as name:
        tmp = Path(name)
        result = run_once(args.steps, tmp, profile=args.profile)
        fsyncs = fsync_loop(tmp, FSYNC_LOOPS)

    steps_per_s = args.steps / result["elapsed"]
    loop_per_s = args.steps / result["loop"]
    met = steps_per_s >= TARGET_STEPS_PER_S
    print(f"bench/steps.py: {args.steps} set steps, fsync on, Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    print(f"  flow file                 {result['flow_bytes']:>12,} bytes")
    print(f"  advance (wall)            {result['elapsed']:>12.3f} s")
    print(f"    before first event      {result['before_first_event']:>12.3f} s   (re-load + re-validate the run's flow copy)")
    print(f"    step loop               {result['loop']:>12.3f} s")
    print(f"  steps/s (advance wall)    {steps_per_s:>12,.0f}")
    print(f"  steps/s (step loop only)  {loop_per_s:>12,.0f}")
    print(f"  fsyncs/s (bare loop)      {fsyncs:>12,.0f}   ({FSYNC_LOOPS} x append one line + fsync)")
    print(f"  ratio steps/s / fsyncs/s  {steps_per_s / fsyncs:>12.3f}   (step loop only: {loop_per_s / fsyncs:.3f})")
    print(f"  events.jsonl              {result['events_bytes']:>12,} bytes, {result['events']} events")
    print(f"  run.json                  {result['run_json_bytes']:>12,} bytes")
    print(f"TARGET >= {TARGET_STEPS_PER_S:,} steps/s: {'MET' if met else 'MISSED'} ({steps_per_s:,.0f} steps/s)")

    if result["profiler"]:
        import pstats

        print("\nprofile of advance (cumulative, top 30):")
        pstats.Stats(result["profiler"]).sort_stats("cumulative").print_stats(30)
        print("profile of advance (own time, top 20):")
        pstats.Stats(result["profiler"]).sort_stats("tottime").print_stats(20)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
