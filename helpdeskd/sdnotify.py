"""The systemd notify protocol (sd_notify(3)) with the stdlib: one datagram to ``$NOTIFY_SOCKET``.

Outside systemd (no ``$NOTIFY_SOCKET``) every call is a no-op, so the daemon behaves the same under
``./scripts/run``, a test, or another supervisor. A name starting with ``@`` is a socket in Linux's
abstract namespace (its first byte is NUL). Sending never raises: a lost notification must not stop
a helpdesk that is otherwise working — systemd then notices by itself (start timeout, watchdog).
"""

from __future__ import annotations

import os
import socket
import time

from .logs import get

log = get("sdnotify")


class Notifier:
    """Sends notify messages for this process; built from the environment systemd gives the service."""

    def __init__(self, address: str | None = None, watchdog_usec: str | None = None,
                 watchdog_pid: str | None = None) -> None:
        self.address = _socket_address(address) if address else None
        self.watchdog_seconds = _watchdog_seconds(watchdog_usec, watchdog_pid)

    @classmethod
    def from_environment(cls) -> "Notifier":
        env = os.environ
        return cls(env.get("NOTIFY_SOCKET"), env.get("WATCHDOG_USEC"), env.get("WATCHDOG_PID"))

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, **fields: str | int) -> bool:
        """Send ``KEY=value`` lines in one datagram (``send(READY=1, STATUS="…")``); True when sent."""
        if self.address is None:
            return False
        payload = "\n".join(f"{key}={_one_line(value)}" for key, value in fields.items()).encode()
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto(payload, self.address)
        except OSError as exc:  # the manager went away or the socket is full: not our failure to handle
            log.debug("notify_failed", error=str(exc), fields=sorted(fields))
            return False
        return True

    def ready(self, status: str) -> bool:
        return self.send(READY=1, STATUS=status)

    def reloading(self) -> bool:
        """RELOADING=1 with the CLOCK_MONOTONIC time systemd ≥ 253 wants to match the reload to its request."""
        return self.send(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self) -> bool:
        return self.send(STOPPING=1)

    def status(self, text: str) -> bool:
        return self.send(STATUS=text)

    def watchdog(self) -> bool:
        return self.send(WATCHDOG=1)


def _socket_address(name: str) -> str | bytes | None:
    """A path, or (``@name``) an abstract-namespace address; anything else is not a unix socket."""
    if name.startswith("@"):
        return b"\0" + name[1:].encode()
    return name if name.startswith("/") else None


def _watchdog_seconds(usec: str | None, pid: str | None) -> float | None:
    """The watchdog period, when it is meant for this process (WATCHDOG_PID, if set, names us)."""
    if not usec or (pid and pid != str(os.getpid())):
        return None
    try:
        value = int(usec)
    except ValueError:
        return None
    return value / 1_000_000 if value > 0 else None


def _one_line(value: str | int) -> str:
    """A field's value may not span lines: a newline would start another field."""
    return " ".join(str(value).split("\n"))
