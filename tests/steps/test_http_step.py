"""The `http` step against a real HTTP server on loopback, through connections from a real config file."""

from __future__ import annotations

import asyncio

import pytest

from runner.status import StepStatus

from support import HttpServer, Request, all_file_bytes, free_port, harness_with_config, json_reply

SECRET = "Bearer s3cr3t-api-token-5d1e"


def _echo(req: Request, nth: int):
    """Answers with what it received, the Authorization header included (as a careless API might)."""
    body = {"id": 42, "received": req.json() if req.body else None, "auth": req.headers.get("Authorization")}
    status, headers, payload = json_reply(201, body)
    return status, {**headers, "X-Echo-Auth": req.headers.get("Authorization", "")}, payload


def _flaky(req: Request, nth: int):
    return json_reply(503, {"error": "warming up"}) if nth <= 2 else json_reply(200, {"healthy": True, "calls": nth})


ROUTES = {
    "POST /items": _echo,
    "GET /teapot": lambda req, n: json_reply(418, {"error": "teapot"}),
    "GET /flaky": _flaky,
    "GET /down": lambda req, n: json_reply(503, {"error": "down", "auth": req.headers.get("Authorization")}),
    "GET /text": lambda req, n: (200, {"Content-Type": "text/plain; charset=utf-8"}, b"plain answer"),
}


@pytest.fixture
def api():
    with HttpServer(ROUTES) as server:
        yield server


@pytest.fixture
def harness(tmp_path, monkeypatch, api):
    monkeypatch.setenv("API_TOKEN", SECRET)
    return harness_with_config(tmp_path, {"connections": {
        "api": {"kind": "http", "base_url": api.url,
                "headers": {"Authorization": {"env": "API_TOKEN"}, "X-Static": "static-value"}},
        "prod": {"kind": "http", "base_url": api.url, "live_only": True},
        "prod-with-stand-in": {"kind": "http", "base_url": f"http://127.0.0.1:{free_port()}", "live_only": True,
                               "draft_replacement": "api"},
        "gone": {"kind": "http", "base_url": f"http://127.0.0.1:{free_port()}"},
    }})


def test_method_path_query_json_and_headers_arrive(harness, api):
    record = harness.run("""\
name: post-item
inputs:
  tag: {type: string, default: blue}
  count: {type: integer, default: 3}
steps:
  - id: create
    kind: http
    connection: api
    method: POST
    path: /items
    query: {q: "x y", n: "${{ inputs.count }}"}
    headers: {X-Tag: "${{ inputs.tag }}"}
    json:
      tag: ${{ inputs.tag }}
      count: ${{ inputs.count }}
      nested: {list: [1, "two"], flag: true}
  - id: use
    kind: set
    values: {id: "${{ steps.create.outputs.json.id }}", status: "${{ steps.create.outputs.status }}"}
""")
    assert record["status"] == "succeeded", record["error"]
    assert len(api.requests) == 1
    request = api.requests[0]
    assert request.method == "POST"
    assert request.path == "/items"
    assert request.query == {"q": ["x y"], "n": ["3"]}
    assert request.json() == {"tag": "blue", "count": 3, "nested": {"list": [1, "two"], "flag": True}}
    assert request.headers["Authorization"] == SECRET
    assert request.headers["X-Static"] == "static-value"
    assert request.headers["X-Tag"] == "blue"
    assert request.headers["Content-Type"] == "application/json"
    outputs = record["steps"]["create"]["outputs"]
    assert outputs["status"] == 201
    assert outputs["json"]["id"] == 42
    assert outputs["json"]["received"]["count"] == 3
    assert outputs["json"]["auth"] == "***"  # the echoed secret is masked
    assert outputs["headers"]["x-echo-auth"] == "***"
    assert record["steps"]["use"]["outputs"] == {"id": 42, "status": 201}


def test_a_non_json_answer_becomes_body(harness, api):
    record = harness.run("name: text\nsteps:\n  - {id: get, kind: http, connection: api, path: /text}\n")
    assert record["status"] == "succeeded"
    outputs = record["steps"]["get"]["outputs"]
    assert outputs["body"] == "plain answer"
    assert "json" not in outputs
    assert api.requests[0].method == "GET"


def test_an_unexpected_status_fails_the_step_without_retrying(harness, api):
    record = harness.run("""\
name: teapot
steps:
  - id: get
    kind: http
    connection: api
    path: /teapot
    expect: 200
    retry: {attempts: 3, backoff: 1s}
""")
    assert record["status"] == "failed"
    state = record["steps"]["get"]
    assert state["status"] == StepStatus.FAILED.value
    assert state["attempts"] == 1
    assert "answered 418, expected 200" in state["error"]
    assert state["outputs"]["status"] == 418
    assert state["outputs"]["json"] == {"error": "teapot"}
    assert api.calls["GET /teapot"] == 1


