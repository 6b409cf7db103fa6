"""The memory behind the rate limits: which automatic messages we queued, to whom, and when.

Layout under the state directory::

    autoreplies/all                       one line per automatic message: "<unix time> <outbox id>"
    autoreplies/to/<h[:2]>/<sha1(addr)>   the same lines, per recipient address

Lines are appended durably; a file is rewritten without its lines older than the longest window once
it grows past a small size, so the files stay small however long the daemon runs. Recording is keyed by
the outbox id, so filing the same message again never counts its answer twice.
"""

from __future__ import annotations

import bisect
import hashlib
from pathlib import Path

from .fsutil import IMMEDIATE, Syncer, append_line, atomic_write, ensure_dir

_PRUNE_BYTES = 64 * 1024  # rewrite a file past this size, keeping only lines inside the horizon


class SentLog:
    def __init__(self, state_dir: Path, sync: Syncer = IMMEDIATE) -> None:
        self.root = ensure_dir(state_dir / "autoreplies")
        self.sync = sync
        # The global log as last read or written: (file identity, its lines, their times sorted).
        self._all: tuple[tuple[int, int, int], list[tuple[float, str]], list[float]] | None = None

    def _recipient_file(self, addr: str) -> Path:
        digest = hashlib.sha1(addr.strip().lower().encode("utf-8", "replace")).hexdigest()
        return self.root / "to" / digest[:2] / digest

    def count(self, addr: str, since: float) -> int:
        """Automatic messages queued to ``addr`` at or after ``since`` (a Unix time)."""
        return _count(self._recipient_file(addr), since)

    def count_all(self, since: float) -> int:
        """Automatic messages queued to anyone at or after ``since``."""
        self._all_lines()
        times = self._all[2] if self._all else []
        return len(times) - bisect.bisect_left(times, since)

    def _all_lines(self) -> list[tuple[float, str]]:
        """The global log, parsed again only when the file changed (it is read for every message)."""
        path = self.root / "all"
        try:
            info = path.stat()
        except FileNotFoundError:
            self._all = None
            return []
        identity = (info.st_ino, info.st_size, info.st_mtime_ns)
        if self._all is None or self._all[0] != identity:
            lines = _lines(path)
            self._all = (identity, lines, sorted(at for at, _ in lines))
        return self._all[1]

    def _remember_all(self, path: Path, known: list[tuple[float, str]], entry: tuple[float, str]) -> None:
        """After our own append of ``entry`` to ``known`` (under the write lock: nobody else wrote)."""
        info = path.stat()
        times = self._all[2] if self._all and self._all[1] is known else sorted(at for at, _ in known)
        known.append(entry)
        bisect.insort(times, entry[0])
        self._all = ((info.st_ino, info.st_size, info.st_mtime_ns), known, times)

    def record(self, addr: str, out_id: str, at: float, horizon: float) -> None:
        """Note one automatic message; a second call with the same ``out_id`` changes nothing.

        ``horizon`` (seconds) is how far back counts will ever look: older lines may be pruned.
        """
        path = self._recipient_file(addr)
        theirs = _lines(path)
        if any(entry_id == out_id for _, entry_id in theirs):
            return
        ensure_dir(path.parent, sync=self.sync)
        entry, line = (float(f"{at:.3f}"), out_id), f"{at:.3f} {out_id}\n".encode()
        _prune(path, theirs, at - horizon, self.sync)
        append_line(path, line, sync=self.sync)
        everyone = self.root / "all"
        known = _prune(everyone, self._all_lines(), at - horizon, self.sync)
        append_line(everyone, line, sync=self.sync)
        self._remember_all(everyone, known, entry)  # current without reading it all again


def _lines(path: Path) -> list[tuple[float, str]]:
    """(time, outbox id) of every readable line; a torn last line (crash mid-append) is skipped."""
    try:
        raw = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return []
    out = []
    for line in raw.splitlines():
        stamp, _, out_id = line.partition(" ")
        try:
            out.append((float(stamp), out_id))
        except ValueError:
            continue
    return out


def _count(path: Path, since: float) -> int:
    return sum(1 for at, _ in _lines(path) if at >= since)


def _prune(path: Path, lines: list[tuple[float, str]], keep_after: float, sync: Syncer) -> list[tuple[float, str]]:
    """Rewrite ``path`` (whose parsed ``lines`` are given) without the lines before ``keep_after`` once
    it is past a small size and at least half of it is that old — so a busy hour, all of it inside
    the horizon, is not rewritten at every append. Returns the lines the file now holds."""
    try:
        if path.stat().st_size < _PRUNE_BYTES:
            return lines
    except FileNotFoundError:
        return lines
    kept = [(at, out_id) for at, out_id in lines if at >= keep_after]
    if 2 * len(kept) > len(lines):
        return lines
    atomic_write(path, "".join(f"{at:.3f} {out_id}\n" for at, out_id in kept).encode(), sync=sync)
    return kept
