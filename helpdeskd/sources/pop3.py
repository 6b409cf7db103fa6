"""A POP3 mailbox as an intake: the protocol client, TLS, credentials and error translation.

This module only speaks POP3; what to do with the mail (the order RETR → file → ledger → DELE) is
:mod:`helpdeskd.gateway`'s. It is blocking on purpose: the daemon runs one session at a time per
mailbox in its own thread (see the README, "POP3 gateway"), and every socket has a timeout.

Contracts:

* Certificates are always verified with ``ssl.create_default_context()`` — poplib's own default
  context does not verify. With ``pop3`` the password is sent only after STLS succeeded, unless the
  mailbox explicitly allows plaintext.
* Every library error leaves this module as :class:`TransientError` (try again later: refused,
  timeout, connection cut, server hiccup) or :class:`PermanentError` (an admin must act: bad
  password, untrusted certificate, no STLS, missing password source); the message names the cause.
* Nothing is deleted unless :meth:`Pop3Session.quit` succeeds (RFC 1939: DELE marks, QUIT commits).
  :meth:`Pop3Session.abort` sends RSET then QUIT, so marks made before an error are undone.
"""

from __future__ import annotations

import io
import poplib
import re
import socket
import ssl
from dataclasses import dataclass

from ..errors import PermanentError, TransientError
from ..passwords import read_password
from ..settings import Pop3
from ..tls import verified_context

MAX_LINE = 1024 * 1024  # poplib's own limit (2,048 bytes) refuses real mail with long lines
PIPELINE_MAX = 64  # commands sent before reading answers; small enough never to fill a socket buffer


@dataclass(frozen=True)
class Listed:
    """One message as the server lists it: its number in this session, size, and UIDL (None if unsupported)."""

    number: int
    size: int
    uid: str | None


def password(cfg: Pop3) -> str:
    """The login password (see :mod:`helpdeskd.passwords`); PermanentError names an unusable source."""
    value = read_password(cfg.password_file, cfg.password_env, cfg.password_credential, what="mailbox")
    if value is None:
        raise PermanentError("mailbox: no password source configured")
    return value


class _Client(poplib.POP3):
    """poplib with our socket (timeouts, source address, implicit TLS) and a bounded bulk reader."""

    def __init__(self, cfg: Pop3, context: ssl.SSLContext | None) -> None:
        self._cfg, self._context = cfg, context
        super().__init__(cfg.host, cfg.port, timeout=cfg.connect_timeout)
        self._tls_established = cfg.implicit_tls
        self.sock.settimeout(cfg.read_timeout)

    def _create_socket(self, timeout: float) -> socket.socket:
        source = (self._cfg.source_address, 0) if self._cfg.source_address else None
        sock = socket.create_connection((self.host, self.port), timeout, source_address=source)
        if not self._cfg.implicit_tls:
            return sock
        try:
            return self._context.wrap_socket(sock, server_hostname=self.host)  # type: ignore[union-attr]
        except BaseException:
            sock.close()
            raise

    def _getline(self) -> tuple[bytes, int]:
        line = self.file.readline(MAX_LINE + 1)
        if len(line) > MAX_LINE:
            raise poplib.error_proto("line too long")
        if not line:
            raise poplib.error_proto("-ERR EOF")
        return line.rstrip(b"\r\n"), len(line)

    def multiline(self, cap: int) -> tuple[bytes, bool]:
        return read_multiline(self.file, cap)

    def send_all(self, commands: list[bytes]) -> None:
        self.sock.sendall(b"".join(c + b"\r\n" for c in commands))

    def status(self) -> tuple[bool, bytes]:
        line, _ = self._getline()
        return line.startswith(b"+"), line


_END = re.compile(rb"\n\.\r?\n")  # the line holding only a dot, which ends a multi-line answer


