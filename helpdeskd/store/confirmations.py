"""One-time confirmation codes for "my tickets" by email (see :mod:`helpdeskd.identity`).

``state/confirm/<sha256(code)>.json`` holds who the code was mailed to, when it expires and, once
used, the message key that used it. Files are named by the code's hash so a directory listing (or a
backup) does not give codes away. Expired files are pruned when new codes are issued. Callers hold
the write lock, like every other write to the state directory.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..identity import Confirmation, code_key
from .fsutil import IMMEDIATE, Syncer, atomic_write, ensure_dir, read_json

KEEP_AFTER_EXPIRY = 7 * 86400.0  # used/expired codes stay this long, so a late reply is told "expired"


class Confirmations:
    def __init__(self, state_dir: Path, sync: Syncer = IMMEDIATE) -> None:
        self.root = ensure_dir(state_dir / "confirm")
        self.sync = sync

    def _path(self, key: str) -> Path:
        return self.root / f"{key}.json"

    def get(self, key: str) -> Confirmation | None:
        """The code filed under ``key`` (:func:`identity.code_key`), or None; unreadable counts as none."""
        data = read_json(self._path(key))
        try:
            return Confirmation(str(data["addr"]), float(data["expires"]), str(data.get("used_by", "")))
        except (ValueError, KeyError, TypeError):  # none, or not a record of ours
            return None

    def issue(self, code: str, addr: str, expires: float, now: float) -> None:
        """Record ``code`` for ``addr`` unless it already is (re-applying a decision issues nothing new)."""
        key = code_key(code)
        if self.get(key) is None:
            self._write(key, Confirmation(addr, expires))
            self.prune(now)

    def use(self, code: str, message_key: str) -> None:
        """Mark ``code`` used by ``message_key``: it proves nothing any more. Idempotent."""
        key = code_key(code)
        found = self.get(key)
        if found is not None and not found.used_by:
            self._write(key, Confirmation(found.addr, found.expires, message_key))

    def prune(self, now: float) -> None:
        for path in self.root.glob("*.json"):
            found = self.get(path.stem)
            if found is not None and found.expires + KEEP_AFTER_EXPIRY < now:
                path.unlink(missing_ok=True)

    def _write(self, key: str, value: Confirmation) -> None:
        data = {"addr": value.addr, "expires": value.expires, "used_by": value.used_by}
        atomic_write(self._path(key), json.dumps(data).encode(), sync=self.sync)
