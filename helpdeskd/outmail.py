"""Building the RFC 5322 messages we send. Pure: values in, CRLF bytes out (the same values give the
same bytes).

Every value that may come from inbound mail (subjects, display names) is flattened to one line
before it reaches a header, and any CR/LF that would still slip through (Message-IDs, references,
Auto-Submitted) is refused with ``ValueError``, so mail content can never inject a header.

Written out directly, not with the email package. Its compat32 generator re-folded every header
through ``email.header.Header`` and QP-encoded bodies byte by byte in Python: ~0.4 ms a mail
(``bench/compose.py``; ~1.5 ms for a new ticket's two mails under cProfile), the largest CPU cost
of filing a ticket (``EmailMessage`` was slower still). The mail we send has one fixed shape, so it
is assembled here as CRLF lines, about 10x faster, and it is more correct than what the generator
made: no line over 998 octets, no encoded word over 75 characters, and ASCII text that merely
looks like an encoded word is encoded instead of being misread. What is done and why:

- **Headers.** ASCII text is written as it is, folded at its spaces so that lines stay within 78
  characters where a word allows it. Runs of words that cannot stand as they are (non-ASCII,
  control characters, ``=?``; in a display name, anything but an RFC 5322 atom) become RFC 2047
  encoded words, the spaces inside a run encoded with it, Q or B whichever is shorter (as the
  email package chooses), at most 75 characters each (the first one short enough to fit on the
  header's first line) and never splitting a character. Display names that are plain ASCII go
  through ``formataddr``, which quotes them when needed. The encoded words are made here, not by
  ``email.header.Header``, which took ~0.15 ms for one Spanish subject, more than this whole
  function; and ``formataddr(charset=...)`` makes a single encoded word of any length (a long name
  made a line over 998 octets). Message-IDs from inbound mail that cannot be written as a msg-id in
  7-bit mail (non-ASCII, spaces, brackets, over 900 characters) are left out of In-Reply-To and
  References: no client could match them, and a long one would break the line limit. A line that
  still does not fit in 998 octets (only an absurdly long address can make one) is refused with
  ``ValueError``, like an unusable address.
- **Bodies.** text/plain (and text/html) in UTF-8, line ends as CRLF. A body is written as it is
  (``7bit`` when ASCII, else ``8bit``, sent with ``BODY=8BITMIME``) where that is safe: every line
  within 998 octets, no NUL, no line starting with ``From `` (mbox delivery would rewrite it to
  ``>From ``) or with ``--=_`` (the start of our boundaries). A single part written as it is ends
  with a line break (one is added to a text without; SMTP would add it anyway). Otherwise, and for
  a server without 8BITMIME (:func:`seven_bit`, at sending), it is quoted-printable, by
  ``binascii.b2a_qp`` (C), which costs several times more on accented text.
  For quoted-printable, the text is first normalised to CRLF and one CRLF is appended: b2a_qp writes
  every line end, soft ones included, in the style of the first line end it finds (LF when there is
  none, so a one-line body would get ``=\\n`` soft breaks), and leaves a bare CR as it is. It
  encodes ``=``, control and 8-bit bytes, trailing spaces and tabs, and a lone ``.`` line; but a
  trailing space turned into ``=20`` can make a 77-character line, a soft break can leave a lone
  ``.`` on a line, and ``From `` at the start of a line stays as it is (mbox delivery would rewrite
  it to ``>From ``). So a cheap check follows, and the rare lines concerned are mended: ``=46rom``,
  ``=2E``, one more soft break. Decoded, each quoted-printable part is exactly the text given, line
  ends as CRLF; a single-part mail whose text does not end with a line break ends with a soft break,
  so that the bytes still end in CRLF.
- **Multipart.** With HTML, multipart/alternative (text first, then HTML). The boundary starts with
  ``=_``, which quoted-printable output can never contain (``=`` is only ever followed by two hex
  digits or a line end), and a body written as it is has no line starting with ``--=_``, so no part
  can contain it and there is nothing to retry. Its rest is derived from the Message-ID rather than
  random: unique per mail, and ``compose`` stays pure.
"""

from __future__ import annotations

import functools
import hashlib
import re
from binascii import b2a_base64, b2a_qp
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from email.utils import format_datetime, formataddr

from .loops import LOOP_HEADER, can_write_to

LOOP_HEADER_NAME = LOOP_HEADER.title()  # X-Helpdeskd-Loop

