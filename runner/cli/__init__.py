"""The command line: `signoff` and its command families."""

from runner.cli.app import main

__all__ = ["main"]
