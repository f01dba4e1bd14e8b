"""A real OpenSSH server on loopback, for the ssh step's tests and benchmark.

`Sshd(root)` lays out, under `root`:

    root/host_ed25519(.pub)     the server's host key (ssh-keygen)
    root/client_ed25519(.pub)   the client key, listed in root/authorized_keys
    root/other_ed25519(.pub)    a second client key that is NOT authorized
    root/known_hosts            the host's real key, as `[127.0.0.1]:PORT ssh-ed25519 ...`
    root/home/                  $HOME of the sessions (jobs land in home/.signoff/jobs)
    root/sshd_config, sshd.pid, sshd.log

and runs `/usr/sbin/sshd -D -e -f root/sshd_config` as the current user on a
free loopback port (`StrictModes no`, `UsePAM no`, keys only). `start()` polls
until the server sends its banner (deadline 15 s); `stop()` sends SIGTERM
(SIGKILL after 10 s). `connection(**extra)` is a config entry for it.
`Sshd(root, extra_config=[...])` adds sshd_config lines (a `ForceCommand`, say).

sshd run as root needs its privilege-separation directory (/run/sshd, made by
systemd on a booted host); `start()` creates it when it is missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

from support import free_port

SSHD = "/usr/sbin/sshd"
SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
START_DEADLINE = 15.0
STOP_DEADLINE = 10.0


def available() -> bool:
    return os.access(SSHD, os.X_OK) and os.access(SSH_KEYGEN, os.X_OK)


def keygen(path: Path) -> str:
    """An ed25519 key pair at `path` (+ .pub); returns the public line."""
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", path.name, "-f", str(path)], check=True,
                   capture_output=True, timeout=30)
    return (path.with_name(path.name + ".pub")).read_text().strip()


class Sshd:
    def __init__(self, root: Path, *, extra_config: list[str] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.host = "127.0.0.1"
        self.home = self.root / "home"
        self.home.mkdir(exist_ok=True)
        self.host_key = self.root / "host_ed25519"
        self.client_key = self.root / "client_ed25519"
        self.other_key = self.root / "other_ed25519"
        self.host_public = keygen(self.host_key)
        authorized = keygen(self.client_key)
        keygen(self.other_key)
        self.authorized_keys = self.root / "authorized_keys"
        self.authorized_keys.write_text(authorized + "\n")
        self.known_hosts = self.root / "known_hosts"
        self.write_known_hosts(self.host_public)
        self.log_path = self.root / "sshd.log"
        self.config_path = self.root / "sshd_config"
        self.config_path.write_text("\n".join([
            f"Port {self.port}",
            f"ListenAddress {self.host}",
            f"HostKey {self.host_key}",
            f"PidFile {self.root / 'sshd.pid'}",
            f"AuthorizedKeysFile {self.authorized_keys}",
            "StrictModes no",
            "UsePAM no",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding yes",
            "MaxStartups 200",
            "MaxSessions 50",
            "LogLevel VERBOSE",
            f"SetEnv HOME={self.home}",
            "Subsystem sftp internal-sftp",
            *(extra_config or []),
            "",
        ]))
        self.process: subprocess.Popen | None = None
        self._log = None

    @property
    def known_name(self) -> str:
        return f"[{self.host}]:{self.port}"

    def write_known_hosts(self, public_line: str, path: Path | None = None) -> Path:
        """known_hosts naming this server with `public_line` ('ssh-ed25519 AAAA... comment')."""
        key_type, blob = public_line.split()[:2]
        target = path or self.known_hosts
        target.write_text(f"{self.known_name} {key_type} {blob}\n")
        return target

    def connection(self, **extra: Any) -> dict[str, Any]:
        """A `connections:` entry of the signoff config for this server."""
        return {"kind": "ssh", "host": self.host, "port": self.port, "user": os.environ.get("USER") or _user(),
                "key_file": str(self.client_key), "known_hosts": str(self.known_hosts), "connect_timeout": "10s",
                **extra}

    def connections_seen(self) -> int:
        """How many TCP connections sshd has logged so far."""
        try:
            return self.log_path.read_text(errors="replace").count("Connection from ")
        except OSError:
            return 0

    def start(self) -> "Sshd":
        assert self.process is None
        if os.geteuid() == 0:
            os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
        check = subprocess.run([SSHD, "-t", "-f", str(self.config_path)], capture_output=True, text=True, timeout=30)
        if check.returncode != 0:
            raise AssertionError(f"sshd -t rejected the test config:\n{check.stderr}")
        self._log = open(self.log_path, "ab")
        self.process = subprocess.Popen([SSHD, "-D", "-e", "-f", str(self.config_path)], stdout=self._log,
                                        stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + START_DEADLINE
        while True:
            if self.process.poll() is not None:
                code = self.process.returncode
                self._reap()
                raise AssertionError(f"sshd exited with {code}:\n{self.log_tail()}")
            try:
                with socket.create_connection((self.host, self.port), timeout=2) as sock:
                    if sock.recv(64).startswith(b"SSH-"):
                        return self
            except OSError:
                pass
            if time.monotonic() > deadline:
                self.stop()
                raise AssertionError(f"sshd did not answer within {START_DEADLINE:.0f}s:\n{self.log_tail()}")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(STOP_DEADLINE)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_DEADLINE)
        self._reap()

    def _reap(self) -> None:
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def __enter__(self) -> "Sshd":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _user() -> str:
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name
