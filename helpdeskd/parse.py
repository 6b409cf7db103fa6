"""Raw mail bytes → :class:`~helpdeskd.message.Message` (layer 1: pure, no I/O, no logging).

:func:`parse` never raises on any bytes. What is wrong with a mail (broken MIME, unknown or
mislabelled charsets, 8-bit headers, exceeded limits...) is written into ``Message.defects`` as
short human-readable strings, and the readable parts are still returned.

Speed: the stdlib ``email`` package with ``policy.default`` costs ~10x more than ``compat32``
(see ``shared/dev/perf.md``), so we parse with ``compat32`` and decode headers ourselves. Our
own decoder is also more forgiving than ``email.header.make_header``, which raises on unknown
charsets and invalid bytes.
"""

from __future__ import annotations

import binascii
import codecs
import hashlib
import re
from dataclasses import dataclass, field
from email import errors as email_errors
from email.message import Message as MimePart  # compat32 tree node, not the modern EmailMessage
from email.parser import BytesHeaderParser, BytesParser
from email.policy import compat32
from email.utils import getaddresses

from helpdeskd.htmltext import html_to_text
from helpdeskd.message import Address, Attachment, Message
from helpdeskd.settings import Limits

__all__ = ["parse", "message_key"]

_DEFAULT_LIMITS = Limits()
# Hostile mail can produce one defect per header; a bounded list keeps the value small.
_MAX_DEFECTS = 50
_MORE_DEFECTS = "more defects omitted"

# ----------------------------------------------------------------------------------------------
# Idempotency key
# ----------------------------------------------------------------------------------------------


def message_key(message_id: str, raw: bytes) -> str:
    """Idempotency key of one inbound mail: 32 lower-case hex characters.

    ``sha256(normalised Message-ID + NUL + sha256(normalised raw bytes))``, truncated. The same
    bytes always give the same key; it is filesystem-safe and short. When the message has no
    Message-ID, pass ``""``: the key is then synthetic, derived from the bytes alone (still
    deterministic, so a re-delivery of the very same bytes is recognised).

    Normalisation: surrounding whitespace and angle brackets are stripped from the Message-ID;
    in the bytes, CRLF becomes LF and trailing line breaks are dropped.
    """
    mid = _normalise_id(message_id).encode("utf-8", "surrogateescape")
    body = hashlib.sha256(_normalise_newlines(raw)).digest()
    return hashlib.sha256(b"mid:" + mid + b"\0" + body).hexdigest()[:32]


def _normalise_newlines(raw: bytes) -> bytes:
    """Line endings are transport framing, not content.

    The same mail reaches us as LF (a pipe, Maildir written by a local MDA) or CRLF (POP3, IMAP,
    LMTP), and some readers drop the final line break; counting those as different messages would
    file one mail twice. Two mails that differ *only* in line endings are the same mail to a human,
    so sharing a key is what we want. Trace headers an MDA prepends (Return-Path, Delivered-To,
    Received) do change the bytes and hence the key; Message-ID based dedup covers that case.
    """
    return bytes(raw).replace(b"\r\n", b"\n").rstrip(b"\r\n")


def _normalise_id(value: str) -> str:
    return value.strip().strip("<>").strip()


# ----------------------------------------------------------------------------------------------
# Entry point
# ----------------------------------------------------------------------------------------------


@dataclass
class _State:
    """Mutable scratch space of one parse: collected defects, attachments and counters."""

    limits: Limits
    defects: dict[str, None] = field(default_factory=dict)  # ordered set: dedup in O(1)
    attachments: list[Attachment] = field(default_factory=list)
    embedded_ids: list[str] = field(default_factory=list)
    parts: int = 0

    def defect(self, text: str) -> None:
        """Record a defect once; after _MAX_DEFECTS only a final marker is added."""
        if len(self.defects) < _MAX_DEFECTS:
            self.defects[text] = None
        else:
            self.defects[_MORE_DEFECTS] = None


