"""GET /api/v1/openapi.json: a valid OpenAPI 3.1 document of every route the app serves, and true to its answers.

- The document is checked against the published OpenAPI 3.1 schema (the copy schemathesis ships and
  its loader checks with), every schema in it against the JSON Schema 2020-12 meta-schema, and every
  `$ref` resolves inside it.
- Every Route of the real app (its `routes`, walked; the /ui pages excluded) has its path and method in
  the document, and every documented operation is served.
- Real answers of a running daemon (health, flows untagged and tagged, runs started, listed, read, their
  events, pending approvals, a decision, callbacks and their replay, a webhook run, a cancel, live
  changes, the metrics, errors of each kind) validate against the schema the document gives for their
  method, path and status, with the media type it names.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import httpx
import pytest
from jsonschema import Draft202012Validator
from schemathesis.specs.openapi.definitions import OPENAPI_31_VALIDATOR
from starlette.routing import Mount, Route

from daemon_support import InProcessDaemon
from gitops_support import GitOpsDaemon
from runner.cli.app import Env
from runner.daemon import openapi
from runner.daemon.serve import build
from runner.schemas import load_schema
from support import approval_step, callback_step, flow_doc, set_step

FLOWS = {
    "gate": flow_doc("gate", approval_step(inputs={"score": {"type": "number"}}), inputs={"who": {"type": "string",
                                                                                                 "default": "you"}}),
    "worker": flow_doc("worker", callback_step()),
    "numbers": flow_doc("numbers", set_step("show", {"n": "${{ inputs.n }}"}), inputs={"n": {"type": "number",
                                                                                             "default": 1}},
                        triggers=[{"webhook": {"secret": "hook-secret"}}]),
}


def documented_operations(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {(method.upper(), path) for path, item in document["paths"].items() for method in item}


def served_operations(app: Any) -> set[tuple[str, str]]:
    """(method, path) of every Route of the app; HEAD is starlette's own twin of GET."""
    found = set()
    for route in app.routes:
        if isinstance(route, Mount):
            assert route.path == "/ui", f"an unexpected mount {route.path}: document it or exclude it here"
            continue
        assert isinstance(route, Route), route
        found |= {(method, route.path) for method in route.methods or {"GET"} if method != "HEAD"}
    return found


@pytest.fixture(scope="module")
def real_app(tmp_path_factory: pytest.TempPathFactory):
    """The app `signoff serve` builds (not started: its routes are what is looked at)."""
    root = InProcessDaemon.lay_out(tmp_path_factory.mktemp("app"), {"gate": FLOWS["gate"]}, users=True)
    daemon, app, _, _ = build(Env(None, str(root / "repo"), str(root / "signoff.yaml")))
    yield app
    daemon.inbox.close()
    daemon.threads.shutdown()


# ---- the document itself -------------------------------------------------------------------------