_FOLD_AT = 78  # RFC 5322 2.1.1: lines SHOULD be no longer, and MUST NOT exceed 998 characters
_MAX_LINE = 998
_QP_LINE = 76  # RFC 2045 6.7: encoded lines are at most 76 characters, the soft break's "=" included
_MAX_ID = 900
_WRITABLE_ID = re.compile(r"[!-;=?-~]+")  # printable ASCII without space, "<" and ">"
_ATOM = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+")  # RFC 5322 atext

# RFC 2047 5(3): in a phrase, Q-encoded text may only hold letters, digits and !*+-/ (plus "=" and "_")
_Q_SAFE = b"!*+-/0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_Q_ASCII = {chr(b): chr(b) if b in _Q_SAFE else "_" if b == 0x20 else f"={b:02X}" for b in range(128)}
_FRAME = len("=?utf-8?q??=")  # RFC 2047 2: an encoded word, this included, is at most 75 characters


@dataclass(frozen=True)
class Rendered:
    """A rendered template: what a mail says, before it becomes one."""

    subject: str
    text: str
    html: str | None


def one_line(value: str, limit: int = 900) -> str:
    """Collapse all whitespace (CR/LF included) and cap the length: safe for a header."""
    return " ".join(value.split())[:limit]


def compose(
    rendered: Rendered,
    *,
    from_name: str,
    from_addr: str,
    to_name: str,
    to_addr: str,
    message_id: str,
    in_reply_to: str = "",
    references: tuple[str, ...] = (),
    auto_submitted: str = "auto-replied",
    date: datetime,
    reply_to: str = "",
) -> bytes:
    """A UTF-8 MIME message (text, plus HTML alternative when given), with CRLF line endings."""
    for name, value in (("Message-ID", message_id), ("In-Reply-To", in_reply_to),
                        ("Auto-Submitted", auto_submitted), *(("References", r) for r in references)):
        if "\r" in value or "\n" in value:
            raise ValueError(f"refusing a {name} header value with a line break")
    if not _writable_id(message_id):
        raise ValueError(f"refusing an unwritable Message-ID {message_id!r}")
    head = [
        _fold("From", _address(from_name, from_addr, _room("From"))),
        _fold("To", _address(to_name, to_addr, _room("To"))),
        _fold("Subject", _text(one_line(rendered.subject), _room("Subject"))),
        "Date: " + _date(date),
        _fold("Message-ID", [f"<{message_id}>"]),
    ]
    if _writable_id(in_reply_to):
        head.append(_fold("In-Reply-To", [f"<{in_reply_to}>"]))
    refs = [f"<{r}>" for r in references if _writable_id(r)][-20:]
    if refs:
        head.append(_fold("References", refs))
    if reply_to:
        head.append(_fold("Reply-To", _address(from_name, reply_to, _room("Reply-To"))))
    if auto_submitted != "no":  # a staff answer is a person's mail; everything else is automatic
        head.append(_fold("Auto-Submitted", _text(auto_submitted, _room("Auto-Submitted"))))
        head.append("Precedence: bulk")
    head.append("X-Auto-Response-Suppress: All")
    head.append(f"{LOOP_HEADER_NAME}: {from_addr}")  # can_write_to accepted it for From
    head.append("MIME-Version: 1.0")
    if rendered.html is None:
        encoding, body = _body(rendered.text, single=True)
        head.append(_part_head("plain", encoding))
        return ("\r\n".join(head) + "\r\n\r\n").encode("ascii") + body
    boundary = "=_hd" + hashlib.sha256(message_id.encode("ascii")).hexdigest()[:32]
    head.append(_fold("Content-Type", ["multipart/alternative;", f'boundary="{boundary}"']))
    delimiter = f"\r\n--{boundary}\r\n".encode("ascii")
    parts = [(subtype, *_body(text, single=False)) for subtype, text in (("plain", rendered.text),
                                                                         ("html", rendered.html))]
    return b"".join((
        ("\r\n".join(head) + "\r\n").encode("ascii"),  # the delimiter's CRLF ends the header block
        *(piece for subtype, encoding, body in parts
          for piece in (delimiter, _part_head(subtype, encoding).encode("ascii"), b"\r\n\r\n", body)),
        f"\r\n--{boundary}--\r\n".encode("ascii"),
    ))


def _part_head(subtype: str, encoding: str) -> str:
    return f"Content-Type: text/{subtype}; charset=utf-8\r\nContent-Transfer-Encoding: {encoding}"


