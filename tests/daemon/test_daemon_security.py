"""Inputs that try to reach outside what the daemon serves get a clean 4xx and touch nothing."""

from __future__ import annotations

import pytest

from daemon_support import DaemonProcess

HELLO = """\
name: hello
steps:
  - id: say
    kind: shell
    run: echo hi
"""


@pytest.fixture(scope="module")
def daemon(tmp_path_factory):
    root = tmp_path_factory.mktemp("security")
    (root / "outside.yaml").write_text(HELLO.replace("hello", "outside"))
    with DaemonProcess(root, flows={"hello": HELLO}) as process:
        yield process


@pytest.mark.parametrize("name", ["outside.yaml", "..", "../outside", "Hello", "hello.yaml", "a" * 200])
def test_a_flow_name_that_is_not_a_flow_name_is_404(daemon: DaemonProcess, name: str) -> None:
    response = daemon.api("alice").post(f"/api/v1/flows/{name}/runs", json={"inputs": {}})
    assert response.status_code in (404, 405), response.text
    assert daemon.api("alice").get("/api/v1/runs").json()["runs"] == []


@pytest.mark.parametrize("path", ["/api/v1/resources/..%2F..%2Fsignoff.yaml", "/api/v1/resources/" + "0" * 63,
                                  "/api/v1/runs/..%2Fsignoff.yaml", "/api/v1/runs/20261124t190812z-3f9a2c1b"])
def test_paths_that_are_not_ids_are_404(daemon: DaemonProcess, path: str) -> None:
    response = daemon.api("alice").get(path)
    assert response.status_code == 404, response.text
    assert "error" in response.json()


def test_a_hook_for_a_repository_without_releases_is_refused(daemon: DaemonProcess) -> None:
    response = daemon.api(None).post("/hooks/hello", content=b"{}",
                                     headers={"X-Hub-Signature-256": "sha256=" + "0" * 64})
    assert response.status_code == 404
    assert daemon.api("alice").get("/api/v1/runs").json()["runs"] == []
