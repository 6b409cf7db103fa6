"""``helpdeskd``: the daemon and its mail-side commands (run, once, send-once, deliver, check-config, fsck)."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import helper, logs
from .cycle import Services, file_safely
from .errors import ConfigError, StoreLocked, TransientError
from .gateway import poll_pop3_fully
from .intake import log_outcome, poll_maildir
from .message import Inbound
from .runtime import Runtime, config_path, load
from .store.fsck import fsck
from .store.lock import DAEMON, WRITE, StateLock

EX_OK, EX_FAIL, EX_USAGE, EX_DATAERR, EX_TEMPFAIL = 0, 1, 2, 65, 75


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    path = config_path(args.config)
    try:
        runtime = load(path)
    except ConfigError as exc:
        return _config_failed(exc, args.command)
    logs.setup(args.log_level or runtime.config.log_level)
    try:
        return args.func(args, path, runtime)
    except StoreLocked as exc:
        print(f"helpdeskd: {exc}", file=sys.stderr)
        return EX_TEMPFAIL if args.command == "deliver" else EX_FAIL
    except KeyboardInterrupt:
        return 130


def _config_failed(exc: ConfigError, command: str) -> int:
    print(f"helpdeskd: configuration {exc.source} is invalid:", file=sys.stderr)
    for problem in exc.problems:
        print(f"  {problem}", file=sys.stderr)
    # An MTA should keep the mail and retry while an admin mends the config.
    return EX_TEMPFAIL if command == "deliver" else EX_FAIL


def _count(items, one: str, many: str = "") -> str:
    return f"{len(items)} {one if len(items) == 1 else many or one + 's'}"


def cmd_check_config(args: argparse.Namespace, path: Path, runtime: Runtime) -> int:
    c = runtime.config
    print(
        f"helpdeskd: configuration {path} is valid: {_count(c.queues, 'queue')}, "
        f"{_count(c.priorities, 'priority', 'priorities')}, {_count(c.categories, 'category', 'categories')}, "
        f"{_count(c.mailboxes, 'mailbox', 'mailboxes')}, templates in {c.helpdesk.templates_dir}"
        + ("" if c.helpdesk.enabled else " (helpdesk disabled)")
        + ("" if c.mail_gateway.enabled else " (mail gateway disabled: no mailbox is polled)")
    )
    print(_smtp_summary(c.smtp))
    return EX_OK


def _smtp_summary(smtp) -> str:
    """One line on outgoing mail; says so when the password source cannot be read from here."""
    if smtp is None:
        return "outgoing mail: outbox only (no [smtp] section)"
    from .smtp import resolve_password

    line = f"outgoing mail: SMTP {smtp.host}:{smtp.port} ({smtp.security})" + (f" as {smtp.user}" if smtp.user else "")
    try:
        resolve_password(smtp)
    except ConfigError as exc:
        line += f"; warning: {'; '.join(exc.problems)}"
    return line


def cmd_run(args: argparse.Namespace, path: Path, runtime: Runtime) -> int:
    from .daemon import run_daemon  # asyncio machinery only for the daemon

    return run_daemon(path, runtime, log_level=args.log_level)


def cmd_once(args: argparse.Namespace, path: Path, runtime: Runtime) -> int:
    """Poll every mailbox once, file what is there, exit (cron-friendly)."""
    with StateLock(runtime.config.helpdesk.state_dir, DAEMON).acquire():
        svc = Services.open(runtime.config, runtime.templates)
        failed = False
        if not runtime.config.mail_gateway.enabled:
            print("mail gateway disabled ([mail_gateway] enabled = false): no mailbox polled")
        try:
            for mailbox in runtime.config.intake_mailboxes():
                result = poll_maildir(mailbox, svc) if mailbox.pop3 is None else poll_pop3_fully(mailbox, svc)
                failed |= result.error is not None
                print(f"{mailbox.name}: " + (", ".join(f"{n} {k}" for k, n in sorted(result.counts.items()))
                                             or "no mail") + (f" (error: {result.error})" if result.error else ""))
        finally:
            helper.shutdown()
    return EX_FAIL if failed else EX_OK


def cmd_send_once(args: argparse.Namespace, path: Path, runtime: Runtime) -> int:
    """Deliver what is due in the outbox once and exit (for cron, beside ``once``). 1 if anything failed."""
    from .sender import Sender  # smtplib and ssl only when sending
    from .store.outbox import Outbox

    smtp = runtime.config.smtp
    if smtp is None:
        print("helpdeskd: no [smtp] section: outgoing mail stays in the outbox", file=sys.stderr)
        return EX_FAIL
    with StateLock(runtime.config.helpdesk.state_dir, DAEMON).acquire():  # one sender at a time
        result = Sender(Outbox(runtime.config.helpdesk.state_dir), smtp).run_once()
    waiting = "" if result.next_due_in is None else f", next attempt in {result.next_due_in:.0f} s"
    print(f"outbox: {result.sent} sent, {result.deferred} deferred, {result.failed} failed{waiting}")
    return EX_FAIL if result.deferred or result.failed else EX_OK


def cmd_deliver(args: argparse.Namespace, path: Path, runtime: Runtime) -> int:
    """One message on stdin (an MTA pipe). 0 when filed (or kept), 75 when the MTA should retry.

    With the mail gateway off, nothing is read and the answer is 75: the MTA keeps the message in
    its queue and retries, so switching intake back on (within the MTA's queue lifetime) loses nothing.
    """
    if not runtime.config.mail_gateway.enabled:
        print("helpdeskd: mail gateway disabled ([mail_gateway] enabled = false): not accepted now, "
              "the MTA keeps the message and retries", file=sys.stderr)
        return EX_TEMPFAIL
    limit = runtime.config.limits.max_message_bytes
    raw = sys.stdin.buffer.read(limit + 1)
    if len(raw) > limit:
        print(f"helpdeskd: message exceeds limits.max_message_bytes ({limit})", file=sys.stderr)
        return EX_DATAERR
    mailbox = next((m for m in runtime.config.mailboxes if m.name == args.mailbox), None)
    started = time.monotonic()
    try:
        svc = Services.open(runtime.config, runtime.templates)
        with svc.write_lock(args.wait), svc.batch():
            outcome = file_safely(Inbound(args.mailbox, "stdin", raw), svc, mailbox)
    except (TransientError, OSError) as exc:
        print(f"helpdeskd: not filed, try again later: {exc}", file=sys.stderr)
        return EX_TEMPFAIL
    log_outcome(outcome, args.mailbox, time.monotonic() - started)
    return EX_OK


def cmd_fsck(args: argparse.Namespace, path: Path, runtime: Runtime) -> int:
    with StateLock(runtime.config.helpdesk.state_dir, WRITE).acquire(wait_seconds=args.wait):
        report = fsck(runtime.config.helpdesk.state_dir, rebuild=not args.check_only, verify_mail=args.verify_mail,
                      limits=runtime.config.limits)
    for line in report.repaired:
        print(f"repaired: {line}")
    for line in report.problems:
        print(f"problem: {line}")
    indexed = "" if args.check_only else (f", {report.indexed_message_ids} Message-IDs and "
                                           f"{report.indexed_keys} message keys indexed")
    print(f"{report.tickets} tickets checked{indexed}, {len(report.problems)} problems")
    return EX_FAIL if report.problems else EX_OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="helpdeskd", description="Email-first helpdesk daemon.")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help="TOML file (default: $HELPDESKD_CONFIG or /etc/helpdeskd/helpdeskd.toml)")
    common.add_argument("--log-level", choices=["debug", "info", "warning", "error"], help="overrides [logging] level")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("run", parents=[common], help="run the daemon").set_defaults(func=cmd_run)
    once = sub.add_parser("once", parents=[common], help="poll every mailbox once and exit")
    once.set_defaults(func=cmd_once)
    sub.add_parser("send-once", parents=[common], help="deliver the due outbox mail over SMTP once and exit"
                   ).set_defaults(func=cmd_send_once)
    deliver = sub.add_parser("deliver", parents=[common], help="file one message from stdin (MTA pipe)")
    deliver.add_argument("--mailbox", default="deliver", help="intake name recorded on the ticket; a configured "
                         "mailbox name applies its queue/priority/category defaults")
    deliver.set_defaults(func=cmd_deliver)
    sub.add_parser("check-config", parents=[common], help="validate the config and templates").set_defaults(
        func=cmd_check_config)
    fsck_p = sub.add_parser("fsck", parents=[common], help="check the store and rebuild its indexes")
    fsck_p.add_argument("--check-only", action="store_true", help="report, change nothing")
    fsck_p.add_argument("--verify-mail", action="store_true",
                        help="also read every raw mail and check it against its message key (slower)")
    fsck_p.set_defaults(func=cmd_fsck)
    for p in (deliver, fsck_p):
        p.add_argument("--wait", type=float, default=30.0, help="seconds to wait for the state lock (default 30)")
    return parser


if __name__ == "__main__":
    sys.exit(main())
