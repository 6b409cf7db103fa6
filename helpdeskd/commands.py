"""Commands people write to the helpdesk by mail, in Spanish or English.

A command is a line ``#word [value]`` at the top of the message body (blank lines may precede it;
the first ordinary line ends the command block), or a ``#cerrar``/``#escalar`` word at the start of the
subject (after reply prefixes and our tag, which :func:`helpdeskd.decide` removes). Reading them is pure
text work; whether the sender may use one, and whether its value is valid, is decided in
:mod:`helpdeskd.decide` against the config and the sender's role.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

# command → the words that spell it (compared without accents and case)
KEYWORDS: dict[str, tuple[str, ...]] = {
    "close": ("close", "cerrar"),
    "reopen": ("reopen", "reabrir"),
    "escalate": ("escalate", "escalar"),
    "cc": ("cc",),
    "status": ("status", "estado"),
    "priority": ("priority", "prioridad"),
    "queue": ("queue", "cola"),
    "category": ("category", "categoria"),
    "assign": ("assign", "asignar"),
    "note": ("note", "nota"),
}
CUSTOMER_COMMANDS = ("close", "escalate", "cc")
STATUS_WORDS = {
    "new": "new", "nuevo": "new", "open": "open", "abierto": "open", "closed": "closed", "cerrado": "closed",
    "reopened": "reopened", "reabierto": "reopened",
}
CC_VERBS = {"add": "add", "anadir": "add", "agregar": "add", "remove": "remove", "quitar": "remove",
            "eliminar": "remove"}
ME_WORDS = ("me", "yo")

_LINE = re.compile(r"^#([^\W\d_][\w-]*)\s*[:=]?\s*(.*)$")
_SUBJECT_WORD = re.compile(r"(?<![\w#])#([^\W\d_][\w-]*)")
_BY_WORD = {word: name for name, words in KEYWORDS.items() for word in words}  # words are already folded


def fold(word: str) -> str:
    """Lower-case without accents: ``Categoría`` → ``categoria``, ``añadir`` → ``anadir``."""
    if word.isascii():  # (most words: nothing to decompose)
        return word.lower()
    decomposed = unicodedata.normalize("NFKD", word.casefold())
    return "".join(ch for ch in decomposed if not unicodedata.combining(ch))


@dataclass(frozen=True)
class Command:
    name: str  # a key of KEYWORDS
    value: str = ""  # the rest of the line, stripped
    source: str = ""  # the line as written, for error messages


@dataclass(frozen=True)
class Commands:
    commands: tuple[Command, ...] = ()
    unknown: tuple[str, ...] = ()  # "#word" lines at the top that are no command
    rest: str = ""  # the body after the command block

    def named(self, name: str) -> Command | None:
        return next((c for c in self.commands if c.name == name), None)


def read_commands(subject: str, text: str) -> Commands:
    """The commands at the top of ``text`` and in ``subject``, and the text that follows them."""
    lines = text.splitlines()
    commands: list[Command] = []
    unknown: list[str] = []
    index = 0
    while index < len(lines) and not lines[index].strip():
        index += 1
    while index < len(lines):
        match = _LINE.match(lines[index].strip())
        if not match:
            break
        name = _BY_WORD.get(fold(match.group(1)))
        if name is None:
            unknown.append(lines[index].strip())
        else:
            commands.append(Command(name, match.group(2).strip(), lines[index].strip()))
        index += 1
    commands += _subject_commands(subject, {c.name for c in commands})
    return Commands(tuple(commands), tuple(unknown), "\n".join(lines[index:]).strip())


def _subject_commands(subject: str, seen: set[str]) -> list[Command]:
    """Leading ``#close``/``#escalate`` words of ``subject`` (callers pass it without reply prefixes and
    our tag). Only leading ones: a subject that merely mentions "#cerrar" is quoted in every reply."""
    found = []
    for word in subject.split():
        match = _SUBJECT_WORD.fullmatch(word)
        name = _BY_WORD.get(fold(match.group(1))) if match else None
        if name not in ("close", "escalate"):
            break
        if name not in seen:
            seen.add(name)
            found.append(Command(name, "", word))
    return found
