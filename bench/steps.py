"""Engine throughput: a 1,000-step flow of `set` steps, fsync on.

TARGET: at least 1,000 steps/s (wall time of `Engine.advance`, fsync ON).
Also reported (no target): a bare append-one-line + fsync loop in the same
directory, and the ratio steps/s / fsyncs/s (how close the engine gets to the
disk's limit of one fsync per step).

Each step is `n: ${{ steps.<previous>.outputs.n + 1 }}`, so every step
evaluates a (distinct) expression on the previous step's output. The flow is
written to a YAML file and built with `runner.flows.load.load_flow`; the run is
created outside the timing, and only `asyncio.run(engine.advance(run_id))` is
timed. The listener splits that time into "before the first event" (advance
re-reads and re-validates the run's flow copy) and the step loop itself.

With `--store postgres` the same run goes to the PostgreSQL store instead: a
server of its own (tests/postgres_support.Postgres: initdb in a temp dir, fsync
on, a loopback port; or SIGNOFF_TEST_DSN), a fresh database per round; the
fsync column is then the bare file loop still, for comparison.

Run: .venv/bin/python bench/steps.py [--steps N] [--rounds R] [--store files|postgres] [--breakdown] [--profile]
  --rounds     fresh runs (default 3); the target is judged on the median
  --breakdown  also time, without a profiler, the phases of re-loading the flow
               copy and the cost of an expression's first (compiling) evaluation
  --profile    cProfile the advance and print the top functions
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from runner.runs.engine import Engine
from runner.flows.load import load_flow
from runner.runs.files import FileStore

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

TARGET_STEPS_PER_S = 1_000
STEPS = 1_000
FSYNC_LOOPS = 1_000
ROUNDS = 3


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


def breakdown(steps: int) -> None:
    """Where the advance's time goes, measured piece by piece without a profiler."""
    from runner.flows import checks
    from runner import schemas
    from runner import yamldoc
    from runner.flows.expressions import Evaluator
    from runner.flows.model import Flow

    text = flow_yaml(steps)
    t0 = time.perf_counter()
    doc = yamldoc.parse_bytes(text.encode(), "bench-steps.yaml", limit=None)
    t1 = t2 = t3 = time.perf_counter()
    assert not schemas.schema_problems(doc, "flow")
    t4 = time.perf_counter()
    assert not list(checks.semantic_problems(doc, expect_name=None))
    t5 = time.perf_counter()
    Flow.from_dict(doc.plain, source=text, file="bench-steps.yaml")
    t6 = time.perf_counter()
    print(f"\nbreakdown of re-loading the {steps}-step flow copy (load_flow_bytes), no profiler: {t6 - t0:.3f} s")
    for label, seconds in (("yaml: parse (libyaml compose + build)", t1 - t0), ("-", t2 - t1),
                           ("yaml: to_plain", t3 - t2), ("schema (jsonschema)", t4 - t3),
                           ("meaning (checks.semantic_problems)", t5 - t4), ("Flow.from_dict", t6 - t5)):
        print(f"  {label:<40} {seconds:>7.3f} s  {seconds / (t6 - t0):>5.0%}")

    exprs = [f"${{{{ steps.s{i - 1:04d}.outputs.n + 1 }}}}" for i in range(1, steps)]
    context = {"inputs": {}, "callbacks": {}, "run": {},
               "steps": {f"s{i:04d}": {"outputs": {"n": i}} for i in range(steps)}}
    evaluator = Evaluator()
    t0 = time.perf_counter()
    for expr in exprs:
        evaluator.render(expr, context)
    t1 = time.perf_counter()
    for expr in exprs:
        evaluator.render(expr, context)
    t2 = time.perf_counter()
    print(f"expressions ({len(exprs)} distinct): first evaluation (jinja2 compile + run) "
          f"{(t1 - t0) / len(exprs) * 1e3:.3f} ms each; cached {(t2 - t1) / len(exprs) * 1e6:.1f} us each")


