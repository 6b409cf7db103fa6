"""Building the RFC 5322 messages we send. Pure: values in, CRLF bytes out.

Every value that may come from inbound mail (subjects, display names) is flattened to one line
before it reaches a header, and :func:`_header` refuses any CR/LF that would still slip through, so
mail content can never inject a header. Built with the email package's compat32 classes: the modern
``EmailMessage`` API produced the same bytes about ten times slower (see ``../shared/dev/perf.md``).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr

from .loops import LOOP_HEADER, can_write_to

LOOP_HEADER_NAME = LOOP_HEADER.title()  # X-Helpdeskd-Loop

_SMTP = compat32.clone(linesep="\r\n", max_line_length=998)  # fold only RFC 2047 words (Header)
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP  # readable in a raw view, unlike base64; 8-bit free for any relay


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
    msg = _body(rendered)
    _header(msg, "From", _address(from_name, from_addr))
    _header(msg, "To", _address(to_name, to_addr))
    _header(msg, "Subject", _encoded(one_line(rendered.subject)))
    _header(msg, "Date", format_datetime(date))
    _header(msg, "Message-ID", f"<{message_id}>")
    if in_reply_to:
        _header(msg, "In-Reply-To", f"<{in_reply_to}>")
    refs = [r for r in references if r][-20:]
    if refs:
        _header(msg, "References", " ".join(f"<{r}>" for r in refs))
    if reply_to:
        _header(msg, "Reply-To", _address(from_name, reply_to))
    if auto_submitted != "no":  # a staff answer is a person's mail; everything else is automatic
        _header(msg, "Auto-Submitted", auto_submitted)
        _header(msg, "Precedence", "bulk")
    _header(msg, "X-Auto-Response-Suppress", "All")
    _header(msg, LOOP_HEADER_NAME, from_addr)
    return msg.as_bytes(policy=_SMTP)


def _body(rendered: Rendered) -> Message:
    text = MIMEText(rendered.text, "plain", _UTF8_QP)
    if rendered.html is None:
        return text
    alternative = MIMEMultipart("alternative")
    alternative.attach(text)
    alternative.attach(MIMEText(rendered.html, "html", _UTF8_QP))
    return alternative


def _header(msg: Message, name: str, value: str | Header) -> None:
    if "\r" in str(value) or "\n" in str(value):
        raise ValueError(f"refusing a {name} header value with a line break")
    msg[name] = value


def _encoded(text: str) -> str | Header:
    """Non-ASCII text as RFC 2047 words, which the generator folds at 76 characters; ASCII as is."""
    return text if text.isascii() else Header(text, "utf-8")


def _address(name: str, addr: str) -> str:
    if not can_write_to(addr):
        raise ValueError(f"refusing an unusable address {addr!r}")
    return formataddr((one_line(name, 200), addr), charset="utf-8")