def parse(raw: bytes, limits: Limits = _DEFAULT_LIMITS) -> Message:
    """Parse one mail. Never raises: every problem becomes an entry in ``Message.defects``.

    ``raw`` is kept untouched by the caller; ``size`` is ``len(raw)``. The work is bounded by
    ``limits`` (parts, nesting depth, header length); ``max_message_bytes`` is the caller's to
    enforce before calling.
    """
    raw = bytes(raw)
    try:
        return _parse(raw, limits)
    except Exception as exc:  # noqa: BLE001 - the contract is "never raises"
        # Why a catch-all here: a bug or a stdlib surprise on one hostile mail must not stop the
        # pipeline; the caller still gets a value (key, size, what headers we can read) and the
        # raw bytes stay in the spool.
        return _degraded(raw, limits, f"parser failure ({type(exc).__name__}); body not read")


def _parse(raw: bytes, limits: Limits) -> Message:
    state = _State(limits)
    if not raw.strip():
        state.defect("empty message")
    if _too_many_containers(raw, limits.max_parts):
        # The stdlib parser costs O(lines x nesting depth); refuse the MIME walk up front.
        return _degraded(raw, limits, f"too many MIME containers (limit {limits.max_parts}); body not read")
    try:
        root = BytesParser(policy=compat32).parsebytes(raw)
    except RecursionError:
        return _degraded(raw, limits, "MIME nesting too deep for the parser; body not read")
    text, is_html = _body_and_attachments(root, state)
    return _build(raw, root, state, text=text, html=is_html)


def _degraded(raw: bytes, limits: Limits, reason: str) -> Message:
    """Headers-only result after the full parse was refused or failed; never raises."""
    state = _State(limits)
    try:
        root = BytesHeaderParser(policy=compat32).parsebytes(raw)
        state.defect(reason)
        return _build(raw, root, state, text="", html=False)
    except Exception:  # noqa: BLE001 - last resort, see parse()
        return Message(key=message_key("", raw), message_id="", subject="", sender=None,
                       defects=(reason, "headers unreadable"), size=len(raw))


_CONTAINER = re.compile(rb"boundary\s*=|message/", re.IGNORECASE)


def _too_many_containers(raw: bytes, limit: int) -> bool:
    """Cheap upper bound on MIME containers, stopping as soon as the limit is passed."""
    for count, _ in enumerate(_CONTAINER.finditer(raw), start=1):
        if count > limit:
            return True
    return False


def _build(raw: bytes, root: MimePart, state: _State, *, text: str, html: bool) -> Message:
    """Assemble the value from the parsed tree and the decoded body."""
    for defect in root.defects:
        state.defect(_describe_defect(defect))
    headers = _decode_headers(root, state)
    first = _first_values(headers)
    message_id = _message_id(_raw_header(root, "message-id", state))
    if not message_id:
        state.defect("missing Message-ID")
    if not any(name == "from" for name, _ in headers):
        state.defect("missing From")
    return Message(
        key=message_key(message_id, raw),
        message_id=message_id,
        subject=_collapse(first.get("subject", "")),
        sender=_first(_addresses(root, "from", state)),
        reply_to=_addresses(root, "reply-to", state),
        to=_addresses(root, "to", state),
        cc=_addresses(root, "cc", state),
        return_path=_return_path(root, state),
        in_reply_to=_ids(_raw_header(root, "in-reply-to", state)),
        references=_ids(_raw_header(root, "references", state)),
        date=_collapse(first.get("date", "")),
        languages=_languages(first.get("content-language", ""), first.get("accept-language", "")),
        text=text,
        html=html,
        attachments=tuple(state.attachments),
        headers=headers,
        defects=tuple(state.defects),  # dict keys keep insertion order
        size=len(raw),
        embedded_ids=tuple(dict.fromkeys(state.embedded_ids)),
    )


