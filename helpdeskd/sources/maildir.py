"""A local Maildir as an intake: an MTA (or a person) drops files into ``new/``; we file them.

A message leaves ``new/`` (renamed into ``cur/`` with the Seen flag) only after it is filed, so a crash
leaves it in ``new/`` and the next poll offers it again; the store's idempotent filing makes that safe.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from ..errors import TransientError


@dataclass(frozen=True)
class MaildirItem:
    name: str  # the file name in new/: the upstream id
    path: Path
    size: int


class MaildirSource:
    def __init__(self, name: str, path: Path) -> None:
        self.name = name
        self.path = path

    def ensure(self) -> None:
        """Create the Maildir's three folders if missing (a fresh install has none)."""
        for sub in ("tmp", "new", "cur"):
            (self.path / sub).mkdir(parents=True, exist_ok=True)

    def pending(self) -> list[MaildirItem]:
        """Messages waiting in ``new/``, oldest first (Maildir names start with the delivery time)."""
        items = []
        try:
            entries = sorted(os.scandir(self.path / "new"), key=lambda e: e.name)
        except OSError as exc:
            raise TransientError(f"maildir {self.path}: {exc.strerror or exc}") from exc
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_file():
                continue
            try:
                size = entry.stat().st_size
            except FileNotFoundError:
                continue  # taken by another reader meanwhile
            items.append(MaildirItem(entry.name, Path(entry.path), size))
        return items

    def read(self, item: MaildirItem) -> bytes | None:
        """The message's bytes, or None if it vanished meanwhile (another reader took it)."""
        try:
            return item.path.read_bytes()
        except FileNotFoundError:
            return None

    def done(self, item: MaildirItem) -> None:
        """Filed: move it to ``cur/`` marked Seen. Losing this rename in a crash only causes a harmless re-file."""
        try:
            os.replace(item.path, self.path / "cur" / f"{item.name.split(':', 1)[0]}:2,S")
        except FileNotFoundError:
            pass
        except OSError as exc:  # it stays in new/: filed again next time, a harmless duplicate
            raise TransientError(f"maildir {self.path}: cannot move {item.name} to cur/: {exc}") from exc
