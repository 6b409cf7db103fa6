"""SMTP client adapter (layer 2): the stdlib ``smtplib``, blocking, run by the sender in a worker thread.

Why smtplib and not an asyncio client: the sender handles one message at a time on one reused
connection, so a thread costs nothing the event loop would notice, and smtplib is in the standard
library (no new dependency on the delivery path). Every network operation has a timeout.

Everything smtplib, ``ssl`` and the socket layer raise is translated here:

- :class:`ConnectionFailed` (a :class:`TransientError`): no usable session — refused, timed out,
  TLS verification failed, no STARTTLS offered, login refused, password unreadable. It says nothing
  about any one message, so the sender defers the rest of its pass.
- :class:`TransientError`: this message, this time (a 4xx answer, the connection dropped mid-way).
- :class:`PermanentError`: the server refused this message for good (a 5xx answer).
"""

from __future__ import annotations

import os
import smtplib
import ssl
from collections.abc import Mapping

from .errors import ConfigError, PermanentError, TransientError
from .outmail import seven_bit
from .passwords import read_password
from .settings import Smtp
from .tls import verified_context


class ConnectionFailed(TransientError):
    """No SMTP session could be opened; nothing was tried for any message."""


def resolve_password(smtp: Smtp, environ: Mapping[str, str] = os.environ) -> str | None:
    """The login password from its configured source, or None when no login is configured.

    Raises ConfigError when the source is configured but unusable (missing variable, unreadable file,
    no ``$CREDENTIALS_DIRECTORY``). A trailing newline in a file is not part of the password.
    """
    try:
        return read_password(smtp.password_file, smtp.password_env, smtp.password_credential, what="smtp",
                             environ=environ)
    except PermanentError as exc:
        raise ConfigError([str(exc)]) from exc


def tls_context(smtp: Smtp) -> ssl.SSLContext:
    """The verifying context for the next hop (see :mod:`helpdeskd.tls`); an unusable ``ca_file`` is a
    failed connection (the messages wait), not a failed message."""
    try:
        return verified_context(smtp.ca_file)
    except PermanentError as exc:
        raise ConnectionFailed(f"smtp.{exc}") from exc


class SmtpSession:
    """One SMTP session, opened lazily and reused for many messages; ``close()`` ends it politely."""

    def __init__(self, smtp: Smtp, password: str | None) -> None:
        self.settings = smtp
        self.password = password
        self._client: smtplib.SMTP | None = None

    def send(self, sender: str, recipients: list[str], data: bytes) -> None:
        """Hand one message to the server. Returns only when the server accepted it (250 after DATA).

        ``data`` must already have CRLF line endings (smtplib sends bytes as they are).
        """
        client = self._client or self._open()
        if not data.isascii() and not client.has_extn("8bitmime"):
            data = seven_bit(data)  # (our 8-bit bodies; what is not ours, or not a body, stays as it is)
        try:
            client.sendmail(sender, recipients, data, mail_options=_mail_options(client, recipients, data))
        except smtplib.SMTPRecipientsRefused as exc:
            self._reset()
            code, text = next(iter(exc.recipients.values()))
            raise _by_code(code, text, "recipient refused") from exc
        except smtplib.SMTPResponseException as exc:  # sender refused, data refused, ...
            self._reset()
            raise _by_code(exc.smtp_code, exc.smtp_error, "refused") from exc
        except UnicodeError as exc:  # an address smtplib cannot write: no retry can help this message
            self._reset()
            raise PermanentError(f"cannot be sent as is: {exc}") from exc
        except (smtplib.SMTPException, OSError) as exc:  # dropped connection, timeout mid-message
            self._drop()
            raise TransientError(f"connection lost while sending: {_describe(exc)}") from exc

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            try:
                client.quit()
            except (smtplib.SMTPException, OSError):
                client.close()  # the server went away first; nothing is lost, the message state is on disk

    # -- connection ------------------------------------------------------------------------------
    def _open(self) -> smtplib.SMTP:
        s = self.settings
        try:
            client = self._connect()
        except smtplib.SMTPAuthenticationError as exc:
            raise ConnectionFailed(f"login as {s.user} refused: {exc.smtp_code} {_text(exc.smtp_error)}") from exc
        except (smtplib.SMTPException, OSError) as exc:  # ssl.SSLError is an OSError
            raise ConnectionFailed(f"cannot open an SMTP session with {s.host}:{s.port}: {_describe(exc)}") from exc
        self._client = client
        return client

    def _connect(self) -> smtplib.SMTP:
        """A ready session: connected, TLS up (implicit or STARTTLS), logged in when configured."""
        s = self.settings
        if s.security == "tls":
            client = smtplib.SMTP_SSL(s.host, s.port, local_hostname=s.helo_name, timeout=s.timeout_seconds,
                                      context=tls_context(s))
        else:
            client = smtplib.SMTP(s.host, s.port, local_hostname=s.helo_name, timeout=s.timeout_seconds)
        try:
            if s.security == "starttls":
                self._starttls(client)
            if s.user:
                client.login(s.user, self.password or "")
            client.ehlo_or_helo_if_needed()  # (done already with TLS or a login): the extensions are known
        except BaseException:
            client.close()  # never leak a half-open socket; the caller translates the error
            raise
        return client

    def _starttls(self, client: smtplib.SMTP) -> None:
        s = self.settings
        client.ehlo()
        if not client.has_extn("starttls"):
            raise ConnectionFailed(f"{s.host}:{s.port} does not offer STARTTLS; refusing to send in clear text")
        client.starttls(context=tls_context(s))
        client.ehlo()

    def _reset(self) -> None:
        """After a refusal the session is still good: RSET it for the next message, or drop it."""
        try:
            if self._client is not None:
                self._client.rset()
        except (smtplib.SMTPException, OSError):
            self._drop()

    def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _mail_options(client: smtplib.SMTP, recipients: list[str], data: bytes) -> list[str]:
    """BODY=8BITMIME for 8-bit bodies, SMTPUTF8 for non-ASCII addresses, when the server offers them."""
    options = []
    if not data.isascii() and client.has_extn("8bitmime"):
        options.append("BODY=8BITMIME")
    if not all(r.isascii() for r in recipients) and client.has_extn("smtputf8"):
        options.append("SMTPUTF8")
    return options


def _by_code(code: int, text: bytes | str, what: str) -> TransientError | PermanentError:
    """RFC 5321: 4xx means try again later, 5xx means never; anything else is treated as temporary."""
    message = f"{what}: {code} {_text(text)}"
    return PermanentError(message) if 500 <= code < 600 else TransientError(message)


def _text(value: bytes | str) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return " ".join(text.split())[:300]


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
