"""Load the TOML configuration and validate it whole into frozen :mod:`helpdeskd.settings` values.

Layer 2 adapter; stdlib only. Nothing here raises on a bad file except :class:`ConfigError`, and that one
carries *every* problem found, each prefixed with its key path (``queues[2].name: missing``), so an admin
fixes the file in one pass and a failed reload can say exactly why it kept the old configuration.

The reading is done by :class:`_Reader`, a view of one TOML table that records problems instead of raising
and remembers which keys were asked for, so leftovers are reported as unknown keys (usually typos).
Validation is pure: no file system checks beyond reading the file itself; directories are created by the
daemon, not here.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import re
import tomllib
from collections.abc import Callable
from pathlib import Path
from email.utils import parseaddr
from typing import Any, NamedTuple, TypeVar

from helpdeskd.errors import ConfigError
from helpdeskd.passwords import SOURCES
from helpdeskd.settings import (
    LANGUAGES,
    SMTP_SECURITY,
    AutoReply,
    Category,
    Config,
    Helpdesk,
    Limits,
    Localized,
    Mailbox,
    Pop3,
    Priority,
    Queue,
    Smtp,
)
from helpdeskd.settings import (
    UNKNOWN_SENDER_POLICIES,
    Access,
    DomainOwner,
    MailGateway,
    Reseller,
    StatusRequests,
)

__all__ = ["KEY_PATTERN", "LOG_LEVELS", "PROTOCOLS", "build_config", "load_config"]

KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")  # queue/priority/category keys, mailbox names
LOG_LEVELS = ("debug", "info", "warning", "error")
PROTOCOLS = ("maildir", "pop3", "pop3s")  # imap comes later; until then it is refused, not ignored
POP3_PORTS = {"pop3": 110, "pop3s": 995}
OVERSIZED = ("ticket", "reply")
PASSWORD_SOURCES = SOURCES  # where a password may come from (helpdeskd.passwords)

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A sane subset of RFC 5322 dot-atoms: no quoted local parts, no IP literals, no comments.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_DURATION = re.compile(r"(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?")
_INTERVAL = re.compile(r"(\d+(?:\.\d+)?)([smh])")
_SECONDS_PER = {"s": 1, "m": 60, "h": 3600}

DURATION_HINT = 'expected a duration like "4h", "30m", "2d" or minutes as an integer'
INTERVAL_HINT = 'expected seconds as a positive number or a duration like "30s", "5m"'

_REQUIRED: Any = object()  # sentinel default: the key must be present
T = TypeVar("T")


# --------------------------------------------------------------------------- entry points


def load_config(path: str | Path) -> Config:
    """Read and validate the TOML file at ``path``.

    Relative paths inside the file resolve against the file's directory. Returns a :class:`Config` whose
    ``source_path`` is the file's absolute path. Raises :class:`ConfigError` (``source`` = ``str(path)``)
    when the file cannot be read, is not UTF-8 TOML, or fails validation; never anything else.
    """
    source = Path(path)
    data = _read_toml(source)
    absolute = source.resolve()
    config = build_config(data, absolute.parent, source=str(path))
    return dataclasses.replace(config, source_path=absolute)


def build_config(data: dict[str, Any], base_dir: Path, source: str = "") -> Config:
    """Validate an already parsed TOML document into a :class:`Config` (``source_path`` left ``None``).

    ``base_dir`` anchors relative paths (state_dir, templates_dir, mailbox paths). Every problem is
    collected; if there is any, :class:`ConfigError` is raised with all of them and ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError([f"expected a TOML table at the top level, got {_describe(data)}"], source)
    problems: list[str] = []
    config = _config(_Reader(data, "", problems), Path(base_dir))
    if problems:
        raise ConfigError(problems, source)
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    """The parsed document, or ConfigError naming why the file could not be read or parsed."""
    try:
        with path.open("rb") as stream:
            return tomllib.load(stream)
    except OSError as exc:
        raise ConfigError([f"cannot read the file: {exc.strerror or exc}"], str(path)) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"the file is not valid UTF-8 (byte {exc.start})"], str(path)) from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"TOML syntax error: {exc}"], str(path)) from exc


# --------------------------------------------------------------------------- the reader


class _Kind(NamedTuple):
    """What a value must be: a phrase for messages and a predicate."""

    expected: str
    accepts: Callable[[Any], bool]


def _is_int(value: Any) -> bool:
    # bool is a subclass of int in Python; in TOML `true` is not a number.
    return isinstance(value, int) and not isinstance(value, bool)


