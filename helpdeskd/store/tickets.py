"""Tickets on disk: one folder each, metadata in TOML, history in JSON lines, raw mail byte for byte.

Layout under the state directory::

    seq                                    last ticket id handed out
    tickets/<id // 1000>/<id>/ticket.toml  current metadata, replaced atomically
    tickets/<id // 1000>/<id>/events.jsonl append-only history
    tickets/<id // 1000>/<id>/<n>-<key>.eml        raw messages, never modified (in the folder's
                                           mail/ for tickets made before it was dropped, and kept there)
    index/keys/<k[:2]>/<k>                message key → decision record (JSON), see helpdeskd.cycle
    index/msgid/<h[:2]>/<h>               sha1(Message-ID) → ticket id (as text, or a hard link to the
                                           claim of the message that has it, which names the ticket)
    index/layout                           "1": the index is in this layout (see below)

Ticket folders are grouped by thousands (a shard holds at most 1,000 tickets; ``tickets/`` itself holds
one shard per thousand, 1,000 at a million tickets). Index entries are hashed into 256 buckets per
index: a bucket holds about 3,900 entries per million messages, and a lookup is one path resolution
that the file system's hashed directories (ext4 ``dir_index``, XFS, btrfs) make as cheap in a big
bucket as in a small one. Few buckets mean a young store soon has all of them: filing stops making
index folders after its first two thousand messages or so, and the index's folders stay few enough
to stay cached.

Stores written before ``index/layout`` existed had 65,536 two-level buckets
(``index/keys/<k[:2]>/<k[2:4]>/<k>``). Until :meth:`TicketStore.upgrade_index` has moved their
entries up a level (``helpdeskd fsck`` does; the daemon says so at start), lookups also look there.
Indexes are caches: :mod:`helpdeskd.store.fsck` rebuilds them from the ticket folders.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
import time
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from datetime import datetime, timezone
from pathlib import Path

from ..errors import PermanentError
from ..ticket import Requester, Status, Ticket
from . import tomlout
from .fsutil import (Syncer, append_line, atomic_write, count_entries, create_exclusive, ensure_dir, exists,
                     read_bytes, read_json, read_small, write_new)

LAYOUT = "index/layout"  # present: index entries are one level down (see the module docstring)
_TICKET_FIELDS = {f.name for f in fields(Ticket)} - {"extra", "requester", "status"}
RECENT_HISTORIES = 256  # see TicketStore._recent: two batches of 128 new tickets (~1 MB at most)
# One encoder each, made once: json.dumps with options makes a new one per call (~1 us of 2-4).
# Records are trees this module builds (no cycles to look for: a tenth of an encoding's cost).
_EVENT_JSON = json.JSONEncoder(ensure_ascii=False, sort_keys=True, check_circular=False)
_CLAIM_JSON = json.JSONEncoder(sort_keys=True, check_circular=False)


def utcnow() -> str:
    """The time now, UTC, to the second (ISO 8601), as history lines carry it: formatted once a second."""
    global _utcnow_text
    second, text = int(time.time()), _utcnow_text
    if text[0] != second:
        _utcnow_text = text = (second, datetime.fromtimestamp(second, timezone.utc).isoformat())
    return text[1]


_utcnow_text = (0, "")


class _Unit(threading.local):
    """One thread's unit of work (see :meth:`TicketStore.unit`)."""

    def __init__(self) -> None:
        self.depth = 0
        self.events: dict[int, list[dict]] = {}  # histories read (and appended to) in this unit
        self.raw: dict[int, bytes] = {}  # histories' bytes as read in this unit, and appended since
        self.pending: dict[int, list[bytes]] = {}  # event lines not written yet, per ticket
        self.msgids: dict[str, int | None] = {}  # Message-ID index answers, as read or written
        self.ids: list[int] = []  # reserved ticket ids not handed out yet (ascending)
        self.fresh: set[int] = set()  # ids handed out in this unit, their folders absent then (a hint)


