"""TOML for the store's records, byte for byte what ``tomli_w.dumps`` writes, in a fraction of its time.

A ticket's ``ticket.toml`` is rewritten each time the ticket changes, and in the POP3 gateway's
filing thread ``tomli_w`` was about a tenth of the work per message: it is general (any nesting,
dates, floats, inline tables) and escapes strings a character at a time. The records the store
writes have one shape: strings, integers, booleans, flat arrays of those, and tables of the same
(the requester). That shape is written here with a regex for the escapes; anything else — a float,
a date, a nested array or table, a key a later version adds with such a value — goes to
``tomli_w.dumps`` itself, so the file is always what ``tomli_w`` would have written
(``tests/test_tomlout.py`` checks that on generated records).
"""

from __future__ import annotations

import re

import tomli_w

# tomli_w's escapes: the compact ones, else \\uXXXX (lower-case hex) for the controls but the tab.
_ESCAPES = {chr(i): f"\\u{i:04x}" for i in (*range(32), 127) if i != 9}
_ESCAPES.update({"\b": "\\b", "\n": "\\n", "\f": "\\f", "\r": "\\r", '"': '\\"', "\\": "\\\\"})
_NEEDS_ESCAPE = re.compile('[\x00-\x08\x0a-\x1f\x7f"\\\\]')
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")


class _Other(Exception):
    """A value of a shape this module leaves to tomli_w."""


def dumps(record: dict) -> str:
    """``tomli_w.dumps(record)``."""
    try:
        return "".join(_table(record, ""))
    except _Other:
        return tomli_w.dumps(record)


def _table(table: dict, name: str) -> list[str]:
    lines, tables = [], []
    for key, value in table.items():
        if isinstance(value, dict):
            if name:  # a table inside a table: not a shape of ours
                raise _Other
            tables.append((key, value))
        else:
            lines.append(f"{_key(key)} = {_value(value)}\n")
    if name:
        lines.insert(0, f"[{name}]\n")
    for key, value in tables:
        if lines:
            lines.append("\n")
        lines.extend(_table(value, _key(key)))
    return lines


def _key(key: object) -> str:
    written = _KEYS.get(key)  # type: ignore[arg-type]  # (the same few dozen keys, record after record)
    if written is None:
        if type(key) is not str:
            raise _Other
        written = key if _BARE_KEY.fullmatch(key) else _string(key)
        if len(_KEYS) < 4096:
            _KEYS[key] = written
    return written


_KEYS: dict[str, str] = {}


def _value(value: object) -> str:
    kind = type(value)
    if kind is str:
        return _string(value)  # type: ignore[arg-type]
    if kind is bool:
        return "true" if value else "false"
    if kind is int:
        return str(value)
    if kind is list or kind is tuple:
        if not value:
            return "[]"
        items = []
        for item in value:  # type: ignore[attr-defined]
            if type(item) is str:
                items.append(_string(item))
            elif type(item) is int:
                items.append(str(item))
            else:
                raise _Other
        return "[\n    " + ",\n    ".join(items) + ",\n]"
    raise _Other


def _string(text: str) -> str:
    if _NEEDS_ESCAPE.search(text) is None:  # most values: a search costs half a substitution
        return f'"{text}"'
    return '"' + _NEEDS_ESCAPE.sub(lambda match: _ESCAPES[match.group()], text) + '"'