STRING = _Kind("a string", lambda v: isinstance(v, str))
BOOLEAN = _Kind("true or false", lambda v: isinstance(v, bool))
POSITIVE_INT = _Kind("a positive integer", lambda v: _is_int(v) and v > 0)
TABLE = _Kind("a table", lambda v: isinstance(v, dict))
ARRAY = _Kind("an array", lambda v: isinstance(v, list))
ANY = _Kind("a value", lambda v: True)
_EXAMPLE = ", ".join(f'{lang} = "..."' for lang in LANGUAGES)
LOCALIZED = _Kind(f"a table with a text per language, like {{ {_EXAMPLE} }}", lambda v: isinstance(v, dict))


class _Reader:
    """One TOML table being read.

    Accessors return the value, the default when the key is absent, or ``None`` after recording a
    problem; they never raise. :meth:`finish` reports every key no accessor asked for.
    """

    def __init__(self, table: dict[str, Any], path: str, problems: list[str]) -> None:
        self.table = table
        self.path = path
        self.problems = problems
        self.known: list[str] = []

    def at(self, key: str) -> str:
        """The full key path of ``key`` (which may carry an index suffix like ``staff[1]``)."""
        return f"{self.path}.{key}" if self.path else key

    def problem(self, key: str, message: str) -> None:
        self.problems.append(f"{self.at(key)}: {message}")

    def has(self, key: str) -> bool:
        return key in self.table

    def get(self, key: str, kind: _Kind, default: Any = _REQUIRED) -> Any:
        """The value of ``key`` if it is of ``kind``; ``default`` if absent; else None and a problem."""
        self.known.append(key)
        if key not in self.table:
            if default is _REQUIRED:
                self.problem(key, "missing")
                return None
            return default
        value = self.table[key]
        if kind.accepts(value):
            return value
        self.problem(key, f"expected {kind.expected}, got {_describe(value)}")
        return None

    def text(self, key: str, default: Any = _REQUIRED, *, single_line: bool = True) -> Any:
        """A non-empty string; ``single_line`` refuses CR/LF because such values end up in headers."""
        value = self.get(key, STRING, default)
        if not self.has(key) or value is None:
            return value
        if not value.strip():
            return self.refuse(key, "must not be empty")
        if single_line and ("\r" in value or "\n" in value):
            return self.refuse(key, "must not contain line breaks")
        return value

    def refuse(self, key: str, message: str) -> None:
        """Record a problem and return None, so checks read ``return self.refuse(...)``."""
        self.problem(key, message)
        return None

    def child(self, key: str, required: bool = True) -> _Reader | None:
        """A reader for the sub-table ``key``; an empty one when optional and absent; None on problems."""
        value = self.get(key, TABLE, _REQUIRED if required else {})
        return None if value is None else _Reader(value, self.at(key), self.problems)

    def children(self, key: str) -> list[_Reader]:
        """Readers for the array of tables ``key`` (``[[key]]``); absent means empty."""
        items = self.get(key, ARRAY, []) or []
        readers = []
        for index, item in enumerate(items):
            if isinstance(item, dict):
                readers.append(_Reader(item, self.at(f"{key}[{index}]"), self.problems))
            else:
                self.problem(f"{key}[{index}]", f"expected a table, got {_describe(item)}")
        return readers

    def finish(self) -> None:
        """Report keys nobody asked for, with the closest known key when there is one."""
        for key in self.table:
            if key not in self.known:
                self.problem(key, "unknown key" + _suggestion(key, self.known))


