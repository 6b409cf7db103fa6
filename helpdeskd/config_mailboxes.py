"""The [[mailboxes]] entries: where mail comes in (Maildir, POP3, POP3S).

Each entry has a unique name, a protocol, its poll interval and optional queue/priority/category
references to declared keys. POP3 entries also carry the server, TLS, session bounds and exactly one
password source (:data:`PASSWORD_SOURCES`; the password itself is refused in the file). Problems are
recorded on the :class:`~helpdeskd.configreader.Reader`, never raised.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from helpdeskd.configreader import (
    BOOLEAN,
    POSITIVE_INT,
    REQUIRED,
    Declared,
    Reader,
    choice,
    key,
    path,
    port,
    reference,
    seconds,
)
from helpdeskd.passwords import SOURCES
from helpdeskd.settings import Mailbox, Pop3

PROTOCOLS = ("maildir", "pop3", "pop3s")  # imap comes later; until then it is refused, not ignored
POP3_PORTS = {"pop3": 110, "pop3s": 995}
OVERSIZED = ("ticket", "reply")
PASSWORD_SOURCES = SOURCES  # where a password may come from (helpdeskd.passwords)


def mailbox(r: Reader, declared: Declared, base_dir: Path) -> Mailbox:
    name = key(r, "name")
    protocol = choice(r, "protocol", PROTOCOLS, "", unsupported=True)
    path_default = REQUIRED if protocol == "maildir" else None
    return Mailbox(
        name=name,
        protocol=protocol,
        path=path(r, "path", base_dir, path_default),
        interval_seconds=seconds(r, "interval", 10.0),
        queue=reference(r, "queue", declared.queues, "queue", required=False),
        priority=reference(r, "priority", declared.priorities, "priority", required=False),
        category=reference(r, "category", declared.categories, "category", required=False),
        pop3=_pop3(r, protocol, base_dir) if protocol in POP3_PORTS else None,
    )


# --------------------------------------------------------------------------- [[mailboxes]] pop3 / pop3s


def _pop3(r: Reader, protocol: str, base_dir: Path) -> Pop3 | None:
    """The server, credentials, TLS and session bounds of a POP3 mailbox (keys beside ``protocol``)."""
    tls = _pop3_tls(r, protocol, base_dir)
    values = {
        "host": r.text("host"),
        "port": port(r, POP3_PORTS[protocol]),
        "user": r.text("user"),
        **_password_source(r, base_dir),
        **tls,
        "source_address": r.text("source_address", None),
        "connect_timeout": seconds(r, "connect_timeout", 30.0),
        "read_timeout": seconds(r, "read_timeout", 60.0),
        **_pop3_session(r),
    }
    return None if any(v is None for k, v in values.items() if k in ("host", "port", "user")) else Pop3(**values)


def _pop3_tls(r: Reader, protocol: str, base_dir: Path) -> dict[str, Any]:
    """``pop3s`` is implicit TLS; plain ``pop3`` must upgrade with STLS unless plaintext is allowed."""
    allow_plaintext = r.get("allow_plaintext", BOOLEAN, False)
    if allow_plaintext and protocol == "pop3s":
        r.problem("allow_plaintext", 'only meaningful with protocol = "pop3"; pop3s is always TLS')
    return {"implicit_tls": protocol == "pop3s", "allow_plaintext": bool(allow_plaintext),
            "ca_file": path(r, "ca_file", base_dir, None)}


def _password_source(r: Reader, base_dir: Path) -> dict[str, Any]:
    """Exactly one place to read the password from; the password itself never lives in the TOML."""
    if r.has("password"):
        r.known.append("password")
        r.problem("password", "passwords are not accepted in the config file; use one of "
                              + ", ".join(PASSWORD_SOURCES))
    given = [key for key in PASSWORD_SOURCES if r.has(key)]
    if len(given) != 1:
        r.problem("password_file", f"exactly one of {', '.join(PASSWORD_SOURCES)} is required"
                                   + (f" (found {', '.join(given)})" if given else ""))
    credential = r.text("password_credential", None)
    if credential is not None and ("/" in credential or credential.startswith(".")):
        credential = r.refuse("password_credential", "must be a plain file name under $CREDENTIALS_DIRECTORY")
    return {"password_file": path(r, "password_file", base_dir, None),
            "password_env": r.text("password_env", None), "password_credential": credential}


def _pop3_session(r: Reader) -> dict[str, Any]:
    """What one session may do, and what happens to kept and oversized mail."""
    values = {
        "keep": r.get("keep_on_server", BOOLEAN, False),
        "max_message_bytes": r.get("max_message_bytes", POSITIVE_INT, None),
        "oversized": choice(r, "oversized", OVERSIZED, "an oversized-mail action", default="ticket"),
        "delete_oversized": r.get("delete_oversized", BOOLEAN, False),
        "max_messages_per_session": r.get("max_messages_per_session", POSITIVE_INT, 5000),
        "max_session_seconds": seconds(r, "max_session_time", 300.0),
        "batch": r.get("batch", POSITIVE_INT, 128),
        "backoff_max_seconds": seconds(r, "backoff_max", 900.0),
    }
    return {k: v for k, v in values.items() if v is not None or k == "max_message_bytes"}
