"""The durable outbox: outgoing mail waits here, one file per message, Maildir style.

``outbox/new/<id>.msg`` is queued, ``outbox/cur/<id>.msg`` was accepted by the next hop,
``outbox/failed/<id>.msg`` gave up (with ``<id>.reason``). A file's first line is the JSON
envelope (sender, recipients, ticket, template); the rest is the message exactly as it will be sent
(to a server without 8BITMIME, with its 8-bit bodies made quoted-printable: see ``outmail.seven_bit``).
Ids are derived from what caused the mail, so queueing the same mail twice is a no-op.

A message that met a temporary failure keeps ``outbox/new/<id>.retry`` beside it (JSON: attempts,
last error, when to try next), replaced atomically at each attempt, so a restart resumes the schedule.
A message file is never rewritten: its mtime is the time it was queued (or requeued).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .fsutil import (IMMEDIATE, Syncer, atomic_write, count_entries, create_exclusive, ensure_dir, exists, fsync_dir,
                     read_json)

STATES = ("new", "cur", "failed")
# made once (json.dumps: one per call); a head is a tree built here (no cycles to look for)
_HEAD_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, check_circular=False)


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
            if exists(self.name(msg_id, state)):
                return state
        return None

    def enqueue(self, msg_id: str, envelope: dict, data: bytes) -> bool:
        """Queue a message durably. Returns False when this id was queued before (in any state)."""
        return self.state_of(msg_id) is None and self.put_new(msg_id, envelope, data)

    def put_new(self, msg_id: str, envelope: dict, data: bytes) -> bool:
        """:meth:`enqueue` for a caller that has just found ``state_of(msg_id)`` None, under the write
        lock (the filing path, and the helper composing for it: one check per mail, not two); a
        second copy in ``new/`` is still refused."""
        head = _HEAD_JSON.encode({"id": msg_id, **envelope}).encode()
        return create_exclusive(self.name(msg_id, "new"), head + b"\n" + data, sync=self.sync)

    def read(self, path: Path, state: str) -> OutboxEntry:
        head, _, data = path.read_bytes().partition(b"\n")
        reason_file = path.with_suffix(".reason")
        reason = reason_file.read_text(encoding="utf-8") if reason_file.exists() else ""
        return OutboxEntry(path.stem, state, json.loads(head), data, reason.strip(), path)

    def entries(self, states: tuple[str, ...] = STATES) -> Iterator[OutboxEntry]:
        for state in states:
            for path in sorted((self.root / state).glob("*.msg"), key=lambda p: p.stat().st_mtime):
                yield self.read(path, state)

    # -- delivery bookkeeping (the sender is the only one moving files out of new/) -----------------
    def path(self, msg_id: str, state: str) -> Path:
        return Path(self.name(msg_id, state))

    def name(self, msg_id: str, state: str) -> str:
        """:meth:`path` as a string: looked up several times for each mail filing queues (no pathlib)."""
        return f"{self.root}/{state}/{msg_id}.msg"

    def retry_state(self, msg_id: str) -> dict:
        """The recorded schedule of a queued message: ``{}`` before its first failure."""
        return read_json(self.root / "new" / f"{msg_id}.retry") or {}  # unreadable: trying now is safe

    def record_retry(self, msg_id: str, state: dict) -> None:
        atomic_write(self.root / "new" / f"{msg_id}.retry", json.dumps(state, sort_keys=True).encode())

    def queued_at(self, msg_id: str) -> float:
        """When the message was queued (or requeued), as a Unix time."""
        return self.path(msg_id, "new").stat().st_mtime

    def mark_sent(self, msg_id: str) -> None:
        """new/ → cur/, durably; then forget the retry schedule."""
        self._move(msg_id, "new", "cur")
        _unlink(self.root / "new" / f"{msg_id}.retry")

    def mark_failed(self, msg_id: str, reason: str) -> None:
        """new/ → failed/ with ``<id>.reason``; the reason is durable before the message moves."""
        atomic_write(self.root / "failed" / f"{msg_id}.reason", reason.encode() + b"\n")
        self._move(msg_id, "new", "failed")
        _unlink(self.root / "new" / f"{msg_id}.retry")

    def requeue(self, msg_id: str) -> bool:
        """failed/ → new/ with a fresh queue time and no schedule. False when it is not in failed/."""
        source = self.path(msg_id, "failed")
        if not source.exists():
            return False
        os.utime(source, (time.time(), time.time()))  # a fresh age, or it would give up at once
        self._move(msg_id, "failed", "new")
        _unlink(self.root / "failed" / f"{msg_id}.reason")
        return True

    def _move(self, msg_id: str, src: str, dst: str) -> None:
        os.replace(self.path(msg_id, src), self.path(msg_id, dst))
        fsync_dir(self.root / dst)
        fsync_dir(self.root / src)

    def depth(self, states: tuple[str, ...] = STATES) -> dict[str, int]:
        return outbox_depth(self.root.parent, states)


def outbox_depth(state_dir: Path, states: tuple[str, ...] = STATES) -> dict[str, int]:
    """Messages per state, counted without reading them (and without creating anything)."""
    return {state: count_entries(state_dir / "outbox" / state, ".msg") for state in states}


def _unlink(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
