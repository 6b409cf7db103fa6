"""The POP3 gateway against a real Dovecot on loopback: exactly once, verified TLS, trouble, limits."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import pytest

from helpdeskd import cycle
from helpdeskd.config import build_config
from helpdeskd.cycle import Services
from helpdeskd.gateway import poll_pop3, poll_pop3_fully
from helpdeskd.templates import load_templates

from conftest import ROOT, default_config_data, mail
from dovecot import Dovecot, make_pki

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting Dovecot needs root (CI runs as root)")


# ----------------------------------------------------------------------------- fixtures


def _server_dir() -> Path:
    # Not pytest's tmp_path: its parent is mode 0700 and Dovecot's mail processes run as another user.
    base = Path(tempfile.mkdtemp(prefix="hd-dovecot-"))
    base.chmod(0o755)
    return base


@pytest.fixture(scope="session")
def dovecot():
    base = _server_dir()
    server = Dovecot(base, make_pki(base)).start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def own_dovecot():
    """A private instance, for tests that stop the server."""
    base = _server_dir()
    server = Dovecot(base, make_pki(base)).start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


class Box:
    """One user's mailbox on a server, and the [[mailboxes]] entry that reads it."""

    def __init__(self, server: Dovecot, tmp_path: Path, name: str = "support", password: str = "secret") -> None:
        self.server, self.name = server, name
        self.user = f"u{uuid.uuid4().hex[:10]}"
        self.maildir = server.add_user(self.user)
        self.password_file = tmp_path / f"{name}.password"
        self.password_file.write_text(password + "\n")

    def entry(self, protocol: str = "pop3", **extra: object) -> dict:
        port = self.server.pop3s_port if protocol == "pop3s" else self.server.pop3_port
        return {"name": self.name, "protocol": protocol, "host": "127.0.0.1", "port": port, "user": self.user,
                "password_file": str(self.password_file), "ca_file": str(self.server.pki.ca), "interval": 0.2,
                "connect_timeout": 10, "read_timeout": 10, **extra}

    def put(self, *messages: bytes) -> None:
        for raw in messages:
            self.server.deliver(self.maildir, raw)

    @property
    def left(self) -> int:
        return Dovecot.count(self.maildir)


def config_data(tmp_path: Path, *entries: dict) -> dict:
    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(tmp_path / "state"), "templates_dir": str(ROOT / "templates")})
    data["mailboxes"] = list(entries)
    return data


def services(tmp_path: Path, *entries: dict) -> Services:
    config = build_config(config_data(tmp_path, *entries), tmp_path)
    return Services.open(config, load_templates(config))


def many(n: int, tag: str = "m") -> list[bytes]:
    return [mail(subject=f"Consulta {i}", message_id=f"<{tag}{i}.{uuid.uuid4().hex[:8]}@cliente.es>",
                 sender=f"Cliente {i} <c{i}@cliente.es>") for i in range(n)]


def tickets(svc: Services) -> list:
    return list(svc.store.iter_tickets())


# ----------------------------------------------------------------------------- filing


def test_files_every_message_once_then_deletes_them(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    box.put(*many(40))
    svc = services(tmp_path, box.entry(batch=8))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 40}
    assert len(tickets(svc)) == 40 and len(list(svc.outbox.entries())) == 40
    assert box.left == 0
    assert len((tmp_path / "state" / "ledger" / "support").read_text().split()) == 40
    again = poll_pop3(svc.config.mailboxes[0], svc)
    assert again.error is None and again.counts == {}
    assert (tmp_path / "state" / "ledger" / "support").read_text() == ""  # pruned: the server forgot them


def test_filed_bytes_are_the_bytes_delivered(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    raw = mail(body="Línea uno\r\n.empieza con punto\r\n..dos puntos\r\nfin")
    box.put(raw)
    svc = services(tmp_path, box.entry())
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 1}
    [stored] = (svc.store.ticket_dir(1) / "mail").iterdir()
    assert stored.read_bytes() == raw


def test_keep_on_server_never_files_twice_across_restarts(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    box.put(*many(5))
    entry = box.entry(keep_on_server=True)
    first = poll_pop3_fully(services(tmp_path, entry).config.mailboxes[0], services(tmp_path, entry))
    assert first.counts == {"new": 5}
    box.put(*many(2, "later"))
    svc = services(tmp_path, entry)  # a restarted daemon: fresh objects, same state directory
    second = poll_pop3(svc.config.mailboxes[0], svc)
    assert second.counts == {"new": 2}  # only the new ones were downloaded
    assert len(tickets(svc)) == 7 and box.left == 7
    ledger = (tmp_path / "state" / "ledger" / "support").read_text().split()
    assert len(ledger) == 7


def test_without_uidl_message_keys_stand_in(dovecot, tmp_path, monkeypatch):
    import poplib

    def no_uidl(self, *args):
        raise poplib.error_proto(b"-ERR unknown command")

    box = Box(dovecot, tmp_path)
    box.put(*many(3))
    entry = box.entry(keep_on_server=True)
    svc = services(tmp_path, entry)
    real = poplib.POP3._longcmd
    monkeypatch.setattr(poplib.POP3, "_longcmd", lambda self, cmd: no_uidl(self) if cmd == "UIDL" else real(self, cmd))
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 3}
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {}  # downloaded again, recognised by key
    ledger = (tmp_path / "state" / "ledger" / "support").read_text().split()
    assert len(ledger) == 3 and all(line.startswith("key:") for line in ledger)
    assert len(tickets(svc)) == 3 and box.left == 3
