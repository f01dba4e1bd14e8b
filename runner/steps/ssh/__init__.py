"""The ssh step kind, split by idea: the step, detached jobs, the session with its hosts and transfers."""

from runner.steps.ssh.step import KIND

__all__ = ["KIND"]
