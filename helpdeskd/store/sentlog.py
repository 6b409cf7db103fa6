"""The memory behind the rate limits: which automatic messages we queued, to whom, and when.

Layout under the state directory::

    autoreplies/all     one line per automatic message: "<unix time> <outbox id> <recipient digest>"

The recipient digest is the first 20 hex digits of sha1(lower-cased address). Lines are appended
durably, before the mail they count is written: at once, or — for the mail a POP3 batch hands to the
helper process — all of the batch's together just before that (:meth:`SentLog.together`). The file is
rewritten without its lines older than the longest window once it is past a small size and at least
half of it is that old, so it stays small however long the daemon runs, and a busy hour (all of it
inside the window) is not rewritten at every answer. Recording is keyed by the outbox
id, so filing the same message again never counts its answer twice.

The file is read for every incoming message, so its parsed form is kept and reused while the file is
unchanged (same inode, size and mtime); our own appends (under the write lock) update it in place.
One file for every recipient: a storm of new customers does not create a file per address.
(Lines of the older two-field form, and the older per-address files under ``to/``, still count
towards the global limit only.)
"""

from __future__ import annotations

import bisect
import hashlib
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .fsutil import IMMEDIATE, Syncer, append_line, atomic_write, ensure_dir

_PRUNE_BYTES = 64 * 1024  # rewrite the log past this size once half of it is outside the horizon


@dataclass
class _Parsed:
    """The log as last read or written."""

    identity: tuple[int, int, int] = (0, 0, 0)  # inode, size, mtime_ns
    lines: list[tuple[float, str, str]] = field(default_factory=list)  # (time, outbox id, digest)
    ids: set[str] = field(default_factory=set)
    times: list[float] = field(default_factory=list)  # sorted
    per_recipient: dict[str, list[float]] = field(default_factory=dict)  # digest → sorted times

    def add(self, line: tuple[float, str, str]) -> None:
        at, out_id, digest = line
        self.lines.append(line)
        self.ids.add(out_id)
        bisect.insort(self.times, at)
        if digest:
            bisect.insort(self.per_recipient.setdefault(digest, []), at)


