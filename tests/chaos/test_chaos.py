"""kill -9 chaos through the real daemon (issue 9, "Prove it in the suite").

Drivers start runs of four flows (shell steps with side effects and retries, short waits,
approvals with a racing approve and reject, callbacks early, on time, replayed, different and
late, a `concurrency: 1` queue) and cancel a few, while a killer `kill -9`s the daemon's process
group at random moments and starts it again. Then, with the daemon up, every run must end, and
what the client was told (2xx, refused, no answer) must match what the runs recorded; after a
graceful stop the data dir must verify, validate and hold no temp files.

The suite runs a short version (4 kills). A long one by hand:

    SIGNOFF_CHAOS_KILLS=15 SIGNOFF_CHAOS_SEED=1234 python -m pytest -q -s tests/chaos

(SIGNOFF_CHAOS_RUNS overrides the number of runs: by default the larger of 24 and 7 per kill.)
The seed is printed, and named in the failure message.
"""

from __future__ import annotations

import os
import json
import random
import signal
import threading
import traceback
from pathlib import Path

from chaos_checks import Verdict
from chaos_flows import chaos_flows
from chaos_support import Chaos, Scenario, drive, make_scenario
from daemon_support import DaemonProcess

KILLS = int(os.environ.get("SIGNOFF_CHAOS_KILLS") or 4)
SEED = int(os.environ.get("SIGNOFF_CHAOS_SEED") or random.SystemRandom().randrange(1, 1_000_000))
RUNS = int(os.environ.get("SIGNOFF_CHAOS_RUNS") or max(24, 7 * KILLS))
DRIVERS = 6
SHOWN = 80  # problems listed in a failure message


def run_drivers(chaos: Chaos, kills: int, runs: int) -> list[Scenario]:
    """DRIVERS threads start runs one after another: at least `runs`, more while the killer has kills left."""
    scenarios: list[Scenario] = []
    lock = threading.Lock()
    killer_done = threading.Event()

    def next_scenario() -> Scenario | None:
        with lock:
            number = len(scenarios)
            if number >= runs and (killer_done.is_set() or number >= 3 * runs):
                return None
            scenario = make_scenario(number, chaos.seed)
            scenarios.append(scenario)
            return scenario

    def driver() -> None:
        try:
            while (scenario := next_scenario()) is not None:
                try:
                    drive(chaos, scenario)
                except Exception:
                    chaos.problems.append(f"the driver of {scenario.describe()} failed:\n{traceback.format_exc()}")
        finally:
            chaos.close_clients()

    threads = [threading.Thread(target=driver, name=f"chaos-driver-{n}") for n in range(DRIVERS)]
    for thread in threads:
        thread.start()
    killer = chaos.killer(kills, busy=lambda: any(t.is_alive() for t in threads))
    killer.join()
    killer_done.set()
    for thread in threads:
        thread.join()
    return scenarios


def test_kill_9_chaos_loses_nothing_acknowledged_and_applies_nothing_twice(tmp_path: Path) -> None:
    root = tmp_path / "chaos"
    print(f"\nchaos seed {SEED}: {KILLS} kills, at least {RUNS} runs "
          f"(again: SIGNOFF_CHAOS_KILLS={KILLS} SIGNOFF_CHAOS_SEED={SEED})", flush=True)
    daemon = DaemonProcess(root, flows=chaos_flows(root / "side-effects.log", root / "gates"))
    chaos = Chaos(daemon, SEED)
    try:
        daemon.start()
        scenarios = run_drivers(chaos, KILLS, RUNS)
        verdict = Verdict(chaos, scenarios)
        verdict.settle()
        verdict.check_requests()
        if daemon.stop() == -signal.SIGKILL:
            verdict.problem("the daemon did not stop within the stop deadline after SIGTERM (it was killed)")
        verdict.check_files()
    finally:
        for run_dir in (daemon.data / "runs").glob("*"):
            chaos.open_gate(run_dir.name)  # no gated shell outlives the test
        chaos.close_all()
        daemon.close()
        record = root / "requests.jsonl"  # what the client sent and was told, for the post-mortem
        record.write_text("".join(json.dumps(vars(r), default=str) + "\n" for r in chaos.requests))
    summary = verdict.summary()
    print(summary, flush=True)
    problems = chaos.problems + verdict.problems
    logged = [line for line in daemon.log_path.read_text(errors="replace").splitlines() if " ERROR " in line]
    assert not problems, (
        f"{summary}\nagain: SIGNOFF_CHAOS_KILLS={KILLS} SIGNOFF_CHAOS_SEED={SEED}\n"
        + "\n".join(f"- {p}" for p in problems[:SHOWN])
        + (f"\n... and {len(problems) - SHOWN} more" if len(problems) > SHOWN else "")
        + f"\nrequests: {record}; daemon log: {daemon.log_path}"
        + f"\nthe daemon logged {len(logged)} errors" + "".join(f"\n  {line[:300]}" for line in logged[:10]))
