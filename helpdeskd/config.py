"""Load the TOML configuration and validate it whole into frozen :mod:`helpdeskd.settings` values.

Layer 2 adapter; stdlib only. Nothing here raises on a bad file except :class:`ConfigError`, and that one
carries *every* problem found, each prefixed with its key path (``queues[2].name: missing``), so an admin
fixes the file in one pass and a failed reload can say exactly why it kept the old configuration.

This module holds the entry points, the assembly of :class:`Config` in file order, and the sections of
the ticket model ([helpdesk], [logging], [limits], [[queues]], [[priorities]], [[categories]]). The
reading and the generic value checks are in :mod:`helpdeskd.configreader`; the other sections in
:mod:`helpdeskd.config_mailboxes`, :mod:`helpdeskd.config_outgoing` and :mod:`helpdeskd.config_access`.
Validation is pure: no file system checks beyond reading the file itself; directories are created by the
daemon, not here.
"""

from __future__ import annotations

import dataclasses
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from helpdeskd.config_access import access, mail_gateway, status_requests
from helpdeskd.config_mailboxes import mailbox
from helpdeskd.config_outgoing import autoreply, smtp
from helpdeskd.configreader import (
    BOOLEAN,
    POSITIVE_INT,
    Declared,
    Reader,
    address,
    addresses,
    check_unique,
    choice,
    describe,
    key,
    localized,
    minutes,
    path,
    quote,
    reference,
    valid_domain,
)
from helpdeskd.errors import ConfigError
from helpdeskd.settings import (
    LANGUAGES,
    Category,
    Config,
    Helpdesk,
    Limits,
    Priority,
    Queue,
)

__all__ = ["LOG_LEVELS", "build_config", "load_config"]

LOG_LEVELS = ("debug", "info", "warning", "error")

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


DEFAULT_STATE_DIR = "../state"  # beside the config file's folder


def state_dir_of(file: str | Path) -> Path | None:
    """The state directory a config file names, read even when the rest of the file is invalid (so
    ``helpdeskctl status`` can still show the daemon's status): None when the file is not readable
    TOML or its ``[helpdesk] state_dir`` is not a string."""
    source = Path(file)
    try:
        data = _read_toml(source)
    except ConfigError:
        return None
    table = data.get("helpdesk")
    if not isinstance(table, dict):
        table = {}
    problems: list[str] = []
    found = path(Reader(table, "helpdesk", problems), "state_dir", source.resolve().parent, DEFAULT_STATE_DIR)
    return None if problems else found


def build_config(data: dict[str, Any], base_dir: Path, source: str = "") -> Config:
    """Validate an already parsed TOML document into a :class:`Config` (``source_path`` left ``None``).

    ``base_dir`` anchors relative paths (state_dir, templates_dir, mailbox paths). Every problem is
    collected; if there is any, :class:`ConfigError` is raised with all of them and ``source``.
    """
    if not isinstance(data, dict):
        raise ConfigError([f"expected a TOML table at the top level, got {describe(data)}"], source)
    problems: list[str] = []
    config = _config(Reader(data, "", problems), Path(base_dir))
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


# --------------------------------------------------------------------------- the document


def _declared(data: dict[str, Any], section: str) -> tuple[str, ...]:
    items = data.get(section)
    if not isinstance(items, list):
        return ()
    return tuple(i["key"] for i in items if isinstance(i, dict) and isinstance(i.get("key"), str))


def _config(root: Reader, base_dir: Path) -> Config:
    """Read every section in file order; the result is meaningful only when no problem was recorded."""
    declared = Declared(*(_declared(root.table, s) for s in ("queues", "priorities", "categories")))
    helpdesk = _helpdesk(root.child("helpdesk"), declared, base_dir)
    log_level = _log_level(root.child("logging", required=False))
    limits = _limits(root.child("limits", required=False))
    own = helpdesk.address if helpdesk else None
    config = Config(
        helpdesk=helpdesk,  # type: ignore[arg-type]  # None only when a problem was recorded
        queues=_section(root, "queues", "key", lambda r, i: _queue(r, own)),
        priorities=_section(root, "priorities", "key", _priority),
        categories=_section(root, "categories", "key", lambda r, i: _category(r)),
        mailboxes=_section(root, "mailboxes", "name", lambda r, i: mailbox(r, declared, base_dir)),
        log_level=log_level,
        limits=limits,
        smtp=smtp(root.child("smtp"), base_dir) if root.has("smtp") else None,
        autoreply=autoreply(root.child("autoreply", required=False)),
        access=access(root, own),
        mail_gateway=mail_gateway(root.child("mail_gateway", required=False)),
        status_requests=status_requests(root.child("status_requests", required=False)),
    )
    root.finish()
    return config