class TicketStore:
    """Reads and writes tickets. Callers hold the state lock for every write."""

    def __init__(self, state_dir: Path, *, durable: bool = True, sync: Syncer | None = None) -> None:
        """``sync`` is shared with the outbox for group commits; ``durable=False`` never fsyncs (bulk tools)."""
        self.root = state_dir
        self._root = os.fspath(state_dir)
        self.sync = sync or Syncer(enabled=durable, root=state_dir)
        self._unit = _Unit()
        # The histories of tickets this process made, as written when their unit ended (the latest
        # RECENT_HISTORIES): a later look into one, such as recording the mail the helper composed for
        # it, costs a stat instead of a read while the file is still the size it was then.
        self._recent: dict[int, bytes] = {}
        for sub in ("tickets", "index/keys", "index/msgid"):
            ensure_dir(state_dir / sub, sync=self.sync)
        self._legacy = old_index_layout(state_dir)  # entries may be two levels down
        if not self._legacy and not exists(f"{self._root}/{LAYOUT}"):
            self._mark_layout()  # a new store (or one whose first start stopped short): nothing to move

    @property
    def legacy_index(self) -> bool:
        """Whether index entries may still be in the old two-level layout (see the module docstring)."""
        return self._legacy

    # -- units of work -------------------------------------------------------------------------
    @contextmanager
    def unit(self) -> Iterator[None]:
        """One message's work, under the write lock: histories and Message-ID answers are read once and
        kept up to date in memory, and a ticket's new events are appended together — before its
        metadata is saved (whose presence tells a re-run that the message was filed; a power failure
        may still keep the metadata and lose what came before it, which the re-run restores: see
        ``cycle._restore``), the rest when the unit ends, even by an error. Every event is idempotent
        by its ref, so an event lost to a crash before that append is written again when the message
        is filed again."""
        unit = self._unit
        unit.depth += 1
        try:
            yield
        finally:
            unit.depth -= 1
            if unit.depth == 0:
                try:
                    for ticket_id in list(unit.pending):
                        self._write_events(ticket_id)
                finally:
                    self._keep_recent(unit)
                    unit.events.clear()
                    unit.raw.clear()
                    unit.pending.clear()
                    unit.msgids.clear()
                    unit.fresh.clear()

    def _keep_recent(self, unit: _Unit) -> None:
        recent = self._recent
        for ticket_id in unit.fresh:
            raw = unit.raw.get(ticket_id)
            if raw:  # what was written of it (a failed append adds nothing here; the size tells)
                recent[ticket_id] = raw
        while len(recent) > RECENT_HISTORIES:
            del recent[next(iter(recent))]

    @contextmanager
    def ids_reserved(self, count: int) -> Iterator[None]:
        """Under the write lock, reserve up to ``count`` ticket ids with one write of ``seq``; ids not
        handed out are given back on exit (a crash leaves them as a gap, never a reuse)."""
        unit = self._unit
        if unit.ids or count < 2:
            yield
            return
        first = self._next_free(self.last_id() + 1)
        self.set_seq(first + count - 1)
        unit.ids = list(range(first, first + count))  # only once seq says so: a failed write reserves nothing
        try:
            yield
        finally:
            unused, unit.ids = unit.ids, []
            if unused:
                self.set_seq(unused[0] - 1)

    # -- paths ---------------------------------------------------------------------------------
    # (strings, not pathlib: each Path costs about as much as a small file read, and filing one
    # message asks for these paths a few dozen times)
    def ticket_dir(self, ticket_id: int) -> Path:
        return Path(self._ticket_dir(ticket_id))

    def _ticket_dir(self, ticket_id: int) -> str:
        return f"{self._root}/tickets/{ticket_id // 1000}/{ticket_id}"

    def _key_path(self, key: str) -> str:
        return f"{self._root}/index/keys/{key[:2]}/{key}"

    def _msgid_path(self, message_id: str) -> str:
        digest = hashlib.sha1(_msgid_key(message_id).encode("utf-8", "replace")).hexdigest()
        return f"{self._root}/index/msgid/{digest[:2]}/{digest}"

    # -- ids -----------------------------------------------------------------------------------
    def allocate_id(self) -> int:
        """Next ticket id. A crash after this call leaves a gap in the numbering, never a reuse.

        An id whose folder exists is skipped: after a power failure the sequence file may be older
        than the folders written in the same group commit.
        """
        unit = self._unit
        while unit.ids:
            candidate = unit.ids.pop(0)
            if not exists(self._ticket_dir(candidate)):
                break
        else:
            candidate = self._next_free(self.last_id() + 1)
            self.set_seq(candidate)
        if unit.depth:  # no folder, so no history: nothing to read while this unit lasts
            unit.raw.setdefault(candidate, b"")
            unit.fresh.add(candidate)
        return candidate

    def set_seq(self, last: int) -> None:
        """Record ``last`` as the last ticket id handed out (or reserved)."""
        atomic_write(f"{self._root}/seq", f"{last}\n".encode(), sync=self.sync)

    def _next_free(self, candidate: int) -> int:
        while exists(self._ticket_dir(candidate)):
            candidate += 1
        return candidate

    def last_id(self) -> int:
        try:
            with open(f"{self._root}/seq", "rb") as file:
                return int(file.read().strip() or 0)
        except FileNotFoundError:
            return 0
        except ValueError:
            return 0  # torn by a power failure: allocate_id skips existing folders, fsck repairs it

    # -- tickets -------------------------------------------------------------------------------
    def get(self, ticket_id: int) -> Ticket | None:
        path = f"{self._ticket_dir(ticket_id)}/ticket.toml"
        try:
            with open(path, encoding="utf-8") as file:
                data = tomllib.loads(file.read())
        except FileNotFoundError:
            return None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise PermanentError(f"{path}: unreadable ticket metadata: {exc}") from exc
        return ticket_from_dict(data)

    def save(self, ticket: Ticket) -> None:
        """Replace the ticket's metadata atomically (creating its folder the first time)."""
        folder = ensure_dir(self._ticket_dir(ticket.id), sync=self.sync)
        self._write_events(ticket.id)  # history first: saved metadata tells a re-run the mail is filed
        data = tomlout.dumps(ticket_to_dict(ticket)).encode()
        atomic_write(f"{folder}/ticket.toml", data, sync=self.sync, new=ticket.id in self._unit.fresh)

    def store_mail(self, ticket: Ticket, key: str, raw: bytes, name: str = "") -> str:
        """Keep raw bytes in the ticket's folder; returns the file name. Storing the same key twice is a
        no-op. ``name``: the name the history gives it (restoring a lost file), else the next number's."""
        if ticket.id in self._unit.fresh:  # a ticket made in this unit: no folder yet (most likely)
            place = ensure_dir(self._ticket_dir(ticket.id), sync=self.sync, missing=True)
        else:
            place = self.mail_dir(ticket.id)
            try:
                existing = _named(place, key)
            except FileNotFoundError:  # no folder: a ticket lost whole, made again (see cycle._create)
                ensure_dir(place, sync=self.sync, missing=True)
                existing = None
            if existing is not None:
                return existing
        if not (name.endswith(f"-{key}.eml") and "/" not in name):
            name = f"{ticket.mail_count + 1:04d}-{key}.eml"
        create_exclusive(f"{place}/{name}", raw, sync=self.sync)
        return name

    def mail_dir(self, ticket_id: int) -> str:
        """Where the ticket's raw mail is: its folder, or the folder's ``mail/`` where an older
        version made one (its mail stays there)."""
        folder = self._ticket_dir(ticket_id)
        return f"{folder}/mail" if os.path.isdir(f"{folder}/mail") else folder

    def find_mail(self, ticket_id: int, key: str) -> str | None:
        """The name of the raw mail stored for message ``key`` on the ticket, if there is one."""
        try:
            return _named(self.mail_dir(ticket_id), key)
        except FileNotFoundError:
            return None

    def read_mail(self, ticket_id: int, name: str) -> bytes | None:
        try:
            with open(f"{self.mail_dir(ticket_id)}/{name}", "rb") as file:
                return file.read()
        except FileNotFoundError:
            return None

    def replace_mail(self, ticket_id: int, name: str, raw: bytes) -> None:
        """Put ``raw`` back under ``name`` (a stored mail found damaged; see ``cycle._restore``)."""
        atomic_write(f"{self.mail_dir(ticket_id)}/{name}", raw, sync=self.sync)

    def iter_ids(self) -> Iterator[int]:
        """Every ticket id that has a folder, in ascending order."""
        base = self.root / "tickets"
        for shard in sorted((p for p in base.iterdir() if p.name.isdigit()), key=lambda p: int(p.name)):
            yield from sorted(int(p.name) for p in shard.iterdir() if p.name.isdigit())

    def iter_tickets(self) -> Iterator[Ticket]:
        for ticket_id in self.iter_ids():
            ticket = self.get(ticket_id)
            if ticket is not None:
                yield ticket

    # -- history -------------------------------------------------------------------------------
    def append_event(self, ticket_id: int, event: dict) -> None:
        """Append one event (a JSON object with at least ``type``); ``at`` is added when missing.
        Inside a :meth:`unit`, the line is written with the ticket's others (see there)."""
        record = {"at": utcnow(), **event}
        line = _EVENT_JSON.encode(record).encode() + b"\n"
        unit = self._unit
        if ticket_id in unit.events:
            unit.events[ticket_id].append(json.loads(line))
        unit.pending.setdefault(ticket_id, []).append(line)
        if not unit.depth:
            self._write_events(ticket_id)

    def _write_events(self, ticket_id: int) -> None:
        unit = self._unit
        lines = unit.pending.pop(ticket_id, None)
        if lines:
            folder, data = self._ticket_dir(ticket_id), b"".join(lines)
            try:  # the folder is there but for a ticket's first events
                append_line(f"{folder}/events.jsonl", data, sync=self.sync)
            except FileNotFoundError:
                if os.path.isdir(folder):  # (not the folder: nothing may be appended twice)
                    raise
                ensure_dir(folder, sync=self.sync, missing=True)
                append_line(f"{folder}/events.jsonl", data, sync=self.sync)
            if ticket_id in unit.raw:
                unit.raw[ticket_id] += data

    def events(self, ticket_id: int) -> list[dict]:
        """The ticket's history, oldest first. A torn last line (crash mid-append) is skipped."""
        unit = self._unit
        if ticket_id in unit.events:
            return list(unit.events[ticket_id])
        history = self._read_events(ticket_id)
        if unit.depth:
            unit.events[ticket_id] = history + [json.loads(line) for line in unit.pending.get(ticket_id, ())]
            return list(unit.events[ticket_id])
        return history

    def _read_events(self, ticket_id: int) -> list[dict]:
        out = []
        for line in self._read_history(ticket_id).splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _read_history(self, ticket_id: int) -> bytes:
        path = f"{self._ticket_dir(ticket_id)}/events.jsonl"
        kept = self._recent.pop(ticket_id, None)
        if kept is not None:  # (popped: appended to from here on, it is read again, or kept by a unit)
            try:
                if os.stat(path).st_size == len(kept):  # append-only: the same size is the same bytes
                    return kept
            except FileNotFoundError:
                return b""
        return read_bytes(path) or b""

    def has_event(self, ticket_id: int, type_: str, ref: str) -> bool:
        unit = self._unit
        if ticket_id not in unit.events and _PLAIN_REF.fullmatch(ref):
            # A ref of letters, digits and ":_.-" is written as itself in quotes by every JSON writer
            # (some escape "<", ">", "&" or "/"): where those bytes are nowhere in the history, no
            # event has it (no JSON decoded, which is most of what reading a history costs); where
            # they are, or for any other ref, the events decide.
            needle = f'"{ref}"'.encode()
            raw = unit.raw.get(ticket_id)
            if raw is None:
                raw = self._read_history(ticket_id)
                if unit.depth:
                    unit.raw[ticket_id] = raw
            if needle not in raw and not any(needle in line for line in unit.pending.get(ticket_id, ())):
                return False
        return any(e.get("type") == type_ and e.get("ref") == ref for e in self.events(ticket_id))

    # -- indexes -------------------------------------------------------------------------------
    def read_claim(self, key: str) -> dict | None:
        """The decision recorded for a message key, or None when the message is new to us."""
        path = self._key_path(key)
        found = read_json(path)
        if found is None and self._legacy:
            found = read_json(_two_levels(path))
        return found

    def write_claim(self, key: str, record: dict) -> None:
        path, data = self._key_path(key), _CLAIM_JSON.encode(record).encode()
        try:  # the bucket is there but for a young store's first claims in it
            write_new(path, data, sync=self.sync)
        except FileNotFoundError:
            if os.path.isdir(bucket := os.path.dirname(path)):  # (not the bucket: never written twice)
                raise
            ensure_dir(bucket, sync=self.sync, missing=True)
            write_new(path, data, sync=self.sync)

    def index_message_id(self, message_id: str, ticket_id: int, claim_key: str = "") -> None:
        """Record that ``message_id`` is filed in ``ticket_id``. ``claim_key``: the key of the message
        whose claim names that ticket; the entry is then a second name (a hard link) of that claim —
        no new file, which is what costs on ext4 — else, or where linking fails, the id as text."""
        if not message_id:
            return
        if self.find_by_message_id(message_id) == ticket_id:
            return  # already there (filing indexes early, then again when it completes)
        path = self._msgid_path(message_id)
        ensure_dir(os.path.dirname(path), sync=self.sync)
        if not (claim_key and self._link_claim(claim_key, path)):
            write_new(path, f"{ticket_id}\n".encode(), sync=self.sync)
        if self._unit.depth:
            self._unit.msgids[_msgid_key(message_id)] = ticket_id

    def _link_claim(self, key: str, path: str) -> bool:
        """Make ``path`` a new name of the claim of ``key`` (whose content is durable already, or
        in the same group commit); False when it exists already or cannot be linked here."""
        try:
            os.link(self._key_path(key), path)
        except OSError:  # an entry for another ticket, no claim, another file system, no hard links
            return False
        self.sync.directory(os.path.dirname(path))
        return True

    def find_by_message_id(self, message_id: str) -> int | None:
        if not message_id:
            return None
        unit, key = self._unit, _msgid_key(message_id)
        if key in unit.msgids:
            return unit.msgids[key]
        path = self._msgid_path(message_id)
        found = _read_msgid(path)
        if found is None and self._legacy:
            found = _read_msgid(_two_levels(path))
        if unit.depth:
            unit.msgids[key] = found
        return found

    def upgrade_index(self, *, everywhere: bool = False) -> int:
        """Move the entries of a store's old two-level index up a level, and mark the store as done
        (``index/layout``). Returns how many moved. The caller holds the write lock. A crash halfway
        leaves entries in both layouts, which lookups read until the next call finishes the move.
        ``everywhere``: look for two-level folders even in a store marked done (fsck: an old store
        copied over a new one keeps the new one's mark)."""
        if not (self._legacy or everywhere):
            return 0
        moved = 0
        with self.sync.batch():
            for index in ("keys", "msgid"):
                for bucket in _subfolders(f"{self._root}/index/{index}"):
                    for old in _subfolders(bucket):
                        moved += _move_up(old, bucket)
                        os.rmdir(old)
                        self.sync.directory(bucket)
        self._mark_layout()
        return moved

    def _mark_layout(self) -> None:
        write_new(f"{self._root}/{LAYOUT}", b"1\n", sync=self.sync)
        self._legacy = False


