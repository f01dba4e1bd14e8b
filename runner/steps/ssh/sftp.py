"""Files to and from a host over sftp: the step's `upload` before the command, `download` after it.

`remote_path` is a path as sftp takes it. A failure of the connection is
retryable; one of the file itself (missing, no permission, over the limit) is not.
"""

from __future__ import annotations

import posixpath
from pathlib import Path

import paramiko

from runner.errors import StepFailed
from runner.steps.ssh.session import Session


def remote_path(path: str, cwd: str | None) -> str:
    """A path as sftp takes it: relative ones start from the login directory (~/ too), or from `cwd`."""
    if path.startswith("~/"):
        return path[2:]
    if posixpath.isabs(path) or not cwd:
        return path
    return posixpath.join(remote_path(cwd, None) if cwd != "~" else ".", path)


def _sftp_failure(session: Session, what: str, exc: BaseException) -> StepFailed:
    if isinstance(exc, (paramiko.SSHException, EOFError)) or (isinstance(exc, OSError) and not exc.errno
                                                               and not isinstance(exc, FileNotFoundError)):
        return StepFailed(f"ssh {session.target.label}: {what}: {exc}")  # the connection, not the file
    return StepFailed(f"ssh {session.target.label}: {what}: {getattr(exc, 'strerror', None) or exc}",
                      retryable=False)


def upload(session: Session, uploads: list[tuple[Path, str]]) -> None:
    """Copy each local file to its remote path (parents made, mode kept)."""
    sftp = session.first(lambda: session.connections[-1].client.open_sftp(), "sftp")
    session.reused = False
    try:
        for local, remote in uploads:
            try:
                parent = posixpath.dirname(remote)
                if parent and parent not in (".", "/"):
                    _makedirs(sftp, parent)
                sftp.put(str(local), remote)
                sftp.chmod(remote, local.stat().st_mode & 0o777)
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _sftp_failure(session, f"upload {local} -> {remote}", exc) from None
    finally:
        sftp.close()


def _makedirs(sftp: paramiko.SFTPClient, path: str) -> None:
    try:
        sftp.stat(path)
        return
    except FileNotFoundError:
        pass
    parent = posixpath.dirname(path)
    if parent and parent not in (".", "/", path):
        _makedirs(sftp, parent)
    sftp.mkdir(path)


def download(session: Session, downloads: list[tuple[str, str]], folder: Path, cap: int,
             required: bool) -> dict[str, Path]:
    """Copy files from the host into `folder`; name -> local path. Missing ones fail only if `required`."""
    found: dict[str, Path] = {}
    sftp = session.first(lambda: session.connections[-1].client.open_sftp(), "sftp")
    try:
        for remote, name in downloads:
            try:
                size = sftp.stat(remote).st_size or 0
            except FileNotFoundError:
                if required:
                    raise StepFailed(f"download: {remote} does not exist on {session.target.label}",
                                     retryable=False) from None
                continue
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _sftp_failure(session, f"download {remote}", exc) from None
            if size > cap:
                raise StepFailed(f"download: {remote} is {size:,} bytes, over the limit of {cap:,} "
                                 "(limits.max_output_bytes)", retryable=False)
            local = folder / f"{len(found)}-{posixpath.basename(name)}"
            try:
                sftp.get(remote, str(local))
            except (paramiko.SSHException, OSError, EOFError) as exc:
                raise _sftp_failure(session, f"download {remote}", exc) from None
            found[name] = local
    finally:
        sftp.close()
    return found
