"""``helpdeskctl``: looking at tickets, the outbox and the quarantine; requeueing failed outgoing mail;
re-filing a quarantined message.

The commands that change tickets (reply, note, close, reopen, assign, set) live in :mod:`helpdeskd.ctlwrite`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from .config import load_config
from .cycle import Outcome, Services, file_safely
from .errors import ConfigError, StoreLocked, TransientError
from .message import Inbound
from .parse import parse
from .settings import Config
from .store.holding import Holding
from .store.lock import WRITE, StateLock
from .store.outbox import STATES, Outbox
from .store.tickets import TicketStore, ticket_to_dict
from .ticket import Ticket
from .ctlstatus import add_parser as add_status_parser
from .ctlwrite import add_parsers as add_write_parsers
from .runtime import config_path
from .scopes import ADMIN, Scope, parse_scope, visible
from .templates import load_templates


def main(argv: list[str] | None = None) -> int:
    """The entry point. Output cut short by its reader (``helpdeskctl list | head``) is not an error."""
    try:
        code = _main(argv)
        sys.stdout.flush()
        return code
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to say, and no one to say it to
        return 0


def _main(argv: list[str] | None) -> int:
    args = _parser().parse_args(argv)
    if getattr(args, "command_main", None):  # commands that must work without a valid config
        return args.command_main(args)
    try:
        config = load_config(config_path(args.config))
    except ConfigError as exc:
        print(f"helpdeskctl: configuration {exc.source} is invalid:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    scope = parse_scope(args.scope_text or "admin", config.access)
    if isinstance(scope, str):
        print(f"helpdeskctl: --as {scope}", file=sys.stderr)
        return 2
    if getattr(args, "admin_only", False) and scope != ADMIN:
        # Held, refused, quarantined and outgoing mail belong to no ticket a scope could own.
        print(f"helpdeskctl {args.command}: only the admin may look at this (not --as {scope})", file=sys.stderr)
        return 1
    args.scope = scope
    return args.func(args, config)


def in_scope(args: argparse.Namespace, config: Config, ticket: Ticket | None) -> Ticket | None:
    """``ticket`` if the command's scope may see it, else None: outside a scope, a ticket does not exist."""
    scope: Scope = getattr(args, "scope", ADMIN)
    return ticket if ticket is not None and visible(scope, ticket, config.access) else None


# -- list -------------------------------------------------------------------------------------------
def cmd_list(args: argparse.Namespace, config: Config) -> int:
    store = TicketStore(config.helpdesk.state_dir)
    visible = [t for t in store.iter_tickets() if in_scope(args, config, t)]
    tickets = [t for t in visible if _wanted(t, args)]
    tickets.sort(key=lambda t: (config.priority_rank(t.priority), t.created, t.id))
    if args.json:
        json.dump([ticket_to_dict(t) | {"token": None} for t in tickets], sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    lang = config.helpdesk.default_language
    rows = [("#", "STATUS", "PRIORITY", "QUEUE", "CATEGORY", "REQUESTER", "CREATED", "SUBJECT")]
    for t in tickets:
        rows.append((str(t.id), str(t.status), _label(config.priority(t.priority), t.priority, lang),
                     _label(config.queue(t.queue), t.queue, lang), _label(config.category(t.category), t.category, lang),
                     t.requester.addr, t.created[:16].replace("T", " "), t.subject[:60]))
    _table(rows)
    shown_all = argparse.Namespace(**{**vars(args), "all": True})  # what --all would add: the closed ones
    closed = 0 if args.all or args.status else sum(t.status == "closed" and _wanted(t, shown_all) for t in visible)
    print(f"{len(tickets)} ticket(s)" + (f"; {closed} closed not shown (--all shows them)" if closed else ""))
    return 0


def _wanted(ticket: Ticket, args: argparse.Namespace) -> bool:
    if args.status:
        if str(ticket.status) not in args.status:
            return False
    elif not args.all and ticket.status == "closed":
        return False
    checks = ((args.queue, ticket.queue), (args.priority, ticket.priority), (args.category, ticket.category))
    if any(want and value not in want for want, value in checks):
        return False
    return not args.requester or args.requester.lower() in ticket.requester.addr


def _label(entry, key: str, lang: str) -> str:
    """Display name in ``lang``; entries removed from the config show as retired, not as errors."""
    return entry.name.get(lang) if entry else f"{key} (retired)"


def _table(rows: list[tuple[str, ...]]) -> None:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())


