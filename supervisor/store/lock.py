"""One supervisor per run: an advisory lock that dies with its process (even under SIGKILL)."""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from supervisor.core.errors import UserError


class RunLocked(UserError, RuntimeError):
    """Another live process supervises this run."""


class RunLock:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self, tag: str) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(
                f"run {tag!r} is already being supervised ({holder}). Watch or steer it with "
                f"`autoresearch attach --tag {tag}` or `autoresearch control --tag {tag} ...`; "
                "stop that supervisor before starting another on this run."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} since {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        self._fd = fd

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    @staticmethod
    def holder(path: Path) -> str | None:
        """Who holds the lock now, or None when nobody does (a crashed holder releases it)."""
        if not Path(path).exists():
            return None
        fd = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 200, 0).decode(errors="replace").strip()
            return text or "another process"
        else:
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)
