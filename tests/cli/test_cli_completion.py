"""`signoff completion SHELL` prints a script that asks signoff itself what to complete."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from support import PROJECT_ROOT


def signoff(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runner", *args], capture_output=True, text=True, timeout=60,
                          cwd=PROJECT_ROOT, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("shell, marker", [("bash", "complete -o nosort -F _signoff_completion signoff"),
                                           ("zsh", "compdef _signoff_completion signoff"),
                                           ("fish", "complete --no-files --command signoff")])
def test_each_shell_gets_a_script_that_asks_signoff(shell: str, marker: str) -> None:
    result = signoff("completion", shell)
    assert result.returncode == 0, result.stderr
    assert marker in result.stdout
    assert f"_SIGNOFF_COMPLETE={shell}_complete" in result.stdout


def test_the_script_completes_commands_and_options() -> None:
    commands = signoff(env={"_SIGNOFF_COMPLETE": "bash_complete", "COMP_WORDS": "signoff ru", "COMP_CWORD": "1"})
    assert commands.returncode == 0, commands.stderr
    assert commands.stdout.split() == ["plain,run", "plain,runs"]
    options = signoff(env={"_SIGNOFF_COMPLETE": "bash_complete", "COMP_WORDS": "signoff runs list --st",
                           "COMP_CWORD": "3"})
    assert options.stdout.split() == ["plain,--status"]


def test_an_unknown_shell_is_a_usage_error() -> None:
    result = signoff("completion", "tcsh")
    assert result.returncode == 2
    assert "'tcsh' is not one of 'bash', 'zsh', 'fish'" in result.stderr
