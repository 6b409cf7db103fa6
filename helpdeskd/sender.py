"""Draining the outbox over SMTP (layer 3): one pass delivers every message that is due.

For each message in ``outbox/new/`` whose retry time has come, oldest first:

    too old?            → failed/ with the reason (never silently dropped)
    server accepted it  → cur/   (only now does it leave new/)
    4xx, lost connection, timeout → stays in new/, ``<id>.retry`` records attempts and the next time
    5xx                 → failed/ with the server's answer

A message failing never holds up the others: its own schedule grows (first delay, doubled each
time, capped) and the pass goes on with the next one. When no session can be opened at all (server
down, TLS or login refused) the remaining due messages are deferred with that reason rather than
each waiting for its own timeout. A pass with anything to send first makes the state directory's
file system durable (one syncfs), since mail is queued before its batch's group commit. Delivery is
at-least-once: a crash between the server's 250 and the move to ``cur/`` sends that one message again
after a restart; SMTP offers nothing better.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .errors import ConfigError, PermanentError, TransientError
from .logs import get
from .settings import Smtp
from .smtp import ConnectionFailed, SmtpSession, resolve_password
from .store.fsutil import settle
from .store.outbox import Outbox, OutboxEntry

log = get("sender")


@dataclass
class SendResult:
    """What one pass did, and how long until the next message is due (None: nothing waits)."""

    sent: int = 0
    deferred: int = 0
    failed: int = 0
    next_due_in: float | None = None
    errors: list[str] = field(default_factory=list)


class Sender:
    """Delivers the outbox through ``session_factory`` (an :class:`SmtpSession` unless a test says otherwise)."""

    def __init__(self, outbox: Outbox, smtp: Smtp, *, clock: Callable[[], float] = time.time,
                 session_factory: Callable[[Smtp, str | None], SmtpSession] = SmtpSession) -> None:
        self.outbox = outbox
        self.smtp = smtp
        self.clock = clock
        self.session_factory = session_factory

    def run_once(self, should_stop: Callable[[], bool] = lambda: False) -> SendResult:
        """One pass over the due messages; stops between messages when ``should_stop()`` says so."""
        result = SendResult()
        session: SmtpSession | None = None
        down: str | None = None  # why no session could be had during this pass
        due = self._due(result)
        if due and not self._settled(result):
            return result
        try:
            for entry in due:
                if should_stop():
                    break
                if down is None and session is None:
                    session, down = self._session()
                down = self._deliver(entry, session, down, result)
        finally:
            if session is not None:
                session.close()
        return result

    def _due(self, result: SendResult) -> list[OutboxEntry]:
        """Queued messages whose time has come; ``result.next_due_in`` learns when the others are."""
        now, due = self.clock(), []
        for entry in self.outbox.entries(("new",)):
            wait = self.outbox.retry_state(entry.id).get("next", 0) - now
            if wait <= 0:
                due.append(entry)
            elif result.next_due_in is None or wait < result.next_due_in:
                result.next_due_in = wait
        return due

    def _settled(self, result: SendResult) -> bool:
        """Whether what is about to be sent is on disk. A message is queued before its batch's group
        commit (which may still be running): sending it first could announce a ticket that a power
        failure then undoes (and the message, filed again, would be announced twice)."""
        try:
            settle(self.outbox.root.parent)
        except OSError as exc:
            result.errors.append(f"storage failed: {exc}")
            log.error("storage_failed", error=str(exc))
            return False
        return True

    def _session(self) -> tuple[SmtpSession | None, str | None]:
        try:
            return self.session_factory(self.smtp, resolve_password(self.smtp)), None
        except ConfigError as exc:
            log.error("smtp_config_problem", problems=exc.problems)
            return None, "; ".join(exc.problems)

    def _deliver(self, entry: OutboxEntry, session: SmtpSession | None, down: str | None,
                 result: SendResult) -> str | None:
        """Try one message; returns the pass's "server unusable" reason (unchanged, or newly learnt)."""
        if self._too_old(entry, result):
            return down
        if down is not None or session is None:
            self._defer(entry, down or "no SMTP session", result)
            return down
        try:
            session.send(self._mail_from(entry), list(entry.envelope.get("to", [])), entry.data)
        except ConnectionFailed as exc:
            self._defer(entry, str(exc), result)
            return str(exc)
        except TransientError as exc:
            self._defer(entry, str(exc), result)
        except PermanentError as exc:
            self._fail(entry, f"permanent failure: {exc}", result)
        else:
            self.outbox.mark_sent(entry.id)
            result.sent += 1
            log.info("sent", id=entry.id, to=entry.envelope.get("to"), ticket=entry.envelope.get("ticket"))
        return down

    def _mail_from(self, entry: OutboxEntry) -> str:
        """MAIL FROM: the configured envelope sender, else the envelope's ("" = null sender, RFC 3834)."""
        return self.smtp.envelope_sender or entry.envelope.get("from", "")

    def _too_old(self, entry: OutboxEntry, result: SendResult) -> bool:
        age = self.clock() - self.outbox.queued_at(entry.id)
        if age <= self.smtp.give_up_seconds:
            return False
        last = self.outbox.retry_state(entry.id).get("last_error", "never attempted")
        self._fail(entry, f"gave up after {age / 3600:.1f} h in the queue; last error: {last}", result)
        return True

    def _defer(self, entry: OutboxEntry, reason: str, result: SendResult) -> None:
        """Record a temporary failure durably, with the next attempt after a growing delay."""
        state = self.outbox.retry_state(entry.id)
        attempts = int(state.get("attempts", 0)) + 1
        delay = min(self.smtp.retry_max_seconds, self.smtp.retry_first_seconds * 2 ** (attempts - 1))
        now = self.clock()
        self.outbox.record_retry(entry.id, {"attempts": attempts, "last_error": reason, "last_attempt": _iso(now),
                                            "next": now + delay, "next_attempt": _iso(now + delay)})
        result.deferred += 1
        result.next_due_in = delay if result.next_due_in is None else min(result.next_due_in, delay)
        result.errors.append(reason)
        log.warning("deferred", id=entry.id, attempts=attempts, retry_in_s=round(delay), error=reason)

    def _fail(self, entry: OutboxEntry, reason: str, result: SendResult) -> None:
        self.outbox.mark_failed(entry.id, reason)
        result.failed += 1
        log.error("dead_letter", id=entry.id, to=entry.envelope.get("to"), reason=reason)


def _iso(unix: float) -> str:
    return datetime.fromtimestamp(unix, timezone.utc).isoformat(timespec="seconds")