# -- show -------------------------------------------------------------------------------------------
def cmd_show(args: argparse.Namespace, config: Config) -> int:
    store = TicketStore(config.helpdesk.state_dir)
    ticket = in_scope(args, config, store.get(args.ticket))
    if ticket is None:  # the same answer whether it does not exist or is outside the scope
        print(f"helpdeskctl: no ticket #{args.ticket}", file=sys.stderr)
        return 1
    events = store.events(ticket.id)
    outbox = Outbox(config.helpdesk.state_dir)
    if args.json:
        json.dump({"ticket": ticket_to_dict(ticket) | {"token": None}, "events": events}, sys.stdout,
                  ensure_ascii=False, indent=1)
        print()
        return 0
    lang = config.helpdesk.default_language
    print(f"Ticket #{ticket.id}: {ticket.subject}")
    print(f"  status {ticket.status} · priority {_label(config.priority(ticket.priority), ticket.priority, lang)}"
          f" · queue {_label(config.queue(ticket.queue), ticket.queue, lang)}"
          f" · category {_label(config.category(ticket.category), ticket.category, lang)}")
    r = ticket.requester
    print(f"  requester {r.name + ' ' if r.name else ''}<{r.addr}> ({r.language}) · created {ticket.created}"
          f" · updated {ticket.updated} · via {ticket.source}")
    for event in events:
        print()
        _show_event(event, outbox)
    return 0


def _show_event(event: dict, outbox: Outbox) -> None:
    kind, at = event.get("type"), event.get("at", "")
    if kind == "message":
        _show_message(event, at)
    elif kind == "reply_queued":
        _show_sent(event, at, outbox)
    elif kind == "created":
        print(f"── {at} ticket created (queue {event.get('queue')}, priority {event.get('priority')}, "
              f"category {event.get('category')})")
    elif kind in ("change", "status"):
        print(f"── {at} {event.get('field', 'status')}: {event.get('from') or '-'} → {event.get('to') or '-'}"
              f" by {event.get('by') or 'helpdeskd'}")
    else:
        details = {k: v for k, v in event.items() if k not in ("at", "type", "ref")}
        print(f"── {at} {kind}: {details.get('text') or json.dumps(details, ensure_ascii=False)}")


def _show_message(event: dict, at: str) -> None:
    who = f"{event.get('from_name') or ''} <{event.get('from')}>".strip()
    role = event.get("role", "requester")
    label = "INTERNAL NOTE" if event.get("internal") else ("answer" if event.get("direction") == "out" else "message")
    print(f"── {at} {label} from {who} ({role})")
    print(f"   Subject: {event.get('subject')}")
    for att in event.get("attachments", []):
        print(f"   Attachment: {att.get('filename') or '(unnamed)'} ({att.get('content_type')}, {att.get('size')} bytes)")
    for error in event.get("errors", []):
        print(f"   Rejected command: {error}")
    print(_indent(event.get("new_text") or event.get("text", "")))  # (no new words kept apart: all of it)


def _show_sent(event: dict, at: str, outbox: Outbox) -> None:
    state = outbox.state_of(event.get("ref", ""))
    print(f"── {at} {event.get('template')} ({event.get('language')}, {event.get('kind', 'auto-reply')}) "
          f"to {event.get('to')} [outbox: {state or 'gone'}]")
    if state:
        sent = parse(outbox.read(outbox.root / state / f"{event['ref']}.msg", state).data)
        print(f"   Subject: {sent.subject}")
        print(_indent(sent.text))


def _indent(text: str) -> str:
    return "\n".join("   │ " + line for line in text.rstrip().splitlines()) or "   │"


