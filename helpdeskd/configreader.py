"""Reading one TOML table while collecting problems, and the generic value checks.

Layer 2 adapter; stdlib only. :class:`Reader` is a view of one TOML table that records problems instead of
raising, each prefixed with its key path (``queues[2].name: missing``), and remembers which keys were asked
for, so :meth:`Reader.finish` reports the leftovers as unknown keys (with the closest known key as a
suggestion). Values are described in messages as TOML would show them (:func:`describe`, :func:`quote`).

The checks below (keys, addresses, domains, durations, intervals, ports, paths, choices, references to
declared queues/priorities/categories, localized texts, unique ids) take a reader and a key and return
the value, or ``None`` after recording a problem; they never raise and touch no file system.
"""

from __future__ import annotations

import difflib
import json
import re
from collections.abc import Callable
from email.utils import parseaddr
from pathlib import Path
from typing import Any, NamedTuple

from helpdeskd.settings import LANGUAGES, Localized

KEY_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,39}")  # queue/priority/category keys, mailbox names

_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_DOMAIN = re.compile(rf"{_LABEL}(?:\.{_LABEL})*")
# A sane subset of RFC 5322 dot-atoms: no quoted local parts, no IP literals, no comments.
_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
# Every setting that is a time takes the same words: days, hours, minutes, seconds, each at most
# once and in that order ("2d", "1h30m", "90s", "1.5h").
_SPAN = re.compile(r"(?:(\d+(?:\.\d+)?)d)?(?:(\d+(?:\.\d+)?)h)?(?:(\d+(?:\.\d+)?)m)?(?:(\d+(?:\.\d+)?)s)?")
_SPAN_UNITS = (86400, 3600, 60, 1)

DURATION_HINT = 'expected minutes as an integer, or a duration like "30m", "4h", "1h30m", "2d"'
INTERVAL_HINT = 'expected seconds as a positive number, or a duration like "30s", "5m", "1h30m", "2d"'

REQUIRED: Any = object()  # sentinel default: the key must be present


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


class Reader:
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

    def get(self, key: str, kind: _Kind, default: Any = REQUIRED) -> Any:
        """The value of ``key`` if it is of ``kind``; ``default`` if absent; else None and a problem."""
        self.known.append(key)
        if key not in self.table:
            if default is REQUIRED:
                self.problem(key, "missing")
                return None
            return default
        value = self.table[key]
        if kind.accepts(value):
            return value
        self.problem(key, f"expected {kind.expected}, got {describe(value)}")
        return None

    def text(self, key: str, default: Any = REQUIRED, *, single_line: bool = True) -> Any:
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

    def child(self, key: str, required: bool = True) -> Reader | None:
        """A reader for the sub-table ``key``; an empty one when optional and absent; None on problems."""
        value = self.get(key, TABLE, REQUIRED if required else {})
        return None if value is None else Reader(value, self.at(key), self.problems)

    def children(self, key: str) -> list[Reader]:
        """Readers for the array of tables ``key`` (``[[key]]``); absent means empty."""
        items = self.get(key, ARRAY, []) or []
        readers = []
        for index, item in enumerate(items):
            if isinstance(item, dict):
                readers.append(Reader(item, self.at(f"{key}[{index}]"), self.problems))
            else:
                self.problem(f"{key}[{index}]", f"expected a table, got {describe(item)}")
        return readers

    def finish(self) -> None:
        """Report keys nobody asked for, with the closest known key when there is one."""
        for key in self.table:
            if key not in self.known:
                self.problem(key, "unknown key" + _suggestion(key, self.known))


def _suggestion(key: str, known: list[str]) -> str:
    match = difflib.get_close_matches(key, known, n=1)
    return f' (did you mean "{match[0]}"?)' if match else ""


def quote(text: str) -> str:
    """A string as TOML would write it, so messages show exactly what the admin typed."""
    return json.dumps(text, ensure_ascii=False)


def describe(value: Any) -> str:
    """The TOML type of ``value``, with the value itself when it is a short scalar."""
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f"string {quote(shown)}"
    names = {int: "integer", float: "float", dict: "table", list: "array"}
    name = next((n for t, n in names.items() if isinstance(value, t)), "date/time")
    return f"{name} {value}" if name in ("integer", "float") else name


# --------------------------------------------------------------------------- declared keys, unique ids


class Declared(NamedTuple):
    """Keys the file declares, for reference checks; read leniently so one bad entry does not cascade."""

    queues: tuple[str, ...]
    priorities: tuple[str, ...]
    categories: tuple[str, ...]


def check_unique(readers: list[Reader], field: str) -> None:
    first: dict[str, str] = {}
    for reader in readers:
        value = reader.table.get(field)
        if not isinstance(value, str):
            continue
        if value in first:
            reader.problem(field, f"duplicate {quote(value)} (first defined at {first[value]})")
        else:
            first[value] = reader.at(field)


# --------------------------------------------------------------------------- value checks


def key(r: Reader, field: str) -> str | None:
    value = r.text(field)
    if value is not None and not KEY_PATTERN.fullmatch(value):
        return r.refuse(field, f"{quote(value)} is not a valid key: use 1-40 lowercase letters, digits, "
                               "'_' or '-', starting with a letter or digit")
    return value


