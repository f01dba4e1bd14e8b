"""Secret values: resolved from `{env: NAME}` or `{file: PATH}`, and masked everywhere.

Flows never see a secret; connections and channels do. Every output, error and
log line the engine records passes through a Masker holding the resolved values.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path
from typing import Any, BinaryIO, Iterator

from runner.errors import ConfigError

MASK = "***"


def resolve(ref: Any, *, what: str, base_dir: Path | None = None) -> str:
    """A literal string is returned as is; `{env: X}` / `{file: P}` are looked up."""
    if isinstance(ref, str):
        return ref
    if not isinstance(ref, dict) or len(ref) != 1:
        raise ConfigError(f"{what}: a secret is written {{env: NAME}} or {{file: PATH}}")
    if "env" in ref:
        value = os.environ.get(ref["env"])
        if value is None:
            raise ConfigError(f"{what}: environment variable {ref['env']} is not set",
                              hint=f"export {ref['env']}=... before starting signoff")
        return value
    path = Path(ref["file"])
    if base_dir is not None and not path.is_absolute():
        path = base_dir / path
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise ConfigError(f"{what}: cannot read secret file {path}: {exc.strerror}") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise ConfigError(f"{what}: secret file {path} is readable by others (mode {stat.S_IMODE(mode):o})",
                          hint=f"chmod 600 {path}")
    try:
        return path.read_text().strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{what}: cannot read secret file {path}: {getattr(exc, 'strerror', None) or exc}",
                          hint="a secret file holds the secret as UTF-8 text") from None


class Masker:
    """Replaces every known secret value in strings, recursively, with `***`."""

    def __init__(self, values: list[str] | None = None) -> None:
        # longest first, so a secret containing another is masked whole; tiny values would mask noise
        self.values = sorted({v for v in (values or []) if len(v) >= 4}, key=len, reverse=True)

    def add(self, value: str) -> None:
        self.values = sorted({*self.values, value} if len(value) >= 4 else set(self.values), key=len, reverse=True)

    def mask_file(self, source: Path, target: Path, chunk_size: int = 1 << 20) -> bool:
        """Copy `source` to a new private `target` with secret byte strings masked, streaming; True if any were."""
        found = False
        fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        with open(source, "rb") as src, os.fdopen(fd, "wb") as dst:
            for chunk, masked in self._scan(src, chunk_size, replace=True):
                dst.write(chunk)
                found = found or masked
        return found

    def found_in_file(self, source: Path, chunk_size: int = 1 << 20) -> bool:
        """Whether the file holds the UTF-8 bytes of a secret value (read once, streaming)."""
        with open(source, "rb") as src:
            return any(found for _, found in self._scan(src, chunk_size, replace=False))

    def _scan(self, src: BinaryIO, chunk_size: int, *, replace: bool) -> Iterator[tuple[bytes, bool]]:
        """(bytes, whether a secret was found in them), chunk by chunk; masked when `replace`."""
        needles = [v.encode() for v in self.values]
        keep = max((len(n) for n in needles), default=1) - 1
        carry = b""
        while True:
            chunk = src.read(chunk_size)
            buffer = carry + chunk
            found = False
            for needle in needles:
                if needle in buffer:
                    found = True
                    if replace:
                        buffer = buffer.replace(needle, MASK.encode())
            if not chunk:
                yield buffer, found
                return
            # hold back a tail that may be the start of a secret split across chunks
            cut = max(len(buffer) - keep, 0)
            yield buffer[:cut], found
            carry = buffer[cut:]

    def mask(self, value: Any) -> Any:
        if not self.values or value is None:
            return value
        if isinstance(value, str):
            for secret in self.values:
                if secret in value:
                    value = value.replace(secret, MASK)
            return value
        if isinstance(value, dict):
            return {k: self.mask(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.mask(v) for v in value]
        return value


class MaskingFilter(logging.Filter):
    """Masks a log record before any handler formats it: message and args, traceback, stack.

    Installed on the daemon's handlers (`mask_logs`), so no library logging a URL or an
    error message (httpx, uvicorn, a failed notification) writes a secret value.
    """

    def __init__(self, masker: Masker) -> None:
        super().__init__()
        self.masker = masker

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.masker.values:
            return True
        record.msg, record.args = self.masker.mask(record.getMessage()), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        record.exc_text = self.masker.mask(record.exc_text)
        record.stack_info = self.masker.mask(record.stack_info)
        return True


def mask_logs(masker: Masker, logger: logging.Logger | None = None) -> MaskingFilter:
    """Mask every record that reaches `logger`'s (the root logger's) handlers."""
    logger = logger or logging.getLogger()
    masking = MaskingFilter(masker)
    for handler in logger.handlers:
        handler.addFilter(masking)
    return masking