def _body(text: str, *, single: bool) -> tuple[str, bytes]:
    """A part's transfer encoding and body (see the module docstring). ``single``: the body ends the
    message (it must then end with a line break, written or soft)."""
    if "\r" in text:  # CRLF, then bare CR, as LF; then every LF as CRLF (see the module docstring)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.replace("\n", "\r\n").encode("utf-8")
    if (b"\x00" not in data and not data.startswith((b"From ", b"--=_")) and b"\nFrom " not in data
            and b"\n--=_" not in data and max(map(len, data.split(b"\r\n"))) <= _MAX_LINE):
        if single and data and not data.endswith(b"\r\n"):
            data += b"\r\n"
        return ("7bit" if data.isascii() else "8bit"), data
    return "quoted-printable", _quoted(text, single=single)


def _quoted(text: str, *, single: bool) -> bytes:
    """``text`` quoted-printable; a single part's ends in CRLF (a soft break where the text had none)."""
    body = _qp(text)
    return _ending_in_crlf(body) if single else body


def seven_bit(data: bytes) -> bytes:
    """A message :func:`compose` made, for a server without 8BITMIME: each ``8bit`` part made
    quoted-printable (it decodes to the same text; a single part keeps the line break it ended
    with), the rest left as it is. Anything else is returned as it is."""
    if data.isascii():
        return data
    head, blank, body = data.partition(b"\r\n\r\n")
    if not blank:
        return data
    found = _BOUNDARY.search(head)
    if found is None:
        return _seven_bit_part(head, body, single=True)
    delimiter, close = b"\r\n--" + found[1] + b"\r\n", b"\r\n--" + found[1] + b"--\r\n"
    inner, closed, epilogue = (b"\r\n" + body).partition(close)  # (the CRLF the first delimiter begins with)
    if not closed:
        return data
    first, *parts = inner.split(delimiter)
    parts = [_seven_bit_part(*part.partition(b"\r\n\r\n")[::2], single=False) for part in parts]
    return head + b"\r\n" + first + b"".join(delimiter + part for part in parts) + close + epilogue


_BOUNDARY = re.compile(rb'\r\nContent-Type: multipart/alternative;\r?\n? boundary="([^"]+)"')
_EIGHT_BIT = b"\r\nContent-Transfer-Encoding: 8bit"


def _seven_bit_part(head: bytes, body: bytes, *, single: bool) -> bytes:
    try:
        text = body.decode("utf-8") if head.endswith(_EIGHT_BIT) else None
    except UnicodeDecodeError:  # not what compose makes: left for the server to judge
        text = None
    if text is None:
        return head + b"\r\n\r\n" + body
    return (head[:-len(_EIGHT_BIT)] + b"\r\nContent-Transfer-Encoding: quoted-printable\r\n\r\n"
            + _quoted(text, single=single))  # (the same text: as it is, a single part ends with a line break)


# -- headers ------------------------------------------------------------------------------------------

def _date(when: datetime) -> str:
    """The Date header's value. In UTC (the daemon's clock) mail of the same second shares one."""
    if when.tzinfo is timezone.utc:
        return _utc_date(when.replace(microsecond=0))
    return format_datetime(when)  # (a cache keyed by instants would mix up zones and repeated hours)


@functools.lru_cache(maxsize=16)
def _utc_date(when: datetime) -> str:
    return format_datetime(when)


def _fold(name: str, words: list[str]) -> str:
    """``Name: words`` folded at the spaces between words so lines stay within 78 characters where a
    word allows it (a word is never split); refused if a line would exceed 998."""
    line = f"{name}: {' '.join(words)}" if words else name + ":"
    if len(line) <= _FOLD_AT:
        return line
    lines: list[str] = []
    line = name + ":"
    for word in words:
        if len(line) + 1 + len(word) > _FOLD_AT and line != name + ":":
            lines.append(line)
            line = ""
        line += " " + word
    lines.append(line)
    if any(len(line) > _MAX_LINE for line in lines):
        raise ValueError(f"refusing a {name} header longer than {_MAX_LINE} characters on a line")
    return "\r\n".join(lines)


def _room(name: str) -> int:
    """How long the first word of a header may be to fit on the header's first line."""
    return _FOLD_AT - len(name) - 2


def _plain(text: str) -> bool:
    """Text that can stand in a header as it is: printable ASCII that does not look like RFC 2047."""
    return text.isascii() and text.isprintable() and "=?" not in text


def _atom(word: str) -> bool:
    """A word that can stand in a phrase (a display name) as it is."""
    return _ATOM.fullmatch(word) is not None and "=?" not in word


def _text(value: str, room: int, raw: Callable[[str], bool] = _plain) -> list[str]:
    """The words of ``value`` (single spaces, as from :func:`one_line`): those ``raw`` accepts as they
    are, each run of others as encoded words, the spaces inside the run encoded with it (RFC 2047
    6.2: space between two encoded words is not text). The first word, if encoded, is at most
    ``room`` characters long."""
    if raw is _plain and _plain(value):
        return value.split(" ") if value else []
    words: list[str] = []
    run: list[str] = []
    for word in [*value.split(" "), ""]:  # the empty word ends the last run
        if word and not raw(word):
            run.append(word)
            continue
        if run:
            words += _encoded_words(" ".join(run), room if not words else 75)
            run = []
        if word:
            words.append(word)
    return words