def _first(items: tuple[Address, ...]) -> Address | None:
    return items[0] if items else None


def _first_values(headers: tuple[tuple[str, str], ...]) -> dict[str, str]:
    """First value of every header name (later duplicates do not override)."""
    first: dict[str, str] = {}
    for name, value in headers:
        first.setdefault(name, value)
    return first


# ----------------------------------------------------------------------------------------------
# Headers
# ----------------------------------------------------------------------------------------------

_FOLD = re.compile(r"\r?\n(?=[ \t])|\r(?=[ \t])")
_CONTROLS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f\x80-\x9f\u2028\u2029]+")
_WHITESPACE = re.compile(r"\s+")
_SURROGATE = re.compile("[\udc80-\udcff]")


def _decode_headers(root: MimePart, state: _State) -> tuple[tuple[str, str], ...]:
    """Every top-level header as (lower-cased name, decoded single-line text), in order."""
    out = []
    for name, value in root.raw_items():
        clean_name = _sanitise(_from_8bit(str(name), "header name", state)).strip().lower()
        out.append((clean_name, _header_text(clean_name, value, state)))
    return tuple(out)


def _header_text(name: str, value: object, state: _State) -> str:
    """Unfold, cap, decode 8-bit bytes and RFC 2047 words, then remove control characters."""
    text = _decode_words(_raw_value(name, value, state), state)
    if _CONTROLS.search(text):
        state.defect(f"control characters removed from {name} header")
    return _cap_text(_sanitise(text).strip(), name, state)


def _raw_header(root: MimePart, name: str, state: _State) -> str:
    """First header ``name`` unfolded and capped, 8-bit decoded, encoded-words left alone."""
    for key, value in root.raw_items():
        if str(key).strip().lower() == name:
            return _raw_value(name, value, state)
    return ""


def _raw_all(root: MimePart, name: str, state: _State) -> list[str]:
    return [_raw_value(name, v, state) for k, v in root.raw_items() if str(k).strip().lower() == name]


def _raw_value(name: str, value: object, state: _State) -> str:
    """Unfolded, length-capped header text with raw 8-bit bytes decoded (utf-8, else cp1252)."""
    text = _FOLD.sub("", str(value))
    cap = state.limits.max_header_bytes
    if len(text) > cap:  # one char per input byte here: BytesParser maps bytes to chars
        state.defect(f"{name} header longer than {cap} bytes, truncated")
        text = text[:cap]
    return _from_8bit(text, f"{name} header", state)


def _from_8bit(text: str, where: str, state: _State) -> str:
    """BytesParser keeps non-ASCII header bytes as surrogates; turn them into real text."""
    if not _SURROGATE.search(text):
        return text
    data = text.encode("utf-8", "surrogateescape")
    decoded, codec = _guess_decode(data)
    state.defect(f"8-bit bytes in {where} (decoded as {codec})")
    return decoded


def _cap_text(text: str, name: str, state: _State) -> str:
    """Cap decoded text at max_header_bytes of UTF-8, cutting on a character boundary."""
    cap = state.limits.max_header_bytes
    if len(text) * 4 <= cap or len(text.encode("utf-8", "surrogatepass")) <= cap:
        return text
    state.defect(f"{name} header longer than {cap} bytes, truncated")
    return text.encode("utf-8", "surrogatepass")[:cap].decode("utf-8", "ignore")


def _sanitise(text: str) -> str:
    """Control characters (CR, LF, NUL, C1...) become spaces: no header injection downstream."""
    return _CONTROLS.sub(" ", text.replace("\t", " "))


def _collapse(text: str) -> str:
    return _WHITESPACE.sub(" ", text).strip()


# RFC 2047 encoded word. The charset may carry an RFC 2231 language suffix ("utf-8*es").
_ENCODED_WORD = re.compile(r"=\?([^?\s]+)\?([qQbB])\?([^?]*?)\?=")
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*=*$")


def _decode_words(text: str, state: _State) -> str:
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


