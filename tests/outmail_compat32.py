"""The former ``helpdeskd.outmail.compose`` (before commit "outmail: write outgoing mail directly"),
built with the email package's compat32 classes. Kept as a reference: ``tests/test_outmail.py``
checks that the new ``compose`` decodes to the same values, and ``bench/compose.py`` times both.
"""

from __future__ import annotations

from datetime import datetime
from email.charset import QP, Charset
from email.header import Header
from email.message import Message
from email.mime.multipart import MIMEMultipart
from email.mime.text import MIMEText
from email.policy import compat32
from email.utils import format_datetime, formataddr

from helpdeskd.loops import can_write_to
from helpdeskd.outmail import LOOP_HEADER_NAME, Rendered, one_line

_SMTP = compat32.clone(linesep="\r\n", max_line_length=998)  # fold only RFC 2047 words (Header)
_UTF8_QP = Charset("utf-8")
_UTF8_QP.body_encoding = QP  # readable in a raw view, unlike base64; 8-bit free for any relay


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
