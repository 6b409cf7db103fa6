"""Checking the store and rebuilding its indexes from the ticket folders (the source of truth)."""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import PermanentError
from ..parse import message_key, parse
from ..settings import Limits
from .fsutil import ensure_dir
from .holding import Holding
from .tickets import TicketStore


@dataclass
class FsckReport:
    tickets: int = 0
    problems: list[str] = field(default_factory=list)
    repaired: list[str] = field(default_factory=list)
    indexed_keys: int = 0
    indexed_message_ids: int = 0


def fsck(state_dir: Path, *, rebuild: bool = True, verify_mail: bool = False, limits: Limits = Limits()) -> FsckReport:
    """Check every ticket folder; with ``rebuild`` recreate the Message-ID index and missing claims.

    Problems that need a person (unreadable metadata, missing mail files or history entries) are
    reported, not "fixed". ``verify_mail``: also read every raw mail and check it against its
    message key (a digest of its bytes and Message-ID — as recorded in the history, else as parsed
    with ``limits``, the configured ones): a file cut short by a power failure shows there.
    """
    store, report = TicketStore(state_dir), FsckReport()
    if rebuild:
        shutil.rmtree(state_dir / "index" / "msgid", ignore_errors=True)  # rebuilt below, whatever its layout
        ensure_dir(state_dir / "index" / "msgid")
        moved = store.upgrade_index(everywhere=True)
        if moved:
            report.repaired.append(f"claims moved to the current index layout: {moved} (Message-IDs are indexed anew)")
    highest = 0
    with store.sync.batch():  # one commit for the whole rebuild, not two fsyncs per index entry
        for ticket_id in store.iter_ids():
            highest = max(highest, ticket_id)
            _check_ticket(store, ticket_id, report, rebuild, limits if verify_mail else None)
        _check_seq(store, highest, report)
        if rebuild:
            _claim_refused(store, Holding(state_dir, "refused", store.sync), report)
    return report


def _check_ticket(store: TicketStore, ticket_id: int, report: FsckReport, rebuild: bool,
                  verify_with: Limits | None = None) -> None:
    try:
        ticket = store.get(ticket_id)
    except PermanentError as exc:
        report.problems.append(str(exc))
        return
    if ticket is None:
        report.problems.append(f"ticket #{ticket_id}: folder without ticket.toml (crash during creation?)")
        return
    report.tickets += 1
    history = store.events(ticket_id)
    logged = {event.get("ref"): event for event in history if event.get("type") == "message"}
    if ticket.message_keys and not any(event.get("type") == "created" for event in history):
        report.problems.append(f"ticket #{ticket_id}: its history has no 'created' entry (events.jsonl lost?)")
    for key in ticket.message_keys:
        found = store.find_mail(ticket_id, key)
        if found is None:
            report.problems.append(f"ticket #{ticket_id}: raw mail for message key {key} is missing")
        elif verify_with is not None and _key_of(store.read_mail(ticket_id, found) or b"", logged.get(key),
                                                 verify_with) != key:
            report.problems.append(f"ticket #{ticket_id}: raw mail {found} does not match its message key"
                                   " (cut short?)")
        if key not in logged:
            report.problems.append(f"ticket #{ticket_id}: its history has no entry for message key {key}")
    if rebuild:
        _reindex(store, ticket, report)


def _key_of(raw: bytes, event: dict | None, limits: Limits) -> str:
    """The message key of stored mail: from the Message-ID its history entry recorded when it was
    filed (parsed then, with the limits of then), else from parsing it now."""
    if event is not None and isinstance(event.get("message_id"), str):
        return message_key(event["message_id"], raw)
    return parse(raw, limits).key


def _reindex(store: TicketStore, ticket, report: FsckReport) -> None:
    for message_id in ticket.message_ids:
        store.index_message_id(message_id, ticket.id)
        report.indexed_message_ids += 1
    for key in ticket.message_keys:
        if store.read_claim(key) is None:
            # The message is on the ticket already: re-filing it must do nothing, so no answer is recorded.
            store.write_claim(key, {"action": "followup", "ticket": ticket.id, "sends": [], "lang": "en",
                                    "notes": [], "rebuilt": True})
            report.repaired.append(f"claim for message {key} on ticket #{ticket.id} recreated")
        report.indexed_keys += 1


def _check_seq(store: TicketStore, highest: int, report: FsckReport) -> None:
    if store.last_id() < highest:
        store.set_seq(highest)
        report.repaired.append(f"ticket sequence raised to {highest} (it was behind the highest ticket)")


def _claim_refused(store: TicketStore, refused: Holding, report: FsckReport) -> None:
    for item in refused.items():
        if store.read_claim(item.id) is None:
            store.write_claim(item.id, {"action": "refused", "ticket": None, "sends": [], "lang": "en",
                                        "notes": [], "reason": item.reason, "rebuilt": True})
            report.repaired.append(f"claim for refused message {item.id} recreated")
