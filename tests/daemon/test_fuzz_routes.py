"""Every route answers only its documented statuses: hypothesis against the running daemon (issue 10 item 10).

The route table below lists every route of runner/server.py with the statuses
DESIGN section 5 documents for it. Requests are drawn per route: real ids,
tokens, steps and flows mixed with made-up ones; bodies that are valid,
malformed, huge, deeply nested, non-finite, with lone surrogates, a BOM,
UTF-16, or of the wrong type; query values that are numbers, NaN, negative,
huge or text; good, bad and missing tokens (and signatures, for the hooks).
The assertions: no 5xx, only the route's statuses, every error the one JSON
shape; and after it all the daemon is healthy, every run readable, and its log
holds no unhandled error.

Bounded: a fixed number of examples (SIGNOFF_FUZZ_EXAMPLES, default 400),
derandomized (the same requests every run; SIGNOFF_FUZZ_SEED=N draws others
and is printed), no example database, no deadline; well under a minute.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, given, note, seed, settings
from hypothesis import strategies as st

from gitops_support import GitOpsDaemon, signature
from support import approval_step, callback_step, flow_doc

EXAMPLES = int(os.environ.get("SIGNOFF_FUZZ_EXAMPLES", "400"))
SEED = os.environ.get("SIGNOFF_FUZZ_SEED")

FLOWS = {
    "gate": flow_doc("gate", approval_step(allow_self_approval=True, inputs={"score": {"type": "number"}}),
                     inputs={"who": {"type": "string", "default": "you"}}),
    "worker": flow_doc("worker", callback_step(max_bytes=200000)),
    "numbers": """
        name: numbers
        inputs:
          n: {type: number, default: 1}
          extra: {type: object, default: {}}
          tags: {type: array, default: []}
          flag: {type: boolean, default: false}
        triggers:
          - webhook: {secret: hook-secret}
        steps:
          - id: show
            kind: set
            values: {n: "${{ inputs.n }}"}
        """,
}

ANY = frozenset({401, 404, 405})  # no token, no such thing (or path), wrong method: any route may say so


@dataclass(frozen=True)
class Route:
    method: str
    path: str                      # with {param} placeholders, as in runner/server.py
    statuses: frozenset[int]       # what DESIGN section 5 documents for it
    body: str | None = None        # which body strategy, for a POST
    query: tuple[str, ...] = ()
    weight: int = 1                # its share of the examples


ROUTES = [
    Route("GET", "/api/v1/health", frozenset({200})),
    Route("GET", "/api/v1/flows", frozenset({200})),
    Route("POST", "/api/v1/flows/{flow}/runs", frozenset({201, 403, 409, 413, 422}), body="start", weight=5),
    Route("GET", "/api/v1/runs", frozenset({200, 422}), query=("flow", "status", "draft", "limit", "before"),
          weight=2),
    Route("GET", "/api/v1/runs/{run_id}", frozenset({200}), weight=2),
    Route("GET", "/api/v1/runs/{run_id}/events", frozenset({200, 422}), query=("after", "wait"), weight=3),
    Route("GET", "/api/v1/runs/{run_id}/verify", frozenset({200})),
    Route("GET", "/api/v1/runs/{run_id}/logs", frozenset({200}), query=("step",)),
    Route("GET", "/api/v1/releases", frozenset({200})),
    Route("GET", "/api/v1/flows/{flow}/diff", frozenset({200, 422}), query=("ref",)),
    Route("POST", "/api/v1/runs/{run_id}/cancel", frozenset({200, 403, 409, 503}), body="any", weight=2),
    Route("POST", "/api/v1/runs/{run_id}/steps/{step_id}/decision", frozenset({200, 403, 409, 413, 422, 503}),
          body="decision", weight=5),
    Route("GET", "/api/v1/pending", frozenset({200})),
    Route("GET", "/api/v1/releases/pending", frozenset({200})),
    Route("POST", "/api/v1/releases/{flow}/{version}/decision", frozenset({200, 403, 409, 413, 422}),
          body="decision", weight=2),
    Route("GET", "/api/v1/resources/{sha256}", frozenset({200}), weight=2),
    Route("POST", "/callbacks/{token}", frozenset({200, 202, 409, 413, 422}), body="callback", weight=5),
    Route("POST", "/hooks/{flow}", frozenset({201, 403, 413, 422}), body="hook", weight=5),
    Route("POST", "/api/v1/git/webhook", frozenset({202, 403, 413, 422}), body="git", weight=2),
    Route("GET", "/metrics", frozenset({200})),
    Route("GET", "/api/v1/openapi.json", frozenset({200})),
    *(Route("POST", f"/api/v1/flows/{{flow}}/{change}", frozenset({200, 201, 403, 409, 413, 422}), body="any")
      for change in ("release", "pin", "unpin", "yank", "unyank")),
]

HUGE = b'{"x": "' + b"a" * (1024 * 1024 + 16) + b'"}'
SPECIAL_BODIES = [
    b"", b" ", b"null", b"[]", b'"text"', b"1", b"true", b"{", b'{"a": }', b"NaN", b'{"x": NaN}',
    b'{"x": Infinity}', b'{"x": -Infinity}', b'{"x": 1e400}', b'{"x": -1e999}', b'{"x": "\\ud800"}',
    b'{"\\udc00": 1}', b'{"x": "\\ud83d\\ude00"}', b'\xef\xbb\xbf{}', "{}".encode("utf-16"),
    '{"x": 1}'.encode("utf-16-le"), "{}".encode("utf-32"), b"\xff\xfe\x00\x00", b'{"x": "\xed\xa0\x80"}',
    b'{"x": "\xc3"}', b'{"x": ' + b"9" * 5000 + b"}", b"[" * 100 + b"]" * 100,
    b'{"a":' * 100 + b"1" + b"}" * 100, b"[" * 100_000, HUGE, b"\x00", b'{"x": 1}\x00', b'{"x": 1} {"y": 2}',
    b'{"inputs": []}', b'{"inputs": "x"}', b'{"inputs": {"n": "nan"}}', b'{"inputs": {"n": NaN}}',
    b'{"inputs": {"extra": "{\\"a\\": NaN}"}}', b'{"inputs": {"nope": 1}}', b'{"ref": 5}', b'{"ref": "@{-1}"}',
    b'{"ref": "--output=/tmp/x"}', b'{"ref": "HEAD~99"}', b'{"ref": ""}', b'{"ref": "v1.0.0"}',
    b'{"ref": "main"}', b'{"decision": ["approve"]}', b'{"decision": "approve", "comment": {"a": 1}}',
    b'{"decision": "approve", "inputs": {"score": "inf"}}', b'{"decision": "approve", "inputs": []}',
    b'{"decision": "approve", "context_sha256": 7}', b'{"decision": "request_changes"}',
]
SPECIAL_SEGMENTS = ["..", "%2e%2e", "..%2F..%2Fsignoff.yaml", "%00", "%ff", "%ED%A0%80", "%F0%9F%98%80", "a%2Fb",
                    "x" * 300, "0" * 64, "f" * 64, "20261124t190812z-3f9a2c1b", "NaN", "-1", "%20", "flows"]
SPECIAL_QUERY = ["", "0", "1", "-1", "-2", "1000000", "9" * 30, "9" * 5000, "1e3", "1.5", "0.05", "nan", "NaN",
                 "inf", "-inf", "Infinity", "%201", "1%20", "%2B1", "0x10", "1_0", "%D9%A1", "true", "false", "yes",
                 "%00", "%ff", "%ED%A0%80", "waiting", "bogus", "gate", "20261124t190812z-3f9a2c1b", "..%2Fx",
                 "a&b", "%26"]  # sent as they are: percent-escapes included


# ---- the daemon and what it knows -------------------------------------------------------------


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory):
    """The daemon, plus real run ids, steps, tokens, flows and a resource for the strategies to use."""
    root = tmp_path_factory.mktemp("fuzz")
    daemon = GitOpsDaemon(root, flows=FLOWS, hook_secrets=("hook-secret",))
    daemon.tag("v1.0.0")
    with daemon:
        daemon.wait_live("numbers", "v1.0.0")
        gate = daemon.wait_step(daemon.start_run("gate")["id"], "review")
        decided = daemon.wait_step(daemon.start_run("gate", user="bob")["id"], "review")
        assert daemon.decide(decided["id"], "review", "alice").status_code == 200
        worker = daemon.wait_step(daemon.start_run("worker")["id"], "done")
        big = daemon.wait_step(daemon.start_run("worker")["id"], "done")
        assert daemon.post_callback(big["callbacks"]["done"], {"blob": "b" * 70_000}).status_code == 202
        resource = daemon.wait_end(big["id"])["steps"]["done"]["payload"]
        assert resource.startswith("res://"), resource
        finished = daemon.wait_end(daemon.start_run("numbers", {"n": 2})["id"])
        world = {
            "daemon": daemon,
            "run_id": [gate["id"], decided["id"], worker["id"], big["id"], finished["id"]],
            "step_id": ["review", "review", "review", "done", "show"],
            "token": [worker["callbacks"]["done"], big["callbacks"]["done"]],
            "flow": ["numbers", "numbers", "gate", "worker"],
            "version": ["1.0.0", "v1.0.0", "1.1.0", "v9.9.9"],
            "sha256": [resource[len("res://"):]],
        }
        yield world


# ---- strategies -----------------------------------------------------------------------------------

def weighted(*choices: tuple[int, Any]) -> st.SearchStrategy:
    """One of the strategies (or plain values), drawn in proportion to its weight.

    The pick uses a Random that hypothesis seeds (derandomized with the test), so the weights hold;
    sampled_from and integers lean towards their first and last choices on purpose.
    """
    strategies = [(weight, choice if isinstance(choice, st.SearchStrategy) else st.just(choice))
                  for weight, choice in choices]
    total = sum(weight for weight, _ in strategies)

    def pick(rnd: Any) -> st.SearchStrategy:
        point = rnd.random() * total
        for weight, strategy in strategies:
            point -= weight
            if point < 0:
                return strategy
        return strategies[-1][1]

    return st.randoms(use_true_random=False).flatmap(pick)


json_values = st.recursive(st.none() | st.booleans() | st.integers(-10**20, 10**20)
                           | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=20),
                           lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=10)
POISON = st.sampled_from([math.nan, math.inf, -math.inf, 1e308 * 10, "\ud800", "x\udfffy", {"\udc00": 1},
                          [math.nan]])


@st.composite
def poisoned(draw: st.DrawFn, body: st.SearchStrategy[Any]) -> Any:
    """A value with one leaf somewhere inside it that strict JSON refuses (NaN, an infinity, a lone surrogate)."""
    value, bad = draw(body), draw(POISON)
    if not isinstance(value, (dict, list)):
        return bad
    node = value
    while True:
        inside = [key for key, child in (node.items() if isinstance(node, dict) else enumerate(node))
                  if isinstance(child, (dict, list))]
        if not inside or draw(st.booleans()):
            break
        node = node[draw(st.sampled_from(inside))]
    if isinstance(node, dict):
        node[draw(weighted((4, st.sampled_from(list(node))), (1, "poison")) if node else st.just("poison"))] = bad
    elif node:
        node[draw(st.integers(0, len(node) - 1))] = bad
    else:
        node.append(bad)
    return value


header_text = st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7e), max_size=60)  # what HTTP can carry


def encoded(value: Any) -> bytes:
    """As a careless client writes it: NaN and Infinity as such, a lone surrogate as its \\u escape."""
    return json.dumps(value, ensure_ascii=True, allow_nan=True).encode()


@st.composite
def recoded(draw: st.DrawFn, body: st.SearchStrategy[bytes]) -> bytes:
    """A body sent in a way strict JSON refuses (or just cut short)."""
    data = draw(body)
    how = draw(st.sampled_from(["bom", "utf16", "utf32", "cut", "list", "latin1", "nul"]))
    if how == "bom":
        return b"\xef\xbb\xbf" + data
    if how in ("utf16", "utf32"):
        return data.decode().encode(how.replace("utf", "utf-"))
    if how == "cut":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if how == "list":
        return b"[" + data + b"]"
    if how == "nul":
        return data + b"\x00"
    return data.replace(b"a", b"\xe9")  # Latin-1 bytes where UTF-8 was due


def body_strategy(kind: str, tainted: bool) -> st.SearchStrategy[bytes]:
    """A body for `kind` of route; `tainted`: with a leaf strict JSON refuses where the route reads it."""
    spoil = poisoned if tainted else (lambda strategy: strategy)
    numbers = st.integers(-5, 5) | st.floats(-1e6, 1e6)
    sensible = st.fixed_dictionaries({}, optional={
        "n": numbers | st.sampled_from(["1.5", "nan", "inf", "1e400", "x"]),
        "extra": st.dictionaries(st.text(max_size=5), json_values, max_size=3)
        | st.sampled_from(['{"a": 1}', '{"a": NaN}', "[1]"]),
        "tags": st.lists(json_values, max_size=3), "flag": st.booleans() | st.sampled_from(["yes", "0", "maybe"])})
    names = st.sampled_from(["n", "extra", "tags", "flag", "nope", "who"])
    inputs = weighted((4, sensible), (1, st.dictionaries(names, json_values, max_size=3)))
    refs = st.sampled_from(["main", "v1.0.0", "refs/heads/main", "HEAD", "@{-1}", "-x", "nope", "HEAD~9"]) | st.text(
        max_size=12)
    decisions = weighted((4, "approve"), (2, "reject"), (1, "request_changes"), (1, "maybe"))
    comments = st.text(max_size=30)
    scores = st.fixed_dictionaries({}, optional={"score": numbers | st.sampled_from(["2", "nan", "inf", "x"]),
                                                 "other": json_values})
    body = {
        "start": st.fixed_dictionaries({"inputs": spoil(inputs)}, optional={"ref": refs | json_values}),
        "decision": st.fixed_dictionaries({"decision": decisions}, optional={
            "comment": spoil(comments) if tainted else comments | json_values, "inputs": spoil(scores),
            "context_sha256": st.text(max_size=64) | json_values}),
        "callback": spoil(json_values),
        "hook": spoil(inputs),
        "git": spoil(st.fixed_dictionaries({"ref": st.text(max_size=20)})),
        "any": spoil(json_values),
    }[kind].map(encoded)
    if tainted:
        return body
    return weighted((4, body), (2, recoded(body)), (3, st.sampled_from(SPECIAL_BODIES)), (1, st.binary(max_size=40)))


FRESH = "{fresh}"  # a new run (or callback token) made for this one request, for routes that use a run up


def segment(name: str, world: dict, route: Route) -> st.SearchStrategy[str]:
    real = st.sampled_from(world[name])
    if name == "token" or (name == "run_id" and route.method == "POST"):
        real = weighted((1, real), (2, st.just(FRESH)))
    made_up = st.text(max_size=30).map(lambda text: quote(text, safe=""))
    return weighted((6, real), (2, made_up), (2, st.sampled_from(SPECIAL_SEGMENTS)))


def query_value(name: str, world: dict) -> st.SearchStrategy[str]:
    """A value for the query parameter `name`, already encoded (bad percent-escapes reach the daemon as they are)."""
    text = st.text(max_size=12).map(lambda value: quote(value, safe=""))
    if name == "wait":  # only what a daemon answers at once: no long poll may hold the fuzzer up
        return st.sampled_from(["0", "0.01", "nan", "NaN", "inf", "-inf", "Infinity", "-1", "x", "", "1e3", "%00",
                                "%ED%A0%80", "0x1", "%200", "-0", "1e-9"])
    if name in ("flow", "status", "draft"):
        return st.sampled_from([*world["flow"], "waiting", "succeeded", "bogus", "true", "false", "1"]) | text
    if name == "after":  # past the end of a history is what a long poll asks for
        return weighted((2, st.sampled_from(["1000000", "999999999", "9" * 30, "-1", "0", "3"])),
                        (2, st.sampled_from(SPECIAL_QUERY)), (1, text), (1, st.integers(-5, 10**6).map(str)))
    if name == "before":
        return st.sampled_from(world["run_id"]) | st.sampled_from(SPECIAL_QUERY) | text
    return weighted((3, st.sampled_from(SPECIAL_QUERY)), (1, text), (1, st.integers(-5, 10**6).map(str)))


def query_strategy(route: Route, world: dict) -> st.SearchStrategy[str]:
    names = [*route.query, "x"]
    pairs = st.lists(st.sampled_from(names).flatmap(lambda name: query_value(name, world).map(lambda v: (name, v))),
                     max_size=3)
    return pairs.map(lambda found: "&".join(f"{name}={value}" for name, value in found))


@dataclass
class Call:
    route: Route
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes | None


@st.composite
def calls(draw: st.DrawFn, world: dict, route: Route) -> Call:
    path = route.path
    for name in ("flow", "run_id", "step_id", "token", "sha256"):
        if "{" + name + "}" in path:
            path = path.replace("{" + name + "}", draw(segment(name, world, route)))
    daemon = world["daemon"]
    who = draw(weighted((4, "alice"), (3, "bob"), (1, "dave"), (1, None), (1, "bad"), (1, "odd")))
    headers = {"Content-Type": draw(st.sampled_from(["application/json", "text/plain", ""]))}
    if who in daemon.tokens:
        headers["Authorization"] = f"Bearer {daemon.tokens[who]}"
    elif who == "bad":
        headers["Authorization"] = f"Bearer {draw(header_text)}".strip()
    elif who == "odd":
        headers["Authorization"] = draw(st.sampled_from(["Bearer", "Basic YTpi", "bearer  x", "Bearer a b"]))
    body = None
    if route.body:
        body = draw(body_strategy(route.body, tainted=draw(weighted((1, False), (1, True)))))
        if route.body in ("hook", "git"):
            secret = daemon.secret_values["hook-secret"] if route.body == "hook" else daemon.webhook_secret
            sign = draw(weighted((6, "good"), (1, "bad"), (1, "none"), (1, "junk")))
            if sign == "good":
                headers["X-Hub-Signature-256"] = signature(secret, body)
            elif sign == "bad":
                headers["X-Hub-Signature-256"] = signature("wrong", body)
            elif sign == "junk":
                headers["X-Hub-Signature-256"] = draw(header_text)
            headers["X-GitHub-Delivery"] = draw(st.sampled_from(["d-1", "d-2"]) | header_text)
    method = draw(weighted((24, route.method), (1, "GET"), (1, "POST"), (1, "PUT"), (1, "DELETE")))
    return Call(route, method, path, draw(query_strategy(route, world)), headers, body)


# ---- the test -------------------------------------------------------------------------------------


def check_answer(call: Call, response: httpx.Response) -> None:
    status = response.status_code
    where = f"{call.method} {call.path} {call.query} -> {status}: {response.text[:300]}"
    assert status < 500, where
    allowed = call.route.statuses | ANY | ({307} if call.path.endswith("/") else set())  # to the path without it
    if response.request.url.raw_path.split(b"?")[0] != call.path.encode():  # "..": the client went elsewhere
        allowed = frozenset().union(*(route.statuses for route in ROUTES)) | ANY | {307}
    assert status in allowed, f"undocumented status; {where}"
    if status >= 400:
        body = response.json()
        assert set(body) == {"error"}, where
        assert isinstance(body["error"]["code"], str) and isinstance(body["error"]["message"], str), where
    elif status < 300 and call.route.path not in ("/metrics", "/api/v1/resources/{sha256}"):
        response.json()


def fresh(daemon: GitOpsDaemon, call: Call) -> str:
    """A new callback token, or a new run (waiting for its approval, for a decision)."""
    if call.route.path == "/callbacks/{token}":
        return daemon.start_run("worker")["callbacks"]["done"]  # an early callback is taken too
    run_id = daemon.start_run("gate")["id"]
    if call.route.path.endswith("/decision"):
        daemon.wait_step(run_id, "review")
    return run_id


@pytest.mark.parametrize("route", ROUTES, ids=[f"{r.method} {r.path}" for r in ROUTES])
def test_no_route_answers_5xx_whatever_it_is_sent(world: dict, route: Route) -> None:
    daemon: GitOpsDaemon = world["daemon"]
    chosen = int(SEED) if SEED else None
    if chosen is not None:
        print(f"route fuzzer seed: {chosen} (SIGNOFF_FUZZ_SEED={chosen} repeats it)")
    seen: dict[int, int] = {}

    with httpx.Client(base_url=daemon.url, timeout=60.0) as client:
        share = EXAMPLES * route.weight // sum(r.weight for r in ROUTES)
        @settings(max_examples=max(share, 5), derandomize=chosen is None, database=None,
                  deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
                  print_blob=True)
        @given(call=calls(world, route))
        def fuzz(call: Call) -> None:
            if FRESH in call.path:
                call.path = call.path.replace(FRESH, fresh(daemon, call))
            note(f"{call.method} {call.path} query={call.query} headers={call.headers} body={call.body!r:.300}")
            url = f"{call.path}?{call.query}" if call.query else call.path
            response = client.request(call.method, url, headers=call.headers, content=call.body)
            seen[response.status_code] = seen.get(response.status_code, 0) + 1
            check_answer(call, response)

        (seed(chosen)(fuzz) if chosen is not None else fuzz)()

    print(f"{route.method} {route.path}: {sum(seen.values())} requests, statuses {dict(sorted(seen.items()))}")
    assert daemon.api(None).get("/api/v1/health").json()["ok"] is True
    assert daemon.api().get("/api/v1/runs").status_code == 200
    assert "Traceback" not in daemon.log_path.read_text(errors="replace"), daemon.log_tail(80)


def test_after_the_fuzzing_every_run_is_readable_and_its_record_valid(world: dict) -> None:
    daemon: GitOpsDaemon = world["daemon"]
    listed = daemon.api().get("/api/v1/runs", params={"limit": 1000})
    assert listed.status_code == 200, listed.text
    for run in listed.json()["runs"]:
        assert daemon.api().get(f"/api/v1/runs/{run['id']}").status_code == 200
        assert daemon.api().get(f"/api/v1/runs/{run['id']}/events").status_code == 200
        daemon.assert_record_valid(run["id"])
    assert "Traceback" not in daemon.log_path.read_text(errors="replace"), daemon.log_tail(80)


def test_the_route_table_covers_every_route_of_the_app() -> None:
    """A new API route in runner/daemon/http.py must be added to the fuzzer's table (the app is built, never
    started). The reviewer's pages under /ui answer HTML, not the API's JSON errors: tests/daemon/web has theirs."""
    from runner.daemon.http import create_app

    app = create_app(None)  # type: ignore[arg-type]  # the daemon is used only by requests
    assert {route.path for route in app.routes if route.path != "/ui"} == {route.path for route in ROUTES}
