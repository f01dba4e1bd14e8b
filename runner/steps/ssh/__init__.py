"""The ssh step kind, split by idea.

`step` (the kind), `jobs` (jobs left on hosts and their durable kills),
`hosts` (routes, known_hosts, fingerprints), `session` (a connection and a
command over it), `pool` (the owner's SshPool: idle connections and threads),
`scripts` (the shell scripts run on the host), `sftp` (uploads and downloads).
"""

from runner.steps.ssh.step import KIND

__all__ = ["KIND"]