def _word_bytes(match: re.Match[str], state: _State) -> str | tuple[str, bytes]:
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


def _join_words(pieces: list[str | tuple[str, bytes]], state: _State) -> list[str]:
    """Merge runs of same-charset words, then decode each run once."""
    out: list[str] = []
    run_charset, run = "", b""
    for piece in pieces + [""]:
        if isinstance(piece, tuple) and piece[0] == run_charset and run:
            run += piece[1]
            continue
        if run or run_charset:
            out.append(_decode_bytes(run, run_charset, state, where="header"))
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


def _addresses(root: MimePart, name: str, state: _State) -> tuple[Address, ...]:
    """Mailboxes of every ``name`` header: addr lower-cased, display name RFC 2047-decoded.

    The raw (still encoded) value is split first, so a comma or bracket inside an encoded
    display name cannot forge an extra address.
    """
    values = _raw_all(root, name, state)
    if not values:
        return ()
    words: list[str] = []
    try:
        pairs = getaddresses([_hide_words(v, words) for v in values])
    except (RecursionError, IndexError, ValueError):
        # _parseaddr recurses on nested comments; a hostile "((((…" must not cost us the mail.
        state.defect(f"unparsable {name} header")
        pairs = [("", m) for v in values for m in _ADDR_FALLBACK.findall(v)]
    pairs = [(_show_words(n, words), _show_words(a, words)) for n, a in pairs]
    return tuple(_address(n, a, state) for n, a in pairs if _sanitise(a).strip())


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


def _address(name: str, addr: str, state: _State) -> Address:
    clean_addr = _WHITESPACE.sub("", _sanitise(addr)).lower()
    return Address(addr=clean_addr, name=_collapse(_sanitise(_decode_words(name, state))))


def _return_path(root: MimePart, state: _State) -> str | None:
    """None without a Return-Path header; "" for the null sender ``<>``; else the address,
    lower-cased (a bare "<MAILER-DAEMON>" is kept as "mailer-daemon")."""
    if not any(str(key).strip().lower() == "return-path" for key in root.keys()):
        return None
    value = _raw_header(root, "return-path", state)
    found = _ADDR_FALLBACK.search(value)
    if found:
        return found.group(0).lower()
    return _WHITESPACE.sub("", _sanitise(value)).strip("<>").lower()


_BRACKETED = re.compile(r"<([^<>]*)>")


def _message_id(value: str) -> str:
    """The first ``<id>`` of the header without brackets or inner spaces; "" when none."""
    ids = _ids(value)
    return ids[0] if ids else ""


def _ids(value: str) -> tuple[str, ...]:
    """Message ids of In-Reply-To / References: bracketed ones, else bare tokens with '@'.

    Junk such as "Your message of Tuesday" or empty ``<>`` is skipped; duplicates are dropped.
    """
    found = [_WHITESPACE.sub("", _sanitise(m)) for m in _BRACKETED.findall(value)]
    if not any(found):
        found = [t.strip("<>,;") for t in value.split() if "@" in t]
    return tuple(dict.fromkeys(i for i in found if i))


_LANGUAGE = re.compile(r"^[a-z]{2,8}$")


def _languages(*values: str) -> tuple[str, ...]:
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


# ----------------------------------------------------------------------------------------------
# Charsets
# ----------------------------------------------------------------------------------------------

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


def _guess_decode(data: bytes) -> tuple[str, str]:
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


def _decode_bytes(data: bytes, charset: str | None, state: _State, *, where: str) -> str:
    """Decode with the declared charset, falling back sensibly; never raises.

    No charset: ASCII, else UTF-8, else Windows-1252 (defect). Unknown charset: ASCII, else valid
    UTF-8, else UTF-8 with replacement characters (defect). Declared charset that does not fit
    the bytes: valid UTF-8 wins (defect "mislabelled"), else replacement characters (defect).
    """
    if data.isascii():
        return data.decode("ascii")
    if not charset:
        text, codec = _guess_decode(data)
        state.defect(f"8-bit {where} text without charset (decoded as {codec})")
        return text
    codec = _codec(charset)
    if codec is None:
        state.defect(f"unknown charset {charset[:40]!r} in {where}")
        return data.decode("utf-8", "replace")  # valid UTF-8 decodes cleanly, the rest is U+FFFD
    return _decode_declared(data, charset, codec, state, where)


