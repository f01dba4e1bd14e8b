"""A real headless Chromium for the web page tests, and a way to serve an ASGI app to it.

- `browser` (session-scoped): Debian's Chromium at /usr/bin/chromium, launched
  through Playwright with `executable_path`; Playwright's own browser downloads
  are never used. Without that binary the tests fail, saying how to install it
  (as the ssh tests do without sshd): a browser test that is skipped proves nothing.
- `page` (function-scoped): a fresh context and page. It is called as
  Playwright's sync API is (`page.goto(url)`, `page.locator(css).count()`), and
  `page.csp_violations`, `page.console_errors` and `page.page_errors` collect
  what the browser reported, so a test can assert that a page works under its
  Content Security Policy.
- `serve_app(app)`: an ASGI app on a free loopback port (uvicorn in a thread)
  for as long as the `with` lasts; yields its base URL once it accepts requests.

Why not Playwright's sync API itself: between its calls it marks its event loop
as running in the calling thread, so every `asyncio.run` after the first
browser call fails ("cannot be called from a running event loop"), in these
tests (an engine or an in-process daemon) and in any test that runs later in
the same session. Here Playwright's async API runs on a loop of its own in a
background thread, and `Remote` carries each call there and waits for it.
"""

from __future__ import annotations

import asyncio
import inspect
import os
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import uvicorn

from support import wait_until

CHROMIUM = Path(os.environ.get("SIGNOFF_TEST_CHROMIUM", "/usr/bin/chromium"))
STRICT_CSP = ("default-src 'none'; img-src 'self' data:; style-src 'self'; form-action 'self'; "
              "frame-ancestors 'none'; base-uri 'none'")
START_TIMEOUT = 20.0  # seconds: safety nets for a loaded machine, not performance checks
CALL_TIMEOUT = 60.0  # Playwright's own timeouts (30 s by default) fire first

# Runs before any page script, outside the page's CSP (Playwright injects it), so it sees every violation.
_RECORD_VIOLATIONS = """
window.__cspViolations = [];
document.addEventListener('securitypolicyviolation', (e) => {
  window.__cspViolations.push({directive: e.violatedDirective, blocked: e.blockedURI, sample: e.sample});
});
"""


class BrowserLoop:
    """An event loop in a thread of its own, where Playwright's async API lives."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="playwright-loop", daemon=True)
        self.thread.start()

    def run(self, make: Callable[[], Any]) -> Any:
        """Call `make()` on the loop, await what it returns if that is awaitable, and give back the result."""
        async def call() -> Any:
            result = make()
            return await result if inspect.isawaitable(result) else result

        return asyncio.run_coroutine_threadsafe(call(), self.loop).result(CALL_TIMEOUT)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(START_TIMEOUT)
        self.loop.close()


class Remote:
    """A Playwright async object used from the test's thread as if it were the sync API's."""

    def __init__(self, target: Any, runner: BrowserLoop) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_runner", runner)

    def __getattr__(self, name: str) -> Any:
        value = self._runner.run(lambda: getattr(self._target, name))
        if inspect.ismethod(value) or inspect.isfunction(value):
            return lambda *args, **kwargs: self._wrap(self._runner.run(lambda: value(*args, **kwargs)))
        return self._wrap(value)

    def _wrap(self, value: Any) -> Any:
        if isinstance(value, list):
            return [self._wrap(item) for item in value]
        if type(value).__module__.startswith("playwright."):
            return Remote(value, self._runner)
        return value

    def __repr__(self) -> str:
        return f"Remote({self._target!r})"


class WatchedPage(Remote):
    """A page with what its browser reported about it."""

    def __init__(self, target: Any, runner: BrowserLoop) -> None:
        super().__init__(target, runner)
        object.__setattr__(self, "console_errors", [])
        object.__setattr__(self, "page_errors", [])

    @property
    def csp_violations(self) -> list[Any]:
        """Violations reported to the page, and console lines in which Chromium says it refused something."""
        reported = self.evaluate("window.__cspViolations || []")
        refused = [text for text in self.console_errors if "Content Security Policy" in text]
        return reported + refused


@pytest.fixture(scope="session")
def browser() -> Iterator[Remote]:
    if not CHROMIUM.exists():
        pytest.fail(f"no Chromium at {CHROMIUM}: install Debian's chromium package (apt-get install chromium)")
    from playwright.async_api import async_playwright

    runner = BrowserLoop()
    playwright = runner.run(lambda: async_playwright().start())
    try:
        chromium = runner.run(lambda: playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True,
            args=["--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]))
        try:
            yield Remote(chromium, runner)
        finally:
            runner.run(chromium.close)
    finally:
        runner.run(playwright.stop)
        runner.close()


@pytest.fixture
def page(browser: Remote) -> Iterator[WatchedPage]:
    runner: BrowserLoop = browser._runner
    context = runner.run(lambda: browser._target.new_context())
    try:
        runner.run(lambda: context.add_init_script(_RECORD_VIOLATIONS))
        watched = WatchedPage(runner.run(context.new_page), runner)

        def on_console(message: Any) -> None:  # runs on the browser's loop
            if message.type in ("error", "warning"):
                watched.console_errors.append(message.text)

        runner.run(lambda: watched._target.on("console", on_console))
        runner.run(lambda: watched._target.on("pageerror", lambda error: watched.page_errors.append(str(error))))
        yield watched
    finally:
        runner.run(context.close)


@contextmanager
def serve_app(app: Any) -> Iterator[str]:
    """Serve the ASGI `app` on 127.0.0.1 at a free port; yields "http://127.0.0.1:PORT"."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    # no access log: page URLs may carry decision-link tokens, which are never logged
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", loop="asyncio",
                            timeout_graceful_shutdown=1)  # a browser keeps its connections open
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, name=f"web-test-{port}", daemon=True)
    thread.start()
    try:
        wait_until(lambda: server.started or not thread.is_alive(), timeout=START_TIMEOUT,
                   what=f"the test web server on port {port} to start")
        if not server.started:
            raise AssertionError(f"the test web server on port {port} stopped before it started")
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=START_TIMEOUT)
        sock.close()
