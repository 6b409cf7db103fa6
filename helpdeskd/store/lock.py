"""Locks on the state directory, both flocks the kernel drops when their process dies.

``daemon.lock`` is held by a running daemon for its whole life: a second daemon is refused.
``write.lock`` is held for each change to the store — one message filed by the daemon, one
``helpdeskd deliver``, one ``helpdeskctl`` action — so writers take turns and never interleave.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path

from ..errors import StoreLocked


DAEMON = "daemon.lock"
WRITE = "write.lock"


class StateLock:
    """An exclusive flock on ``state_dir/name``; a crash never leaves a stale lock behind."""

    def __init__(self, state_dir: Path, name: str = WRITE) -> None:
        self.path = state_dir / name
        self._fd: int | None = None

    def acquire(self, wait_seconds: float = 0.0) -> "StateLock":
        """Take the lock, waiting up to ``wait_seconds``; raise StoreLocked naming the holder if busy."""
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        except FileNotFoundError:  # a state directory not made yet
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o640)
        deadline = time.monotonic() + wait_seconds
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 64, 0).decode(errors="replace").strip()
                    os.close(fd)
                    what = "a helpdeskd daemon is already running on" if self.path.name == DAEMON else "busy:"
                    raise StoreLocked(
                        f"{what} state directory {self.path.parent} ({self.path.name}"
                        + (f" held by pid {holder})" if holder else ")")
                    ) from None
                time.sleep(0.05)
        holder = f"{os.getpid()}\n".encode()
        if os.pread(fd, 64, 0) != holder:  # the same process taking it again writes nothing: truncating
            os.ftruncate(fd, 0)  # a file being written back by a group commit waits for the disk
            os.pwrite(fd, holder, 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None

    def __enter__(self) -> "StateLock":
        return self if self._fd is not None else self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
