"""The running daemon fuzzed from the document it serves (schemathesis), bounded.

The schema is loaded from GET /api/v1/openapi.json of a real daemon on a loopback port;
every operation it documents and the app serves gets a fixed number of generated
requests (SIGNOFF_OPENAPI_EXAMPLES, default 8), derandomized, no example database, no
deadline, no shrinking, valid and invalid data both. Requests carry an admin's token
(an approver's for decisions), so the generator reaches past the 401s; most path parameters are swapped for real
run ids, steps, flows and callback tokens, so requests reach the runs themselves and not
only 404s; a long poll's `wait` is cut to a few milliseconds. The checks: no 5xx, only
statuses the operation documents, the documented media type, the documented headers,
and every answer valid against its documented schema.

Hand-written malformed bytes, encodings and signatures are tests/daemon/test_fuzz_routes.py's.
"""

from __future__ import annotations

import hashlib
import os

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (content_type_conformance, response_headers_conformance,
                                               response_schema_conformance, status_code_conformance)

from starlette.routing import Route

from daemon_support import InProcessDaemon
from gitops_support import GitOpsDaemon
from runner.cli.app import Env
from runner.daemon.openapi import OPERATIONS
from runner.daemon.serve import build
from support import approval_step, callback_step, flow_doc, set_step

EXAMPLES = int(os.environ.get("SIGNOFF_OPENAPI_EXAMPLES", "8"))
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
FLOWS = {
    "gate": flow_doc("gate", approval_step(allow_self_approval=True, inputs={"score": {"type": "number"}})),
    "worker": flow_doc("worker", callback_step()),
    "numbers": flow_doc("numbers", set_step("show", {"n": "${{ inputs.n }}"}),
                        inputs={"n": {"type": "number", "default": 1}},
                        triggers=[{"webhook": {"secret": "hook-secret"}}]),
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    daemon = GitOpsDaemon(tmp_path_factory.mktemp("openapi-fuzz"), flows=FLOWS, hook_secrets=("hook-secret",))
    daemon.tag("v1.0.0")
    with daemon:
        daemon.wait_live("numbers", "v1.0.0")
        gates = [daemon.wait_step(daemon.start_run("gate")["id"], "review")["id"] for _ in range(3)]
        spares = [daemon.start_run("gate")["id"] for _ in range(2)]
        worker = daemon.wait_step(daemon.start_run("worker")["id"], "done")
        done = daemon.wait_end(daemon.start_run("numbers")["id"])["id"]
        real = {  # what a generated path parameter may be swapped for
            "run_id": [*gates, worker["id"], done], "step_id": ["review"], "flow": list(FLOWS),
            "token": [worker["callbacks"]["done"]],
            "cancel": [*spares, done],  # the runs a cancel may end (the others stay for decisions, callbacks)
        }
        yield daemon, real


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(method, path) of every Route of the app `signoff serve` builds (built, not started)."""
    root = InProcessDaemon.lay_out(tmp_path_factory.mktemp("app"), FLOWS, users=True)
    daemon, app, _, _ = build(Env(None, str(root / "repo"), str(root / "signoff.yaml")))
    daemon.inbox.close()
    daemon.threads.shutdown()
    return {(method, route.path) for route in app.routes if isinstance(route, Route) for method in route.methods}



@pytest.fixture(scope="module")
def contract(world):
    """The document as the daemon serves it, loaded by schemathesis."""
    daemon, _ = world
    return schemathesis.openapi.from_url(f"{daemon.url}/api/v1/openapi.json")


def real_instead(value: object, choices: list[str]) -> object:
    """Two times in three a real value in place of a generated one, picked by the generated one (so derandomized)."""
    digest = hashlib.sha256(repr(value).encode()).digest()
    return value if digest[0] % 3 == 0 else choices[digest[1] % len(choices)]


@pytest.mark.parametrize("method, path", [(op.method, op.path) for op in OPERATIONS],
                         ids=[f"{op.method} {op.path}" for op in OPERATIONS])
def test_every_answer_is_one_the_document_gives(method: str, path: str, world, contract, served) -> None:
    if (method, path) not in served:
        pytest.skip("documented, not served yet")
    daemon, real = world
    operation = contract[path][method]
    cases = st.one_of(operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE))
    seen: dict[int, int] = {}
    who = "bob" if path.endswith("/decision") else "root"  # an approver (an admin is none); else the admin

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck), phases=[Phase.explicit, Phase.generate])
    @given(case=cases)
    def fuzz(case) -> None:
        for name, value in list((case.path_parameters or {}).items()):
            choices = real["cancel"] if name == "run_id" and path.endswith("/cancel") else real.get(name)
            if choices:
                case.path_parameters[name] = real_instead(value, choices)
        if case.query and "wait" in case.query:
            case.query["wait"] = "0.01"  # a long poll may not hold the fuzzer up
        response = case.call(base_url=daemon.url, headers={"Authorization": f"Bearer {daemon.tokens[who]}"},
                             timeout=30)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        case.validate_response(response, checks=CHECKS)

    fuzz()
    print(f"{method} {path}: statuses {dict(sorted(seen.items()))}")


def test_after_the_fuzzing_the_daemon_is_healthy(world) -> None:
    daemon, _ = world
    assert daemon.api(None).get("/api/v1/health").json()["ok"] is True
    assert "Traceback" not in daemon.log_path.read_text(errors="replace"), daemon.log_tail(80)
