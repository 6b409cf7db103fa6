"""The [smtp] and [autoreply] tables: where outgoing mail goes and how often automatic answers may go.

[smtp] absent means outbox only; present, it must be complete: host, port and security (plaintext only
when explicitly allowed), an optional login with exactly one password source, timeouts and the retry
schedule, the envelope sender and HELO name. [autoreply] bounds automatic answers per recipient and in
all. Problems are recorded on the :class:`~helpdeskd.configreader.Reader`, never raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpdeskd.config_mailboxes import PASSWORD_SOURCES
from helpdeskd.configreader import (
    BOOLEAN,
    POSITIVE_INT,
    STRING,
    Reader,
    address_problem,
    choice,
    path,
    port,
    quote,
    seconds,
    valid_domain,
)
from helpdeskd.settings import SMTP_SECURITY, AutoReply, Smtp


# --------------------------------------------------------------------------- [smtp], [autoreply]

_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def smtp(r: Reader | None, base_dir: Path) -> Smtp | None:
    """[smtp]: where outgoing mail goes. Absent means outbox only; present means it must be complete."""
    if r is None:
        return None
    security = choice(r, "security", SMTP_SECURITY, "a security mode", default="starttls") or "starttls"
    values = {
        "host": r.text("host"),
        "port": port(r, _DEFAULT_PORTS[security]),
        "security": security,
        "allow_plaintext": r.get("allow_plaintext", BOOLEAN, False),
        "ca_file": path(r, "ca_file", base_dir, None),
        **_smtp_login(r, base_dir, security),
        **_smtp_timing(r),
        "envelope_sender": _envelope_sender(r),
        "helo_name": _helo(r),
    }
    _check_plaintext(r, security, values["allow_plaintext"])
    r.finish()
    return Smtp(**values)


def _check_plaintext(r: Reader, security: str, allowed: bool | None) -> None:
    """Plaintext SMTP is an explicit choice (a local MTA), never a default or a typo."""
    if security == "none" and not allowed:
        r.problem("security", '"none" sends mail unencrypted; set allow_plaintext = true to allow it '
                              "(for example to a local MTA on 127.0.0.1)")


def _smtp_login(r: Reader, base_dir: Path, security: str) -> dict[str, Any]:
    """The login user and where its password comes from: at most one source, and one is needed."""
    values = {
        "user": r.text("user", None),
        "password_file": path(r, "password_file", base_dir, None),
        "password_env": r.text("password_env", None),
        "password_credential": _credential_name(r),
    }
    given = [k for k in PASSWORD_SOURCES if r.has(k)]
    if len(given) > 1:
        r.problem(given[1], f"give only one of {', '.join(PASSWORD_SOURCES)}")
    if r.has("user") and not given:
        r.problem("user", f"a login needs a password: set one of {', '.join(PASSWORD_SOURCES)}")
    if given and not r.has("user"):
        r.problem(given[0], "a password without a user: set user too")
    if r.has("user") and security == "none":
        r.problem("user", 'logging in over security = "none" would send the password in clear text')
    return values


def _credential_name(r: Reader) -> str | None:
    """A systemd credential is a file name inside $CREDENTIALS_DIRECTORY: no directories."""
    name = r.text("password_credential", None)
    if name and ("/" in name or name in (".", "..")):
        return r.refuse("password_credential", f"{quote(name)} must be a credential name, not a path")
    return name


def _smtp_timing(r: Reader) -> dict[str, Any]:
    """Timeouts and the retry schedule, all in seconds (a number, or "30s", "5m", "1h", "2d")."""
    values = {
        "timeout_seconds": seconds(r, "timeout", 30.0),
        "retry_first_seconds": seconds(r, "retry_first", 60.0),
        "retry_max_seconds": seconds(r, "retry_max", 3600.0),
        "give_up_seconds": seconds(r, "give_up_after", 5 * 86400.0),
        "interval_seconds": seconds(r, "interval", 30.0),
    }
    first, most = values["retry_first_seconds"], values["retry_max_seconds"]
    if first is not None and most is not None and most < first:
        r.problem("retry_max", "must not be shorter than retry_first")
    return values


def _envelope_sender(r: Reader) -> str:
    """MAIL FROM for automatic answers: "" (the null sender, RFC 3834's advice) or a bare address."""
    value = r.get("envelope_sender", STRING, "")
    if not value:
        return ""
    problem = address_problem(value)
    if problem:
        r.problem("envelope_sender", problem)
        return ""
    return value


def _helo(r: Reader) -> str | None:
    name = r.text("helo_name", None)
    if name and not valid_domain(name):
        return r.refuse("helo_name", f"{quote(name)} is not a valid domain name")
    return name


def autoreply(r: Reader | None) -> AutoReply:
    """[autoreply]: how many automatic answers per recipient and in all, per window."""
    if r is None:
        return AutoReply()
    base = AutoReply()
    values = {
        "per_recipient": r.get("per_recipient", POSITIVE_INT, base.per_recipient),
        "per_recipient_window_seconds": seconds(r, "per_recipient_window", base.per_recipient_window_seconds),
        "global_max": r.get("global_max", POSITIVE_INT, base.global_max),
        "global_window_seconds": seconds(r, "global_window", base.global_window_seconds),
    }
    r.finish()
    return AutoReply(**{k: v for k, v in values.items() if v is not None})
