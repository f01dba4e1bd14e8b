"""kill -9 chaos through three real daemons on one PostgreSQL database (issue 13).

The same drivers and checks as the file store's chaos test (`test_chaos.py`), with every
request spread over three daemons that share one database and one repository, and a killer
that `kill -9`s a random one of them at random moments and starts it again. On top of the
file test's checks: every chain verifies and agrees with its snapshot after the fact (the
lease fencing held: a run never had two writers), nothing is left in the inbox or leased,
and each step a kill cut short was taken up by another daemon within the lease.

By hand, longer: SIGNOFF_CHAOS_KILLS=15 SIGNOFF_CHAOS_SEED=1234 python -m pytest -q -s tests/chaos
"""

from __future__ import annotations

import signal
from pathlib import Path

from chaos_cluster import ClusterChaos, ClusterVerdict, write_requests
from chaos_flows import chaos_flows
from daemon_support import DaemonProcess
from test_chaos import KILLS, RUNS, SEED, SHOWN, run_drivers

LEASE = 1.0
DAEMONS = 3


def test_kill_9_chaos_on_three_daemons_of_one_database(tmp_path: Path, pg_dsn: str) -> None:
    root = tmp_path / "chaos"
    print(f"\nchaos seed {SEED} on {DAEMONS} daemons of one database: {KILLS} kills, at least {RUNS} runs "
          f"(again: SIGNOFF_CHAOS_KILLS={KILLS} SIGNOFF_CHAOS_SEED={SEED})", flush=True)
    store = {"kind": "postgres", "dsn": {"env": "SIGNOFF_DSN"}, "lease": f"{LEASE:g}s"}
    first = DaemonProcess(root, flows=chaos_flows(root / "side-effects.log", root / "gates"), store=store,
                          env={"SIGNOFF_DSN": pg_dsn})
    daemons = [first] + [DaemonProcess(root / f"daemon-{n}", repo=first.repo, tokens=first.tokens, store=store,
                                       env={"SIGNOFF_DSN": pg_dsn}) for n in range(2, DAEMONS + 1)]
    chaos = ClusterChaos(daemons, SEED, dsn=pg_dsn, lease=LEASE)
    verdict = ClusterVerdict(chaos, [])
    try:
        for daemon in daemons:
            daemon.start()
        verdict.scenarios = run_drivers(chaos, KILLS, RUNS)
        verdict.settle()
        verdict.check_requests()
        for number, daemon in enumerate(daemons, 1):
            if daemon.stop() == -signal.SIGKILL:
                verdict.problem(f"daemon {number} did not stop within the stop deadline after SIGTERM")
        verdict.check_database()
    finally:
        for run_id in verdict.recorded_runs() if verdict.runs else ():
            chaos.open_gate(run_id)
        chaos.close_all()
        for daemon in daemons:
            daemon.close()
        write_requests(chaos, root / "requests.jsonl")
    summary = verdict.summary()
    print(summary, flush=True)
    problems = chaos.problems + verdict.problems
    logged = [line for daemon in daemons for line in daemon.log_path.read_text(errors="replace").splitlines()
              if " ERROR " in line]
    assert not problems, (
        f"{summary}\nagain: SIGNOFF_CHAOS_KILLS={KILLS} SIGNOFF_CHAOS_SEED={SEED}\n"
        + "\n".join(f"- {p}" for p in problems[:SHOWN])
        + (f"\n... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
        + f"\nrequests: {root / 'requests.jsonl'}; daemon logs: {[str(d.log_path) for d in daemons]}"
        + f"\nthe daemons logged {len(logged)} errors" + "".join(f"\n  {line[:300]}" for line in logged[:10]))
