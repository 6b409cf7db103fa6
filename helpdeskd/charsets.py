"""Bytes → text for mail: charset labels, codec lookup, and decoding that never raises.

Contract: :func:`decode_bytes` decodes body or header bytes with a declared charset (or none),
falling back sensibly (UTF-8 when it validates, else Windows-1252, else replacement characters),
and records every guess or loss as a defect in the :class:`~helpdeskd.parsestate.ParseState`.
:func:`guess_decode` is the undeclared-8-bit rule on its own (UTF-8, else Windows-1252). Labels
are mapped the way mail clients and browsers read them (``iso-8859-1`` is ``cp1252``, ``gb2312``
is ``gb18030``...); Python codecs that are not mail charsets count as unknown. Pure, no I/O.
"""

from __future__ import annotations

import codecs

from helpdeskd.parsestate import ParseState

__all__ = ["decode_bytes", "guess_decode"]

# Labels whose real-world meaning is a superset codec (as mail clients and browsers treat them).
_CHARSET_ALIASES = {
    "gb2312": "gb18030", "gbk": "gb18030", "x-gbk": "gb18030", "ks_c_5601-1987": "cp949",
    "iso-8859-1": "cp1252", "latin1": "cp1252", "latin-1": "cp1252", "iso8859-1": "cp1252",
    "us-ascii": "ascii", "iso-8859-8-i": "iso-8859-8", "unicode-1-1-utf-8": "utf-8",
    "x-unknown": "", "unknown-8bit": "", "x-user-defined": "", "ansi_x3.4-1968": "ascii",
}
# Text codecs Python offers that are not mail charsets (and some are slow or escape-decoding).
_NOT_MAIL = frozenset({"idna", "punycode", "unicode-escape", "raw-unicode-escape", "undefined",
                       "mbcs", "oem", "utf-16", "utf-32"})


def _codec(charset: str) -> str | None:
    """Python codec name for a declared charset; None when unknown or not a mail charset."""
    label = _CHARSET_ALIASES.get(charset.strip().strip('"').lower(), charset.strip().strip('"').lower())
    if not label:
        return None
    try:
        name = codecs.lookup(label).name
    except (LookupError, ValueError, TypeError):
        return None
    return None if name in _NOT_MAIL else name


def guess_decode(data: bytes) -> tuple[str, str]:
    """Undeclared 8-bit text: UTF-8 when it validates (a strong signal), else Windows-1252."""
    try:
        return data.decode("utf-8"), "utf-8"
    except UnicodeDecodeError as exc:
        if exc.reason == "unexpected end of data":
            # Valid UTF-8 cut inside its last character (by our length cap or a truncated mail).
            return data[: exc.start].decode("utf-8"), "utf-8"
        return _cp1252(data), "windows-1252"


def _cp1252(data: bytes) -> str:
    # cp1252 leaves five bytes undefined; latin-1 maps them, so this never fails.
    try:
        return data.decode("cp1252")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def decode_bytes(data: bytes, charset: str | None, state: ParseState, *, where: str) -> str:
    """Decode with the declared charset, falling back sensibly; never raises.

    No charset: ASCII, else UTF-8, else Windows-1252 (defect). Unknown charset: ASCII, else valid
    UTF-8, else UTF-8 with replacement characters (defect). Declared charset that does not fit
    the bytes: valid UTF-8 wins (defect "mislabelled"), else replacement characters (defect).
    """
    if data.isascii():
        return data.decode("ascii")
    if not charset:
        text, codec = guess_decode(data)
        state.defect(f"8-bit {where} text without charset (decoded as {codec})")
        return text
    codec = _codec(charset)
    if codec is None:
        state.defect(f"unknown charset {charset[:40]!r} in {where}")
        return data.decode("utf-8", "replace")  # valid UTF-8 decodes cleanly, the rest is U+FFFD
    return _decode_declared(data, charset, codec, state, where)


def _decode_declared(data: bytes, charset: str, codec: str, state: ParseState, where: str) -> str:
    try:
        return data.decode(codec)
    except UnicodeDecodeError:
        pass
    except LookupError:  # a bytes-to-bytes codec such as "base64" named as a charset
        state.defect(f"unknown charset {charset[:40]!r} in {where}")
        return data.decode("utf-8", "replace")
    if codec != "utf-8":
        try:
            text = data.decode("utf-8")
            state.defect(f"charset mislabelled in {where}: declared {charset[:40]!r}, decoded as utf-8")
            return text
        except UnicodeDecodeError:
            pass
    state.defect(f"invalid bytes for charset {charset[:40]!r} in {where} replaced")
    return data.decode(codec, "replace")
