"""``helpdeskctl reply|note|close|reopen|assign|set``: staff work on a ticket from the command line.

Each runs under the store's write lock (so it takes turns with the daemon) and one group commit;
mail to customers goes through the outbox like every answer given by mail.
"""

from __future__ import annotations

import argparse
import os
import sys

from .commands import Command
from .errors import ConfigError, PermanentError, StoreLocked
from .services import Services
from .settings import Config
from .staffops import Act, act
from .templates import load_templates


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the write commands on ``helpdeskctl``'s sub-command parser."""
    reply = _with_author(sub.add_parser("reply", help="answer the customer (relayed by mail)"))
    reply.add_argument("-m", "--message", help="the answer (default: read from stdin)")
    reply.set_defaults(func=cmd_write, build=lambda a, text: Act(answer=text), needs_text=True)
    note = _with_author(sub.add_parser("note", help="add an internal note (never sent to customers)"))
    note.add_argument("-m", "--message", help="the note (default: read from stdin)")
    note.set_defaults(func=cmd_write, build=lambda a, text: Act(note=text), needs_text=True)
    for name, help_text in (("close", "close the ticket (the customer is told)"), ("reopen", "reopen the ticket")):
        p = _with_author(sub.add_parser(name, help=help_text))
        p.add_argument("--quiet", action="store_true", help="do not tell the customer")
        p.set_defaults(func=cmd_write, build=_status_act(name), needs_text=False)
    assign = _with_author(sub.add_parser("assign", help="assign to a staff member (default: yourself)"))
    assign.add_argument("assignee", nargs="?", default="me")
    assign.set_defaults(func=cmd_write, build=lambda a, _: Act(commands=(Command("assign", a.assignee, "assign"),)),
                        needs_text=False)
    set_p = _with_author(sub.add_parser("set", help="set priority, queue or category"))
    set_p.add_argument("field", choices=["priority", "queue", "category", "status"])
    set_p.add_argument("value")
    set_p.set_defaults(func=cmd_write, needs_text=False,
                       build=lambda a, _: Act(commands=(Command(a.field, a.value, f"set {a.field}"),)))


def _with_author(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("ticket", type=int)
    p.add_argument("--from", dest="author", default=os.environ.get("HELPDESKD_STAFF", ""),
                   help="your staff address (default: $HELPDESKD_STAFF; else the helpdesk itself)")
    p.add_argument("--name", default=os.environ.get("HELPDESKD_STAFF_NAME", ""), help="your display name")
    return p


def _status_act(name: str):
    def build(args: argparse.Namespace, _: str) -> Act:
        return Act(commands=(Command(name, "", name),), notify=not args.quiet)
    return build


def cmd_write(args: argparse.Namespace, config: Config) -> int:
    text = ""
    if args.needs_text:
        text = (args.message if args.message is not None else sys.stdin.read()).strip()
        if not text:
            print(f"helpdeskctl {args.command}: nothing to send (empty text)", file=sys.stderr)
            return 2
    try:
        svc = Services.open(config, load_templates(config))  # the config --as was read from, not a second read
        with svc.write_lock(), svc.batch():
            ticket, queued = act(svc, args.ticket, args.build(args, text), args.author.lower(), args.name,
                                 scope=args.scope)
    except (PermanentError, ConfigError, StoreLocked) as exc:
        print(f"helpdeskctl {args.command}: {exc}", file=sys.stderr)
        return 1
    print(f"ticket #{ticket.id}: status {ticket.status}, priority {ticket.priority}, queue {ticket.queue}, "
          f"category {ticket.category}, assignee {ticket.assignee or '-'}; {queued} mail(s) queued")
    return 0