def walk(node: Any, where: str = "#"):
    if isinstance(node, dict):
        yield where, node
        for key, value in node.items():
            yield from walk(value, f"{where}/{str(key).replace('~', '~0').replace('/', '~1')}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def pointed(document: dict[str, Any], pointer: str) -> Any:
    node: Any = document
    for part in pointer.removeprefix("#/").split("/"):
        part = part.replace("~1", "/").replace("~0", "~")
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi.document("http://127.0.0.1:8080")
    problems = [f"{'/'.join(map(str, error.instance_path))}: {error.message[:200]}"
                for error in OPENAPI_31_VALIDATOR.iter_errors(document)]  # what schemathesis's loader checks
    assert not problems, "\n".join(problems)
    assert document["openapi"].startswith("3.1.") and document["jsonSchemaDialect"] == openapi.DIALECT
    Draft202012Validator.check_schema({"$defs": document["components"]["schemas"]})
    ids = [operation["operationId"] for item in document["paths"].values() for operation in item.values()]
    assert len(ids) == len(set(ids)), sorted(ids)
    for where, node in walk(document):
        target = node.get("$ref")
        if isinstance(target, str):
            assert target.startswith("#/"), f"{where}: a $ref out of the document: {target}"
            pointed(document, target)  # a KeyError names the dangling reference


def test_run_records_are_the_shipped_run_schema() -> None:
    embedded = openapi.document()["components"]["schemas"]["Run"]
    shipped = load_schema("run")
    assert embedded["properties"].keys() == shipped["properties"].keys()
    assert embedded["required"] == shipped["required"]
    assert embedded["$defs"].keys() == shipped["$defs"].keys()
    assert embedded["properties"]["status"] == {"$ref": "#/components/schemas/Run/$defs/run_status"}


def test_every_route_of_the_app_is_documented_and_every_documented_one_served(real_app: Any) -> None:
    document = openapi.document()
    served, documented = served_operations(real_app), documented_operations(document)
    assert served - documented == set(), "routes the app serves that the document lacks"
    assert documented - served == set(), "documented operations that nothing serves"
    assert not any(path.startswith("/ui") for path in document["paths"])
    assert "/ui/" in document["info"]["description"]


def test_auth_is_documented_per_operation() -> None:
    document = openapi.document()
    open_ones = {(method.upper(), path) for path, item in document["paths"].items()
                 for method, operation in item.items() if operation["security"] == []}
    assert open_ones == {("GET", "/api/v1/health"), ("GET", openapi.PATH), ("GET", "/metrics"),
                         ("POST", "/callbacks/{token}"), ("POST", "/hooks/{flow}"), ("POST", "/api/v1/git/webhook")}
    for path, item in document["paths"].items():
        for method, operation in item.items():
            assert ("401" in operation["responses"]) == (operation["security"] != [] or "X-Hub-Signature-256" in
                                                         json.dumps(operation.get("parameters", []))), (method, path)


# ---- real answers against the document ------------------------------------------------------------


class Answers:
    """Real answers, each checked against the schema the served document gives for it."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.seen: set[tuple[str, str, int]] = set()

    def check(self, method: str, template: str, response: httpx.Response) -> httpx.Response:
        status = response.status_code
        where = f"{method} {template} -> {status}: {response.text[:300]}"
        responses = self.document["paths"][template][method.lower()]["responses"]
        assert str(status) in responses, f"undocumented status; {where}"
        pointer = f"#/paths/{template.replace('~', '~0').replace('/', '~1')}/{method.lower()}/responses/{status}"
        answer = pointed(self.document, pointer)
        if "$ref" in answer:
            pointer, answer = answer["$ref"], pointed(self.document, answer["$ref"])
        media = response.headers.get("content-type", "").split(";")[0].strip()
        content = answer.get("content", {})
        key = media if media in content else "*/*"
        assert key in content, f"media type {media} not documented; {where}"
        for header in answer.get("headers", {}):
            assert header in response.headers, f"documented header {header} missing; {where}"
        if media == "application/json":
            schema = {**self.document, "$ref": f"{pointer}/content/{key.replace('/', '~1')}/schema"}
            problems = [f"{'/'.join(map(str, error.absolute_path))}: {error.message[:300]}"
                        for error in Draft202012Validator(schema).iter_errors(response.json())]
            assert not problems, f"the answer does not match its schema; {where}\n" + "\n".join(problems)
        self.seen.add((method, template, status))
        return response


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    daemon = GitOpsDaemon(tmp_path_factory.mktemp("openapi"), flows=FLOWS, hook_secrets=("hook-secret",))
    with daemon:
        served = daemon.api(None).get(openapi.PATH)
        assert served.status_code == 200 and served.headers["content-type"] == "application/json"
        assert served.json() == openapi.document(daemon.public_url)
        yield daemon, Answers(served.json())


def test_real_answers_match_the_document(world: tuple[GitOpsDaemon, Answers], real_app: Any) -> None:
    daemon, answers = world
    check, api, nobody = answers.check, daemon.api("alice"), daemon.api(None)

    def check_served(method: str, template: str, url: str, user: str = "alice") -> None:
        check(method, template, daemon.api(user).request(method, url))

    check("GET", "/api/v1/health", nobody.get("/api/v1/health"))
    check("GET", openapi.PATH, nobody.get(openapi.PATH))
    check("GET", "/api/v1/flows", api.get("/api/v1/flows"))  # untagged: the working tree's flows
    check("GET", "/api/v1/flows", nobody.get("/api/v1/flows"))  # 401
    gate = check("POST", "/api/v1/flows/{flow}/runs", api.post("/api/v1/flows/gate/runs", json={})).json()
    check("POST", "/api/v1/flows/{flow}/runs", api.post("/api/v1/flows/nope/runs", json={}))  # 404
    check("POST", "/api/v1/flows/{flow}/runs", api.post("/api/v1/flows/gate/runs", content=b"{"))  # 422
    check("POST", "/api/v1/flows/{flow}/runs", daemon.api("rita").post("/api/v1/flows/gate/runs", json={}))  # 403
    big = b'{"inputs": {"who": "' + b"x" * (1024 * 1024) + b'"}}'
    check("POST", "/api/v1/flows/{flow}/runs", api.post("/api/v1/flows/gate/runs", content=big))  # 413
    waiting = daemon.wait_step(gate["id"], "review")
    check("GET", "/api/v1/runs/{run_id}", api.get(f"/api/v1/runs/{gate['id']}"))
    check("GET", "/api/v1/runs/{run_id}", api.get("/api/v1/runs/20261124t190812z-3f9a2c1b"))  # 404
    check("GET", "/api/v1/runs", api.get("/api/v1/runs", params={"limit": 1}))
    check("GET", "/api/v1/runs", api.get("/api/v1/runs", params={"status": "bogus"}))  # 422
    check("GET", "/api/v1/runs/{run_id}/events", api.get(f"/api/v1/runs/{gate['id']}/events"))
    check("GET", "/api/v1/runs/{run_id}/events", api.get(f"/api/v1/runs/{gate['id']}/events?after=x"))  # 422
    for route in ("/api/v1/runs/{run_id}/verify", "/api/v1/runs/{run_id}/logs"):
        check_served("GET", route, route.format(run_id=gate["id"]))
        check_served("GET", route, route.format(run_id="20261124t190812z-3f9a2c1b"))  # 404
    pending = check("GET", "/api/v1/pending", daemon.api("bob").get("/api/v1/pending")).json()
    assert [entry["run"] for entry in pending["pending"]] == [gate["id"]]
    decision = f"/api/v1/runs/{gate['id']}/steps/review/decision"
    template = "/api/v1/runs/{run_id}/steps/{step_id}/decision"
    check("POST", template, api.post(decision, json={"decision": "approve"}))  # 403: alice started it
    check("POST", template, daemon.api("bob").post(decision, json={"decision": "maybe"}))  # 422
    check("POST", template, daemon.api("bob").post(decision, json={
        "decision": "approve", "inputs": {"score": 3}, "context_sha256": waiting["steps"]["review"]["context_sha256"]}))
    check("POST", template, daemon.api("bob").post(decision, json={"decision": "approve"}))  # 409: decided

    worker = daemon.start_run("worker")
    token = daemon.wait_step(worker["id"], "done")["callbacks"]["done"]
    check("POST", "/callbacks/{token}", daemon.post_callback(token, {"result": 1}))  # 202
    check("POST", "/callbacks/{token}", daemon.post_callback(token, {"result": 1}))  # 200, a replay
    check("POST", "/callbacks/{token}", daemon.post_callback(token, {"result": 2}))  # 409
    check("POST", "/callbacks/{token}", daemon.post_callback("nope", {}))  # 404
    check("POST", "/callbacks/{token}", daemon.post_callback(daemon.start_run("worker")["callbacks"]["done"],
                                                              b"NaN"))  # 422
    finished = daemon.wait_end(worker["id"])
    check("POST", "/api/v1/runs/{run_id}/cancel", api.post(f"/api/v1/runs/{finished['id']}/cancel"))
    other = daemon.start_run("gate")
    check("POST", "/api/v1/runs/{run_id}/cancel", daemon.api("dave").post(f"/api/v1/runs/{other['id']}/cancel"))
    check("POST", "/api/v1/runs/{run_id}/cancel", api.post(f"/api/v1/runs/{other['id']}/cancel"))
    check("GET", "/api/v1/resources/{sha256}", api.get("/api/v1/resources/" + "0" * 64))  # 404
    large = daemon.start_run("worker")
    check("POST", "/callbacks/{token}", daemon.post_callback(large["callbacks"]["done"], {"blob": "b" * 70_000}))
    stored = daemon.wait_end(large["id"])["steps"]["done"]["payload"]
    assert stored.startswith("res://"), stored
    check("GET", "/api/v1/resources/{sha256}", api.get(f"/api/v1/resources/{stored.removeprefix('res://')}"))
    check("GET", "/metrics", nobody.get("/metrics"))

    daemon.tag("v1.0.0")
    daemon.wait_live("numbers", "v1.0.0")
    check("GET", "/api/v1/health", nobody.get("/api/v1/health"))
    check("GET", "/api/v1/flows", api.get("/api/v1/flows"))  # tagged: live versions, drafts, refusals
    check("POST", "/hooks/{flow}", daemon.hook("numbers", {"n": 2}))  # 201
    check("POST", "/hooks/{flow}", daemon.hook("numbers", {"n": 2}, secret="wrong"))  # 401
    check("POST", "/hooks/{flow}", daemon.hook("gate", {}))  # 404: no webhook trigger
    check("POST", "/api/v1/git/webhook", daemon.push_webhook())  # 202
    check("POST", "/api/v1/git/webhook", daemon.push_webhook(sign=False))  # 401
    release = "/api/v1/flows/{flow}/release"
    rita = daemon.api("rita")
    check("POST", release, rita.post("/api/v1/flows/gate/release", json={"version": "1.1.0", "reason": "why"}))
    check("POST", release, rita.post("/api/v1/flows/gate/release", json={"version": "1.0.0"}))  # 422: not higher
    check("POST", release, api.post("/api/v1/flows/gate/release", json={"version": "2.0.0"}))  # 403
    root = daemon.api("root")
    check("POST", "/api/v1/flows/{flow}/pin", root.post("/api/v1/flows/gate/pin", json={"version": "1.1.0"}))
    check("POST", "/api/v1/flows/{flow}/pin", root.post("/api/v1/flows/gate/pin", json={"version": "9.9.9"}))  # 404
    check("POST", "/api/v1/flows/{flow}/unpin", root.post("/api/v1/flows/gate/unpin", json={}))
    check("POST", "/api/v1/flows/{flow}/yank", root.post("/api/v1/flows/gate/yank", json={"version": "1.1.0"}))
    check("POST", "/api/v1/flows/{flow}/unyank", root.post("/api/v1/flows/gate/unyank", json={"version": "1.1.0"}))
    check("GET", "/api/v1/flows", api.get("/api/v1/flows"))
    check_served("GET", "/api/v1/releases", "/api/v1/releases")
    check_served("GET", "/api/v1/flows/{flow}/diff", "/api/v1/flows/gate/diff?ref=main")
    check_served("GET", "/api/v1/flows/{flow}/diff", "/api/v1/flows/nope/diff")  # 404

    statuses = {status for _, _, status in answers.seen}
    assert {200, 201, 202, 401, 403, 404, 409, 413, 422} <= statuses, sorted(answers.seen)