_PLAIN_REF = re.compile(r"[0-9A-Za-z:_.-]*")  # message keys, outbox ids, "created", "unsendable:<id>"


def _named(folder: str, key: str) -> str | None:
    """The raw mail of message ``key`` in ``folder`` (``<n>-<key>.eml``), if there is one."""
    suffix = f"-{key}.eml"
    with os.scandir(folder) as entries:  # not Path.glob: it compiles a pattern
        return next((entry.name for entry in entries if entry.name.endswith(suffix)), None)


def _read_msgid(path: str) -> int | None:
    text = (read_small(path) or b"").strip()
    try:
        return int(json.loads(text)["ticket"]) if text.startswith(b"{") else int(text)
    except (ValueError, KeyError, TypeError):
        return None  # no entry, or one cut short by a crash: rebuilt by fsck, written again by filing


def _two_levels(path: str) -> str:
    """Where the old layout kept the entry that is at ``path`` now: ``<b>/<name>`` → ``<b>/<name[2:4]>/<name>``."""
    folder, name = os.path.split(path)
    return f"{folder}/{name[2:4]}/{name}"


def old_index_layout(state_dir: Path) -> bool:
    """Whether the store's index may still be in the old two-level layout: it has entries and no
    ``index/layout``. Reads only (``helpdeskctl status`` asks too)."""
    return not (state_dir / LAYOUT).exists() and any(count_entries(state_dir / "index" / name)
                                                      for name in ("keys", "msgid"))