def _suggestion(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    return f' (did you mean "{match[0]}"?)' if match else ""


def _quote(text: str) -> str:
    """A string as TOML would write it, so messages show exactly what the admin typed."""
    return json.dumps(text, ensure_ascii=False)


def _describe(value: Any) -> str:
    """The TOML type of ``value``, with the value itself when it is a short scalar."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {_quote(shown)}"
    names = {int: "integer", float: "float", dict: "table", list: "array"}
    name = next((n for t, n in names.items() if isinstance(value, t)), "date/time")
    return f"{name} {value}" if name in ("integer", "float") else name


# --------------------------------------------------------------------------- the document


class _Declared(NamedTuple):
    """Keys the file declares, for reference checks; read leniently so one bad entry does not cascade."""

    queues: tuple[str, ...]
    priorities: tuple[str, ...]
    categories: tuple[str, ...]


def _declared(data: dict[str, Any], section: str) -> tuple[str, ...]:
    items = data.get(section)
    if not isinstance(items, list):
        return ()
    return tuple(i["key"] for i in items if isinstance(i, dict) and isinstance(i.get("key"), str))


def _config(root: _Reader, base_dir: Path) -> Config:
    """Read every section in file order; the result is meaningful only when no problem was recorded."""
    declared = _Declared(*(_declared(root.table, s) for s in ("queues", "priorities", "categories")))
    helpdesk = _helpdesk(root.child("helpdesk"), declared, base_dir)
    log_level = _log_level(root.child("logging", required=False))
    limits = _limits(root.child("limits", required=False))
    own = helpdesk.address if helpdesk else None
    config = Config(
        helpdesk=helpdesk,  # type: ignore[arg-type]  # None only when a problem was recorded
        queues=_section(root, "queues", "key", lambda r, i: _queue(r, own)),
        priorities=_section(root, "priorities", "key", _priority),
        categories=_section(root, "categories", "key", lambda r, i: _category(r)),
        mailboxes=_section(root, "mailboxes", "name", lambda r, i: _mailbox(r, declared, base_dir)),
        log_level=log_level,
        limits=limits,
        smtp=_smtp(root.child("smtp"), base_dir) if root.has("smtp") else None,
        autoreply=_autoreply(root.child("autoreply", required=False)),
        access=_access(root, own),
        mail_gateway=_mail_gateway(root.child("mail_gateway", required=False)),
        status_requests=_status_requests(root.child("status_requests", required=False)),
    )
    root.finish()
    return config


def _section(root: _Reader, name: str, id_field: str, parse: Callable[[_Reader, int], T]) -> tuple[T, ...]:
    """Parse each ``[[name]]`` entry, check ``id_field`` is unique, require one entry unless mailboxes."""
    readers = root.children(name)
    values = []
    for index, reader in enumerate(readers):
        values.append(parse(reader, index))
        reader.finish()
    _check_unique(readers, id_field)
    if not readers and name != "mailboxes" and root.table.get(name, []) == []:
        root.problem(name, f"at least one [[{name}]] entry is required")
    return tuple(values)


def _check_unique(readers: list[_Reader], field: str) -> None:
    first: dict[str, str] = {}
    for reader in readers:
        value = reader.table.get(field)
        if not isinstance(value, str):
            continue
        if value in first:
            reader.problem(field, f"duplicate {_quote(value)} (first defined at {first[value]})")
        else:
            first[value] = reader.at(field)


# --------------------------------------------------------------------------- [helpdesk]


def _helpdesk(r: _Reader | None, declared: _Declared, base_dir: Path) -> Helpdesk | None:
    """The [helpdesk] table: identity, defaults for new tickets, and where state and templates live."""
    if r is None:
        return None
    identity = _identity(r)
    defaults = _defaults(r, declared)
    conversation = _conversation(r)
    places = {
        "state_dir": _path(r, "state_dir", base_dir, "../state"),
        "templates_dir": _path(r, "templates_dir", base_dir, "../templates"),
    }
    r.finish()
    return Helpdesk(**identity, **defaults, **conversation, **places)


def _identity(r: _Reader) -> dict[str, Any]:
    """Who the helpdesk is: switches, display name, address, subject tag, Message-ID domain."""
    values = {
        "enabled": r.get("enabled", BOOLEAN),
        "name": r.text("name"),
        "address": _address(r, "address"),
        "allow_customer_tickets": r.get("allow_customer_tickets", BOOLEAN),
        "subject_tag": _subject_tag(r),
        "acknowledge_followups": r.get("acknowledge_followups", BOOLEAN, True),
    }
    values["message_id_domain"] = _message_id_domain(r, values["address"])
    return values


def _defaults(r: _Reader, declared: _Declared) -> dict[str, Any]:
    """What a new ticket gets when nothing else decides, and the language choices."""
    return {
        "default_queue": _reference(r, "default_queue", declared.queues, "queue"),
        "default_priority": _reference(r, "default_priority", declared.priorities, "priority"),
        "default_category": _reference(r, "default_category", declared.categories, "category"),
        "default_language": _choice(r, "default_language", LANGUAGES, "a supported language"),
        "detect_language": r.get("detect_language", BOOLEAN, True),
    }


CLOSED_REPLY = ("reopen", "new", "refuse")


def _conversation(r: _Reader) -> dict[str, Any]:
    """How replies, staff and collaborators are handled (see the README's "Conversations")."""
    return {
        "closed_reply": _choice(r, "closed_reply", CLOSED_REPLY, "a closed-ticket policy", "reopen"),
        "cc_collaborators": r.get("cc_collaborators", BOOLEAN, True),
        "notify_staff": r.get("notify_staff", BOOLEAN, True),
        "plus_addressing": r.get("plus_addressing", BOOLEAN, False),
    }


def _subject_tag(r: _Reader) -> str | None:
    """The tag must carry ``{id}`` exactly once and nothing else in braces, so filling it in (with
    ``format(id=...)`` or a replace) can never fail or leak a field at send time."""
    tag = r.text("subject_tag")
    if tag is None:
        return None
    if tag.count("{id}") != 1:
        return r.refuse("subject_tag", "must contain {id} exactly once")
    if "{" in tag.replace("{id}", "") or "}" in tag.replace("{id}", ""):
        return r.refuse("subject_tag", "no braces other than the one {id} are allowed")
    return tag


def _message_id_domain(r: _Reader, address: str | None) -> str | None:
    """Explicit domain, or the helpdesk address's domain (our Message-IDs identify our own mail)."""
    fallback = address.rpartition("@")[2] if address else ""
    domain = r.text("message_id_domain", fallback)
    if domain and r.has("message_id_domain") and not _valid_domain(domain):
        return r.refuse("message_id_domain", f"{_quote(domain)} is not a valid domain name")
    return domain


def _path(r: _Reader, key: str, base_dir: Path, default: Any = _REQUIRED) -> Path | None:
    """A path; relative ones are anchored at the config file's directory, not the working directory."""
    value = r.text(key, default)
    return None if value is None else (base_dir / Path(value).expanduser()).resolve()


# --------------------------------------------------------------------------- small sections


def _log_level(r: _Reader | None) -> str:
    if r is None:
        return "info"
    level = _choice(r, "level", LOG_LEVELS, "a log level", default="info")
    r.finish()
    return level or "info"


def _limits(r: _Reader | None) -> Limits:
    """[limits]: every field of settings.Limits, optional, a positive integer."""
    if r is None:
        return Limits()
    values = {}
    for field in dataclasses.fields(Limits):
        value = r.get(field.name, POSITIVE_INT, field.default)
        if value is not None:
            values[field.name] = value
    r.finish()
    return Limits(**values)


def _queue(r: _Reader, own_address: str | None) -> Queue:
    return Queue(
        key=_key(r, "key"),
        name=_localized(r, "name"),
        staff=_addresses(r, "staff", own_address),
        escalation=_addresses(r, "escalation", own_address),
    )


def _priority(r: _Reader, rank: int) -> Priority:
    """Rank is the position in the file: the first [[priorities]] entry is the most urgent."""
    return Priority(
        key=_key(r, "key"),
        name=_localized(r, "name"),
        description=_localized(r, "description", single_line=False),
        response_target_minutes=_minutes(r, "response_target"),
        rank=rank,
    )


def _category(r: _Reader) -> Category:
    return Category(key=_key(r, "key"), name=_localized(r, "name"))


def _mailbox(r: _Reader, declared: _Declared, base_dir: Path) -> Mailbox:
    name = _key(r, "name")
    protocol = _choice(r, "protocol", PROTOCOLS, "", unsupported=True)
    path_default = _REQUIRED if protocol == "maildir" else None
    return Mailbox(
        name=name,
        protocol=protocol,
        path=_path(r, "path", base_dir, path_default),
        interval_seconds=_interval(r, "interval", 10.0),
        queue=_reference(r, "queue", declared.queues, "queue", required=False),
        priority=_reference(r, "priority", declared.priorities, "priority", required=False),
        category=_reference(r, "category", declared.categories, "category", required=False),
        pop3=_pop3(r, protocol, base_dir) if protocol in POP3_PORTS else None,
    )


# --------------------------------------------------------------------------- [[mailboxes]] pop3 / pop3s


def _pop3(r: _Reader, protocol: str, base_dir: Path) -> Pop3 | None:
    """The server, credentials, TLS and session bounds of a POP3 mailbox (keys beside ``protocol``)."""
    tls = _pop3_tls(r, protocol, base_dir)
    values = {
        "host": r.text("host"),
        "port": _port(r, POP3_PORTS[protocol]),
        "user": r.text("user"),
        **_password_source(r, base_dir),
        **tls,
        "source_address": r.text("source_address", None),
        "connect_timeout": _interval(r, "connect_timeout", 30.0),
        "read_timeout": _interval(r, "read_timeout", 60.0),
        **_pop3_session(r),
    }
    return None if any(v is None for k, v in values.items() if k in ("host", "port", "user")) else Pop3(**values)


def _pop3_tls(r: _Reader, protocol: str, base_dir: Path) -> dict[str, Any]:
    """``pop3s`` is implicit TLS; plain ``pop3`` must upgrade with STLS unless plaintext is allowed."""
    allow_plaintext = r.get("allow_plaintext", BOOLEAN, False)
    if allow_plaintext and protocol == "pop3s":
        r.problem("allow_plaintext", 'only meaningful with protocol = "pop3"; pop3s is always TLS')
    return {"implicit_tls": protocol == "pop3s", "allow_plaintext": bool(allow_plaintext),
            "ca_file": _path(r, "ca_file", base_dir, None)}


def _password_source(r: _Reader, base_dir: Path) -> dict[str, Any]:
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
    return {"password_file": _path(r, "password_file", base_dir, None),
            "password_env": r.text("password_env", None), "password_credential": credential}


def _pop3_session(r: _Reader) -> dict[str, Any]:
    """What one session may do, and what happens to kept and oversized mail."""
    values = {
        "keep": r.get("keep_on_server", BOOLEAN, False),
        "max_message_bytes": r.get("max_message_bytes", POSITIVE_INT, None),
        "oversized": _choice(r, "oversized", OVERSIZED, "an oversized-mail action", default="ticket"),
        "delete_oversized": r.get("delete_oversized", BOOLEAN, False),
        "max_messages_per_session": r.get("max_messages_per_session", POSITIVE_INT, 500),
        "max_session_seconds": _interval(r, "max_session_time", 300.0),
        "batch": r.get("batch", POSITIVE_INT, 32),
        "backoff_max_seconds": _interval(r, "backoff_max", 900.0),
    }
    return {k: v for k, v in values.items() if v is not None or k == "max_message_bytes"}


def _port(r: _Reader, default: int) -> int | None:
    value = r.get("port", POSITIVE_INT, default)
    if value is not None and value > 65535:
        return r.refuse("port", f"{value} is not a TCP port (1-65535)")
    return value


# --------------------------------------------------------------------------- value checks


def _key(r: _Reader, field: str) -> str | None:
    value = r.text(field)
    if value is not None and not KEY_PATTERN.fullmatch(value):
        return r.refuse(field, f"{_quote(value)} is not a valid key: use 1-40 lowercase letters, digits, "
                               "'_' or '-', starting with a letter or digit")
    return value


def _choice(r: _Reader, key: str, allowed: tuple[str, ...], what: str, default: Any = _REQUIRED,
            unsupported: bool = False) -> str | None:
    """One of ``allowed``; ``unsupported`` words the refusal for features that are not built yet."""
    value = r.text(key, default)
    if value is None or value in allowed:
        return value
    listed = ", ".join(allowed)
    if unsupported:
        return r.refuse(key, f"{_quote(value)} is not supported in this version (supported: {listed})")
    return r.refuse(key, f"{_quote(value)} is not {what} (known: {listed})")


def _reference(r: _Reader, key: str, known: tuple[str, ...], what: str, required: bool = True) -> str | None:
    """A key that must name a configured queue, priority or category."""
    value = r.text(key, _REQUIRED if required else None)
    if value is None or value in known:
        return value
    listed = ", ".join(known) or "none"
    return r.refuse(key, f"{_quote(value)} is not a configured {what} (known: {listed})")


def _localized(r: _Reader, key: str, *, single_line: bool = True) -> Localized:
    """A table with one non-empty text per language in LANGUAGES, and no other language."""
    table = r.get(key, LOCALIZED)
    if table is None:
        return Localized(texts=())
    sub = _Reader(table, r.at(key), r.problems)
    texts = tuple((lang, sub.text(lang, single_line=single_line)) for lang in LANGUAGES)
    for lang in table:
        if lang not in LANGUAGES:
            sub.problem(lang, f"unknown language (supported: {', '.join(LANGUAGES)})")
    return Localized(texts=tuple((lang, text) for lang, text in texts if text is not None))


def _address(r: _Reader, key: str) -> str | None:
    value = r.get(key, ANY)
    if value is None:
        return None
    problem = _address_problem(value)
    return r.refuse(key, problem) if problem else value


def _addresses(r: _Reader, key: str, own_address: str | None) -> tuple[str, ...]:
    """A list of staff addresses; the helpdesk's own address is refused because mail to it would loop."""
    values = r.get(key, ARRAY, []) or []
    good = []
    for index, value in enumerate(values):
        problem = _address_problem(value)
        if not problem and own_address and value.lower() == own_address.lower():
            problem = f"{_quote(value)} is the helpdesk's own address; mail to it would loop"
        if problem:
            r.problem(f"{key}[{index}]", problem)
        else:
            good.append(value)
    return tuple(good)


def _address_problem(value: Any) -> str | None:
    """Why ``value`` is not one bare email address (``user@example.com``), or None if it is."""
    if not isinstance(value, str):
        return f"expected an email address, got {_describe(value)}"
    if "\r" in value or "\n" in value:
        return "must not contain line breaks"
    display, address = parseaddr(value)
    if display or address != value or not _valid_address(value):
        return f"{_quote(value)} is not a valid email address (write it bare, like support@example.com)"
    return None


def _valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at) and len(address) <= 254 and len(local) <= 64 and bool(_LOCAL_PART.fullmatch(local)) \
        and _valid_domain(domain)


def _valid_domain(domain: str) -> bool:
    return len(domain) <= 253 and bool(_DOMAIN.fullmatch(domain))


def _minutes(r: _Reader, key: str) -> int | None:
    """Integer minutes, or "30m" / "4h" / "2d" (combinable, "1d12h"); must be more than zero."""
    value = r.get(key, ANY)
    if value is None:
        return None
    minutes = value if _is_int(value) else _parse_duration(value)
    if minutes is None:
        return r.refuse(key, DURATION_HINT)
    if minutes <= 0:
        return r.refuse(key, "must be more than zero")
    return minutes


def _parse_duration(value: Any) -> int | None:
    match = _DURATION.fullmatch(value.replace(" ", "").lower()) if isinstance(value, str) else None
    if not match or not any(match.groups()):
        return None
    days, hours, minutes = (int(g or 0) for g in match.groups())
    return (days * 24 + hours) * 60 + minutes


def _interval(r: _Reader, key: str, default: float) -> float | None:
    """Seconds between polls: a positive number, or "30s" / "5m" / "1h"."""
    value = r.get(key, ANY, default)
    seconds = _parse_interval(value)
    if seconds is None:
        return r.refuse(key, INTERVAL_HINT)
    return seconds


def _parse_interval(value: Any) -> float | None:
    if isinstance(value, str):
        match = _INTERVAL.fullmatch(value.strip().lower())
        value = float(match[1]) * _SECONDS_PER[match[2]] if match else None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        return None
    return float(value)


# --------------------------------------------------------------------------- [smtp], [autoreply]

_DEFAULT_PORTS = {"starttls": 587, "tls": 465, "none": 25}


def _smtp(r: _Reader | None, base_dir: Path) -> Smtp | None:
    """[smtp]: where outgoing mail goes. Absent means outbox only; present means it must be complete."""
    if r is None:
        return None
    security = _choice(r, "security", SMTP_SECURITY, "a security mode", default="starttls") or "starttls"
    values = {
        "host": r.text("host"),
        "port": _port(r, _DEFAULT_PORTS[security]),
        "security": security,
        "allow_plaintext": r.get("allow_plaintext", BOOLEAN, False),
        "ca_file": _path(r, "ca_file", base_dir, None),
        **_smtp_login(r, base_dir, security),
        **_smtp_timing(r),
        "envelope_sender": _envelope_sender(r),
        "helo_name": _helo(r),
    }
    _check_plaintext(r, security, values["allow_plaintext"])
    r.finish()
    return Smtp(**values)


def _check_plaintext(r: _Reader, security: str, allowed: bool | None) -> None:
    """Plaintext SMTP is an explicit choice (a local MTA), never a default or a typo."""
    if security == "none" and not allowed:
        r.problem("security", '"none" sends mail unencrypted; set allow_plaintext = true to allow it '
                              "(for example to a local MTA on 127.0.0.1)")


def _smtp_login(r: _Reader, base_dir: Path, security: str) -> dict[str, Any]:
    """The login user and where its password comes from: at most one source, and one is needed."""
    values = {
        "user": r.text("user", None),
        "password_file": _path(r, "password_file", base_dir, None),
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


def _credential_name(r: _Reader) -> str | None:
    """A systemd credential is a file name inside $CREDENTIALS_DIRECTORY: no directories."""
    name = r.text("password_credential", None)
    if name and ("/" in name or name in (".", "..")):
        return r.refuse("password_credential", f"{_quote(name)} must be a credential name, not a path")
    return name


def _smtp_timing(r: _Reader) -> dict[str, Any]:
    """Timeouts and the retry schedule, all in seconds (a number, or "30s", "5m", "1h", "2d")."""
    values = {
        "timeout_seconds": _seconds(r, "timeout", 30.0),
        "retry_first_seconds": _seconds(r, "retry_first", 60.0),
        "retry_max_seconds": _seconds(r, "retry_max", 3600.0),
        "give_up_seconds": _seconds(r, "give_up_after", 5 * 86400.0),
        "interval_seconds": _seconds(r, "interval", 30.0),
    }
    first, most = values["retry_first_seconds"], values["retry_max_seconds"]
    if first is not None and most is not None and most < first:
        r.problem("retry_max", "must not be shorter than retry_first")
    return values


def _seconds(r: _Reader, key: str, default: float) -> float | None:
    """Like :func:`_interval`, also accepting whole days ("2d")."""
    value = r.get(key, ANY, default)
    if isinstance(value, str) and re.fullmatch(r"\d+d", value.strip().lower()):
        return float(value.strip()[:-1]) * 86400
    seconds = _parse_interval(value)
    return seconds if seconds is not None else r.refuse(key, INTERVAL_HINT + ' or days ("2d")')


def _envelope_sender(r: _Reader) -> str:
    """MAIL FROM for automatic answers: "" (the null sender, RFC 3834's advice) or a bare address."""
    value = r.get("envelope_sender", STRING, "")
    if not value:
        return ""
    problem = _address_problem(value)
    if problem:
        r.problem("envelope_sender", problem)
        return ""
    return value


def _helo(r: _Reader) -> str | None:
    name = r.text("helo_name", None)
    if name and not _valid_domain(name):
        return r.refuse("helo_name", f"{_quote(name)} is not a valid domain name")
    return name


def _autoreply(r: _Reader | None) -> AutoReply:
    """[autoreply]: how many automatic answers per recipient and in all, per window."""
    if r is None:
        return AutoReply()
    base = AutoReply()
    values = {
        "per_recipient": r.get("per_recipient", POSITIVE_INT, base.per_recipient),
        "per_recipient_window_seconds": _seconds(r, "per_recipient_window", base.per_recipient_window_seconds),
        "global_max": r.get("global_max", POSITIVE_INT, base.global_max),
        "global_window_seconds": _seconds(r, "global_window", base.global_window_seconds),
    }
    r.finish()
    return AutoReply(**{k: v for k, v in values.items() if v is not None})


# --------------------------------------------------------------------------- roles and submission
# [access], [[resellers]], [[domains]]: the panel's roles (see helpdeskd.scopes). Addresses and
# domains are compared lower-case. The checks below make every address's role and every domain's
# reseller unambiguous, because a ticket's visibility is decided from them.


def _access(root: _Reader, own: str | None) -> Access:
    """The roles and the submission policy, with overlaps and unknown references reported."""
    r = root.child("access", required=False) or _Reader({}, "access", root.problems)
    resellers = [(reader, _reseller(reader, own)) for reader in root.children("resellers")]
    _check_unique([reader for reader, _ in resellers], "name")
    owners = [(reader, _domain_owner(reader, own, [v.name for _, v in resellers])) for reader in root.children("domains")]
    values = {
        "admins": _lower(_addresses(r, "admins", own)),
        "allow_domains": _domain_list(r, "allow_domains"),
        "deny_domains": _domain_list(r, "deny_domains"),
        "unknown_senders": _choice(r, "unknown_senders", UNKNOWN_SENDER_POLICIES, "a policy", "accept") or "accept",
    }
    for domain in set(values["allow_domains"]) & set(values["deny_domains"]):
        r.problem("deny_domains", f"{_quote(domain)} is also in allow_domains")
    r.finish()
    domains = _domain_table(resellers, owners)
    _check_roles(r, values["admins"], resellers, owners, {d.domain: d.reseller for d in domains})
    return Access(resellers=tuple(v for _, v in resellers), domains=domains, **values)


def _reseller(r: _Reader, own: str | None) -> Reseller:
    value = Reseller(name=_key(r, "name") or "", contacts=_lower(_addresses(r, "contacts", own)),
                     domains=_domain_list(r, "domains"))
    r.finish()
    return value


def _domain_owner(r: _Reader, own: str | None, reseller_names: list[str]) -> DomainOwner:
    domain = r.text("domain")
    if domain is not None and not _valid_domain(domain):
        domain = r.refuse("domain", f"{_quote(domain)} is not a valid domain name")
    reseller = r.text("reseller", None)
    if reseller is not None and reseller not in reseller_names:
        known = ", ".join(reseller_names) or "none"
        reseller = r.refuse("reseller", f"{_quote(reseller)} is not a configured reseller (known: {known})")
    value = DomainOwner((domain or "").lower(), _lower(_addresses(r, "owners", own)), reseller or "")
    r.finish()
    return value


def _domain_table(resellers: list[tuple[_Reader, Reseller]],
                  owners: list[tuple[_Reader, DomainOwner]]) -> tuple[DomainOwner, ...]:
    """Every known domain once, with its one reseller: a domain under two resellers is an overlap."""
    reseller_of: dict[str, tuple[str, str]] = {}  # domain -> (reseller, where it was said)
    for reader, reseller in resellers:
        for index, domain in enumerate(reseller.domains):
            _claim_domain(reseller_of, domain, reseller.name, reader, f"domains[{index}]")
    table: dict[str, DomainOwner] = {}
    for reader, entry in owners:
        if entry.domain in table:
            reader.problem("domain", f"{_quote(entry.domain)} is listed twice in [[domains]]")
        if entry.reseller:
            _claim_domain(reseller_of, entry.domain, entry.reseller, reader, "reseller")
        table.setdefault(entry.domain, entry)
    for domain, (name, _) in reseller_of.items():
        entry = table.get(domain, DomainOwner(domain))
        table[domain] = dataclasses.replace(entry, reseller=name)
    return tuple(table.values())


def _claim_domain(reseller_of: dict[str, tuple[str, str]], domain: str, name: str, reader: _Reader,
                  key: str) -> None:
    first = reseller_of.get(domain)
    if first is None:
        reseller_of[domain] = (name, reader.at(key))
    elif first[0] != name:
        reader.problem(key, f"{_quote(domain)} already belongs to reseller {_quote(first[0])} ({first[1]}); "
                            "a domain has one reseller")


def _check_roles(r: _Reader, admins: tuple[str, ...], resellers: list[tuple[_Reader, Reseller]],
                 owners: list[tuple[_Reader, DomainOwner]], reseller_of: dict[str, str]) -> None:
    """One role per address. The one combination allowed: a reseller's contact who also owns one of
    that reseller's domains (the reseller's view already contains the domain's)."""
    roles: dict[str, tuple[str, str, str]] = {}  # address -> (role, reseller, where)

    def assign(addr: str, role: str, reseller: str, reader: _Reader, key: str) -> None:
        first = roles.setdefault(addr, (role, reseller, reader.at(key)))
        if first[2] == reader.at(key):
            return  # its own first assignment
        same_reseller = {first[0], role} == {"reseller", "owner"} and first[1] == reseller and reseller
        if not same_reseller:
            reader.problem(key, f"{_quote(addr)} is already {first[0]} ({first[2]}); an address has one role")

    for index, addr in enumerate(admins):
        assign(addr, "admin", "", r, f"admins[{index}]")
    for reader, reseller in resellers:
        for index, addr in enumerate(reseller.contacts):
            assign(addr, "reseller", reseller.name, reader, f"contacts[{index}]")
    for reader, entry in owners:
        for index, addr in enumerate(entry.owners):
            assign(addr, "owner", reseller_of.get(entry.domain, ""), reader, f"owners[{index}]")


def _domain_list(r: _Reader, key: str) -> tuple[str, ...]:
    values = r.get(key, ARRAY, []) or []
    good = []
    for index, value in enumerate(values):
        if isinstance(value, str) and _valid_domain(value):
            good.append(value.lower())
        else:
            r.problem(f"{key}[{index}]", f"{_quote(value) if isinstance(value, str) else _describe(value)} "
                                         "is not a valid domain name")
    return tuple(dict.fromkeys(good))


def _lower(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.lower() for v in values))


def _mail_gateway(r: _Reader | None) -> MailGateway:
    """[mail_gateway]: intake on or off, apart from the helpdesk itself."""
    if r is None:
        return MailGateway()
    enabled = r.get("enabled", BOOLEAN, True)
    r.finish()
    return MailGateway(enabled=True if enabled is None else enabled)


_AUTHSERV_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def _status_requests(r: _Reader | None) -> StatusRequests:
    """[status_requests]: "my tickets" by email (keywords, trusted receiving MTAs, codes)."""
    if r is None:
        return StatusRequests()
    base = StatusRequests()
    values = {
        "enabled": r.get("enabled", BOOLEAN, base.enabled),
        "keywords": _keywords(r, base.keywords),
        "trusted_authserv_ids": _authserv_ids(r),
        "code_ttl_seconds": _seconds(r, "code_ttl", base.code_ttl_seconds),
        "max_listed": r.get("max_listed", POSITIVE_INT, base.max_listed),
    }
    ttl = values["code_ttl_seconds"]
    if ttl is not None and not 60 <= ttl <= 7 * 86400:
        r.problem("code_ttl", "must be between 1 minute and 7 days")
    r.finish()
    return StatusRequests(**{k: v for k, v in values.items() if v is not None})


def _keywords(r: _Reader, default: tuple[str, ...]) -> tuple[str, ...] | None:
    values = r.get("keywords", ARRAY, list(default))
    if values is None:
        return None
    if not values:
        return r.refuse("keywords", "at least one keyword is needed (or set enabled = false)")
    for index, value in enumerate(values):
        if not isinstance(value, str) or len(value.strip()) < 3 or "\n" in value or "\r" in value:
            r.problem(f"keywords[{index}]", "expected a single-line text of at least 3 characters")
    return tuple(v.strip() for v in values if isinstance(v, str))


def _authserv_ids(r: _Reader) -> tuple[str, ...]:
    values = r.get("trusted_authserv_ids", ARRAY, []) or []
    for index, value in enumerate(values):
        if not isinstance(value, str) or not _AUTHSERV_ID.fullmatch(value):
            r.problem(f"trusted_authserv_ids[{index}]", "expected the authserv-id your receiving MTA writes "
                                                        '(a host name like "mx.example.com")')
    return tuple(v.lower() for v in values if isinstance(v, str))
