"""`signoff completion bash|zsh|fish`: the shell's script that completes signoff's commands and options.

The script asks signoff itself what comes next (click's shell completion, through
the `_SIGNOFF_COMPLETE` variable), so it never goes stale as commands change.
"""

from __future__ import annotations

import click
from click.shell_completion import get_completion_class

SHELLS = ("bash", "zsh", "fish")
COMPLETE_VAR = "_SIGNOFF_COMPLETE"
PROG = "signoff"


@click.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the completion script for SHELL (bash, zsh or fish).

    Load it in this shell with `eval "$(signoff completion bash)"` (zsh: the
    same with zsh), or `signoff completion fish | source`; to keep it, add that
    line to ~/.bashrc or ~/.zshrc, or save the fish script as
    ~/.config/fish/completions/signoff.fish.
    """
    root = click.get_current_context().find_root().command
    script = get_completion_class(shell)(root, {}, PROG, COMPLETE_VAR).source()
    click.echo(script)


def register(group: click.Group) -> None:
    group.add_command(completion)
