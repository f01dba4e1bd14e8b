"""What must hold once the chaos is over, each failure naming the run, the request, what was expected and found.

`Verdict.settle` (daemon up) waits for every run on disk to end and reads it through the API;
`Verdict.check_requests` compares what the client was told with what the runs recorded;
`Verdict.check_files` (after a graceful stop) checks the data dir itself: snapshots that agree
with their logs, the run schema, temp files, the callback journal and the side-effect file.
"""

from __future__ import annotations

import json
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Any

from chaos_flows import SHELL_ATTEMPTS
from chaos_support import EARLY_TIMEOUT, Chaos, Request, Scenario
from daemon_support import TERMINAL
from support import run_schema_errors, wait_until

from runner.runs.files import FileStore
from runner.timeutil import parse_rfc3339

SETTLE_DEADLINE = 30.0  # flows wait at most 3 s; a concurrency: 1 queue takes about 1 s a run
TEMP_NAME = re.compile(r"^\..*\.tmp$|^\.incoming-")


@dataclass
class Verdict:
    chaos: Chaos
    scenarios: list[Scenario]
    problems: list[str] = field(default_factory=list)
    runs: dict[str, dict] = field(default_factory=dict)  # run id -> record (API)
    events: dict[str, list[dict]] = field(default_factory=dict)
    acknowledged: Counter = field(default_factory=Counter)  # callbacks, decisions, cancels
    lost: int = 0
    duplicated: int = 0

    def problem(self, text: str) -> None:
        self.problems.append(text)

    def scenario_of(self, run_id: str) -> str:
        found = next((s for s in self.scenarios if s.run_id == run_id), None)
        return f"{found.flow}/{found.variant}" if found else "a run no driver knows (a start in doubt)"

    # ---- with the daemon up -----------------------------------------------------------

    def settle(self) -> None:
        """Every run on disk reaches a final status within the bound; keep its record and events."""
        runs = self.recorded_runs()

        def all_ended() -> bool:
            for run_id in runs:
                if run_id not in self.runs:
                    record = self.chaos.run(run_id)
                    if record["status"] in TERMINAL:
                        self.runs[run_id] = record
            return len(self.runs) == len(runs)

        try:
            wait_until(all_ended, SETTLE_DEADLINE, interval=0.2, what="every run to end")
        except AssertionError:
            for run_id in runs:
                if run_id not in self.runs:
                    record = self.runs[run_id] = self.chaos.run(run_id)
                    steps = {k: v.get("status") for k, v in record["steps"].items()}
                    self.problem(f"STUCK: run {run_id} ({self.scenario_of(run_id)}) is still {record['status']} "
                                 f"{SETTLE_DEADLINE:.0f}s after the chaos ended: current step "
                                 f"{record.get('current_step')}, steps {steps}")
        for run_id in runs:
            self.events[run_id] = self.chaos.get(f"/api/v1/runs/{run_id}/events").json()["events"]
        self._check_listing()
        self._check_pending()
        self._check_concurrency()
        for run_id, events in self.events.items():
            self._check_history(run_id, events)

    def recorded_runs(self) -> list[str]:
        """The runs the data dir holds (each gate opened: runs started by a request in doubt wait on one too)."""
        data = self.chaos.daemon.data / "runs"
        on_disk = sorted(p.name for p in data.iterdir() if p.is_dir()) if data.is_dir() else []
        for run_id in on_disk:
            self.chaos.open_gate(run_id)
        runs = [r for r in on_disk if _has_events(data / r)]
        for run_id in sorted(set(on_disk) - set(runs)):
            self.problem(f"run directory {run_id} has no events (a half-created run was left behind): "
                         f"{sorted(p.name for p in (data / run_id).iterdir())}")
        return runs

    def _check_listing(self) -> None:
        """GET /api/v1/runs (what `runs list` and `pending` see) shows every run, with its final status."""
        listed, before = {}, None
        while True:
            query = "/api/v1/runs?limit=1000" + (f"&before={before}" if before else "")
            page = self.chaos.get(query).json()
            listed.update({r["id"]: r["status"] for r in page["runs"]})
            before = page["next"]
            if not before:
                break
        for run_id, record in self.runs.items():
            if run_id not in listed:
                self.problem(f"run {run_id} ({self.scenario_of(run_id)}) is {record['status']} but "
                             "GET /api/v1/runs does not list it")
            elif listed[run_id] != record["status"]:
                self.problem(f"run {run_id} ({self.scenario_of(run_id)}): GET /api/v1/runs lists it "
                             f"{listed[run_id]}, its record says {record['status']} (a snapshot behind its log)")

    def _check_history(self, run_id: str, events: list[dict]) -> None:
        """One end per run and per step visit; a timer fires once, and never before its time."""
        where = f"run {run_id} ({self.scenario_of(run_id)})"
        ends = [e["seq"] for e in events if e["type"] == "run_finished"]
        if len(ends) != 1:
            self.problem(f"{where} has {len(ends)} run_finished events (seq {ends}); a run ends once")
        visits, finished, wake_at = Counter(), Counter(), {}
        for event in events:
            step = event.get("step")
            if event["type"] == "step_started" and event["attempt"] == 1:
                visits[step] += 1
            elif event["type"] in ("step_finished", "step_skipped"):
                finished[step] += 1
                if finished[step] > visits[step] and event["type"] == "step_finished":
                    self.duplicated += 1
                    self.problem(f"DUPLICATED: {where}: step {step} finished again (seq {event['seq']}, "
                                 f"{event.get('status')}) in the same visit")
                woke = (event.get("outputs") or {}).get("woke_at")
                if woke and step in wake_at and woke < wake_at[step]:
                    self.problem(f"{where}: wait {step} woke at {woke}, before its time {wake_at[step]}")
            elif event["type"] == "step_waiting":
                wake_at[step] = event["wake_at"]

    def _check_pending(self) -> None:
        """Once every run has ended, nobody has an approval pending."""
        for user in ("bob", "carol"):
            response = self.chaos.client(user).get("/api/v1/pending", timeout=10.0)
            for item in response.json().get("pending", []) if response.status_code == 200 else []:
                status = (self.runs.get(item["run"]) or {}).get("status")
                self.problem(f"GET /api/v1/pending as {user} still shows run {item['run']} step {item['step']}, "
                             f"which has ended {status}")

    def _check_concurrency(self) -> None:
        """A `concurrency: 1` flow never had two runs active at once (run_started to run_finished)."""
        spans = []
        for run_id, events in self.events.items():
            if self.runs[run_id]["flow"] != "chaos-queue":
                continue
            started = [e["at"] for e in events if e["type"] == "run_started"]
            if started:
                ended = [e["at"] for e in events if e["type"] == "run_finished"] or ["9999"]
                spans.append((started[0], ended[0], run_id))
        spans.sort()
        for (_, end, first), (start, _, second) in zip(spans, spans[1:]):
            if start < end:
                self.problem(f"concurrency: 1 broken: run {second} started at {start} while run {first} was "
                             f"active until {end}")

    # ---- what the client was told against what the runs recorded ----------------------------

    def check_requests(self) -> None:
        for request in self.chaos.requests:
            if request.status is not None and request.status >= 500 and not request.busy:
                self.problem(f"{request.describe()}: a 5xx is never an answer; body {str(request.answer)[:300]}")
        by_nonce: dict[str, list[Request]] = defaultdict(list)
        for request in self.chaos.requests:
            if request.nonce:
                by_nonce[request.nonce].append(request)
        seen = self._recorded_nonces()
        for secret, requests in by_nonce.items():
            self._check_nonce(secret, requests, seen.get(secret, []))
        self._check_one_per_step()
        for scenario in self.scenarios:
            for pair in scenario.races:
                self._check_race(scenario, pair)
        self._check_cancels()

    def _recorded_nonces(self) -> dict[str, list[tuple[str, dict]]]:
        """nonce -> the (run, event) that recorded it: callback payloads and decision comments."""
        found: dict[str, list[tuple[str, dict]]] = defaultdict(list)
        for run_id, events in self.events.items():
            for event in events:
                if event["type"] == "callback_received" and isinstance(event.get("payload"), dict):
                    found[str(event["payload"].get("nonce"))].append((run_id, event))
                elif event["type"] == "decision" and str(event.get("comment") or "").startswith("nonce "):
                    found[event["comment"][6:]].append((run_id, event))
        return found

    def _check_nonce(self, secret: str, requests: list[Request], recorded: list[tuple[str, dict]]) -> None:
        first = requests[0]
        kind, run_id, step = first.kind, first.run, first.step
        acked = [r for r in requests if r.acknowledged]
        refused = [r for r in requests if r.refused]
        doubtful = [r for r in requests if r.in_doubt]
        where = f"{kind} nonce {secret} for run {run_id} step {step} ({self.scenario_of(run_id)})"
        wrong_place = [(r, e) for r, e in recorded if r != run_id or e.get("step") != step]
        if wrong_place:
            self.problem(f"{where} was recorded elsewhere: {[(r, e.get('step'), e['seq']) for r, e in wrong_place]}")
        count = len(recorded)
        if acked:
            self.acknowledged[kind] += 1
            if count == 0:  # even a run that ended before the step records what was accepted for it
                record = self.runs.get(run_id) or {}
                state = (record.get("steps") or {}).get(step) or {}
                self.lost += 1
                self.problem(f"LOST: {where}: acknowledged by {acked[0].describe()}, but no event of the run "
                             f"records it (run {record.get('status')}, step {state.get('status')}, "
                             f"{len(requests)} requests carried it)")
        if count > 1:
            self.duplicated += 1
            self.problem(f"DUPLICATED: {where} is recorded {count} times: events "
                         f"{[e['seq'] for _, e in recorded]}")
        busy = [r for r in requests if r.busy]
        if busy and count and not acked:
            self.problem(f"{where} was answered 503 ({busy[0].describe()}) and yet the run recorded it")
        if not acked and count:
            if refused:
                self.problem(f"{where} was refused ({refused[-1].describe()}: {_error(refused[-1])}) and yet the "
                             f"run recorded it (event {recorded[0][1]['seq']})")
            elif not doubtful:
                self.problem(f"{where} never reached the daemon (connection refused) and yet the run recorded it")
        if acked and refused:
            self.problem(f"{where}: the same body was acknowledged ({acked[0].describe()}) and refused "
                         f"({refused[0].describe()}: {_error(refused[0])}); an identical callback again is 200")
        if kind == "decision" and first.label == "early":
            self._check_early(where, first, count)
        if kind == "decision" and acked and count == 1:
            state = self.runs[run_id]["steps"][step]
            body = first.body
            if (state.get("comment"), state.get("decided_by"), state.get("decision")) != (
                    body["comment"], first.user, body["decision"]):
                self.problem(f"{where}: acknowledged and in the events, but run.json's step says decision "
                             f"{state.get('decision')} by {state.get('decided_by')} comment {state.get('comment')!r}")
        if kind == "callback" and acked and count == 1:
            record = self.runs[run_id]
            received = ((record.get("callbacks_received") or {}).get(step) or {}).get("payload") or {}
            if received.get("nonce") != secret:
                self.problem(f"{where}: acknowledged and in the events, but run.json's callbacks_received "
                             f"holds {received}")
            state = record["steps"][step]
            if state["status"] == "succeeded" and (state.get("payload") or {}).get("nonce") != secret:
                self.problem(f"{where}: step {step} succeeded with payload {state.get('payload')}")

    def _check_early(self, where: str, request: Request, count: int) -> None:
        """A decision sent while the run was held in an earlier step is refused at once (409), never applied."""
        if request.acknowledged:
            self.problem(f"{where}: sent while the run was held in step prep, it was acknowledged "
                         f"({request.describe()}); a decision for a step that is not waiting is 409")
        elif request.error == "ReadTimeout" and request.kills_after == request.kills_before:
            self.problem(f"{where}: sent while the run was held in step prep, it got no answer within "
                         f"{EARLY_TIMEOUT:.0f} s (the daemon stayed up); a decision for a step that is not waiting "
                         "is refused at once")
        elif request.status is not None and request.status != 409:
            self.problem(f"{where}: sent while the run was held in step prep, answered {request.status} "
                         f"({_error(request)}); expected 409")
        if count:
            self.problem(f"{where}: sent while the run was held in step prep, and the run applied it "
                         "(a reviewer decided on a context that was never rendered)")

    def _check_one_per_step(self) -> None:
        """At most one callback and one final decision per step visit, whatever was sent."""
        for run_id, events in self.events.items():
            per_step = Counter((e["type"], e.get("step")) for e in events
                               if e["type"] == "callback_received" or (e["type"] == "decision" and e.get("final")))
            for (kind, step), count in per_step.items():
                if count > 1:
                    self.duplicated += 1
                    self.problem(f"DUPLICATED: run {run_id} ({self.scenario_of(run_id)}) recorded {count} {kind} "
                                 f"events for step {step}")

    def _check_race(self, scenario: Scenario, pair: tuple[Request, Request]) -> None:
        run_id = scenario.run_id
        record, events = self.runs.get(run_id) or {}, self.events.get(run_id, [])
        decided = [e for e in events if e["type"] == "decision" and e.get("step") == "review"]
        acked = [r for r in pair if r.acknowledged]
        where = f"racing approve/reject on run {run_id}"
        if len(acked) == 2:
            self.duplicated += 1
            self.problem(f"DUPLICATED: {where}: both were acknowledged ({pair[0].describe()}; {pair[1].describe()})")
        if len(decided) > 1:
            self.problem(f"{where}: {len(decided)} decisions applied: {[(e['by'], e['decision']) for e in decided]}")
        if len(acked) == 1 and decided and decided[0]["by"] != acked[0].user:
            self.problem(f"{where}: {acked[0].user} was told their decision won, but {decided[0]['by']}'s applied")
        if acked:
            winner = acked[0].body["decision"]
            expected = {"approve": ("succeeded", "failed"), "reject": ("rejected",)}[winner]
            if record.get("status") not in expected:
                self.problem(f"{where}: {acked[0].user}'s {winner} won, but the run ended {record.get('status')} "
                             f"(expected {' or '.join(expected)}; error {record.get('error')})")
        elif not decided and not any(r.in_doubt for r in pair):
            deadline = (record.get("steps", {}).get("review") or {}).get("deadline")
            answered = [r for r in pair if r.refused]
            if deadline and answered and all(r.kills_after == r.kills_before for r in answered):
                late = [r for r in answered if r.sent_at >= _epoch(deadline) - 0.5]
                if not late:
                    self.problem(f"{where}: both refused well before the step's deadline ({deadline}) while the "
                                 f"daemon stayed up: {[(r.status, _error(r)) for r in answered]}")

    def _check_cancels(self) -> None:
        cancelled_by_request = set()
        for request in self.chaos.requests:
            if request.kind != "cancel":
                continue
            if request.acknowledged or request.in_doubt:
                cancelled_by_request.add(request.run)
            if not request.acknowledged:
                continue
            self.acknowledged["cancel"] += 1
            final = (self.runs.get(request.run) or {}).get("status")
            told = (request.answer or {}).get("status")
            if told not in TERMINAL:
                self.problem(f"cancel of run {request.run} ({self.scenario_of(request.run)}) was acknowledged with the "
                             f"run still {told} ({request.describe()}); its status at the end: {final}")
            elif told != final:
                self.problem(f"cancel of run {request.run}: acknowledged with the run {told}, but it ended {final}")
        for run_id, record in self.runs.items():
            if record["status"] == "cancelled" and run_id not in cancelled_by_request:
                self.problem(f"run {run_id} ({self.scenario_of(run_id)}) ended cancelled ({record.get('error')}) but "
                             "nobody's cancel reached the daemon")

    # ---- the data dir, after a graceful stop ------------------------------------------------

    def check_files(self) -> None:
        data = self.chaos.daemon.data
        store = FileStore(data)
        for run_id, final in self.runs.items():
            where = f"run {run_id} ({self.scenario_of(run_id)})"
            try:
                snapshot = json.loads((data / "runs" / run_id / "run.json").read_text())
            except (OSError, ValueError) as exc:
                self.problem(f"{where}: no readable run.json ({exc})")
                continue
            if snapshot.get("status") != final["status"]:
                self.problem(f"{where}: run.json says {snapshot.get('status')} but its log says {final['status']} "
                             "(the snapshot was never repaired)")
            verification = store.verify(run_id)
            if not verification.ok:
                self.problem(f"{where}: runs verify: {verification.problems}")
            for error in run_schema_errors(snapshot)[:3]:
                self.problem(f"{where}: run.json breaks schema/run.schema.json: {error}")
        for path in sorted(data.rglob("*")):
            relative = path.relative_to(data)
            if TEMP_NAME.match(path.name):
                self.problem(f"temp file left in the data dir: {relative}")
            elif len(relative.parts) == 4 and relative.parts[0] == "runs" and relative.parts[2] == "work":
                self.problem(f"a shell attempt's work folder left in the data dir: {relative}")
        journal = data / "inbox.jsonl"
        left = [json.loads(line) for line in journal.read_bytes().splitlines()] if journal.exists() else []
        for entry in left:
            self.problem(f"the callback journal still holds an entry after every run ended and the daemon stopped: "
                         f"run {entry.get('run')} step {entry.get('step')} body {str(entry.get('body'))[:80]}")
        self._check_side_effects()

    def _check_side_effects(self) -> None:
        """Each shell attempt ran at most once; no step ran more attempts than its retry policy allows."""
        lines = self.chaos.side.read_text().splitlines() if self.chaos.side.exists() else []
        attempts: dict[tuple[str, str], list[int]] = defaultdict(list)
        for number, line in enumerate(lines, 1):
            parts = line.split()
            if len(parts) != 3 or not parts[2].isdigit():
                self.problem(f"side-effect line {number} is malformed: {line!r}")
                continue
            attempts[(parts[0], parts[1])].append(int(parts[2]))
        for (run_id, step), seen in sorted(attempts.items()):
            record = self.runs.get(run_id)
            where = f"run {run_id} ({self.scenario_of(run_id)}) step {step}"
            if record is None:
                self.problem(f"side effects of {where}, a run that is not on disk: attempts {seen}")
                continue
            allowed = SHELL_ATTEMPTS[(record["flow"], step)]
            repeated = sorted(a for a, n in Counter(seen).items() if n > 1)
            if repeated:
                self.duplicated += 1
                self.problem(f"DUPLICATED: {where}: attempt(s) {repeated} ran more than once (attempts seen {seen})")
            if len(seen) > allowed or max(seen) > allowed:
                self.problem(f"{where}: ran {len(seen)} times (attempts {seen}); its retry policy allows {allowed}")
            started = {e["attempt"] for e in self.events[run_id] if e["type"] == "step_started" and e["step"] == step}
            ghosts = sorted(set(seen) - started)
            if ghosts:
                self.problem(f"{where}: attempt(s) {ghosts} ran but the run has no step_started event for them")

    # ---- the report -----------------------------------------------------------------------

    def summary(self) -> str:
        return (f"chaos seed {self.chaos.seed}: runs {len(self.runs)}, kills {self.chaos.kills}, "
                f"callbacks acknowledged {self.acknowledged['callback']}, decisions acknowledged "
                f"{self.acknowledged['decision']}, cancels acknowledged {self.acknowledged['cancel']}, "
                f"requests {len(self.chaos.requests)} (503 run_locked {sum(r.busy for r in self.chaos.requests)}), "
                f"lost {self.lost}, duplicated {self.duplicated}, "
                f"problems {len(self.problems) + len(self.chaos.problems)}")


def _has_events(folder) -> bool:
    log = folder / "events.jsonl"
    return log.exists() and log.stat().st_size > 0


def _error(request: Request) -> str:
    answer = request.answer if isinstance(request.answer, dict) else {}
    return str((answer.get("error") or {}).get("message") or request.answer)[:200]


def _epoch(text: str) -> float:
    return parse_rfc3339(text).timestamp()
