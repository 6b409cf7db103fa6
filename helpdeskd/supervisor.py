"""Keeping the daemon's tasks alive: a task that crashes is logged, recorded and restarted after a pause.

Each poller, the sender and the heartbeat run under :func:`supervise`. A task is expected to run until
the daemon stops; an exception escaping it is a bug or an unforeseen failure (a TypeError in a status
writer, a full disk in the wrong place), and without a supervisor it would end that task silently
while the daemon looked healthy. Here it is logged with its traceback, shown in the status (via the
task's :class:`~helpdeskd.health.MailboxHealth`), and the task starts again after a pause that
doubles with each crash in a row, so a task that keeps failing keeps trying, ever slower.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from .health import MailboxHealth
from .logs import get

log = get("supervisor")


@dataclass(frozen=True)
class Backoff:
    """Pause after the n-th crash in a row: ``first * 2**(n-1)``, at most ``most``.

    A run that lasted ``stable`` seconds or more counts as a recovery: the next crash starts over.
    """

    first: float = 1.0
    most: float = 300.0
    stable: float = 60.0

    def delay(self, crashes: int) -> float:
        return min(self.first * 2 ** min(max(crashes - 1, 0), 32), self.most)


async def supervise(name: str, run: Callable[[], Awaitable[None]], record: MailboxHealth,
                    backoff: Backoff = Backoff(), **fields: str) -> None:
    """Run ``run()`` again each time it raises, until it returns or this task is cancelled.

    ``fields`` (``mailbox=…`` or ``task=…``) go on the log lines. Cancellation passes straight
    through: stopping and reloading cancel supervised tasks, and that is not a crash.
    """
    crashes = 0
    while True:
        started = time.monotonic()
        try:
            await run()
            return
        except Exception as exc:  # noqa: BLE001 - the supervisor's one catch-all per task
            crashes = 1 if time.monotonic() - started >= backoff.stable else crashes + 1
            _crashed(name, exc, record, crashes, backoff.delay(crashes), fields)
        await asyncio.sleep(backoff.delay(crashes))


def _crashed(name: str, exc: Exception, record: MailboxHealth, crashes: int, retry_in: float,
             fields: dict[str, str]) -> None:
    """Log the crash with its traceback and record it where the status shows it."""
    error = f"task crashed: {type(exc).__name__}: {exc}"
    log.error("task_crashed", task_name=name, error=error, crashes=crashes, retry_in=retry_in,
              exc_info=exc, **fields)
    record.restarts += 1
    record.failed(error)
