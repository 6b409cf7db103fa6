"""Choosing the language to answer in: what the mail declares, else a guess from its words, else the default."""

from __future__ import annotations

from .message import Message

# Short, frequent function words that tell Spanish and English apart even in a two-line mail.
_MARKERS = {
    "es": frozenset(
        "el la los las de del que y en un una por para con no es está mi su se lo al como pero hola gracias "
        "buenos buenas días tengo puedo favor saludos problema correo cuenta ayuda sitio dominio funciona".split()
    ),
    "en": frozenset(
        "the and is are to of in for with my your it this that not can cannot hello hi thanks thank please "
        "regards problem mail account help site domain working have does".split()
    ),
}
_LETTERS = "abcdefghijklmnopqrstuvwxyzáéíóúñü"  # a word is a run of these (after lower-casing)
# Words found without a regex: in Latin-1 (every letter above is one byte there; any other
# character becomes a byte that is not a letter), everything but the letters turned into blanks.
_BLANK_OTHERS = bytes(b if chr(b) in _LETTERS else 32 for b in range(256))
_MARKER_BYTES = {lang: frozenset(w.encode("latin-1") for w in words) for lang, words in _MARKERS.items()}


def words_of(text: str) -> list[bytes]:
    """The runs of ``_LETTERS`` in ``text``, in Latin-1 (twice as fast as a regex over a mail's start)."""
    return text.encode("latin-1", "replace").translate(_BLANK_OTHERS).split()


def guess_language(text: str, sample: int = 2000) -> str | None:
    """Spanish or English by counting marker words in the first ``sample`` characters; None if unclear."""
    words = words_of(text[:sample].lower())
    scores = {lang: sum(map(markers.__contains__, words)) for lang, markers in _MARKER_BYTES.items()}
    if any(ch in text[:sample] for ch in "ñ¿¡"):
        scores["es"] += 3
    best = max(scores, key=scores.__getitem__)
    other = min(scores.values())
    return best if scores[best] >= 2 and scores[best] > 1.5 * other else None


def guessed_language(message: Message) -> str | None:
    """:func:`guess_language` of the message's subject and text (computed once per message)."""
    if "language" not in message.memo:
        message.memo["language"] = guess_language(f"{message.subject}\n{message.text}")
    return message.memo["language"]


def choose_language(message: Message, supported: tuple[str, ...], default: str, detect: bool) -> str:
    """Declared language (Content-Language, Accept-Language) → guessed from the text → ``default``."""
    for lang in message.languages:
        if lang in supported:
            return lang
    if detect:
        guessed = guessed_language(message)
        if guessed in supported:
            return guessed
    return default