def _section(root: Reader, name: str, id_field: str, parse: Callable[[Reader, int], T]) -> tuple[T, ...]:
    """Parse each ``[[name]]`` entry, check ``id_field`` is unique, require one entry unless mailboxes."""
    readers = root.children(name)
    values = []
    for index, reader in enumerate(readers):
        values.append(parse(reader, index))
        reader.finish()
    check_unique(readers, id_field)
    if not readers and name != "mailboxes" and root.table.get(name, []) == []:
        root.problem(name, f"at least one [[{name}]] entry is required")
    return tuple(values)


# --------------------------------------------------------------------------- [helpdesk]


def _helpdesk(r: Reader | None, declared: Declared, base_dir: Path) -> Helpdesk | None:
    """The [helpdesk] table: identity, defaults for new tickets, and where state and templates live."""
    if r is None:
        return None
    identity = _identity(r)
    defaults = _defaults(r, declared)
    conversation = _conversation(r)
    places = {
        "state_dir": path(r, "state_dir", base_dir, DEFAULT_STATE_DIR),
        "templates_dir": path(r, "templates_dir", base_dir, "../templates"),
    }
    r.finish()
    return Helpdesk(**identity, **defaults, **conversation, **places)


def _identity(r: Reader) -> dict[str, Any]:
    """Who the helpdesk is: switches, display name, address, subject tag, Message-ID domain."""
    values = {
        "enabled": r.get("enabled", BOOLEAN),
        "name": r.text("name"),
        "address": address(r, "address"),
        "allow_customer_tickets": r.get("allow_customer_tickets", BOOLEAN),
        "subject_tag": _subject_tag(r),
        "acknowledge_followups": r.get("acknowledge_followups", BOOLEAN, True),
    }
    values["message_id_domain"] = _message_id_domain(r, values["address"])
    return values


def _defaults(r: Reader, declared: Declared) -> dict[str, Any]:
    """What a new ticket gets when nothing else decides, and the language choices."""
    return {
        "default_queue": reference(r, "default_queue", declared.queues, "queue"),
        "default_priority": reference(r, "default_priority", declared.priorities, "priority"),
        "default_category": reference(r, "default_category", declared.categories, "category"),
        "default_language": choice(r, "default_language", LANGUAGES, "a supported language"),
        "detect_language": r.get("detect_language", BOOLEAN, True),
    }


CLOSED_REPLY = ("reopen", "new", "refuse")


def _conversation(r: Reader) -> dict[str, Any]:
    """How replies, staff and collaborators are handled (see the README's "Conversations")."""
    return {
        "closed_reply": choice(r, "closed_reply", CLOSED_REPLY, "a closed-ticket policy", "reopen"),
        "cc_collaborators": r.get("cc_collaborators", BOOLEAN, True),
        "max_collaborators": r.get("max_collaborators", POSITIVE_INT, 10),
        "notify_staff": r.get("notify_staff", BOOLEAN, True),
        "plus_addressing": r.get("plus_addressing", BOOLEAN, False),
    }


def _subject_tag(r: Reader) -> str | None:
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


def _message_id_domain(r: Reader, address: str | None) -> str | None:
    """Explicit domain, or the helpdesk address's domain (our Message-IDs identify our own mail)."""
    fallback = address.rpartition("@")[2] if address else ""
    domain = r.text("message_id_domain", fallback)
    if domain and r.has("message_id_domain") and not valid_domain(domain):
        return r.refuse("message_id_domain", f"{quote(domain)} is not a valid domain name")
    return domain


# --------------------------------------------------------------------------- small sections


def _log_level(r: Reader | None) -> str:
    if r is None:
        return "info"
    level = choice(r, "level", LOG_LEVELS, "a log level", default="info")
    r.finish()
    return level or "info"


def _limits(r: Reader | None) -> Limits:
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


def _queue(r: Reader, own_address: str | None) -> Queue:
    return Queue(
        key=key(r, "key"),
        name=localized(r, "name"),
        staff=addresses(r, "staff", own_address),
        escalation=addresses(r, "escalation", own_address),
    )


def _priority(r: Reader, rank: int) -> Priority:
    """Rank is the position in the file: the first [[priorities]] entry is the most urgent."""
    return Priority(
        key=key(r, "key"),
        name=localized(r, "name"),
        description=localized(r, "description", single_line=False),
        response_target_minutes=minutes(r, "response_target"),
        rank=rank,
    )


def _category(r: Reader) -> Category:
    return Category(key=key(r, "key"), name=localized(r, "name"))
