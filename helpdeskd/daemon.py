"""The long-running process: one asyncio loop supervising a poller per mailbox, the sender and a heartbeat.

Every task runs under :func:`helpdeskd.supervisor.supervise`: one that crashes is logged, shown in the
status and restarted after a growing pause. Signal handlers only set flags; the loop acts on them
between messages. Filing runs in worker threads (the store's I/O is blocking) under one asyncio lock,
so there is a single writer at any time, and a reload or a stop takes that lock to act between messages.

SIGHUP: load the config and compile the templates (:func:`helpdeskd.runtime.load`) off the loop. A
broken edit is refused: the old config keeps running, the problems go to the log and the status. A
good one is swapped in under the filing lock; mailboxes removed or changed stop after the message in
hand (a POP3 session finishes its batch), then the added and changed ones start.

SIGTERM/SIGINT: stop taking new mail, let the message in hand finish, let the sender finish the
message it is sending, write the final status, exit — within :data:`STOP_DEADLINE`. A second signal
exits at once: still safe, because a message leaves its source only after it is durable.

systemd (:mod:`helpdeskd.sdnotify`): READY=1 once every task runs, RELOADING=1 … READY=1 around a
reload, STOPPING=1, a one-line STATUS=, and WATCHDOG=1 from the heartbeat — which runs on the loop,
so a hung loop stops the pings and systemd restarts the service.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

from . import helper, logs
from .cycle import Services
from .errors import ConfigError
from .gateway import Pop3Result
from .health import Health, outbox_depth
from .intake import PollResult, poll_maildir, prepare
from .logs import get
from .pollers import backoff_delay, pop3_poller
from .runtime import Runtime, load
from .sdnotify import Notifier
from .sender import SendResult, Sender
from .settings import Mailbox
from .store.lock import DAEMON, StateLock
from .store.outbox import Outbox
from .supervisor import supervise

log = get("daemon")

STOP_DEADLINE = 20.0  # seconds from SIGTERM to exit; under the unit's TimeoutStopSec=30
HEARTBEAT = 5.0  # the status file and STATUS= are refreshed at least this often
COALESCE = 0.5  # at most two status writes a second, however busy the pollers are


class Daemon:
    def __init__(self, path: Path, runtime: Runtime, *, log_level: str | None = None,
                 notifier: Notifier | None = None) -> None:
        self.path = path
        self.runtime = runtime
        self.log_level = log_level  # --log-level wins over the config's level, across reloads too
        self.svc = Services.open(runtime.config, runtime.templates)
        self.notifier = notifier or Notifier.from_environment()
        self.health = Health(config=str(path.absolute()))  # read by helpdeskctl status from anywhere
        self.stopping = False
        self._swapping = False  # a reload waits for the filing lock: pollers yield between messages
        self._reload_wanted = False
        self._sending = False  # the sender is inside a pass (a stop waits for it rather than cancel it)
        self._wake = asyncio.Event()
        self._filing = asyncio.Lock()
        self._send_wake = asyncio.Event()  # set when a poll may have queued mail
        self._dirty = asyncio.Event()  # the health changed: write the status file soon
        self._pollers: dict[str, tuple[Mailbox, asyncio.Task]] = {}
        self._sender: asyncio.Task | None = None
        self._heartbeat_task: asyncio.Task | None = None
        self._helper_start: asyncio.Future | None = None

    @property
    def state_dir(self) -> Path:
        return self.runtime.config.helpdesk.state_dir

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

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._on_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, self._on_reload)

    # -- life cycle -----------------------------------------------------------------------------
    async def run(self) -> int:
        """Start every task, announce readiness, serve signals until a stop, then drain. Returns the exit code."""
        self._install_signals()
        self._start_pollers(self.runtime.config.intake_mailboxes())  # none while the gateway is off
        config = self.runtime.config
        if config.mail_gateway.helper_process and any(m.pop3 for m in config.intake_mailboxes()):
            # started beside the first sessions' logins, not by their first batch (~0.2 s)
            self._helper_start = asyncio.ensure_future(asyncio.to_thread(helper.start))
        self._sender = self._supervised("sender", self._send_loop, task="sender")
        self._heartbeat_task = self._supervised("heartbeat", self._heartbeat, task="heartbeat")
        self.health.state = "running"
        self._save()
        log.info("started", config=str(self.path), mailboxes=sorted(self._pollers), pid=os.getpid(),
                 notify=self.notifier.enabled, watchdog_s=self.notifier.watchdog_seconds)
        if self.svc.store.legacy_index:
            log.warning("index_old_layout", hint="helpdeskd fsck moves it to the current layout; "
                        "meanwhile lookups look in both")
        self.notifier.ready(self.health.summary())
        await self._serve()
        return await self._stop()

    async def _serve(self) -> None:
        while not self.stopping:
            await self._wake.wait()
            self._wake.clear()
            if self._reload_wanted and not self.stopping:
                self._reload_wanted = False
                await self._reload()

    async def _stop(self) -> int:
        """STOPPING=1, drain within the deadline, write the final status."""
        self.notifier.stopping()
        self.health.state = "stopping"
        self._save()
        drain = asyncio.create_task(self._drain(), name="drain")
        done, _ = await asyncio.wait({drain}, timeout=STOP_DEADLINE)
        self.health.state = "stopped"
        self._save()
        if not done:
            log.error("stop_deadline_passed", seconds=STOP_DEADLINE)
            # A worker thread is stuck on I/O and interpreter shutdown would wait for it. Exiting
            # loses nothing: sources forget a message only once it is durable.
            os._exit(1)
        log.info("stopped")
        return 0

    async def _drain(self) -> None:
        """Wait for the message in hand (the filing lock), cancel the pollers (a POP3 poller waits for its
        session to end its batch), let the sender finish the message it is sending, stop the heartbeat."""
        async with self._filing:
            for _, task in self._pollers.values():
                task.cancel()
        await asyncio.gather(*(t for _, t in self._pollers.values()), return_exceptions=True)
        await self._stop_sender()
        if self._heartbeat_task is not None:
            self._heartbeat_task.cancel()
            await asyncio.gather(self._heartbeat_task, return_exceptions=True)
        if self._helper_start is not None:  # (a thread: it ends within helper.START_SECONDS)
            await asyncio.gather(self._helper_start, return_exceptions=True)

    async def _stop_sender(self) -> None:
        if self._sender is None:
            return
        if not self._sending:  # sleeping (between passes or after a crash): nothing in hand
            self._sender.cancel()
        self._send_wake.set()
        await asyncio.gather(self._sender, return_exceptions=True)

    def _supervised(self, name: str, run: Callable[[], Awaitable[None]], **fields: str) -> asyncio.Task:
        record = self.health.mailbox(name) if "mailbox" in fields else self.health.task(name)
        return asyncio.create_task(supervise(name, run, record, **fields), name=name)

    # -- reload -----------------------------------------------------------------------------------
    async def _reload(self) -> None:
        """Validate the new config and templates off the loop; swap them in, or keep the old and say why."""
        self.notifier.reloading()
        self.health.state = "reloading"
        try:
            runtime = await asyncio.to_thread(load, self.path)
            self._check_reloadable(runtime)
        except ConfigError as exc:
            log.error("reload_refused", config=str(self.path), problems=exc.problems)
            self.health.reload_refused(exc.problems)
        else:
            await self._swap(runtime)
            self.health.reloaded()
            level = self.log_level or runtime.config.log_level
            log.info("reloaded", config=str(self.path), mailboxes=sorted(self._pollers), log_level=level)
            logs.setup(level)  # after the line above, so a reload to "warning" still says it happened
        self.health.state = "running"
        self._save()
        self.notifier.ready(self.health.summary())

    def _check_reloadable(self, runtime: Runtime) -> None:
        """What a reload cannot change: the state directory holds our daemon.lock."""
        new = runtime.config.helpdesk.state_dir
        if new != self.state_dir:
            raise ConfigError([f"helpdesk.state_dir: changing it ({self.state_dir} → {new}) needs a restart, "
                               "not a reload"], source=str(self.path))

    async def _swap(self, runtime: Runtime) -> None:
        """Between messages: the new config in; pollers of removed and changed mailboxes stopped, then the
        added and changed ones started — never two pollers on one mailbox at once."""
        self._swapping = True
        try:
            async with self._filing:
                self.runtime, self.svc = runtime, Services.open(runtime.config, runtime.templates)
                ending = self._cancel_pollers(set(runtime.config.intake_mailboxes()))
        finally:
            self._swapping = False
        await asyncio.gather(*ending, return_exceptions=True)  # a POP3 session finishes its batch first
        self.health.keep_only({m.name for m in runtime.config.intake_mailboxes()})
        if not self.stopping:
            self._start_pollers(m for m in runtime.config.intake_mailboxes() if m.name not in self._pollers)
        self._send_wake.set()  # the [smtp] section may have changed

    def _cancel_pollers(self, wanted: set[Mailbox]) -> list[asyncio.Task]:
        """Cancel the pollers whose mailbox is not in ``wanted`` (removed, or its settings changed)."""
        ending = []
        for name, (mailbox, task) in list(self._pollers.items()):
            if mailbox not in wanted:
                task.cancel()
                ending.append(task)
                del self._pollers[name]
        return ending

    def _start_pollers(self, mailboxes: Iterable[Mailbox]) -> None:
        for mailbox in mailboxes:
            self.health.mailbox(mailbox.name, mailbox.protocol)
            try:
                prepare(mailbox)  # a Maildir's folders exist before READY, so mail can be dropped in
            except OSError as exc:
                log.warning("mailbox_not_prepared", mailbox=mailbox.name, error=str(exc))  # the poller reports it
            task = self._supervised(mailbox.name, lambda m=mailbox: self._poll_loop(m), mailbox=mailbox.name)
            self._pollers[mailbox.name] = (mailbox, task)

    # -- pollers ----------------------------------------------------------------------------------
    async def _poll_loop(self, mailbox: Mailbox) -> None:
        if mailbox.pop3 is not None:  # network I/O in its own thread, outside the filing lock
            return await pop3_poller(mailbox, lambda: self.svc, self._filing, lambda: self.stopping,
                                     self._pop3_report)
        record = self.health.mailbox(mailbox.name)
        while not self.stopping:
            result = await self._poll_maildir(mailbox)
            if result is None:
                return
            record.polled(result.counts, result.error)
            self._polled(mailbox, result)
            await asyncio.sleep(backoff_delay(mailbox, record.failures))

    async def _poll_maildir(self, mailbox: Mailbox) -> PollResult | None:
        """One poll under the filing lock; None when the daemon is stopping."""
        async with self._filing:
            if self.stopping:
                return None
            return await asyncio.to_thread(poll_maildir, mailbox, self.svc, self._should_yield)

    def _should_yield(self) -> bool:
        """Asked by filing threads between messages: stop here for a stop or a waiting reload."""
        return self.stopping or self._swapping

    def _pop3_report(self, mailbox: Mailbox, result: Pop3Result) -> None:
        self.health.mailbox(mailbox.name).polled(result.counts, result.error, result.permanent)
        self._polled(mailbox, result)

    def _polled(self, mailbox: Mailbox, result: PollResult) -> None:
        if result.counts and mailbox.pop3 is None:
            log.info("poll_done", mailbox=mailbox.name, **result.counts)
        if result.counts:
            self._send_wake.set()
        if result.counts or result.error:
            self._dirty.set()

    # -- sender -----------------------------------------------------------------------------------
    async def _send_loop(self) -> None:
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
        sender = Sender(Outbox(self.state_dir), smtp)
        self._sending = True
        try:
            result = await asyncio.to_thread(sender.run_once, lambda: self.stopping)
        finally:
            self._sending = False
        self._sent(result)
        return min(smtp.interval_seconds, result.next_due_in or smtp.interval_seconds)

    def _sent(self, result: SendResult) -> None:
        """Log and record a pass that did something; the sender is failing when nothing got through."""
        if not (result.sent or result.deferred or result.failed):
            return
        log.info("send_done", sent=result.sent, deferred=result.deferred, failed=result.failed)
        error = result.errors[-1] if result.deferred and not result.sent else None
        counts = {"sent": result.sent, "deferred": result.deferred, "failed": result.failed}
        self.health.task("sender").polled(counts, error)
        self._dirty.set()

    # -- health -----------------------------------------------------------------------------------
    async def _heartbeat(self) -> None:
        """Watchdog ping, outbox depth, status file and STATUS= — each tick, or soon after a change."""
        watchdog = self.notifier.watchdog_seconds
        tick = HEARTBEAT if watchdog is None else min(HEARTBEAT, watchdog / 4)
        line, record = "", self.health.task("heartbeat")
        while True:
            self.notifier.watchdog()
            self.health.outbox = await asyncio.to_thread(outbox_depth, self.state_dir)
            record.polled({}, None)  # a beat: also clears a crash recorded before the restart
            self._save()
            if self.health.summary() != line:
                line = self.health.summary()
                self.notifier.status(line)
            await asyncio.sleep(min(COALESCE, tick))
            try:
                await asyncio.wait_for(self._dirty.wait(), tick)
            except TimeoutError:
                pass
            self._dirty.clear()

    def _save(self) -> None:
        """Rewrite the status file (small, not fsynced); a failure is logged, never fatal."""
        try:
            self.health.write(self.state_dir)
        except OSError as exc:
            log.warning("status_not_written", error=str(exc))


def run_daemon(path: Path, runtime: Runtime, log_level: str | None = None) -> int:
    """Take the state directory's daemon lock (or raise StoreLocked) and run until stopped."""
    lock = StateLock(runtime.config.helpdesk.state_dir, DAEMON).acquire()
    try:
        return asyncio.run(Daemon(path, runtime, log_level=log_level).run())
    finally:
        helper.shutdown()
        lock.release()