def run_once(steps: int, tmp: Path, profile: bool = False, postgres=None) -> dict:
    flow_path = tmp / "bench-steps.yaml"
    flow_path.write_text(flow_yaml(steps))
    flow = load_flow(flow_path)
    marks: dict[str, float] = {}

    def listener(run: dict, event: dict) -> None:
        if event["type"] in ("run_started", "run_finished"):
            marks[event["type"]] = time.perf_counter()

    if postgres is None:
        store = FileStore(tmp / "data")  # Store fsyncs by default
        assert store.fsync, "the bench must run with fsync on"
    else:
        from runner.runs.postgres import PostgresStore

        dsn = postgres.database()
        store = PostgresStore(dsn, tmp / "cache")
    engine = Engine(store, work_dir=tmp, listener=listener)
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
    if postgres is not None:
        snapshot = engine.store.read_snapshot(run_id)
        store.close()
        postgres.drop(dsn)
        return {"elapsed": elapsed, "before_first_event": marks["run_started"] - start,
                "loop": marks["run_finished"] - marks["run_started"], "events": verified.events,
                "flow_bytes": flow_path.stat().st_size, "events_bytes": snapshot["events"]["bytes"],
                "run_json_bytes": len(json.dumps(snapshot)), "profiler": profiler}
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
    parser.add_argument("--rounds", type=int, default=ROUNDS, help="runs (fresh temp dir each); judged on the median")
    parser.add_argument("--breakdown", action="store_true", help="also time the phases, without a profiler")
    parser.add_argument("--profile", action="store_true", help="cProfile one advance and print the top functions")
    parser.add_argument("--store", choices=("files", "postgres"), default="files",
                        help="where the run is kept (postgres: a server of its own, or SIGNOFF_TEST_DSN)")
    args = parser.parse_args()
    postgres = None
    if args.store == "postgres":
        from postgres_support import Postgres

        given = os.environ.get("SIGNOFF_TEST_DSN")
        postgres = Postgres(given) if given else Postgres().start()
    try:
        return measure(args, postgres)
    finally:
        if postgres is not None:
            postgres.close()


def measure(args: argparse.Namespace, postgres) -> int:
    rounds = 1 if args.profile else args.rounds
    load_before = os.getloadavg()

    print(f"bench/steps.py: {args.steps} set steps, {args.store} store, fsync on, {rounds} round(s), Python {sys.version.split()[0]}, "
          f"{os.cpu_count()} CPUs")
    print("  round  advance s  (re-load s + loop s)  steps/s  loop steps/s  fsyncs/s  steps/s/fsyncs/s (loop)")
    results = []
    for number in range(1, rounds + 1):
        with tempfile.TemporaryDirectory(prefix="signoff-bench-steps-") as name:
            tmp = Path(name)
            result = run_once(args.steps, tmp, profile=args.profile, postgres=postgres)
            result["fsyncs"] = fsync_loop(tmp, FSYNC_LOOPS)
        result["steps_per_s"] = args.steps / result["elapsed"]
        result["loop_per_s"] = args.steps / result["loop"]
        results.append(result)
        print(f"  {number:>5}  {result['elapsed']:>9.3f}  ({result['before_first_event']:>8.3f} + {result['loop']:>6.3f})"
              f"  {result['steps_per_s']:>7,.0f}  {result['loop_per_s']:>12,.0f}  {result['fsyncs']:>8,.0f}"
              f"  {result['steps_per_s'] / result['fsyncs']:>7.3f} ({result['loop_per_s'] / result['fsyncs']:.3f})")

    def median(key: str) -> float:
        return statistics.median(r[key] for r in results)

    steps_per_s = median("steps_per_s")
    met = steps_per_s >= TARGET_STEPS_PER_S
    last = results[-1]
    print(f"  median: advance {median('elapsed'):.3f} s = re-load + re-validate the flow copy "
          f"{median('before_first_event'):.3f} s + step loop {median('loop'):.3f} s")
    print(f"  median: {steps_per_s:,.0f} steps/s (advance wall), {median('loop_per_s'):,.0f} steps/s (step loop only), "
          f"{median('fsyncs'):,.0f} fsyncs/s (bare loop, {FSYNC_LOOPS} x append one line + fsync)")
    print(f"  median ratio steps/s / fsyncs/s: {statistics.median(r['steps_per_s'] / r['fsyncs'] for r in results):.3f}"
          f" (step loop only: {statistics.median(r['loop_per_s'] / r['fsyncs'] for r in results):.3f})")
    print(f"  flow file {last['flow_bytes']:,} bytes; events {last['events_bytes']:,} bytes, "
          f"{last['events']} events; snapshot {last['run_json_bytes']:,} bytes")
    print(f"  load average {' '.join(f'{x:.2f}' for x in load_before)} before, "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())} after")
    print(f"TARGET >= {TARGET_STEPS_PER_S:,} steps/s (advance wall, median): {'MET' if met else 'MISSED'} "
          f"({steps_per_s:,.0f} steps/s)")

    if args.breakdown:
        breakdown(args.steps)
    if last["profiler"]:
        import pstats

        print("\nprofile of advance (cumulative, top 30):")
        pstats.Stats(last["profiler"]).sort_stats("cumulative").print_stats(30)
        print("profile of advance (own time, top 20):")
        pstats.Stats(last["profiler"]).sort_stats("tottime").print_stats(20)
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
