"""Header decoding: raw compat32 header values → clean, single-line text and structured values.

Contract: every function here takes headers as the stdlib parser left them (folded, possibly
with raw 8-bit bytes kept as surrogates, possibly RFC 2047-encoded) and returns text that is
unfolded, capped at ``Limits.max_header_bytes``, decoded (8-bit bytes as UTF-8 else Windows-1252,
encoded words leniently, same-charset words joined before decoding) and free of control
characters, so nothing downstream can be tricked into header injection. Structured values:
addresses (:func:`addresses`, :func:`return_path`), Message-ID / In-Reply-To / References ids
(:func:`first_message_id`, :func:`message_ids`) and languages (:func:`languages`). Problems
never raise; they become defects in the :class:`~helpdeskd.parsestate.ParseState`. Pure, no I/O.

We decode ourselves rather than via ``policy.default`` or ``email.header.make_header``: see the
speed note in :mod:`helpdeskd.parse`.
"""

from __future__ import annotations

import binascii
import re
from email.message import Message as MimePart  # compat32 tree node, not the modern EmailMessage
from email.utils import getaddresses

from helpdeskd.charsets import decode_bytes, guess_decode
from helpdeskd.message import Address
from helpdeskd.parsestate import ParseState

__all__ = [
    "RawHeaders", "addresses", "collapse", "decode_headers", "decode_words", "first_message_id", "from_8bit",
    "languages", "message_ids", "raw_header", "repair_8bit_params", "return_path", "sanitise",
]

# ----------------------------------------------------------------------------------------------
# Unstructured headers
# ----------------------------------------------------------------------------------------------

_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x80-\x9f\u2028\u2029]+")
_WHITESPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\udc80-\udcff]")


def decode_headers(root: MimePart, state: ParseState) -> tuple[tuple[str, str], ...]:
    """Every top-level header as (lower-cased name, decoded single-line text), in order."""
    out = []
    for name, value in root.raw_items():
        clean_name = sanitise(from_8bit(str(name), "header name", state)).strip().lower()
        out.append((clean_name, _header_text(clean_name, value, state)))
    return tuple(out)


def _header_text(name: str, value: object, state: ParseState) -> str:
    """Unfold, cap, decode 8-bit bytes and RFC 2047 words, then remove control characters."""
    text = decode_words(_raw_value(name, value, state), state)
    if not text.isprintable() and _CONTROLS.search(text):  # (each of _CONTROLS is unprintable)
        state.defect(f"control characters removed from {name} header")
    return _cap_text(sanitise(text).strip(), name, state)


class RawHeaders:
    """A part's headers as sent, by lower-cased name (each name's values in order). A parse looks up
    about a dozen names; each walk over every header (as ``Message.get`` does) costs about as much
    as making this once."""

    __slots__ = ("_by_name",)

    def __init__(self, part: MimePart) -> None:
        self._by_name: dict[str, list] = {}
        for key, value in part.raw_items():
            self._by_name.setdefault(str(key).strip().lower(), []).append(value)

    def all(self, name: str) -> list:
        return self._by_name.get(name, [])


def raw_header(headers: RawHeaders, name: str, state: ParseState) -> str:
    """First header ``name`` unfolded and capped, 8-bit decoded, encoded-words left alone."""
    values = headers.all(name)
    return _raw_value(name, values[0], state) if values else ""


def _raw_all(headers: RawHeaders, name: str, state: ParseState) -> list[str]:
    return [_raw_value(name, value, state) for value in headers.all(name)]


def _raw_value(name: str, value: object, state: ParseState) -> str:
    """Unfolded, length-capped header text with raw 8-bit bytes decoded (utf-8, else cp1252)."""
    text = str(value)
    if "\n" in text or "\r" in text:
        text = _FOLD.sub("", text)
    cap = state.limits.max_header_bytes
    if len(text) > cap:  # one char per input byte here: BytesParser maps bytes to chars
        state.defect(f"{name} header longer than {cap} bytes, truncated")
        text = text[:cap]
    return from_8bit(text, f"{name} header", state)


def from_8bit(text: str, where: str, state: ParseState) -> str:
    """BytesParser keeps non-ASCII header bytes as surrogates; turn them into real text."""
    if not _SURROGATE.search(text):
        return text
    data = text.encode("utf-8", "surrogateescape")
    decoded, codec = guess_decode(data)
    state.defect(f"8-bit bytes in {where} (decoded as {codec})")
    return decoded


def _cap_text(text: str, name: str, state: ParseState) -> str:
    """Cap decoded text at max_header_bytes of UTF-8, cutting on a character boundary."""
    cap = state.limits.max_header_bytes
    if len(text) * 4 <= cap or len(text.encode("utf-8", "surrogatepass")) <= cap:
        return text
    state.defect(f"{name} header longer than {cap} bytes, truncated")
    return text.encode("utf-8", "surrogatepass")[:cap].decode("utf-8", "ignore")


def sanitise(text: str) -> str:
    """Control characters (CR, LF, NUL, C1...) become spaces: no header injection downstream."""
    text = text.replace("\t", " ")
    return text if text.isprintable() else _CONTROLS.sub(" ", text)  # (each of _CONTROLS is unprintable)


def collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


def repair_8bit_params(part: MimePart, state: ParseState) -> None:
    """compat32 turns raw 8-bit bytes in Content-Type/-Disposition into U+FFFD when reading
    parameters; store the header back decoded (UTF-8, else cp1252) so file names survive."""
    for name in ("content-type", "content-disposition"):
        value = next((v for k, v in part.raw_items() if str(k).lower() == name), None)
        if isinstance(value, str) and _SURROGATE.search(value):
            part.replace_header(name, from_8bit(_FOLD.sub("", value), f"{name} header", state))


# ----------------------------------------------------------------------------------------------
# RFC 2047 encoded words
# ----------------------------------------------------------------------------------------------

# RFC 2047 encoded word. The charset may carry an RFC 2231 language suffix ("utf-8*es").
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?]*?)\?=")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*=*$")


def decode_words(text: str, state: ParseState) -> str:
    """Decode RFC 2047 encoded words, leniently.

    Whitespace between two adjacent encoded words is dropped (RFC 2047 §6.2), and adjacent
    words in the same charset are joined *before* decoding, because senders split multi-byte
    characters across words. Bad words are left as they were, with a defect.
    """
    if "=?" not in text:
        return text
    pieces: list[str | tuple[str, bytes]] = []  # literal text, or (charset, decoded bytes)
    pos = 0
    for match in _ENCODED_WORD.finditer(text):
        literal = text[pos:match.start()]
        between_words = pieces and isinstance(pieces[-1], tuple) and (not literal or literal.isspace())
        if literal and not between_words:
            pieces.append(literal)
        pieces.append(_word_bytes(match, state))
        pos = match.end()
    pieces.append(text[pos:])
    return "".join(_join_words(pieces, state))


def _word_bytes(match: re.Match[str], state: ParseState) -> str | tuple[str, bytes]:
    """Bytes of one encoded word with its charset, or the word itself when undecodable."""
    charset = match.group(1).split("*", 1)[0].lower()
    payload = match.group(3)
    try:
        if match.group(2) in "qQ":
            return charset, _q_decode(payload)
        if _BASE64.match(payload):  # a2b_base64 would silently skip foreign characters
            return charset, binascii.a2b_base64(payload + "=" * (-len(payload) % 4))
    except (binascii.Error, ValueError):
        pass
    state.defect("invalid RFC 2047 encoded word")
    return match.group(0)