def choice(r: Reader, key: str, allowed: tuple[str, ...], what: str, default: Any = REQUIRED,
            unsupported: bool = False) -> str | None:
    """One of ``allowed``; ``unsupported`` words the refusal for features that are not built yet."""
    value = r.text(key, default)
    if value is None or value in allowed:
        return value
    listed = ", ".join(allowed)
    if unsupported:
        return r.refuse(key, f"{quote(value)} is not supported in this version (supported: {listed})")
    return r.refuse(key, f"{quote(value)} is not {what} (known: {listed})")


def reference(r: Reader, key: str, known: tuple[str, ...], what: str, required: bool = True) -> str | None:
    """A key that must name a configured queue, priority or category."""
    value = r.text(key, REQUIRED if required else None)
    if value is None or value in known:
        return value
    listed = ", ".join(known) or "none"
    return r.refuse(key, f"{quote(value)} is not a configured {what} (known: {listed})")


def localized(r: Reader, key: str, *, single_line: bool = True) -> Localized:
    """A table with one non-empty text per language in LANGUAGES, and no other language."""
    table = r.get(key, LOCALIZED)
    if table is None:
        return Localized(texts=())
    sub = Reader(table, r.at(key), r.problems)
    texts = tuple((lang, sub.text(lang, single_line=single_line)) for lang in LANGUAGES)
    for lang in table:
        if lang not in LANGUAGES:
            sub.problem(lang, f"unknown language (supported: {', '.join(LANGUAGES)})")
    return Localized(texts=tuple((lang, text) for lang, text in texts if text is not None))


def address(r: Reader, key: str) -> str | None:
    value = r.get(key, ANY)
    if value is None:
        return None
    problem = address_problem(value)
    return r.refuse(key, problem) if problem else value


def addresses(r: Reader, key: str, own_address: str | None) -> tuple[str, ...]:
    """A list of staff addresses; the helpdesk's own address is refused because mail to it would loop."""
    values = r.get(key, ARRAY, []) or []
    good = []
    for index, value in enumerate(values):
        problem = address_problem(value)
        if not problem and own_address and value.lower() == own_address.lower():
            problem = f"{quote(value)} is the helpdesk's own address; mail to it would loop"
        if problem:
            r.problem(f"{key}[{index}]", problem)
        else:
            good.append(value)
    return tuple(good)


def address_problem(value: Any) -> str | None:
    """Why ``value`` is not one bare email address (``user@example.com``), or None if it is."""
    if not isinstance(value, str):
        return f"expected an email address, got {describe(value)}"
    if "\r" in value or "\n" in value:
        return "must not contain line breaks"
    display, address = parseaddr(value)
    if display or address != value or not _valid_address(value):
        return f"{quote(value)} is not a valid email address (write it bare, like support@example.com)"
    return None


def _valid_address(address: str) -> bool:
    local, at, domain = address.rpartition("@")
    return bool(at) and len(address) <= 254 and len(local) <= 64 and bool(_LOCAL_PART.fullmatch(local)) \
        and valid_domain(domain)


def valid_domain(domain: str) -> bool:
    return len(domain) <= 253 and bool(_DOMAIN.fullmatch(domain))


def minutes(r: Reader, key: str) -> int | None:
    """Integer minutes, or a duration of whole minutes ("30m", "4h", "1d12h"); more than zero."""
    value = r.get(key, ANY)
    if value is None:
        return None
    span = _span(value) if isinstance(value, str) else None
    minutes = value if _is_int(value) else (int(span // 60) if span is not None and span % 60 == 0 else None)
    if minutes is None:
        return r.refuse(key, DURATION_HINT)
    if minutes <= 0:
        return r.refuse(key, "must be more than zero")
    return minutes


def seconds(r: Reader, key: str, default: float) -> float | None:
    """Seconds: a positive number, or a duration ("30s", "5m", "1h30m", "2d")."""
    value = r.get(key, ANY, default)
    if isinstance(value, str):
        value = _span(value)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
        return r.refuse(key, INTERVAL_HINT)
    return float(value)


def _span(text: str) -> float | None:
    """The seconds ``text`` says in the duration words (spaces and case ignored), or None."""
    match = _SPAN.fullmatch(text.replace(" ", "").lower())
    if not match or not any(match.groups()):
        return None
    # (to the microsecond: "1.1h" is 3960 s, not 3960.0000000000005, and so a whole 66 minutes)
    return round(sum(float(amount) * unit for amount, unit in zip(match.groups(), _SPAN_UNITS) if amount), 6)


def path(r: Reader, key: str, base_dir: Path, default: Any = REQUIRED) -> Path | None:
    """A path; relative ones are anchored at the config file's directory, not the working directory."""
    value = r.text(key, default)
    return None if value is None else (base_dir / Path(value).expanduser()).resolve()


def port(r: Reader, default: int) -> int | None:
    value = r.get("port", POSITIVE_INT, default)
    if value is not None and value > 65535:
        return r.refuse("port", f"{value} is not a TCP port (1-65535)")
    return value


