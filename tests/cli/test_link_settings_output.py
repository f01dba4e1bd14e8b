"""What the CLI says about the reviewer's pages: `pending` names each approval's page, `doctor` how links are made.

`doctor` reports the link secret's origin and the links' expiry, never the secret.
"""

from __future__ import annotations

import json
from pathlib import Path

from support import init_repo

from runner.cli import render

SECRET = "s" * 48


def test_pending_names_the_page_of_each_approval() -> None:
    item = {"run": "20300304t090000z-1a2b3c4d", "flow": "ship", "step": "review", "started_by": "alice",
            "deadline": "2030-03-04T10:00:00Z", "approvals": [], "min_approvals": 1,
            "url": "https://signoff.example.test/ui/runs/20300304t090000z-1a2b3c4d"}
    text = render.pending("bob", [item])
    assert "  page:    https://signoff.example.test/ui/runs/20300304t090000z-1a2b3c4d#step-review" in text


def write_config(root: Path, server: dict) -> Path:
    path = root / "signoff.yaml"
    path.write_text(json.dumps({"server": {"host": "127.0.0.1", "port": 8080, **server}, "repo": {"path": "."},
                                "data": ".signoff"}))
    return path


def links_check(doc: dict) -> dict:
    return next(check for check in doc["checks"] if check["check"] == "notification links")


def test_doctor_says_how_links_are_signed_without_the_secret(tmp_path: Path, cli) -> None:
    init_repo(tmp_path)
    config = write_config(tmp_path, {"public_url": "https://signoff.example.test",
                                     "link_secret": [{"env": "OLD_LINK_SECRET"}, {"env": "NEW_LINK_SECRET"}],
                                     "link_max_age": "4h"})
    done = cli(["doctor", "--config", str(config), "--json"],
               env={"OLD_LINK_SECRET": "o" * 40, "NEW_LINK_SECRET": SECRET})
    check = links_check(done.json)
    assert check["ok"] is True
    assert check["detail"] == ("pages at https://signoff.example.test/ui; signed with server.link_secret "
                               "(2 secrets in rotation); links expire with the step's deadline or after 4h")
    assert SECRET not in done.out + done.err


def test_doctor_names_the_daemons_own_secret_and_does_not_make_it(tmp_path: Path, cli, signoff_data: Path) -> None:
    init_repo(tmp_path)
    config = write_config(tmp_path, {})
    check = links_check(cli(["doctor", "--config", str(config), "--json"]).json)  # SIGNOFF_DATA: signoff_data
    assert check["ok"] is True
    assert "(server.public_url is not set)" in check["detail"]
    assert f"{signoff_data / 'link_secret'} made at first start" in check["detail"]
    assert not (signoff_data / "link_secret").exists()