def test_an_expected_non_2xx_status_succeeds(harness, api):
    record = harness.run("name: teapot-ok\nsteps:\n"
                         "  - {id: get, kind: http, connection: api, path: /teapot, expect: [200, 418]}\n")
    assert record["status"] == "succeeded"
    assert record["steps"]["get"]["outputs"]["status"] == 418


def test_a_503_is_retried_until_a_200(harness, api):
    record = harness.run("""\
name: warmup
steps:
  - id: check
    kind: http
    connection: api
    path: /flaky
    retry: {attempts: 4, backoff: 2s}
""")
    assert record["status"] == "succeeded", record["error"]
    state = record["steps"]["check"]
    assert state["attempts"] == 3
    assert state["outputs"]["json"] == {"healthy": True, "calls": 3}
    assert api.calls["GET /flaky"] == 3
    retrying = [e for e in harness.history(record["id"]) if e["type"] == "step_retrying"]
    assert len(retrying) == 2
    assert all("503" in e["error"] for e in retrying)
    assert len(harness.clock.slept) == 2


def test_a_5xx_after_the_last_attempt_fails_with_the_masked_answer(harness, api):
    record = harness.run("""\
name: down
steps:
  - id: check
    kind: http
    connection: api
    path: /down
    retry: {attempts: 2, backoff: 1s}
""")
    assert record["status"] == "failed"
    state = record["steps"]["check"]
    assert state["attempts"] == 2
    assert "answered 503" in state["error"]
    assert state["outputs"]["json"] == {"error": "down", "auth": "***"}
    assert api.calls["GET /down"] == 2


def test_a_refused_connection_fails_with_a_clear_error(harness, api):
    port = harness.config.connections["gone"].spec["base_url"].rsplit(":", 1)[1]
    record = harness.run("""\
name: nobody
steps:
  - id: call
    kind: http
    connection: gone
    path: /anything
    retry: {attempts: 2, backoff: 1s}
""")
    assert record["status"] == "failed"
    state = record["steps"]["call"]
    assert state["attempts"] == 2  # transport errors are worth a retry
    assert f"GET http://127.0.0.1:{port}/anything" in state["error"]
    assert "ConnectError" in state["error"]
    assert "Traceback" not in state["error"]
    assert api.requests == []


def test_a_live_only_connection_is_refused_to_draft_runs_before_any_request(harness, api):
    text = "name: prod-call\nsteps:\n  - {id: call, kind: http, connection: prod, method: POST, path: /items}\n"
    draft = harness.run(text, draft=True)
    assert draft["status"] == "failed"
    assert "live_only" in draft["steps"]["call"]["error"]
    assert "draft" in draft["steps"]["call"]["error"]
    assert api.requests == []
    live = harness.run(text, draft=False)
    assert live["status"] == "succeeded", live["error"]
    assert len(api.requests) == 1


def test_a_draft_run_uses_the_draft_replacement_of_a_live_only_connection(harness, api):
    record = harness.run("name: stand-in\nsteps:\n"
                         "  - {id: call, kind: http, connection: prod-with-stand-in, method: POST, path: /items}\n")
    assert record["status"] == "succeeded", record["error"]
    assert len(api.requests) == 1
    assert api.requests[0].headers["X-Static"] == "static-value"  # the replacement's own headers


def test_an_unknown_connection_fails_the_step_clearly(tmp_path, api):
    harness = harness_with_config(tmp_path, {"connections": {"api": {"kind": "http", "base_url": api.url}}})
    flow = harness.flow("name: known\nsteps:\n  - {id: call, kind: http, connection: api, path: /text}\n")
    harness.config.connections.pop("api")  # the config changed after the flow was checked against it
    record = asyncio.run(harness.engine.advance(harness.start(flow)))
    assert record["status"] == "failed"
    assert "connection 'api' is not defined" in record["steps"]["call"]["error"]
    assert api.requests == []


def test_the_secret_appears_nowhere_under_the_data_dir(harness, api):
    for text in (
        "name: post-item\nsteps:\n  - {id: create, kind: http, connection: api, method: POST, path: /items,"
        " json: {a: 1}}\n",
        "name: down\nsteps:\n  - {id: check, kind: http, connection: api, path: /down}\n",
        "name: prod-call\nsteps:\n  - {id: call, kind: http, connection: prod, path: /items}\n",
    ):
        harness.run(text)
    assert any(req.headers.get("Authorization") == SECRET for req in api.requests)
    files = all_file_bytes(harness.store.data_dir)
    assert len(files) >= 9
    for path, data in files.items():
        assert SECRET.encode() not in data, path
        assert b"s3cr3t-api-token" not in data, path