def read_multiline(file: io.BufferedReader, cap: int) -> tuple[bytes, bool]:
    """The body of a multi-line answer exactly as sent (line ends kept, dots unstuffed), read from
    ``file`` (the connection's buffered reader; what follows the answer stays in its buffer).

    Keeps nothing of an answer longer than ``cap`` bytes (unstuffed) but always reads to the end,
    so the session stays in step; the flag says whether it was dropped. The answer is taken as the
    buffer holds it, not a line at a time: a ~4 KB message is one or two searches, not ~55 reads.
    """
    parts, held, dots, tail = [], 0, 0, b"\n"  # tail: the last bytes read (at first, the status line's end)
    while True:
        data = file.peek(1)  # what the buffer holds (one read from the socket if it held nothing)
        if not data:
            raise poplib.error_proto("-ERR EOF in a multi-line answer")
        found = _END.search(tail + data[:4])  # a dot line that began in the bytes read before
        if found is not None:
            end = found.end() - len(tail)
        elif (found := _END.search(data)) is not None:
            end = found.end()
        else:
            end = len(data)
        chunk = file.read(end)
        # held - dots: the body's size once unstuffed, plus what is left of the end line ("\r\n")
        held += len(chunk)
        dots += chunk.count(b"\n.") + (tail[-1:] == b"\n" and chunk[:1] == b".")  # dots that start lines
        if held - dots <= cap + 2:
            parts.append(chunk)
        if found is not None:
            break
        tail = (tail + chunk)[-4:]
    if held - dots > cap + 2:
        return b"", True
    body = b"".join(parts)
    body = body[:len(body) - (found.end() - found.start() - 1)]  # the dot line, after its "\n"
    body = (body[1:] if body.startswith(b".") else body).replace(b"\n.", b"\n")  # a line's first dot
    return (b"", True) if len(body) > cap else (body, False)


class Pop3Session:
    """One authenticated POP3 session. Use :func:`connect`; end with :meth:`quit` or :meth:`abort`."""

    def __init__(self, client: _Client, pipelining: bool) -> None:
        self._client = client
        self.pipelining = pipelining

    def listing(self) -> tuple[list[Listed], bool]:
        """Every message with size and UIDL; the flag is False when the server has no UIDL."""
        sizes = {n: s for n, s in self._pairs("LIST")}
        try:
            uids: dict[int, str] | None = {n: u for n, u in self._pairs("UIDL")}
        except poplib.error_proto:
            uids = None  # RFC 1939 makes UIDL optional; callers fall back to message keys
        except OSError as exc:
            raise _translate(exc, "UIDL") from exc
        return [Listed(n, int(s), uids.get(n) if uids else None) for n, s in sizes.items()], uids is not None

    def _pairs(self, command: str) -> list[tuple[int, str]]:
        try:
            _, lines, _ = self._client._longcmd(command)
        except poplib.error_proto:
            if command == "UIDL":
                raise
            raise TransientError(f"{command} refused by the server") from None
        except OSError as exc:
            raise _translate(exc, command) from exc
        pairs = []
        for line in lines:
            number, _, value = line.decode("ascii", "replace").partition(" ")
            pairs.append((int(number), value.strip()))
        return pairs

    def retrieve(self, numbers: list[int], cap: int) -> list[bytes | None]:
        """RETR each message (pipelined when the server allows); None for one the server refused."""
        return self._many([b"RETR %d" % n for n in numbers], cap)

    def headers(self, number: int, cap: int) -> bytes | None:
        """The header block of one message (TOP n 0), at most ``cap`` bytes; None if refused."""
        return self._many([b"TOP %d 0" % number], cap)[0]

    def _many(self, commands: list[bytes], cap: int) -> list[bytes | None]:
        out: list[bytes | None] = []
        try:
            for chunk in _chunks(commands, PIPELINE_MAX if self.pipelining else 1):
                self._client.send_all(chunk)
                for _ in chunk:
                    out.append(self._answer(cap))
        except (OSError, poplib.error_proto) as exc:
            raise _translate(exc, "RETR") from exc
        return out

    def _answer(self, cap: int) -> bytes | None:
        """One multi-line answer; None when refused or longer than ``cap`` (never a truncated message)."""
        ok, _line = self._client.status()
        if not ok:
            return None
        data, truncated = self._client.multiline(cap)
        return None if truncated else data

    def delete(self, numbers: list[int]) -> None:
        """Mark messages deleted (committed only by :meth:`quit`)."""
        try:
            for chunk in _chunks([b"DELE %d" % n for n in numbers], PIPELINE_MAX if self.pipelining else 1):
                self._client.send_all(chunk)
                answers = [self._client.status() for _ in chunk]
                refused = [line for ok, line in answers if not ok]
                if refused:
                    raise TransientError(f"DELE refused: {refused[0].decode('ascii', 'replace')}")
        except (OSError, poplib.error_proto) as exc:
            raise _translate(exc, "DELE") from exc

    def quit(self) -> None:
        """QUIT: the server now removes the messages marked deleted. Raises TransientError if it did not."""
        try:
            self._client.quit()
        except (OSError, poplib.error_proto) as exc:
            raise _translate(exc, "QUIT") from exc
        finally:
            self._client.close()

    def abort(self) -> None:
        """Undo this session's deletion marks (RSET) and leave (QUIT); never raises."""
        try:
            self._client.rset()
            self._client.quit()
        except (OSError, poplib.error_proto):
            pass  # a dead connection commits nothing either: the server keeps every message
        finally:
            self._client.close()