def _subfolders(path: str) -> list[str]:
    with os.scandir(path) as entries:
        return sorted(entry.path for entry in entries if entry.is_dir(follow_symlinks=False))


def _move_up(old: str, bucket: str) -> int:
    """Move every entry of ``old`` into ``bucket``; one there already (written since) wins, and a
    temporary file a crash left behind is dropped. Returns how many moved."""
    moved = 0
    with os.scandir(old) as entries:
        names = [entry.name for entry in entries]
    for name in names:
        target = f"{bucket}/{name}"
        if name.startswith(".") or os.path.lexists(target):
            os.unlink(f"{old}/{name}")
        else:
            os.rename(f"{old}/{name}", target)
            moved += 1
    return moved


def _msgid_key(message_id: str) -> str:
    """Message-IDs are indexed without surrounding space and case."""
    return message_id.strip().lower()


def ticket_to_dict(ticket: Ticket) -> dict:
    data = dict(ticket.extra)
    data.update({name: getattr(ticket, name) for name in _TICKET_FIELDS})
    data["status"] = str(ticket.status)
    for name in ("message_ids", "message_keys", "collaborators", "linked"):
        data[name] = list(getattr(ticket, name))
    r = ticket.requester
    data["requester"] = {"addr": r.addr, "name": r.name, "language": r.language}
    return data


def ticket_from_dict(data: dict) -> Ticket:
    known = {name: data[name] for name in _TICKET_FIELDS if name in data}
    for name in ("message_ids", "message_keys", "collaborators", "linked"):
        known[name] = tuple(known.get(name, ()))
    extra = {k: v for k, v in data.items() if k not in _TICKET_FIELDS | {"requester", "status"}}
    return Ticket(
        status=Status(data.get("status", "new")),
        requester=Requester(**data.get("requester", {"addr": ""})),
        extra=extra,
        **known,
    )
