"""Polling an intake once: take each waiting message, file it, and only then let the source forget it."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .cycle import Outcome, Services, file_safely
from .errors import TransientError
from .logs import get
from .message import Inbound
from .settings import Mailbox
from .sources.maildir import MaildirSource

log = get("intake")


@dataclass
class PollResult:
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.action] = self.counts.get(outcome.action, 0) + 1


def poll_maildir(mailbox: Mailbox, svc: Services, should_stop: Callable[[], bool] = lambda: False) -> PollResult:
    """File every message in the Maildir's ``new/``; stop early (between messages) when asked to.

    A transient failure (disk full, ...) ends the poll and leaves the message where it is.
    """
    source = MaildirSource(mailbox.name, mailbox.path)
    result = PollResult()
    try:
        source.ensure()
        for item in source.pending():
            if should_stop():
                break
            outcome = _one(source, item, mailbox, svc)
            if outcome is not None:
                result.add(outcome)
    except TransientError as exc:
        result.error = str(exc)
        log.warning("poll_failed", mailbox=mailbox.name, error=str(exc))
    return result


def _one(source: MaildirSource, item, mailbox: Mailbox, svc: Services) -> Outcome | None:
    started = time.monotonic()
    limit = svc.config.limits.max_message_bytes
    if item.size > limit:
        outcome = _quarantine_oversized(source, item, svc, limit)
    else:
        raw = source.read(item)
        if raw is None:
            return None
        with svc.write_lock():
            outcome = file_safely(Inbound(source.name, item.name, raw), svc, mailbox)
        source.done(item)
    log_outcome(outcome, mailbox.name, started)
    return outcome


def _quarantine_oversized(source: MaildirSource, item, svc: Services, limit: int) -> Outcome:
    item_id = hashlib.sha256(f"{source.name}:{item.name}".encode()).hexdigest()[:32]
    reason = f"message of {item.size} bytes exceeds limits.max_message_bytes ({limit})"
    try:
        with svc.write_lock():
            svc.quarantine.adopt(item_id, item.path, reason, f"{source.name}:{item.name}")
    except OSError as exc:
        raise TransientError(f"could not quarantine oversized message: {exc}") from exc
    return Outcome("quarantined", None, "", detail=reason)


def log_outcome(outcome: Outcome, source: str, started: float) -> None:
    log.info(
        "message", source=source, message_id=outcome.message_id, action=outcome.action,
        ticket=outcome.ticket, reply=outcome.reply, detail=outcome.detail or None,
        duration_ms=round((time.monotonic() - started) * 1000, 1),
    )
