"""The durable outbox: outgoing mail waits here, one file per message, Maildir style.

``outbox/new/<id>.msg`` is queued, ``outbox/cur/<id>.msg`` was accepted by the next hop,
``outbox/failed/<id>.msg`` gave up (with ``<id>.reason``). A file's first line is the JSON
envelope (sender, recipients, ticket, template); the rest is the message exactly as it will be sent.
Ids are derived from what caused the mail, so queueing the same mail twice is a no-op.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .fsutil import IMMEDIATE, Syncer, create_exclusive, ensure_dir

STATES = ("new", "cur", "failed")


@dataclass(frozen=True)
class OutboxEntry:
    id: str
    state: str  # new | cur | failed
    envelope: dict
    data: bytes
    reason: str = ""
    path: Path | None = None


class Outbox:
    def __init__(self, state_dir: Path, sync: Syncer = IMMEDIATE) -> None:
        self.root = state_dir / "outbox"
        self.sync = sync
        for sub in ("tmp",) + STATES:
            ensure_dir(self.root / sub)

    def state_of(self, msg_id: str) -> str | None:
        """Where the message with this id is, or None if it was never queued."""
        for state in STATES:
            if (self.root / state / f"{msg_id}.msg").exists():
                return state
        return None

    def enqueue(self, msg_id: str, envelope: dict, data: bytes) -> bool:
        """Queue a message durably. Returns False when this id was queued before (in any state)."""
        if self.state_of(msg_id) is not None:
            return False
        head = json.dumps({"id": msg_id, **envelope}, ensure_ascii=False, sort_keys=True).encode()
        return create_exclusive(self.root / "new" / f"{msg_id}.msg", head + b"\n" + data, sync=self.sync)

    def read(self, path: Path, state: str) -> OutboxEntry:
        head, _, data = path.read_bytes().partition(b"\n")
        reason_file = path.with_suffix(".reason")
        reason = reason_file.read_text(encoding="utf-8") if reason_file.exists() else ""
        return OutboxEntry(path.stem, state, json.loads(head), data, reason.strip(), path)

    def entries(self, states: tuple[str, ...] = STATES) -> Iterator[OutboxEntry]:
        for state in states:
            for path in sorted((self.root / state).glob("*.msg"), key=lambda p: p.stat().st_mtime):
                yield self.read(path, state)

    def depth(self) -> dict[str, int]:
        return {state: sum(1 for _ in (self.root / state).glob("*.msg")) for state in STATES}
