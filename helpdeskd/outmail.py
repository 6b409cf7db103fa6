"""Building the RFC 5322 messages we send. Pure: values in, CRLF bytes out.

Every value that may come from inbound mail (subjects, display names) is flattened to one line
before it reaches a header, and the email package refuses any CR/LF that would still slip through,
so mail content can never inject a header.
"""

from __future__ import annotations

from email.headerregistry import Address as HeaderAddress
from email.message import EmailMessage
from email.policy import SMTP
from email.utils import format_datetime
from datetime import datetime

from .loops import LOOP_HEADER
from .templates import Rendered


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
) -> bytes:
    """A UTF-8 MIME message (text, plus HTML alternative when given), with CRLF line endings."""
    msg = EmailMessage(policy=SMTP)
    msg["From"] = _address(from_name, from_addr)
    msg["To"] = _address(to_name, to_addr)
    msg["Subject"] = one_line(rendered.subject)
    msg["Date"] = format_datetime(date)
    msg["Message-ID"] = f"<{message_id}>"
    if in_reply_to:
        msg["In-Reply-To"] = f"<{in_reply_to}>"
    refs = [r for r in references if r][-20:]
    if refs:
        msg["References"] = " ".join(f"<{r}>" for r in refs)
    msg["Auto-Submitted"] = auto_submitted
    msg["Precedence"] = "bulk" if auto_submitted != "no" else "normal"
    msg["X-Auto-Response-Suppress"] = "All"
    msg[LOOP_HEADER] = from_addr
    msg.set_content(rendered.text, charset="utf-8")
    if rendered.html is not None:
        msg.add_alternative(rendered.html, subtype="html", charset="utf-8")
    return msg.as_bytes()


def _address(name: str, addr: str) -> HeaderAddress:
    local, _, domain = addr.partition("@")
    return HeaderAddress(display_name=one_line(name, 200), username=local, domain=domain)