def _decode_declared(data: bytes, charset: str, codec: str, state: _State, where: str) -> str:
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


# ----------------------------------------------------------------------------------------------
# Body and attachments
# ----------------------------------------------------------------------------------------------

_BODY_TYPES = ("text/plain", "text/html")


@dataclass
class _Piece:
    """A decoded body fragment; when ``html`` it is still HTML, converted only if chosen
    (the HTML half of a multipart/alternative is never converted: that is the slow part)."""

    text: str
    html: bool

    def readable(self) -> str:
        return html_to_text(self.text) if self.html else self.text


def _body_and_attachments(root: MimePart, state: _State) -> tuple[str, bool]:
    """Readable body text (and whether it came from HTML); fills ``state.attachments``."""
    pieces = [p for p in _walk(root, 0, state) if p.text.strip()]
    text = "\n\n".join(_clean_body(p.readable()) for p in pieces)
    return _clean_body(text), any(p.html for p in pieces)


def _walk(part: MimePart, depth: int, state: _State) -> list[_Piece]:
    """Body pieces of ``part`` in reading order; attachments are recorded on the way.

    A nested ``message/*`` (forwarded mail, delivery status) is one attachment: it is not
    walked, so its own attachments are not listed twice and its text is not taken for ours.
    """
    for defect in part.defects if depth else ():
        state.defect(_describe_defect(defect))
    _repair_8bit_params(part, state)
    ctype = _content_type(part)
    if ctype.startswith("message/"):
        _add_attachment(part, ctype, state)
        return []
    if part.is_multipart():
        return _walk_multipart(part, ctype, depth, state)
    if not _is_body(part, ctype):
        _add_attachment(part, ctype, state)
        return []
    return [_body_piece(part, ctype, state)]


def _repair_8bit_params(part: MimePart, state: _State) -> None:
    """compat32 turns raw 8-bit bytes in Content-Type/-Disposition into U+FFFD when reading
    parameters; store the header back decoded (UTF-8, else cp1252) so file names survive."""
    for name in ("content-type", "content-disposition"):
        value = next((v for k, v in part.raw_items() if str(k).lower() == name), None)
        if isinstance(value, str) and _SURROGATE.search(value):
            part.replace_header(name, _from_8bit(_FOLD.sub("", value), f"{name} header", state))


def _walk_multipart(part: MimePart, ctype: str, depth: int, state: _State) -> list[_Piece]:
    children = _children(part, depth, state)
    if ctype == "multipart/alternative":
        return _best_alternative([_walk(c, depth + 1, state) for c in children])
    pieces: list[_Piece] = []
    for child in children:
        pieces.extend(_walk(child, depth + 1, state))
    return pieces


def _children(part: MimePart, depth: int, state: _State) -> list[MimePart]:
    """Sub-parts still within limits.max_depth and limits.max_parts (defect when cut)."""
    payload = part.get_payload()
    children = [c for c in payload if isinstance(c, MimePart)] if isinstance(payload, list) else []
    if children and depth + 1 > state.limits.max_depth:
        state.defect(f"MIME nesting deeper than {state.limits.max_depth}; deeper parts ignored")
        return []
    room = max(0, state.limits.max_parts - state.parts)
    if len(children) > room:
        state.defect(f"more than {state.limits.max_parts} MIME parts; the rest ignored")
        children = children[:room]
    state.parts += len(children)
    return children


