"""Fixtures of the web page tests: a real headless Chromium (see browser.py)."""

from __future__ import annotations

from browser_support import browser, page  # noqa: F401 - fixtures, found by pytest by name