def _encoded_words(text: str, first: int) -> list[str]:
    """``text`` as RFC 2047 UTF-8 encoded words of at most 75 characters (the first at most
    ``first``), Q or B, whichever is shorter."""
    data = text.encode("utf-8")
    q_size = len(data) + 2 * len(data.translate(None, _Q_SAFE + b" "))
    if q_size > (len(data) + 2) // 3 * 4:
        return _b_words(data, first)
    words: list[str] = []
    word = ""
    room = min(first, 75) - _FRAME
    for ch in text:
        piece = _Q_ASCII.get(ch) or "".join(f"={b:02X}" for b in ch.encode("utf-8"))
        if len(word) + len(piece) > room and word:
            words.append(f"=?utf-8?q?{word}?=")
            word, room = "", 75 - _FRAME
        word += piece
    words.append(f"=?utf-8?q?{word}?=")
    return words


def _b_words(data: bytes, first: int) -> list[str]:
    words: list[str] = []
    start = 0
    room = (min(first, 75) - _FRAME) // 4 * 3  # bytes: every 3 make 4 base64 characters
    while start < len(data):
        end = min(start + room, len(data))
        room = (75 - _FRAME) // 4 * 3
        while end < len(data) and 0x80 <= data[end] < 0xC0:  # never split a character's bytes
            end -= 1
        words.append(f"=?utf-8?b?{b2a_base64(data[start:end], newline=False).decode('ascii')}?=")
        start = end
    return words


def _address(name: str, addr: str, room: int) -> list[str]:
    if not can_write_to(addr):
        raise ValueError(f"refusing an unusable address {addr!r}")
    name = one_line(name, 200)
    if not name:
        return [addr]
    if _plain(name):
        return formataddr((name, addr)).split(" ")  # quoted when needed; folding in quotes is FWS
    # Atoms stay as they are between encoded words, so a long name seldom needs two encoded words
    # in a row (the address parser of Python 3.11's email package shows a space between those: gh-128110).
    return [*_text(name, room, _atom), f"<{addr}>"]


def _writable_id(value: str) -> bool:
    return len(value) <= _MAX_ID and _WRITABLE_ID.fullmatch(value) is not None


# -- bodies -------------------------------------------------------------------------------------------

def _qp(text: str) -> bytes:
    """``text`` quoted-printable with CRLF line ends; ends in CRLF only when ``text`` ends in a line
    break. Lines are at most 76 characters, none is a lone ``.``, none starts with ``From ``."""
    if "\r" in text:  # CRLF, then bare CR, as LF; then every LF as CRLF (see the module docstring)
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    data = text.replace("\n", "\r\n").encode("utf-8") + b"\r\n"
    out = b2a_qp(data, istext=True)
    if (max(map(len, out.split(b"\r\n"))) > _QP_LINE or out.startswith((b"From ", b".\r\n"))
            or b"\nFrom " in out or b"\n.\r\n" in out):
        out = b"\r\n".join(piece for line in out.split(b"\r\n") for piece in _mend(line))
    return out[:-2]


def _mend(line: bytes) -> list[bytes]:
    """One QP line as lines of at most 76 characters, none a lone "." or starting with "From "."""
    pieces = []
    while True:
        if line.startswith(b"From "):
            line = b"=46" + line[1:]
        elif line == b".":
            line = b"=2E"
        if len(line) <= _QP_LINE:
            pieces.append(line)
            return pieces
        cut = _cut(line, _QP_LINE - 1)
        pieces.append(line[:cut] + b"=")
        line = line[cut:]


def _cut(line: bytes, at: int) -> int:
    """The last position <= ``at`` that does not split an ``=XX`` escape."""
    while b"=" in line[at - 2:at]:
        at -= 1
    return at


def _ending_in_crlf(body: bytes) -> bytes:
    """A single part's QP body as the end of a message: with a final soft break if it has no line end."""
    if not body or body.endswith(b"\r\n"):
        return body
    end = body.rfind(b"\r\n")
    last = end + 2 if end >= 0 else 0  # where the last line starts
    if len(body) - last < _QP_LINE:
        return body + b"=\r\n"
    cut = _cut(body, last + _QP_LINE - 1)
    return body[:cut] + b"=\r\n" + body[cut:] + b"=\r\n"
