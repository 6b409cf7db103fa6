"""Folders for mail that did not become part of a ticket, kept with the reason: never silently lost.

``quarantine/`` holds what could not be processed (an error); ``refused/`` holds what policy turned
away (helpdesk disabled, customers may not submit). Each item is ``<key>.eml`` (the raw bytes) and
``<key>.json`` (why, when, and where it came from).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from .fsutil import IMMEDIATE, Syncer, atomic_write, create_exclusive, ensure_dir, read_json
from .tickets import utcnow


@dataclass(frozen=True)
class HeldItem:
    id: str
    reason: str
    source: str
    at: str
    path: Path


class Holding:
    def __init__(self, state_dir: Path, name: str, sync: Syncer = IMMEDIATE) -> None:
        self.root = ensure_dir(state_dir / name)
        self.sync = sync

    def put(self, item_id: str, raw: bytes, reason: str, source: str) -> bool:
        """Keep ``raw`` with ``reason``; False when it was kept already. The bytes are durable before
        the reason is written, and a reason a crash kept from being written is written now."""
        created = create_exclusive(self.root / f"{item_id}.eml", raw, sync=self.sync)
        if created or not (self.root / f"{item_id}.json").exists():
            self._write_meta(item_id, reason, source)
        return created

    def adopt(self, item_id: str, path: Path, reason: str, source: str) -> None:
        """Keep a copy of ``path`` without reading it into memory (oversized mail), then record why.

        The source file stays where it is: the caller lets its source forget it after the commit.
        A hard link when on the same file system, else a copy that is synced like any write.
        """
        target = self.root / f"{item_id}.eml"
        if not target.exists():
            try:
                os.link(path, target)
            except OSError:  # another file system (EXDEV), or links not allowed
                shutil.copyfile(path, target)
                with target.open("rb") as copied:
                    self.sync.file(target, copied.fileno())
            self.sync.directory(self.root)
        self._write_meta(item_id, reason, source)

    def _write_meta(self, item_id: str, reason: str, source: str) -> None:
        meta = {"id": item_id, "reason": reason, "source": source, "at": utcnow()}
        atomic_write(self.root / f"{item_id}.json", json.dumps(meta, ensure_ascii=False, indent=1).encode(),
                     sync=self.sync)

    def has(self, item_id: str) -> bool:
        return (self.root / f"{item_id}.eml").exists()

    def raw(self, item_id: str) -> bytes:
        return (self.root / f"{item_id}.eml").read_bytes()

    def remove(self, item_id: str) -> None:
        for suffix in (".json", ".eml"):
            (self.root / f"{item_id}{suffix}").unlink(missing_ok=True)

    def items(self) -> Iterator[HeldItem]:
        for eml in sorted(self.root.glob("*.eml"), key=lambda p: p.stat().st_mtime):
            meta = read_json(eml.with_suffix(".json"))
            if not isinstance(meta, dict):
                meta = {"reason": "(reason not recorded: crash while holding)"}
            yield HeldItem(eml.stem, meta.get("reason", ""), meta.get("source", ""), meta.get("at", ""), eml)
