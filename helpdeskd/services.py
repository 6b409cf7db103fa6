"""The adapters one unit of work needs, bundled: the daemon and the commands build one and pass it in."""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime, timezone

from .settings import Config
from .store.fsutil import Syncer
from .store.confirmations import Confirmations
from .store.holding import Holding
from .store.lock import WRITE, StateLock
from .store.outbox import Outbox
from .store.sentlog import SentLog
from .store.tickets import TicketStore
from .templates import Templates


@dataclass
class Services:
    config: Config
    store: TicketStore
    outbox: Outbox
    quarantine: Holding
    refused: Holding
    templates: Templates
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(timezone.utc))
    sent: SentLog | None = None  # automatic messages queued recently (rate limits); made from state_dir
    held: Holding | None = None  # new tickets held for an admin (unknown senders); made from state_dir
    confirmations: Confirmations | None = None  # one-time codes of "my tickets" by email

    def __post_init__(self) -> None:
        state = self.config.helpdesk.state_dir
        if self.sent is None:
            self.sent = SentLog(state, self.store.sync)
        if self.held is None:
            self.held = Holding(state, "held", self.store.sync)
        if self.confirmations is None:
            self.confirmations = Confirmations(state, self.store.sync)

    @classmethod
    def open(cls, config: Config, templates: Templates) -> "Services":
        state = config.helpdesk.state_dir
        sync = Syncer(root=state)
        return cls(config, TicketStore(state, sync=sync), Outbox(state, sync), Holding(state, "quarantine", sync),
                   Holding(state, "refused", sync), templates)

    def batch(self) -> AbstractContextManager[Syncer]:
        """Group commit: what is written inside is durable when the block exits (see store.fsutil)."""
        return self.store.sync.batch()

    def write_lock(self, wait_seconds: float = 30.0) -> StateLock:
        """The store's write lock, taken around each change (see :mod:`helpdeskd.store.lock`)."""
        return StateLock(self.config.helpdesk.state_dir, WRITE).acquire(wait_seconds)

    def now(self) -> str:
        return self.clock().isoformat(timespec="seconds")


def event_once(svc: Services, ticket_id: int, event: dict) -> None:
    """Append ``event`` unless an event of its type with its ``ref`` is already there (idempotence)."""
    if not svc.store.has_event(ticket_id, event["type"], event["ref"]):
        svc.store.append_event(ticket_id, event)
