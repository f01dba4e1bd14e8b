"""YAML for writing test fixtures: the small part of ruamel's API the tests use, on PyYAML."""

from __future__ import annotations

from typing import Any, IO

import yaml


class YAML:
    def __init__(self, typ: str = "safe", pure: bool = True) -> None:
        self.typ = typ

    def dump(self, data: Any, stream: IO[str]) -> None:
        yaml.safe_dump(data, stream, sort_keys=False, default_flow_style=False, allow_unicode=True)

    def load(self, text: str | IO[str]) -> Any:
        return yaml.safe_load(text)
