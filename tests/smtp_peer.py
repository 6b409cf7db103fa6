"""A real SMTP peer on loopback for the tests: aiosmtpd, a throwaway CA and a leaf certificate.

``Peer`` records every message it accepted and answers DATA from a script (``"451 ..."`` first, then
``250``...), so tests can stage temporary and permanent failures without mocks.
"""

from __future__ import annotations

import datetime
import ipaddress
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from helpdeskd.settings import Smtp


@dataclass(frozen=True)
class Pki:
    ca: Path
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


def make_pki(directory: Path) -> Pki:
    """A CA and a leaf for localhost / 127.0.0.1 signed by it, valid for a day around now."""
    now = datetime.datetime.now(datetime.timezone.utc)
    ca_key, leaf_key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "helpdeskd test CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
          .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
          .sign(ca_key, hashes.SHA256()))
    san = x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))])
    leaf = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(leaf_key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(hours=1)).not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(san, critical=False)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory / "ca.pem", directory / "leaf.pem", directory / "leaf.key")
    pki.ca.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    pki.cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    pki.key.write_bytes(leaf_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
    return pki


@dataclass
class Received:
    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    mail_options: list[str] = field(default_factory=list)


@dataclass
class Handler:
    """Accepts everything unless ``script`` (DATA answers, consumed in order) or ``refuse_rcpt`` says otherwise.

    ``on_message`` (if set) is called with each accepted message, e.g. to deliver it into a helpdesk.
    """

    script: list[str] = field(default_factory=list)
    refuse_rcpt: dict[str, str] = field(default_factory=dict)  # address → answer
    on_message: Callable[[Received], None] | None = None
    received: list[Received] = field(default_factory=list)
    attempts: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address in self.refuse_rcpt:
            return self.refuse_rcpt[address]
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        with self.lock:
            self.attempts += 1
            answer = self.script.pop(0) if self.script else "250 OK"
            if answer.startswith("250"):
                item = Received(envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content
                                or envelope.content, list(envelope.mail_options))
                self.received.append(item)
        if answer.startswith("250") and self.on_message is not None:
            self.on_message(item)
        return answer


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def authenticator(user: bytes, password: bytes):
    def check(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and auth_data.login == user and auth_data.password == password
        return AuthResult(success=ok, handled=False)  # handled=False: aiosmtpd answers 535 itself
    return check


def start(handler: Handler, port: int | None = None, **kwargs) -> Controller:
    """An aiosmtpd server on 127.0.0.1; ``kwargs`` go to aiosmtpd (tls_context, ssl_context, authenticator...)."""
    controller = Controller(handler, hostname="127.0.0.1", port=port or free_port(), ready_timeout=30, **kwargs)
    controller.start()
    return controller


def smtp_settings(port: int, **changes) -> Smtp:
    """Client settings for the peer: plaintext to loopback unless ``changes`` say otherwise."""
    values = dict(host="127.0.0.1", port=port, security="none", allow_plaintext=True, timeout_seconds=20.0,
                  retry_first_seconds=60.0, retry_max_seconds=600.0)
    values.update(changes)
    return Smtp(**values)