def _best_alternative(choices: list[list[_Piece]]) -> list[_Piece]:
    """Prefer an alternative that is plain text; else the first that has any text."""
    for choice in choices:
        if not any(p.html for p in choice) and any(p.text.strip() for p in choice):
            return choice
    return next((c for c in choices if any(p.text.strip() for p in c)), [])


def _content_type(part: MimePart) -> str:
    return str(part.get_content_type()).lower()


def _is_body(part: MimePart, ctype: str) -> bool:
    """Inline text/plain or text/html without a file name is body; anything else is a file.

    A leaf that claims to be multipart (boundary missing or never found) is read as plain text
    so the words are not lost.
    """
    if ctype.startswith("multipart/"):
        return True
    if ctype not in _BODY_TYPES:
        return False
    disposition = str(part.get("content-disposition", "")).split(";", 1)[0].strip().lower()
    return disposition != "attachment" and not _raw_filename(part)


def _body_piece(part: MimePart, ctype: str, state: _State) -> _Piece:
    data = _payload_bytes(part)
    text = _decode_bytes(data, part.get_content_charset(), state, where="body")
    return _Piece(text, html=ctype == "text/html")


def _payload_bytes(part: MimePart) -> bytes:
    """Transfer-decoded bytes of a leaf (base64 / quoted-printable / uuencode handled leniently)."""
    try:
        data = part.get_payload(decode=True)
    except (binascii.Error, ValueError, LookupError, UnicodeError):
        # Undecodable transfer encoding: the encoded text is still better than nothing.
        data = str(part.get_payload()).encode("utf-8", "surrogateescape")
    return data if isinstance(data, bytes) else b""


_BODY_CONTROLS = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def _clean_body(text: str) -> str:
    """One newline convention, no stray control characters, no leading/trailing blank lines."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BODY_CONTROLS.sub("", text).strip("\n").rstrip()


# ----------------------------------------------------------------------------------------------
# Attachments
# ----------------------------------------------------------------------------------------------

_MAX_FILENAME = 200
_SAFE_EXT = re.compile(r"\.[a-z0-9]{1,10}$")
_TYPE_EXT = {
    "text/plain": ".txt", "text/html": ".html", "text/calendar": ".ics", "text/csv": ".csv",
    "image/png": ".png", "image/jpeg": ".jpg", "image/gif": ".gif", "application/pdf": ".pdf",
    "message/rfc822": ".eml", "application/ms-tnef": ".dat", "application/zip": ".zip",
}


def _add_attachment(part: MimePart, ctype: str, state: _State) -> None:
    """Record one attachment's metadata; its bytes stay in the raw mail."""
    data = _attachment_bytes(part)
    filename = _filename(part, ctype, state)
    number = len(state.attachments) + 1
    digest = hashlib.sha256(data).hexdigest()[:10]
    storage = f"att-{number}-{digest}{_extension(filename, ctype)}"
    state.attachments.append(Attachment(filename=filename, content_type=ctype, size=len(data), storage_name=storage))
    if ctype in _EMBEDDED_TYPES:
        _note_embedded_id(part, data, state)


# A bounce report carries the returned mail (message/rfc822) or just its headers (text/rfc822-headers):
# their Message-ID tells which of our messages bounced (RFC 3464, RFC 6532 for the "global" variants).
_EMBEDDED_TYPES = ("message/rfc822", "message/global", "text/rfc822-headers", "message/global-headers")


def _note_embedded_id(part: MimePart, data: bytes, state: _State) -> None:
    payload = part.get_payload()
    inner = payload[0] if isinstance(payload, list) and payload and isinstance(payload[0], MimePart) else None
    if inner is None:
        try:
            inner = BytesHeaderParser(policy=compat32).parsebytes(data)
        except (LookupError, UnicodeError, ValueError, TypeError):
            return
    message_id = _message_id(_raw_header(inner, "message-id", state))
    if message_id:
        state.embedded_ids.append(message_id)


