"""The daemon's POP3 poller: one asyncio task per mailbox, its session in a thread of its own.

Why a thread and the blocking stdlib client rather than an asyncio POP3 client: poplib is the
well-trodden implementation of the protocol, every call has a socket timeout, and the filing it feeds
is blocking file I/O that needs a thread anyway. A dedicated thread per session (not the shared
default executor) means a slow or hanging server never takes a worker away from another mailbox's
filing, and the asyncio loop never waits on a socket.

Filing is serialised by the daemon's asyncio lock. The session thread holds it only while a batch
is being filed — never during network I/O — so one slow server does not stall other mailboxes.

Trouble (refused, timeout, TLS, authentication): one log line with the cause, the daemon's status
says so (through the ``report`` callback), and the next attempt waits twice as long as the last, up
to ``backoff_max``. The first successful session resets it.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import TypeVar

from .cycle import Services
from .gateway import Pop3Result, poll_pop3
from .logs import get
from .settings import Mailbox

log = get("pop3")
T = TypeVar("T")
Report = Callable[[Mailbox, Pop3Result], None]  # the daemon's record of each session (its status)
MAILDIR_BACKOFF_MAX = 300.0  # a Maildir has no backoff_max key; its failures (disk, permissions) back off to this


def backoff_delay(mailbox: Mailbox, failures: int) -> float:
    """Seconds before the next attempt after ``failures`` failed polls in a row (0: the interval)."""
    most = mailbox.pop3.backoff_max_seconds if mailbox.pop3 is not None else MAILDIR_BACKOFF_MAX
    cap = max(most, mailbox.interval_seconds)
    return min(mailbox.interval_seconds * 2 ** min(failures, 32), cap)


async def pop3_poller(mailbox: Mailbox, services: Callable[[], Services], filing: asyncio.Lock,
                      stopping: Callable[[], bool], report: Report = lambda _m, _r: None) -> None:
    """Poll ``mailbox`` until ``stopping()``; survive every failure with back-off.

    Cancellation (reload, shutdown) asks the session to stop between batches and waits for it, so
    a session never outlives its poller and two sessions on one mailbox never overlap.
    """
    failures, cancelled = 0, threading.Event()
    locked = _loop_locked(asyncio.get_running_loop(), filing)
    while not stopping():
        svc = services()
        future = _in_thread(poll_pop3, mailbox, svc, locked, lambda: stopping() or cancelled.is_set())
        try:
            result = await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled.set()
            await asyncio.wait([future])
            if not future.cancelled() and future.exception() is None:  # a session stopped by a reload or
                _settle(mailbox, future.result(), failures, report)  # shutdown: said all the same
            raise
        failures = _settle(mailbox, result, failures, report)
        if not result.more or result.error is not None:
            await asyncio.sleep(backoff_delay(mailbox, failures))


def _settle(mailbox: Mailbox, result: Pop3Result, failures: int, report: Report) -> int:
    """Log and report one session's result; returns the count of failures in a row after it."""
    if result.error is None and failures:
        log.info("pop3_recovered", mailbox=mailbox.name, after_failures=failures)
    failures = 0 if result.error is None else failures + 1
    _log(mailbox, result, failures)
    report(mailbox, result)
    return failures


def _log(mailbox: Mailbox, result: Pop3Result, failures: int) -> None:
    """One log line per session that did something or failed."""
    if result.error is not None:
        log.warning("pop3_failed", mailbox=mailbox.name, error=result.error, failures=failures,
                    retry_in=backoff_delay(mailbox, failures), needs_admin=result.permanent)
    elif result.counts:
        log.info("poll_done", mailbox=mailbox.name, **result.counts)


def _loop_locked(loop: asyncio.AbstractEventLoop, lock: asyncio.Lock) -> Callable[[Callable[[], T]], T]:
    """A runner, for worker threads, that holds the loop's asyncio lock around one step."""

    def locked(step: Callable[[], T]) -> T:
        asyncio.run_coroutine_threadsafe(lock.acquire(), loop).result()
        try:
            return step()
        finally:
            loop.call_soon_threadsafe(lock.release)

    return locked


def _in_thread(fn: Callable[..., T], *args: object) -> asyncio.Future:
    """Run ``fn`` in a new thread; the returned future resolves on the running loop."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future = loop.create_future()

    def settle(value: object, error: BaseException | None) -> None:
        if not future.done():
            future.set_exception(error) if error else future.set_result(value)

    def target() -> None:
        try:
            value, error = fn(*args), None
        except BaseException as exc:  # noqa: BLE001 - handed to the awaiting task, not swallowed
            value, error = None, exc
        try:
            loop.call_soon_threadsafe(settle, value, error)
        except RuntimeError:
            pass  # the loop is gone (process exiting): nobody is waiting any more

    threading.Thread(target=target, name=f"pop3-{args[0].name}", daemon=True).start()  # type: ignore[attr-defined]
    return future
