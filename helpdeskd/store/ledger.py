"""Per-source ledgers: the upstream ids (POP3 UIDLs) whose message is already safe in the store.

``state/ledger/<source>`` is a text file, one id per line, replaced atomically (tmp, fsync, rename,
fsync the directory), so a crash leaves the old or the new list, never a torn one. An id is added
only after its message is durable (filed, quarantined or noted), and before the upstream copy is
deleted: the ledger is what lets a later session delete or skip a message without downloading it.

Losing an entry is harmless (the message is downloaded again and the store's idempotent filing
recognises it); an entry for a message that was never filed would lose mail, which is why callers
add ids only after filing returned.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from .fsutil import atomic_write, ensure_dir


class Ledger:
    """The set of upstream ids of one source, loaded once and saved whole."""

    def __init__(self, state_dir: Path, source: str) -> None:
        self.path = ensure_dir(state_dir / "ledger") / source
        self._ids = self._load()
        self._dirty = False
        self.seen: set[str] = set()  # every id added since loading: what this session found upstream

    def _load(self) -> set[str]:
        try:
            text = self.path.read_text(encoding="utf-8", errors="surrogateescape")
        except FileNotFoundError:
            return set()
        return {line for line in text.splitlines() if line}

    def __contains__(self, upstream_id: str) -> bool:
        return upstream_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, ids: Iterable[str]) -> None:
        """Record ids whose messages are durable; call :meth:`save` before deleting them upstream."""
        before = len(self._ids)
        ids = set(ids)
        self.seen |= ids
        self._ids |= ids
        self._dirty |= len(self._ids) != before

    def prune(self, listed: Iterable[str]) -> None:
        """Forget ids the server no longer lists (deleted upstream): the ledger stays as big as the mailbox."""
        kept = self._ids.intersection(listed)
        self._dirty |= len(kept) != len(self._ids)
        self._ids = kept

    def save(self) -> None:
        """Write the whole list atomically and durably, if it changed since the last save."""
        if not self._dirty:
            return
        data = "".join(f"{uid}\n" for uid in sorted(self._ids)).encode("utf-8", "surrogateescape")
        atomic_write(self.path, data)
        self._dirty = False