def _q_decode(payload: str) -> bytes:
    """RFC 2047 'Q': '_' is a space, '=XX' a byte; a stray '=' stays as it is."""
    data = payload.replace("_", " ").encode("ascii", "replace")
    return re.sub(rb"=([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]), data)


def _join_words(pieces: list[str | tuple[str, bytes]], state: ParseState) -> list[str]:
    """Merge runs of same-charset words, then decode each run once."""
    out: list[str] = []
    run_charset, run = "", b""
    for piece in pieces + [""]:
        if isinstance(piece, tuple) and piece[0] == run_charset and run:
            run += piece[1]
            continue
        if run or run_charset:
            out.append(decode_bytes(run, run_charset, state, where="header"))
            run_charset, run = "", b""
        if isinstance(piece, tuple):
            run_charset, run = piece
        else:
            out.append(piece)
    return out


# ----------------------------------------------------------------------------------------------
# Structured headers: addresses, ids, languages
# ----------------------------------------------------------------------------------------------

_ADDR_FALLBACK = re.compile(r"[^\s<>(),;:\"']+@[^\s<>(),;:\"']+")


def addresses(headers: RawHeaders, name: str, state: ParseState) -> tuple[Address, ...]:
    """Mailboxes of every ``name`` header: addr lower-cased, display name RFC 2047-decoded.

    The raw (still encoded) value is split first, so a comma or bracket inside an encoded
    display name cannot forge an extra address.
    """
    values = _raw_all(headers, name, state)
    if not values:
        return ()
    words: list[str] = []
    try:
        pairs = _split_addresses([_drop_routes(_hide_words(v, words)) for v in values])
    except (RecursionError, IndexError, ValueError):
        # _parseaddr recurses on nested comments; a hostile "((((…" must not cost us the mail.
        state.defect(f"unparsable {name} header")
        pairs = [("", m) for v in values for m in _ADDR_FALLBACK.findall(v)]
    pairs = [(_show_words(n, words), _show_words(a, words)) for n, a in pairs]
    return tuple(_address(n, a, state) for n, a in pairs if sanitise(a).strip())


# An obsolete route before an address (RFC 5322 obs-route, "<@relay1,@relay2:user@example>"): the
# stdlib splits it at its comma and takes "@relay2" for the address. Routes are to be ignored. Only
# the route's own grammar matches (domains, commas, a colon), never across a quote or a comment.
_DOMAIN_IN_ROUTE = r"@[^<>\":,()@\s]*"
_OBS_ROUTE = re.compile(rf"<[ \t]*{_DOMAIN_IN_ROUTE}(?:[ \t]*,[ \t]*{_DOMAIN_IN_ROUTE})*[ \t]*:")


def _drop_routes(value: str) -> str:
    """``value`` without obsolete routes; left as it is when it quotes anything (a route-shaped text
    inside a quoted display name is no route, and routes in quoted mail are too rare to parse for)."""
    return value if '"' in value or "<" not in value else _OBS_ROUTE.sub("<", value)


# The shape of nearly every address header: one "Display Name <local@domain>" or "local@domain",
# plain ASCII, nothing in the name that the address parser treats specially. Split without it
# (it is slow), exactly as it would: the name's words joined by single spaces.
# Possessive quantifiers only: no backtracking, so a hostile value (a long run of blanks that then
# fails to match) costs linear time, not hours.
_SIMPLE_ADDRESS = re.compile(r"[ \t]*+(?:([A-Za-z0-9 \t._-]*+)<([A-Za-z0-9._%+=-]++@[A-Za-z0-9.-]++)>"
                             r"|([A-Za-z0-9._%+=-]++@[A-Za-z0-9.-]++))[ \t]*+")


def _split_addresses(values: list[str]) -> list[tuple[str, str]]:
    """``getaddresses(values)``, taking a short cut for values of the simple shape above."""
    if len(values) == 1 and (simple := _SIMPLE_ADDRESS.fullmatch(values[0])):
        name, bracketed, bare = simple.groups()
        return [(" ".join(name.split()), bracketed)] if bare is None else [("", bare)]
    return getaddresses(values)


# Encoded words are swapped for plain atoms while splitting addresses: an encoded display
# name may contain "@", which the stdlib address parser would take for an addr-spec.
_WORD_TOKEN = "qzEWzq"
_WORD_TOKEN_RE = re.compile(_WORD_TOKEN + r"(\d+)" + _WORD_TOKEN)


def _hide_words(value: str, words: list[str]) -> str:
    if "=?" not in value or _WORD_TOKEN in value:
        return value

    def token(match: re.Match[str]) -> str:
        words.append(match.group(0))
        return f"{_WORD_TOKEN}{len(words) - 1}{_WORD_TOKEN}"

    return _ENCODED_WORD.sub(token, value)


def _show_words(text: str, words: list[str]) -> str:
    if not words or _WORD_TOKEN not in text:
        return text
    return _WORD_TOKEN_RE.sub(lambda m: words[int(m.group(1))] if int(m.group(1)) < len(words) else "", text)


def _address(name: str, addr: str, state: ParseState) -> Address:
    clean_addr = _WHITESPACE.sub("", sanitise(addr)).lower()
    return Address(addr=clean_addr, name=collapse(sanitise(decode_words(name, state))))


def return_path(headers: RawHeaders, state: ParseState) -> str | None:
    """None without a Return-Path header; "" for the null sender ``<>``; else the address,
    lower-cased (a bare "<MAILER-DAEMON>" is kept as "mailer-daemon")."""
    if not headers.all("return-path"):
        return None
    value = raw_header(headers, "return-path", state)
    found = _ADDR_FALLBACK.search(value)
    if found:
        return found.group(0).lower()
    return _WHITESPACE.sub("", sanitise(value)).strip("<>").lower()


_BRACKETED = re.compile(r"<([^<>]*)>")


def first_message_id(value: str) -> str:
    """The first ``<id>`` of the header without brackets or inner spaces; "" when none."""
    ids = message_ids(value)
    return ids[0] if ids else ""


def message_ids(value: str) -> tuple[str, ...]:
    """Message ids of In-Reply-To / References: bracketed ones, else bare tokens with '@'.

    Junk such as "Your message of Tuesday" or empty ``<>`` is skipped; duplicates are dropped.
    """
    found = [_WHITESPACE.sub("", sanitise(m)) for m in _BRACKETED.findall(value)]
    if not any(found):
        found = [t.strip("<>,;") for t in value.split() if "@" in t]
    return tuple(dict.fromkeys(i for i in found if i))


_LANGUAGE = re.compile(r"^[a-z]{2,8}$")


def languages(*values: str) -> tuple[str, ...]:
    """Primary language subtags, best first: Content-Language, then Accept-Language by q."""
    ranked: list[str] = []
    for value in values:
        ranked.extend(_ranked_tags(value))
    return tuple(dict.fromkeys(ranked))


def _ranked_tags(value: str) -> list[str]:
    """Tags of one header ordered by q-value (stable), without '*' / 'x-' / 'i-' or q=0."""
    weighted = []
    for position, item in enumerate(value.split(",")):
        tag, _, params = item.partition(";")
        primary = tag.strip().split("-", 1)[0].lower()
        quality = _quality(params)
        if _LANGUAGE.match(primary) and quality > 0:
            weighted.append((-quality, position, primary))
    return [primary for _, _, primary in sorted(weighted)]


def _quality(params: str) -> float:
    match = re.search(r"q\s*=\s*([0-9.]+)", params)
    try:
        return float(match.group(1)) if match else 1.0
    except ValueError:
        return 1.0