def connect(cfg: Pop3) -> Pop3Session:
    """Connect, secure the channel as configured, log in. Raises Transient/PermanentError with the cause."""
    context = None if cfg.allow_plaintext and not cfg.implicit_tls else verified_context(cfg.ca_file)
    secret = password(cfg)
    try:
        client = _Client(cfg, context)
    except (OSError, poplib.error_proto) as exc:
        raise _translate(exc, "connect") from exc
    try:
        return _login(client, cfg, context, secret)
    except BaseException:
        _close_quietly(client)
        raise


def _close_quietly(client: _Client) -> None:
    """Close after a failed login; a socket a failed TLS handshake already took over may be gone."""
    try:
        client.close()
    except OSError:
        pass


def _login(client: _Client, cfg: Pop3, context: ssl.SSLContext | None, password: str) -> Pop3Session:
    try:
        if not cfg.implicit_tls and not cfg.allow_plaintext:
            _starttls(client, context)
        client.user(cfg.user)
        client.pass_(password)
    except poplib.error_proto as exc:
        text = _server_text(exc)
        if text.startswith(_TEMPORARY):  # RFC 2449/3206: another session holds it, or a passing fault
            raise TransientError(f"login refused for now for {cfg.user!r}: {text}") from exc
        raise PermanentError(f"authentication failed for {cfg.user!r}: {text}") from exc
    except OSError as exc:
        raise _translate(exc, "login") from exc
    return Pop3Session(client, pipelining="PIPELINING" in _capabilities(client))


_TEMPORARY = ("-ERR [IN-USE]", "-ERR [SYS/TEMP]", "[IN-USE]", "[SYS/TEMP]")


def _starttls(client: _Client, context: ssl.SSLContext | None) -> None:
    """Upgrade with STLS before any credential is sent; a server without STLS is refused."""
    if "STLS" not in _capabilities(client):
        raise PermanentError("the server does not offer STLS; use pop3s, or allow_plaintext for a local server")
    try:
        client.stls(context)
    except poplib.error_proto as exc:
        raise PermanentError(f"STLS refused: {_server_text(exc)}") from exc


def _capabilities(client: _Client) -> dict[str, list[str]]:
    try:
        return client.capa()
    except poplib.error_proto:
        return {}  # CAPA is optional (RFC 2449): no STLS, no pipelining


def _chunks(items: list[bytes], size: int) -> list[list[bytes]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _server_text(exc: poplib.error_proto) -> str:
    arg = exc.args[0] if exc.args else b""
    return (arg.decode("utf-8", "replace") if isinstance(arg, bytes) else str(arg)).strip()


def _translate(exc: BaseException, stage: str) -> TransientError | PermanentError:
    """One clear cause per library error; certificate problems need an admin, the rest may pass."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return PermanentError(f"TLS certificate not trusted ({stage}): {exc.verify_message or exc.reason}")
    if isinstance(exc, ssl.SSLError):
        return TransientError(f"TLS failure ({stage}): {exc.reason or exc}")
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return TransientError(f"timed out ({stage})")
    if isinstance(exc, ConnectionRefusedError):
        return TransientError(f"connection refused ({stage})")
    if isinstance(exc, socket.gaierror):
        return TransientError(f"cannot resolve the host ({stage}): {exc.strerror}")
    if isinstance(exc, OSError):
        return TransientError(f"connection failed ({stage}): {exc.strerror or exc}")
    return TransientError(f"protocol error ({stage}): {_server_text(exc)}")  # type: ignore[arg-type]
