"""Several daemons on one PostgreSQL database (issue 13, "Benchmarks"), beside one daemon on files.

For 1, 2 and 3 daemons (real `signoff serve` subprocesses) on one fresh database each time:
  1. 10,000 runs parked on a callback (bench/waits.py's flow), created with the Engine straight
     into the database before the daemons start (as waits.py does on a data dir);
  2. every callback posted over 32 keep-alive connections spread round-robin over the daemons
     (waits.py's minimal HTTP/1.1 client): durable callbacks/s (202s / wall time) and the p99
     acknowledgement latency; then the time until every run has succeeded (they all must);
and, with 3 daemons:
  3. kill -9 of one daemon while 24 runs it started are inside a 3 s shell step: the time from the
     kill to each run's step being taken up by another daemon (its `step_interrupted` event), with
     a 5 s lease.
The file store's figures for the same machine come from bench/waits.py (one daemon) and
bench/steps.py (1,000 sequential steps, `--store files|postgres`), run in the same session.

Targets, for a reference: the file store's (callbacks/s >= 500, ack p99 < 50 ms) and the issue's
"a dead daemon's runs move within the lease (5 s)". The PostgreSQL server is one the bench starts
itself (initdb into a temp dir, loopback port), or SIGNOFF_TEST_DSN's.

Run: .venv/bin/python bench/cluster.py [--runs 10000] [--concurrency 32] [--daemons 1,2,3] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import psycopg

PROJECT_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(PROJECT_ROOT / "tests"))
sys.path.insert(0, str(PROJECT_ROOT / "bench"))

from daemon_support import DaemonProcess  # noqa: E402
from postgres_support import Postgres  # noqa: E402
from support import make_repo, wait_until  # noqa: E402
from waits import FLOW, RawConnection, percentile  # noqa: E402

LEASE = "5s"
SLOW = """\
name: slow
description: a 3 s shell step, for the takeover measure of bench/cluster.py
steps:
  - id: work
    kind: shell
    run: sleep 3
    timeout: 1m
    retry: {attempts: 2, backoff: 100ms}
