"""A real Dovecot for tests and benchmarks: a throwaway CA and leaf, config, users and Maildirs.

Follows ``shared/dev/dovecot.md``: a stand-alone config started with ``dovecot -c FILE`` as a plain
process on free loopback ports, logs in its own directory, mail owned by a system user (mail
processes refuse uid 0). Needs root (to start Dovecot and own mail as another user) and the Debian
packages ``dovecot-core dovecot-pop3d`` — ``scripts/test`` installs them when missing.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

MAIL_USER = "helpdeskd-mail"
PASSWORD = "secret"  # every user's: a static passdb needs no reload when a test adds a user


@dataclass(frozen=True)
class Pki:
    ca: Path  # the CA certificate a client trusts
    cert: Path
    key: Path
    other_ca: Path  # a CA that signed nothing here: trusting only it must fail


def make_pki(directory: Path) -> Pki:
    """A throwaway CA, a leaf for localhost/127.0.0.1 signed by it, and an unrelated second CA."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def cert(subject, issuer, public, signer, ca: bool, sans=None):
        now = datetime.datetime.now(datetime.timezone.utc)
        builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer).public_key(public)
                   .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(days=1))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
        if ca:
            builder = builder.add_extension(x509.KeyUsage(True, False, False, False, False, True, True, False, False),
                                            critical=True)
            builder = builder.add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        if sans:
            builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        return builder.sign(signer, hashes.SHA256())

    pem = serialization.Encoding.PEM
    keys = [ec.generate_private_key(ec.SECP256R1()) for _ in range(3)]
    ca = cert(name("helpdeskd test CA"), name("helpdeskd test CA"), keys[0].public_key(), keys[0], True)
    other = cert(name("unrelated CA"), name("unrelated CA"), keys[2].public_key(), keys[2], True)
    sans = [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
    leaf = cert(name("localhost"), ca.subject, keys[1].public_key(), keys[0], False, sans)
    pki = Pki(directory / "ca.pem", directory / "cert.pem", directory / "key.pem", directory / "other-ca.pem")
    pki.ca.write_bytes(ca.public_bytes(pem))
    pki.other_ca.write_bytes(other.public_bytes(pem))
    pki.cert.write_bytes(leaf.public_bytes(pem))
    pki.key.write_bytes(keys[1].private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    os.chmod(pki.key, 0o600)
    return pki


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def mail_user() -> tuple[int, int]:
    """uid/gid of the system user that owns test mail; created on first use."""
    try:
        entry = pwd.getpwnam(MAIL_USER)
    except KeyError:
        subprocess.run(["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", MAIL_USER],
                       check=True)
        entry = pwd.getpwnam(MAIL_USER)
    return entry.pw_uid, entry.pw_gid


class Dovecot:
    """One Dovecot instance in ``base``: POP3 (plain+STLS) and POP3S listeners on free loopback ports."""

    def __init__(self, base: Path, pki: Pki) -> None:
        if shutil.which("dovecot") is None:
            raise RuntimeError("dovecot is not installed: run ./scripts/test, which installs it")
        self.base, self.pki = base, pki
        self.uid, self.gid = mail_user()
        self.pop3_port, self.pop3s_port = free_port(), free_port()
        os.chmod(base, 0o755)
        self.config = base / "dovecot.conf"
        self.config.write_text(self._config())

    def _config(self) -> str:
        b, uid, gid = self.base, self.uid, self.gid
        return f"""
protocols = pop3
listen = 127.0.0.1
instance_name = hdtest-{uuid.uuid4().hex[:10]}
base_dir = {b}/run
state_dir = {b}/state
log_path = {b}/dovecot.log
info_log_path = {b}/dovecot.log
ssl = yes
ssl_cert = <{self.pki.cert}
ssl_key = <{self.pki.key}
ssl_min_protocol = TLSv1.2
disable_plaintext_auth = no
auth_mechanisms = plain login
first_valid_uid = {uid}
last_valid_uid = {uid}
first_valid_gid = {gid}
mail_location = maildir:~/Maildir
pop3_uidl_format = %08Xu%08Xv
namespace inbox {{
  inbox = yes
}}
passdb {{
  driver = static
  args = password={PASSWORD}
}}
userdb {{
  driver = static
  args = uid={uid} gid={gid} home={b}/home/%u
}}
service pop3-login {{
  inet_listener pop3 {{
    address = 127.0.0.1
    port = {self.pop3_port}
  }}
  inet_listener pop3s {{
    address = 127.0.0.1
    port = {self.pop3s_port}
    ssl = yes
  }}
}}
"""

    # -- users and mail ---------------------------------------------------------------------------
    def add_user(self, name: str) -> Path:
        """A mailbox user (any name logs in with PASSWORD); returns its Maildir, created and owned right."""
        home = self.base / "home" / name
        for sub in ("new", "cur", "tmp"):
            (home / "Maildir" / sub).mkdir(parents=True, exist_ok=True)
        for path in (home, home / "Maildir", *(home / "Maildir").iterdir()):
            os.chown(path, self.uid, self.gid)
        return home / "Maildir"

    def deliver(self, maildir: Path, raw: bytes) -> None:
        """Drop one message into ``new/`` the way an MDA does (tmp, then rename), owned by the mail user."""
        name = f"{time.time_ns()}.{uuid.uuid4().hex[:12]}.test"
        tmp = maildir / "tmp" / name
        tmp.write_bytes(raw)
        os.chown(tmp, self.uid, self.gid)
        os.rename(tmp, maildir / "new" / name)

    @staticmethod
    def count(maildir: Path) -> int:
        """Messages still in the mailbox (new and cur)."""
        return sum(1 for sub in ("new", "cur") for p in (maildir / sub).iterdir() if not p.name.startswith("."))

    # -- process -----------------------------------------------------------------------------------
    def start(self) -> "Dovecot":
        with open(self.base / "stdout.log", "ab") as out:
            subprocess.run(["dovecot", "-c", str(self.config)], stdin=subprocess.DEVNULL, stdout=out,
                           stderr=subprocess.STDOUT, check=True)
        self._wait_for_ports()
        self._smoke_test_tls()
        return self

    def _wait_for_ports(self) -> None:
        deadline = time.monotonic() + 30
        for port in (self.pop3_port, self.pop3s_port):
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    break
                except OSError:
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"dovecot did not listen on {port}: {self.log()[-2000:]}")
                    time.sleep(0.05)

    def _smoke_test_tls(self) -> None:
        """A missing certificate is silent at start; fail here rather than in a confusing test."""
        context = ssl.create_default_context(cafile=str(self.pki.ca))
        with socket.create_connection(("127.0.0.1", self.pop3s_port), timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="127.0.0.1") as tls:
                assert tls.recv(100).startswith(b"+OK")

    def stop(self) -> None:
        pid_file = self.base / "run" / "master.pid"
        try:
            pid = int(pid_file.read_text())
        except (FileNotFoundError, ValueError):
            return
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)

    def log(self) -> str:
        path = self.base / "dovecot.log"
        return path.read_text(errors="replace") if path.exists() else ""
