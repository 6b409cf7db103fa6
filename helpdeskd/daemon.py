"""The long-running process: one asyncio loop supervising a poller per mailbox.

Signal handlers only set flags; pollers look at them between messages. Filing runs in a worker
thread (the store's I/O is blocking) under one lock, so there is a single writer at any time.

SIGTERM/SIGINT: stop taking new mail, let the message in hand finish, exit. A second one exits at
once — still safe, because a message leaves its source only after it is durable.
SIGHUP: reload the config and templates; a broken edit is refused and the old config keeps running.

Beside the pollers runs one sender task (:mod:`helpdeskd.sender`): it drains the outbox over SMTP when
``[smtp]`` is configured, on its interval, when a retry falls due, and at once when a poll queued mail.
"""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

from .cycle import Services
from .errors import ConfigError
from .intake import poll_maildir, prepare
from .logs import get
from .pollers import pop3_poller
from .runtime import Runtime, load
from .sender import Sender
from .settings import Mailbox
from .store.lock import DAEMON, StateLock
from .store.outbox import Outbox

log = get("daemon")


class Daemon:
    def __init__(self, path: Path, runtime: Runtime) -> None:
        self.path = path
        self.runtime = runtime
        self.svc = Services.open(runtime.config, runtime.templates)
        self.stopping = False
        self._wake = asyncio.Event()
        self._filing = asyncio.Lock()
        self._pollers: dict[str, tuple[Mailbox, asyncio.Task]] = {}
        self._reload_wanted = False
        self._send_wake = asyncio.Event()  # set when a poll may have queued mail
        self._sender: asyncio.Task | None = None

    # -- signals: set flags, nothing else -------------------------------------------------------
    def _on_stop(self, signame: str) -> None:
        if self.stopping:
            log.warning("second_signal_exit_now", signal=signame)
            os._exit(1)
        log.info("stopping", signal=signame)
        self.stopping = True
        self._wake.set()

    def _on_reload(self) -> None:
        self._reload_wanted = True
        self._wake.set()

    # -- main loop ------------------------------------------------------------------------------
    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)
        for mailbox in self.runtime.config.mailboxes:
            prepare(mailbox)  # so mail can be dropped in as soon as "started" is logged
        self._sync_pollers()
        self._sender = asyncio.create_task(self._send_loop(), name="sender")
        log.info("started", config=str(self.path), mailboxes=sorted(self._pollers), pid=os.getpid())
        while not self.stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._reload_wanted and not self.stopping:
                self._reload_wanted = False
                await self._reload()
        await self._drain()
        log.info("stopped")
        return 0

    async def _reload(self) -> None:
        try:
            runtime = await asyncio.to_thread(load, self.path)
        except ConfigError as exc:
            log.error("reload_refused", problems=exc.problems, config=str(self.path))
            return
        async with self._filing:  # swap between messages; no poller is inside its worker thread now
            self.runtime = runtime
            self.svc = Services.open(runtime.config, runtime.templates)
            self._sync_pollers()
        self._send_wake.set()  # the [smtp] section may have changed
        log.info("reloaded", config=str(self.path), mailboxes=sorted(self._pollers))

    def _sync_pollers(self) -> None:
        """Start added mailboxes, stop removed ones, restart changed ones.

        Called with the filing lock held (or before any poller runs): cancelling a task is then
        safe, because no task is inside a filing thread that cancellation could not stop.
        """
        wanted = {m.name: m for m in self.runtime.config.intake_mailboxes()}  # none while the gateway is off
        for name, (mailbox, task) in list(self._pollers.items()):
            if wanted.get(name) != mailbox:
                task.cancel()
                del self._pollers[name]
        for name, mailbox in wanted.items():
            if name not in self._pollers:
                self._pollers[name] = (mailbox, asyncio.create_task(self._poll_loop(mailbox), name=name))

    async def _poll_loop(self, mailbox: Mailbox) -> None:
        if mailbox.pop3 is not None:  # network I/O in its own thread, outside the filing lock
            return await pop3_poller(mailbox, lambda: self.svc, self._filing, lambda: self.stopping)
        while not self.stopping:
            async with self._filing:
                if self.stopping:
                    break
                svc = self.svc
                result = await asyncio.to_thread(poll_maildir, mailbox, svc, lambda: self.stopping)
            if result.counts:
                log.info("poll_done", mailbox=mailbox.name, **result.counts)
                self._send_wake.set()
            await asyncio.sleep(mailbox.interval_seconds)

    async def _send_loop(self) -> None:
        """Supervised: a pass that fails unexpectedly is logged and retried later, never ends the task."""
        while not self.stopping:
            wait = await self._send_pass()
            try:
                await asyncio.wait_for(self._send_wake.wait(), wait)
            except TimeoutError:
                pass
            self._send_wake.clear()

    async def _send_pass(self) -> float | None:
        """One sender pass in a worker thread; returns how long to sleep (None: until woken)."""
        smtp = self.runtime.config.smtp
        if smtp is None:
            return None  # outbox only; a reload that adds [smtp] wakes us
        sender = Sender(Outbox(self.runtime.config.helpdesk.state_dir), smtp)
        try:
            result = await asyncio.to_thread(sender.run_once, lambda: self.stopping)
        except Exception:  # noqa: BLE001 - the task's supervisor: log it, keep the daemon sending
            log.exception("sender_failed")
            return smtp.retry_first_seconds
        if result.sent or result.deferred or result.failed:
            log.info("send_done", sent=result.sent, deferred=result.deferred, failed=result.failed)
        return min(smtp.interval_seconds, result.next_due_in or smtp.interval_seconds)

    async def _drain(self) -> None:
        """Wait for the message in hand (the filing lock), then cancel the sleeping pollers; the sender
        finishes the message it is sending (bounded by the SMTP timeout) and stops."""
        async with self._filing:
            for _, task in self._pollers.values():
                task.cancel()
        await asyncio.gather(*(t for _, t in self._pollers.values()), return_exceptions=True)
        if self._sender is not None:
            self._send_wake.set()
            await asyncio.gather(self._sender, return_exceptions=True)


def run_daemon(path: Path, runtime: Runtime) -> int:
    lock = StateLock(runtime.config.helpdesk.state_dir, DAEMON).acquire()
    try:
        return asyncio.run(Daemon(path, runtime).run())
    finally:
        lock.release()