def _attachment_bytes(part: MimePart) -> bytes:
    """Decoded content; a nested message is serialised back (compat32 parsed it into a tree)."""
    payload = part.get_payload()
    if not isinstance(payload, list):
        return _payload_bytes(part)
    try:
        return b"\n".join(p.as_bytes() for p in payload if isinstance(p, MimePart))
    except (LookupError, UnicodeError, ValueError, TypeError, AttributeError, RecursionError):
        return b""


def _filename(part: MimePart, ctype: str, state: _State) -> str:
    """Decoded (RFC 2231 and RFC 2047) and sanitised file name; "" when none is given."""
    name = _raw_filename(part)
    if not name and ctype == "message/rfc822":
        name = _nested_subject(part, state)
    name = _decode_words(_from_8bit(name, "attachment name", state), state)
    return _sanitise_filename(name)


def _raw_filename(part: MimePart) -> str:
    """The file name parameter (RFC 2231 decoded by compat32), "" when absent or unreadable."""
    try:
        return str(part.get_filename() or "")
    except (LookupError, UnicodeError, ValueError, TypeError):
        return ""


def _nested_subject(part: MimePart, state: _State) -> str:
    """A forwarded message without a file name is shown as '<its subject>.eml'."""
    inner = part.get_payload()
    inner = inner[0] if isinstance(inner, list) and inner else None
    if not isinstance(inner, MimePart):
        return ""
    subject = _collapse(_decode_words(_raw_header(inner, "subject", state), state))
    return f"{subject or 'message'}.eml"


def _sanitise_filename(name: str) -> str:
    """No directories, control characters, leading/trailing dots or spaces; at most 200 chars."""
    name = re.split(r"[/\\]", _sanitise(name))[-1]
    name = _collapse(name).strip(" .")
    if len(name) <= _MAX_FILENAME:
        return name
    stem, dot, ext = name.rpartition(".")
    if dot and 0 < len(ext) <= 10:
        return stem[: _MAX_FILENAME - len(ext) - 1] + "." + ext
    return name[:_MAX_FILENAME]


def _extension(filename: str, ctype: str) -> str:
    """A short [a-z0-9] extension from the sender's name, else one from the content type."""
    found = _SAFE_EXT.search(filename.lower())
    return found.group(0) if found else _TYPE_EXT.get(ctype, ".bin")


# ----------------------------------------------------------------------------------------------
# Defect names
# ----------------------------------------------------------------------------------------------

_DEFECT_TEXT: dict[type, str] = {
    email_errors.NoBoundaryInMultipartDefect: "multipart without boundary parameter",
    email_errors.StartBoundaryNotFoundDefect: "multipart boundary declared but not found in body",
    email_errors.CloseBoundaryNotFoundDefect: "closing MIME boundary missing (message truncated?)",
    email_errors.FirstHeaderLineIsContinuationDefect: "first header line is a continuation line",
    email_errors.MisplacedEnvelopeHeaderDefect: "misplaced envelope 'From ' line among headers",
    email_errors.MissingHeaderBodySeparatorDefect: "malformed header line (missing blank line before body?)",
    email_errors.MultipartInvariantViolationDefect: "multipart type without multipart body",
    email_errors.InvalidMultipartContentTransferEncodingDefect: "invalid transfer encoding on multipart",
    email_errors.InvalidBase64PaddingDefect: "invalid base64 padding",
    email_errors.InvalidBase64CharactersDefect: "invalid base64 characters",
    email_errors.InvalidBase64LengthDefect: "invalid base64 length",
}


def _describe_defect(defect: object) -> str:
    """Human-readable text for an ``email.errors`` defect (class name spelled out if unmapped)."""
    known = _DEFECT_TEXT.get(type(defect))
    if known:
        return known
    words = re.sub(r"(?<!^)(?=[A-Z])", " ", type(defect).__name__.removesuffix("Defect"))
    return f"MIME defect: {words.lower()}"