class SentLog:
    def __init__(self, state_dir: Path, sync: Syncer = IMMEDIATE) -> None:
        self.root = ensure_dir(state_dir / "autoreplies")
        self.path = self.root / "all"
        self.sync = sync
        self._parsed = _Parsed()
        self._waiting: tuple[int, list[bytes]] | None = None  # (thread, lines) while together()
        self._looked = False  # within together(): the file was looked at (its thread holds the write lock)

    def count(self, addr: str, since: float) -> int:
        """Automatic messages queued to ``addr`` at or after ``since`` (a Unix time)."""
        return _since(self._current().per_recipient.get(_digest(addr), []), since)

    def counts(self, addrs: list[str], since_each: float, since_all: float) -> tuple[dict[str, int], int]:
        """:meth:`count` for each of ``addrs`` and :meth:`count_all`, from one look at the file."""
        parsed = self._current()
        each = {addr: _since(parsed.per_recipient.get(_digest(addr), []), since_each) for addr in addrs}
        return each, _since(parsed.times, since_all)

    def count_all(self, since: float) -> int:
        """Automatic messages queued to anyone at or after ``since``."""
        return _since(self._current().times, since)

    def record(self, addr: str, out_id: str, at: float, horizon: float, *, hold: bool = False) -> None:
        """Note one automatic message; a second call with the same ``out_id`` changes nothing.

        ``horizon`` (seconds) is how far back counts will ever look: older lines may be pruned.
        ``hold``: within :meth:`together`, in the same thread, the line waits for :meth:`flush` (for
        mail that nothing writes before then); it is counted at once all the same.
        """
        parsed = self._current()
        if out_id in parsed.ids:
            return
        if not self._held():  # never rewritten with lines waiting to be appended
            parsed = self._prune(parsed, at - horizon)
        line = (float(f"{at:.3f}"), out_id, _digest(addr))
        text = f"{at:.3f} {out_id} {line[2]}\n".encode()
        held = hold and self._waiting and self._waiting[0] == threading.get_ident()
        if held:
            self._waiting[1].append(text)  # type: ignore[index]
        else:
            append_line(self.path, text, sync=self.sync)
        parsed.add(line)  # nobody else wrote in between: we hold the write lock
        if not held:
            parsed.identity = _identity(self.path)
        self._parsed = parsed

    @contextmanager
    def together(self) -> Iterator[None]:
        """Lines this thread records with ``hold`` within the block (the POP3 filing thread, under the
        write lock, inside a group commit's collection) are appended in one write by :meth:`flush`,
        called before the mail they count is written, and at the latest when the block ends."""
        if self._waiting is not None:
            yield
            return
        self._waiting = (threading.get_ident(), [])
        try:
            yield
            self.flush()
        finally:
            if self._held():  # an error ended the block before their mail was handed to anyone
                self._forget()
            self._waiting, self._looked = None, False

    def flush(self) -> None:
        """Append the lines waiting in :meth:`together`. If that fails, they are forgotten (the log is
        read again: not counted, they are recorded again when their mail is asked for again) and the
        error propagates: the caller must not write the mail they count."""
        if not self._held():
            return
        lines = self._waiting[1]  # type: ignore[index]
        try:
            append_line(self.path, b"".join(lines), sync=self.sync)
        except BaseException:
            self._forget()
            raise
        finally:
            lines.clear()
        self._parsed.identity = _identity(self.path)

    def _held(self) -> bool:
        return bool(self._waiting and self._waiting[1])

    def _forget(self) -> None:
        """Drop what we counted but did not write: the log is read again at the next look."""
        self._parsed, self._looked = _Parsed(identity=(-1, -1, -1)), False

    def _current(self) -> _Parsed:
        """The parsed log, read again only when the file changed behind our back — which it cannot
        within :meth:`together` once looked at: its thread holds the write lock, and keeps
        ``_parsed`` up to date with what it writes itself."""
        inside = self._waiting is not None and self._waiting[0] == threading.get_ident()
        if inside and self._looked:
            return self._parsed
        identity = _identity(self.path)
        if identity != self._parsed.identity:
            self._parsed = _parse(self.path, identity)
        self._looked = inside
        return self._parsed

    def _prune(self, parsed: _Parsed, keep_after: float) -> _Parsed:
        if parsed.identity[1] < _PRUNE_BYTES:
            return parsed
        if 2 * bisect.bisect_left(parsed.times, keep_after) < len(parsed.times):
            return parsed  # less than half of it is old: counted by bisection, not by a scan per answer
        kept = [line for line in parsed.lines if line[0] >= keep_after]
        atomic_write(self.path, "".join(_format(line) for line in kept).encode(), sync=self.sync)
        fresh = _Parsed()
        for line in kept:
            fresh.add(line)
        fresh.identity = _identity(self.path)
        return fresh


def _since(times: list[float], since: float) -> int:
    """How many of the sorted ``times`` are at or after ``since``."""
    return len(times) - bisect.bisect_left(times, since)


def _digest(addr: str) -> str:
    return hashlib.sha1(addr.strip().lower().encode("utf-8", "replace")).hexdigest()[:20]


def _format(line: tuple[float, str, str]) -> str:
    at, out_id, digest = line
    return f"{at:.3f} {out_id} {digest}\n" if digest else f"{at:.3f} {out_id}\n"


def _identity(path: Path) -> tuple[int, int, int]:
    try:
        info = os.stat(str(path))  # (checked twice or more for every message: not through pathlib)
    except FileNotFoundError:
        return (0, 0, 0)
    return (info.st_ino, info.st_size, info.st_mtime_ns)


def _parse(path: Path, identity: tuple[int, int, int]) -> _Parsed:
    """Every readable line; a torn last line (crash mid-append) is skipped."""
    parsed = _Parsed(identity=identity)
    try:
        raw = path.read_text(encoding="ascii", errors="replace")
    except FileNotFoundError:
        return parsed
    for text in raw.splitlines():
        fields = text.split()
        try:
            at = float(fields[0])
        except (IndexError, ValueError):
            continue
        if len(fields) in (2, 3):
            parsed.add((at, fields[1], fields[2] if len(fields) == 3 else ""))
    return parsed
