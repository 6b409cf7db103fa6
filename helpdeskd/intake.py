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
from .sources.maildir import MaildirItem, MaildirSource

log = get("intake")


@dataclass
class PollResult:
    counts: dict[str, int] = field(default_factory=dict)
    error: str | None = None

    def add(self, outcome: Outcome) -> None:
        self.counts[outcome.action] = self.counts.get(outcome.action, 0) + 1


def prepare(mailbox: Mailbox) -> None:
    """Create what a mailbox needs locally (a Maildir's folders) before the first poll."""
    if mailbox.protocol == "maildir":
        MaildirSource(mailbox.name, mailbox.path).ensure()


BATCH = 64  # messages per group commit: one round of fsyncs, then the source forgets them


def poll_maildir(mailbox: Mailbox, svc: Services, should_stop: Callable[[], bool] = lambda: False) -> PollResult:
    """File every message in the Maildir's ``new/``; stop early (between messages) when asked to.

    Messages are filed in batches under one group commit; each batch leaves ``new/`` only after the
    commit. A transient failure (disk full, ...) ends the poll and leaves the message where it is.
    """
    source = MaildirSource(mailbox.name, mailbox.path)
    result = PollResult()
    try:
        source.ensure()
        pending = source.pending()
        for start in range(0, len(pending), BATCH):
            if should_stop() or not _batch(source, pending[start:start + BATCH], mailbox, svc, result, should_stop):
                break
    except TransientError as exc:
        result.error = str(exc)
        log.warning("poll_failed", mailbox=mailbox.name, error=str(exc))
    return result


def _batch(source: MaildirSource, items: list[MaildirItem], mailbox: Mailbox, svc: Services,
           result: PollResult, should_stop: Callable[[], bool]) -> bool:
    """File ``items`` under one write lock and one group commit, then let the source forget them.

    Returns False when asked to stop part-way (what was filed is still committed and forgotten).
    """
    filed: list[tuple[MaildirItem, Outcome, float]] = []
    finished = True
    try:
        with svc.write_lock(), svc.batch(), svc.store.ids_reserved(len(items)):
            for item in items:
                if should_stop():
                    finished = False
                    break
                started = time.monotonic()
                outcome = _one(source, item, mailbox, svc)
                if outcome is not None:
                    filed.append((item, outcome, time.monotonic() - started))
    except OSError as exc:
        raise TransientError(f"storage failed: {exc}") from exc
    for item, outcome, seconds in filed:  # committed: now the source may forget them
        source.done(item)
        result.add(outcome)
        log_outcome(outcome, mailbox.name, seconds)
    return finished


def _one(source: MaildirSource, item: MaildirItem, mailbox: Mailbox, svc: Services) -> Outcome | None:
    limit = svc.config.limits.max_message_bytes
    if item.size > limit:
        return _quarantine_oversized(source, item, svc, limit)
    raw = source.read(item)
    if raw is None:
        return None
    return file_safely(Inbound(source.name, item.name, raw), svc, mailbox)


def _quarantine_oversized(source: MaildirSource, item, svc: Services, limit: int) -> Outcome:
    item_id = hashlib.sha256(f"{source.name}:{item.name}".encode()).hexdigest()[:32]
    reason = f"message of {item.size} bytes exceeds limits.max_message_bytes ({limit})"
    try:
        svc.quarantine.adopt(item_id, item.path, reason, f"{source.name}:{item.name}")
    except OSError as exc:
        raise TransientError(f"could not quarantine oversized message: {exc}") from exc
    return Outcome("quarantined", None, "", detail=reason)


def log_outcome(outcome: Outcome, source: str, seconds: float) -> None:
    """The one log line per message: where from, what it was, what we did, how long filing took."""
    log.info(
        "message", source=source, message_id=outcome.message_id, action=outcome.action,
        ticket=outcome.ticket, reply=outcome.reply, detail=outcome.detail or None,
        duration_ms=round(seconds * 1000, 1),
    )