# -- outbox, quarantine -----------------------------------------------------------------------------
def cmd_outbox(args: argparse.Namespace, config: Config) -> int:
    outbox = Outbox(config.helpdesk.state_dir)
    entries = list(outbox.entries(tuple(args.state) if args.state else STATES))
    if args.json:
        json.dump([{"id": e.id, "state": e.state, "envelope": e.envelope, "reason": e.reason,
                    "retry": outbox.retry_state(e.id) if e.state == "new" else {}} for e in entries],
                  sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    for e in entries:
        sent = parse(e.data)
        print(f"{e.id}  {e.state:6}  to {', '.join(e.envelope.get('to', []))}  ticket #{e.envelope.get('ticket')}"
              f"  {sent.subject}" + (f"  ({e.reason})" if e.reason else ""))
        retry = outbox.retry_state(e.id) if e.state == "new" else {}
        if retry:
            print(f"    attempt {retry.get('attempts')} failed: {retry.get('last_error')}; "
                  f"next attempt {retry.get('next_attempt')}")
        if args.verbose:
            print(_indent(sent.text))
    depth = outbox.depth()
    print(", ".join(f"{n} {state}" for state, n in depth.items()) + " (new = waiting to be sent)")
    return 0


def cmd_outbox_retry(args: argparse.Namespace, config: Config) -> int:
    """Move failed mail back to the queue (under the write lock); 1 if an id was not in failed/."""
    outbox = Outbox(config.helpdesk.state_dir)
    ids = [e.id for e in outbox.entries(("failed",))] if args.all else args.ids
    if not ids:
        print("helpdeskctl: outbox retry: give the ids to requeue, or --all" if not args.all
              else "no failed mail", file=sys.stderr)
        return 0 if args.all else 2
    missing = []
    try:
        lock = StateLock(config.helpdesk.state_dir, WRITE).acquire(wait_seconds=30)
    except StoreLocked as exc:
        print(f"helpdeskctl: {exc}", file=sys.stderr)
        return 1
    with lock:
        for msg_id in ids:
            if outbox.requeue(msg_id):
                print(f"{msg_id}: queued again")
            else:
                missing.append(msg_id)
                print(f"helpdeskctl: {msg_id} is not in outbox/failed/ (state: {outbox.state_of(msg_id) or 'unknown'})",
                      file=sys.stderr)
    return 1 if missing else 0


def cmd_quarantine(args: argparse.Namespace, config: Config) -> int:
    if getattr(args, "action", None) == "retry":
        return cmd_quarantine_retry(args, config)
    items = list(Holding(config.helpdesk.state_dir, args.folder).items())
    if args.json:
        json.dump([{"id": i.id, "reason": i.reason, "source": i.source, "at": i.at, "path": str(i.path)}
                   for i in items], sys.stdout, ensure_ascii=False, indent=1)
        print()
        return 0
    for i in items:
        print(f"{i.id}  {i.at}  {i.source}  {i.reason}")
    print(f"{len(items)} message(s) in {args.folder}/")
    return 0


def cmd_held(args: argparse.Namespace, config: Config) -> int:
    """``held``: new tickets held for an admin (unknown senders); ``held release ID`` files one."""
    if args.action == "release":
        return cmd_held_release(args, config)
    return cmd_quarantine(args, config)


def cmd_held_release(args: argparse.Namespace, config: Config) -> int:
    """File a held message as a new ticket (the unknown-sender policy waived); it leaves held/ once filed."""
    outcome = _refile(config, "held", args.item, released=True)
    if outcome is None:
        return 1
    print(f"{args.item}: {outcome.action}" + (f" ticket #{outcome.ticket}" if outcome.ticket else "")
          + (f" ({outcome.detail})" if outcome.action != "new" and outcome.detail else ""))
    return 0 if outcome.action not in ("quarantined", "held") else 1


def cmd_quarantine_retry(args: argparse.Namespace, config: Config) -> int:
    """File one quarantined message again (after a fix); it leaves quarantine only once it is filed."""
    outcome = _refile(config, "quarantine", args.item)
    if outcome is None:
        return 1
    if outcome.action == "quarantined":
        print(f"helpdeskctl: still failing, kept in quarantine: {outcome.detail}", file=sys.stderr)
        return 1
    print(f"{args.item}: {outcome.action}" + (f" ticket #{outcome.ticket}" if outcome.ticket else ""))
    return 0


def _refile(config: Config, folder: str, item_id: str | None, *, released: bool = False) -> Outcome | None:
    """File a message kept in ``folder`` again, under the write lock; it leaves the folder only once its
    ticket is durable (and not when it is quarantined or held again). None, with the reason printed,
    when it could not be filed."""
    holding = Holding(config.helpdesk.state_dir, folder)
    item = next((i for i in holding.items() if i.id == item_id), None)
    if item is None:
        print(f"helpdeskctl: no message {item_id!r} in {folder}/", file=sys.stderr)
        return None
    name, _, upstream_id = item.source.partition(":")
    mailbox = next((m for m in config.mailboxes if m.name == name), None)
    try:
        svc = Services.open(config, load_templates(config))
        with svc.write_lock():
            with svc.batch():
                outcome = file_safely(Inbound(name or folder, upstream_id or item.id, holding.raw(item.id)),
                                      svc, mailbox, released=released)
            if outcome.action not in ("quarantined", "held"):
                holding.remove(item.id)
    except (TransientError, ConfigError, OSError) as exc:
        print(f"helpdeskctl: not filed, still in {folder}/: {exc}", file=sys.stderr)
        return None
    return outcome


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helpdeskctl", description="Look at helpdeskd tickets and queues.")
    parser.add_argument("-c", "--config", help="TOML file (default: $HELPDESKD_CONFIG or /etc/helpdeskd/helpdeskd.toml)")
    sub = parser.add_subparsers(dest="command", required=True)
    lst = sub.add_parser("list", help="tickets, most urgent priority first, then oldest")
    for name in ("status", "queue", "priority", "category"):
        lst.add_argument(f"--{name}", action="append", help=f"only this {name} (repeatable)")
    lst.add_argument("--requester", help="only requesters whose address contains this")
    lst.add_argument("--all", action="store_true", help="include closed tickets")
    lst.add_argument("--json", action="store_true")
    lst.set_defaults(func=cmd_list)
    show = sub.add_parser("show", help="a ticket's metadata and conversation")
    show.add_argument("ticket", type=int)
    show.add_argument("--json", action="store_true")
    show.set_defaults(func=cmd_show)
    out = sub.add_parser("outbox", help="mail waiting to be sent, sent, or failed")
    out.add_argument("--state", action="append", choices=STATES)
    out.add_argument("-v", "--verbose", action="store_true", help="print each message's text")
    out.add_argument("--json", action="store_true")
    out.set_defaults(func=cmd_outbox)
    retry = out.add_subparsers(dest="outbox_command").add_parser("retry", help="queue failed mail again")
    retry.add_argument("ids", nargs="*", metavar="ID")
    retry.add_argument("--all", action="store_true", help="every message in failed/")
    retry.set_defaults(func=cmd_outbox_retry)
    quar = sub.add_parser("quarantine", help="mail that could not be processed, with the reason")
    quar.add_argument("--json", action="store_true")
    quar.add_argument("action", nargs="?", choices=["retry"], help="retry ID: file a quarantined message again")
    quar.add_argument("item", nargs="?", metavar="ID", help="the quarantine id (first column of the listing)")
    quar.set_defaults(func=cmd_quarantine, folder="quarantine")
    ref = sub.add_parser("refused", help="mail refused by policy (helpdesk disabled, ...), kept with the reason")
    ref.add_argument("--json", action="store_true")
    ref.set_defaults(func=cmd_quarantine, folder="refused")
    held = sub.add_parser("held", help="new tickets held for an admin (unknown senders), with the reason")
    held.add_argument("--json", action="store_true")
    held.add_argument("action", nargs="?", choices=["release"], help="release ID: file it as a new ticket")
    held.add_argument("item", nargs="?", metavar="ID", help="the held id (first column of the listing)")
    held.set_defaults(func=cmd_held, folder="held")
    for admin_only in (out, quar, ref, held):
        admin_only.set_defaults(admin_only=True)
    add_write_parsers(sub)
    for command in sub.choices.values():  # on every command, not before it: "helpdeskctl list --as ..."
        command.add_argument("--as", dest="scope_text", metavar="SCOPE",
                             help="act as admin (default), reseller:NAME, domain:DOMAIN or user:ADDRESS")
    add_status_parser(sub)
    for command in (*sub.choices.values(), retry):  # "-c" after the command too, as helpdeskd takes it
        command.add_argument("-c", dest="config", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
    return parser


if __name__ == "__main__":
    sys.exit(main())