"""


def _create(args: tuple[str, str, str, int]) -> list[dict]:
    """In a worker process: create and park `count` runs with the Engine, straight into the database."""
    dsn, repo, public_url, count = args
    from runner.flows.load import load_flow
    from runner.runs.engine import Engine
    from runner.runs.postgres.store import PostgresStore

    cache = tempfile.mkdtemp(prefix="signoff-bench-cache-")  # the runs' scratch folders: removed below
    store = PostgresStore(dsn, cache)
    engine = Engine(store, work_dir=repo, public_url=public_url, accepts_messages=True)
    flow = load_flow(Path(repo) / "flows" / "waits.yaml")

    async def make() -> list[dict]:
        made = []
        for _ in range(count):
            run_id = engine.create_run(flow, {}, started_by="alice", draft=True)
            run = await engine.advance(run_id, hold=False)
            assert run["status"] == "waiting", run.get("error")
            made.append({"id": run_id, "token": run["callbacks"]["done"]})
        return made

    try:
        return asyncio.run(make())
    finally:
        store.close()
        shutil.rmtree(cache, ignore_errors=True)


def create_parked(dsn: str, repo: Path, public_url: str, count: int, workers: int) -> list[dict]:
    shares = [count // workers + (1 if i < count % workers else 0) for i in range(workers)]
    with ProcessPoolExecutor(max_workers=workers) as pool:
        parts = list(pool.map(_create, [(dsn, str(repo), public_url, n) for n in shares if n]))
    runs = sorted((run for part in parts for run in part), key=lambda r: r["id"])
    for n, run in enumerate(runs):
        run["n"] = n
    return runs


async def post_spread(daemons: list[DaemonProcess], runs: list[dict], concurrency: int) -> dict:
    """Every callback once, from `concurrency` connections, connection i to daemon i mod N."""
    todo = iter(runs)
    latencies: list[float] = []
    statuses: dict[int, int] = {}

    async def worker(index: int) -> None:
        host, port = daemons[index % len(daemons)].url.split("//", 1)[1].split(":")
        connection = RawConnection(host, int(port))
        try:
            for run in todo:
                body = json.dumps({"n": run["n"]}).encode()
                sent = time.perf_counter()
                code = await connection.post(f"/callbacks/{run['token']}", body)
                latencies.append((time.perf_counter() - sent) * 1000)
                statuses[code] = statuses.get(code, 0) + 1
        finally:
            connection.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker(i) for i in range(concurrency)))
    wall = time.perf_counter() - start
    return {"wall": wall, "latencies": latencies, "statuses": statuses}


def count_status(dsn: str, status: str) -> int:
    with psycopg.connect(dsn) as conn:
        return conn.execute("SELECT count(*) FROM runs WHERE status = %s", (status,)).fetchone()[0]


def daemons_on(root: Path, repo: Path, dsn: str, count: int) -> list[DaemonProcess]:
    store = {"kind": "postgres", "dsn": {"env": "SIGNOFF_DSN"}, "lease": LEASE}
    first = DaemonProcess(root / "d1", repo=repo, store=store, env={"SIGNOFF_DSN": dsn})
    return [first] + [DaemonProcess(root / f"d{n}", repo=repo, store=store, env={"SIGNOFF_DSN": dsn},
                                    tokens=first.tokens) for n in range(2, count + 1)]


def callbacks_with(server: Postgres, root: Path, daemons_count: int, runs_count: int, concurrency: int,
                   workers: int) -> dict:
    dsn = server.database()
    repo = make_repo(root / f"repo-{daemons_count}", {"waits": FLOW.format(name="waits")})
    daemons = daemons_on(root / f"cluster-{daemons_count}", repo, dsn, daemons_count)
    try:
        made = time.perf_counter()
        runs = create_parked(dsn, repo, daemons[0].public_url, runs_count, workers)
        made = time.perf_counter() - made
        for daemon in daemons:
            daemon.start(deadline=120)
        posted = asyncio.run(post_spread(daemons, runs, concurrency))
        done_from = time.perf_counter()
        wait_until(lambda: count_status(dsn, "succeeded") == runs_count, timeout=600, interval=0.5,
                   message="every run to succeed")
        to_done = time.perf_counter() - done_from + posted["wall"]
        accepted = posted["statuses"].get(202, 0) + posted["statuses"].get(200, 0)
        return {"daemons": daemons_count, "runs": runs_count, "created_s": round(made, 1),
                "callbacks_per_s": round(accepted / posted["wall"], 1),
                "ack_p50_ms": round(percentile(posted["latencies"], 50), 1),
                "ack_p99_ms": round(percentile(posted["latencies"], 99), 1),
                "statuses": posted["statuses"], "all_succeeded_s": round(to_done, 1),
                "runs_per_s_to_done": round(runs_count / to_done, 1)}
    finally:
        for daemon in daemons:
            daemon.close()
        server.drop(dsn)


def takeover(server: Postgres, root: Path, runs_count: int = 24) -> dict:
    dsn = server.database()
    repo = make_repo(root / "repo-takeover", {"slow": SLOW})
    daemons = daemons_on(root / "takeover", repo, dsn, 3)
    try:
        for daemon in daemons:
            daemon.start(deadline=120)
        first = daemons[0]
        started = [first.start_run("slow")["id"] for _ in range(runs_count)]
        wait_until(lambda: count_status(dsn, "running") == runs_count, timeout=60, message="every run in its step")
        time.sleep(0.5)  # well inside the 3 s step
        first.kill()
        killed = time.time()
        with psycopg.connect(dsn) as conn:
            def interrupted() -> list[float] | None:
                rows = conn.execute("SELECT line FROM events WHERE run_id = ANY(%s) AND line LIKE %s",
                                    (started, b'%"step_interrupted"%')).fetchall()
                return [json.loads(line)["at"] for (line,) in rows] if len(rows) == runs_count else None

            stamps = wait_until(interrupted, timeout=60, interval=0.1, message="every step taken up")
        from runner.timeutil import parse_rfc3339

        delays = sorted(parse_rfc3339(at).timestamp() - killed for at in stamps)
        wait_until(lambda: count_status(dsn, "succeeded") == runs_count, timeout=60, message="every run to succeed")
        return {"runs": runs_count, "lease": LEASE, "taken_up_p50_s": round(percentile(delays, 50), 2),
                "taken_up_max_s": round(delays[-1], 2)}
    finally:
        for daemon in daemons:
            daemon.close()
        server.drop(dsn)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--runs", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--daemons", default="1,2,3")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    given = os.environ.get("SIGNOFF_TEST_DSN")
    server = Postgres(given) if given else Postgres().start()
    try:
        with tempfile.TemporaryDirectory(prefix="signoff-cluster-bench-") as tmp:
            root = Path(tmp)
            for count in (int(n) for n in args.daemons.split(",")):
                figures = callbacks_with(server, root, count, args.runs, args.concurrency, args.workers)
                print(json.dumps(figures), flush=True)
            print(json.dumps({"takeover": takeover(server, root)}), flush=True)
    finally:
        server.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
