"""The POP3 gateway against a real Dovecot on loopback: exactly once, verified TLS, trouble, limits."""

from __future__ import annotations

import ctypes
import json
import os
import poplib
import signal
import socket
import subprocess
import sys
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

from conftest import ROOT, default_config_data, mail, running_dovecot
from dovecot import Dovecot

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="starting Dovecot needs root (CI runs as root)")


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture
def own_dovecot():
    """A private instance, for tests that stop the server."""
    yield from running_dovecot()


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


def answers(svc: Services) -> list:
    """Acknowledgments queued to senders (the staff notices beside them are another kind of mail)."""
    return [e for e in svc.outbox.entries() if e.envelope["kind"] == "auto-reply"]


# ----------------------------------------------------------------------------- filing


def test_files_every_message_once_then_deletes_them(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    box.put(*many(40))
    svc = services(tmp_path, box.entry(batch=8))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 40}
    assert len(tickets(svc)) == 40 and len(answers(svc)) == 40
    assert box.left == 0
    assert len((tmp_path / "state" / "ledger" / "support").read_text().split()) == 40
    again = poll_pop3(svc.config.mailboxes[0], svc)
    assert again.error is None and again.counts == {}
    assert (tmp_path / "state" / "ledger" / "support").read_text() == ""  # pruned: the server forgot them


@pytest.mark.parametrize("helper_process", [False, True])
def test_a_batch_is_deleted_only_after_its_commit_and_a_failed_commit_keeps_it(dovecot, tmp_path, monkeypatch,
                                                                                 helper_process):
    from helpdeskd.store import fsutil

    box = Box(dovecot, tmp_path)
    box.put(*many(9))
    svc = services(tmp_path, box.entry(batch=3))
    svc.config = with_helper(svc.config, helper_process)
    real_syncfs, calls = fsutil._SYNCFS, []
    # With the helper, a batch's mail is queued while the next batch is filed, so the commit that
    # completes a batch is the one after its own filing.
    failing = 3 if helper_process else 2

    def syncfs(fd):
        calls.append(fd)
        if len(calls) == failing:  # the writeback that would complete the second batch fails
            ctypes.set_errno(5)
            return -1
        return real_syncfs(fd)

    monkeypatch.setattr(fsutil, "_SYNCFS", syncfs)
    box_uids = uids_on_server(svc)
    failed = poll_pop3(svc.config.mailboxes[0], svc)
    assert failed.error and "Input/output error" in failed.error
    ledger = (tmp_path / "state" / "ledger" / "support").read_text().split()
    # Only the first batch is on record. The third, filed while the second was being committed, is
    # not: after a failed commit none succeeds (its files might be among the pages that were lost).
    assert sorted(ledger) == sorted(box_uids[:3])
    assert box.left == 9  # the session was aborted (RSET): even the first batch's DELE is undone
    again = poll_pop3(svc.config.mailboxes[0], svc)  # the same process: still refusing to delete anything
    assert again.error and "earlier commit failed" in again.error and box.left == 9
    monkeypatch.undo()
    restarted = services(tmp_path, box.entry(batch=3))
    after = poll_pop3(restarted.config.mailboxes[0], restarted)
    # what was filed before the failure is found filed: no second ticket or answer
    assert after.error is None and after.counts == {"deleted_known": 3, "duplicate": 6}
    assert len(tickets(restarted)) == 9 and len(answers(restarted)) == 9 and box.left == 0


def with_helper(config, on: bool):
    """``config`` with the helper process switched on or off."""
    from dataclasses import replace

    return replace(config, mail_gateway=replace(config.mail_gateway, helper_process=on))


def test_with_file_by_file_fsync_a_batch_is_committed_under_the_write_lock(dovecot, tmp_path, monkeypatch):
    from helpdeskd.errors import StoreLocked
    from helpdeskd.store import fsutil
    from helpdeskd.store.lock import StateLock

    box = Box(dovecot, tmp_path)
    box.put(*many(6))
    svc = services(tmp_path, box.entry(batch=3))
    svc.store.sync.method = "fsync"
    real_commit, held = fsutil.Syncer.commit, []

    def commit(self, touched):
        if touched:
            try:
                StateLock(tmp_path / "state").acquire().release()
                held.append(False)
            except StoreLocked:
                held.append(True)
        real_commit(self, touched)

    monkeypatch.setattr(fsutil.Syncer, "commit", commit)
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 6} and box.left == 0
    # nobody could write between a batch and its fsyncs: two batches, then the mail of the last one
    # (with the helper, a batch's mail is queued after it)
    assert held == [True, True, True]


def test_a_storage_error_while_filing_is_a_poll_error_not_a_crash(dovecot, tmp_path, monkeypatch):
    box = Box(dovecot, tmp_path)
    box.put(*many(3))
    svc = services(tmp_path, box.entry())

    def full(count):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(svc.store, "ids_reserved", full)
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error and "No space left" in result.error and not result.permanent
    assert box.left == 3 and tickets(svc) == []


def uids_on_server(svc: Services) -> list[str]:
    """The mailbox's UIDLs in message order, read without touching anything."""
    from helpdeskd.sources.pop3 import connect

    session = connect(svc.config.mailboxes[0].pop3)
    listed, _ = session.listing()
    session.quit()
    return [m.uid for m in listed]


def _reference_multiline(lines: list[bytes]) -> bytes:
    """A multi-line answer's body as RFC 1939 reads it, a line at a time (poplib's way)."""
    body = []
    for line in lines:
        if line in (b".\r\n", b".\n"):
            return b"".join(body)
        body.append(line[1:] if line.startswith(b".") else line)
    raise AssertionError("no terminating dot")


def test_a_multi_line_answer_is_read_as_a_line_by_line_reader_reads_it():
    """Whatever way the reads cut the stream (a buffer of 1 to 64 bytes), the body is what a line by
    line reader gets, with the dots unstuffed, and the answer after it stays unread."""
    import io
    import random

    from helpdeskd.sources.pop3 import read_multiline

    rng = random.Random(3)
    pieces = [b"", b".", b"..", b"...", b"a", b".a", b"..a", b"\r", b" .", b"x.y", b"\xc3\xb1"]
    for _ in range(400):
        end = rng.choice([b"\r\n", b"\n"])
        lines = [b"".join(rng.choices(pieces, k=rng.randrange(4))) + end for _ in range(rng.randrange(6))]
        sent = b"".join(b"." + line if line.startswith(b".") else line for line in lines)  # stuffed
        stream = sent + b"." + end + b"+OK next\r\n"
        reader = io.BufferedReader(io.BytesIO(stream), buffer_size=rng.choice([1, 2, 3, 4, 5, 7, 16, 64]))
        expected = _reference_multiline([line + b"\n" for line in stream.split(b"\n")][:-1])
        assert expected == b"".join(lines)
        assert read_multiline(reader, 1 << 20) == (expected, False), stream
        assert reader.read() == b"+OK next\r\n"  # the next answer, untouched
    reader = io.BufferedReader(io.BytesIO(b"12345\r\n..6\r\n.\r\n+OK"), buffer_size=4)
    assert read_multiline(reader, 9) == (b"", True) and reader.read() == b"+OK"  # over the cap: read, dropped
    reader = io.BufferedReader(io.BytesIO(b"12345\r\n..6\r\n.\r\n"), buffer_size=4)
    assert read_multiline(reader, 11) == (b"12345\r\n.6\r\n", False)  # (12 bytes as sent, 11 unstuffed)
    body = b"".join(b".%07d\r\n" % i for i in range(10))  # 100 bytes, every line starting with a dot
    for buffer_size in (1, 3, 7, 64):
        reader = io.BufferedReader(io.BytesIO(body.replace(b".", b"..") + b".\r\n+OK"), buffer_size=buffer_size)
        assert read_multiline(reader, 100) == (body, False) and reader.read() == b"+OK"  # the cap: unstuffed
        reader = io.BufferedReader(io.BytesIO(body.replace(b".", b"..") + b".\r\n+OK"), buffer_size=buffer_size)
        assert read_multiline(reader, 99) == (b"", True) and reader.read() == b"+OK"
    with pytest.raises(poplib.error_proto, match="EOF"):
        read_multiline(io.BufferedReader(io.BytesIO(b"cut short\r\n.."), buffer_size=8), 100)


def test_filed_bytes_are_the_bytes_delivered(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    raw = mail(body="Línea uno\r\n.empieza con punto\r\n..dos puntos\r\nfin")
    box.put(raw)
    svc = services(tmp_path, box.entry())
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 1}
    [stored] = svc.store.ticket_dir(1).glob("*.eml")
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


# ----------------------------------------------------------------------------- TLS and credentials


@pytest.mark.parametrize("protocol", ["pop3", "pop3s"])
def test_tls_verified_with_the_configured_ca(dovecot, tmp_path, protocol):
    box = Box(dovecot, tmp_path)
    box.put(*many(2))
    svc = services(tmp_path, box.entry(protocol))
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 2}
    assert ", TLS," in dovecot.log().split(f"user=<{box.user}>")[1].splitlines()[0]  # Dovecot: session was TLS


@pytest.mark.parametrize("protocol", ["pop3", "pop3s"])
def test_a_certificate_from_another_ca_is_refused_before_login(dovecot, tmp_path, protocol):
    box = Box(dovecot, tmp_path)
    box.put(*many(1))
    svc = services(tmp_path, box.entry(protocol, ca_file=str(dovecot.pki.other_ca)))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.permanent and "TLS certificate not trusted" in result.error
    assert box.left == 1 and f"user=<{box.user}>" not in dovecot.log()  # no password was sent


def test_a_wrong_password_is_reported_and_nothing_is_touched(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    box.put(*many(1))
    box.password_file.write_text("wrong\n")
    # From 127.0.0.2: Dovecot delays every login from an address that failed one (shared/dev/dovecot.md).
    svc = services(tmp_path, box.entry(source_address="127.0.0.2"))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.permanent and result.error.startswith(f"authentication failed for {box.user!r}")
    assert box.left == 1 and tickets(svc) == []


def test_a_mailbox_in_use_is_a_passing_failure_not_a_bad_password(dovecot, tmp_path, monkeypatch):
    box = Box(dovecot, tmp_path)
    box.put(*many(1))
    svc = services(tmp_path, box.entry())

    def in_use(self, password):  # what a server answers while another session holds the mailbox
        raise poplib.error_proto(b"-ERR [IN-USE] Mailbox is locked by another session")

    monkeypatch.setattr(poplib.POP3, "pass_", in_use)
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error.startswith("login refused for now") and not result.permanent and box.left == 1


def test_password_from_environment_and_systemd_credential(dovecot, tmp_path, monkeypatch):
    box = Box(dovecot, tmp_path)
    box.put(*many(1))
    entry = box.entry()
    del entry["password_file"]
    monkeypatch.setenv("HD_TEST_POP3_PASSWORD", "secret")
    svc = services(tmp_path, {**entry, "password_env": "HD_TEST_POP3_PASSWORD"})
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 1}
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "pop3-support").write_text("secret")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path / "creds"))
    box.put(*many(1, "cred"))
    svc = services(tmp_path, {**entry, "password_credential": "pop3-support"})
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 1}


# ----------------------------------------------------------------------------- trouble


def test_server_stopped_between_polls_then_back(own_dovecot, tmp_path):
    box = Box(own_dovecot, tmp_path)
    box.put(*many(3))
    svc = services(tmp_path, box.entry())
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 3}
    own_dovecot.stop()
    box.put(*many(2, "later"))
    down = poll_pop3(svc.config.mailboxes[0], svc)
    assert down.error == "connection refused (connect)" and not down.permanent
    own_dovecot.start()
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 2}
    assert len(tickets(svc)) == 5 and box.left == 0


class CutBeforeDele:
    """A TCP relay to the server that drops both connections the first time the client sends DELE."""

    def __init__(self, port: int) -> None:
        self.target, self.armed = port, True
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.listener.accept()
            server = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, server, True), daemon=True).start()
            threading.Thread(target=self._pump, args=(server, client, False), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_client: bool) -> None:
        try:
            while data := src.recv(65536):
                if from_client and self.armed and b"DELE" in data:
                    self.armed = False
                    break
                dst.sendall(data)
        except OSError:
            pass
        for sock in (src, dst):
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            sock.close()


def test_connection_cut_after_retr_before_dele_files_once_and_deletes_next_time(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    box.put(*many(6))
    relay = CutBeforeDele(dovecot.pop3_port)
    svc = services(tmp_path, box.entry(port=relay.port, allow_plaintext=True, batch=3))
    cut = poll_pop3(svc.config.mailboxes[0], svc)
    # The first batch's DELE never arrives; the second batch was retrieved and filed meanwhile (the
    # pipeline), and is committed and ledgered before the session is given up.
    assert cut.error is not None and cut.counts == {"new": 6}
    assert box.left == 6
    after = poll_pop3(svc.config.mailboxes[0], svc)
    assert after.error is None and after.counts == {"deleted_known": 6}  # no RETR of what was filed
    assert len(tickets(svc)) == 6 and len(answers(svc)) == 6 and box.left == 0


# ----------------------------------------------------------------------------- limits and bad mail


def test_oversized_message_becomes_a_ticket_with_its_headers_and_stays(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    big = mail(subject="Adjunto enorme", message_id="<big@cliente.es>", body="x" * 60_000)
    box.put(big, *many(2))
    svc = services(tmp_path, box.entry(max_message_bytes=20_000))
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 3}
    [noted] = [t for t in tickets(svc) if t.subject == "Adjunto enorme"]
    [event] = [e for e in svc.store.events(noted.id) if e["type"] == "message"]
    assert "larger than the limit of 20000 bytes" in event["text"] and "left on the mail server" in event["text"]
    assert "x" * 100 not in event["text"]
    assert box.left == 1  # kept: delete_oversized is false by default
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {}  # handled once


def test_oversized_reply_mode_answers_the_sender_and_can_delete(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    box.put(mail(subject="Fotos", message_id="<big2@cliente.es>", body="y" * 60_000))
    svc = services(tmp_path, box.entry(max_message_bytes=20_000, oversized="reply", delete_oversized=True))
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"oversized": 1}
    [held] = list(svc.refused.items())
    assert "larger than the limit" in held.reason and b"Subject: Fotos" in held.path.read_bytes()
    [answer] = answers(svc)
    assert answer.envelope["to"] == ["ana@cliente.es"] and b"y" * 100 not in answer.data
    assert tickets(svc) == [] and box.left == 0


def test_a_poison_message_is_quarantined_and_the_rest_filed(dovecot, tmp_path, monkeypatch):
    real = cycle.decide

    def decide(message, view, config):
        if message.subject == "VENENO":
            raise ValueError("boom")
        return real(message, view, config)

    monkeypatch.setattr(cycle, "decide", decide)
    box = Box(dovecot, tmp_path)
    box.put(*many(2), mail(subject="VENENO", message_id="<p@cliente.es>"), *many(2, "after"))
    svc = services(tmp_path, box.entry())
    assert poll_pop3(svc.config.mailboxes[0], svc).counts == {"new": 4, "quarantined": 1}
    [held] = list(svc.quarantine.items())
    assert "ValueError: boom" in held.reason and held.source.startswith("support:")
    assert box.left == 0  # the raw bytes are safe in quarantine/
    monkeypatch.setattr(cycle, "decide", real)
    retry = subprocess.run([sys.executable, "-m", "helpdeskd.ctl", "-c", str(write_toml(tmp_path, box.entry())),
                            "quarantine", "retry", held.id], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert retry.returncode == 0, retry.stderr
    assert "new ticket #5" in retry.stdout and list(svc.quarantine.items()) == []
    assert len(tickets(svc)) == 5


def write_toml(tmp_path: Path, *entries: dict) -> Path:
    import tomli_w

    path = tmp_path / "helpdeskd.toml"
    path.write_text(tomli_w.dumps(config_data(tmp_path, *entries)))
    return path


# ----------------------------------------------------------------------------- the daemon


def start_daemon(config: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "helpdeskd.cli", "run", "-c", str(config)], cwd=ROOT,
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log.open("ab"))


def wait_for(condition, what: str, seconds: float = 120) -> None:
    """Wait for a state, not a time: the deadline only keeps a broken run from hanging CI."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"gave up waiting for {what}"
        time.sleep(0.05)


def logged(log: Path, event: str) -> list[dict]:
    lines = log.read_text().splitlines() if log.exists() else []
    return [record for line in lines if line.startswith("{") and (record := json.loads(line))["event"] == event]


def filing_daemon(dovecot, tmp_path: Path, count: int) -> tuple[Box, Path, Path, subprocess.Popen]:
    """A daemon started on a mailbox of ``count`` messages (batches of 4), once it has filed 10."""
    box = Box(dovecot, tmp_path)
    box.put(*many(count))
    config, log = write_toml(tmp_path, box.entry(batch=4)), tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    wait_for(lambda: len(logged(log, "message")) >= 10, "the first messages to be filed")
    return box, config, log, daemon


def test_kill_9_mid_session_then_restart_files_each_message_exactly_once(dovecot, tmp_path):
    box, config, log, daemon = filing_daemon(dovecot, tmp_path, 60)
    daemon.send_signal(signal.SIGKILL)
    daemon.wait()
    assert box.left > 0  # it really died mid-mailbox
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: box.left == 0, "the mailbox to be emptied")
        wait_for(lambda: len(list((tmp_path / "state" / "outbox" / "new").iterdir())) >= 120,
                 "the answers and the staff notices")
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=60) == 0
    svc = services(tmp_path, box.entry())
    assert len(tickets(svc)) == 60 and len(answers(svc)) == 60
    assert sorted(t.subject for t in tickets(svc)) == sorted(f"Consulta {i}" for i in range(60))


def test_sigterm_mid_session_says_what_the_session_filed(dovecot, tmp_path):
    box, _, log, daemon = filing_daemon(dovecot, tmp_path, 200)
    daemon.send_signal(signal.SIGTERM)
    assert daemon.wait(timeout=60) == 0
    assert box.left > 0  # it stopped mid-mailbox
    [done] = logged(log, "poll_done")
    assert done["mailbox"] == box.name and done["new"] == len(logged(log, "message")) == 200 - box.left
    assert [r["event"] for r in logged(log, "poll_done") + logged(log, "stopped")] == ["poll_done", "stopped"]


def test_two_mailboxes_file_to_their_queues_while_a_third_is_down(dovecot, tmp_path):
    tech, bills = Box(dovecot, tmp_path, "tech"), Box(dovecot, tmp_path, "bills")
    dead = Box(dovecot, tmp_path, "dead")
    tech.put(*many(3, "t"))
    bills.put(*many(2, "b"))
    config = write_toml(tmp_path, tech.entry(queue="technical"), bills.entry("pop3s", queue="billing"),
                        dead.entry(port=1, interval=0.1, backoff_max="0.4s"))
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: tech.left == 0 and bills.left == 0, "both mailboxes to be emptied")
        wait_for(lambda: len(logged(log, "pop3_failed")) >= 3, "the dead mailbox to retry")
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=60) == 0
    svc = services(tmp_path, tech.entry())
    assert sorted(t.queue for t in tickets(svc)) == ["billing", "billing", "technical", "technical", "technical"]
    failures = logged(log, "pop3_failed")
    assert {f["mailbox"] for f in failures} == {"dead"} and failures[0]["error"] == "connection refused (connect)"
    assert [f["failures"] for f in failures[:3]] == [1, 2, 3]
    status = json.loads((tmp_path / "state" / "status" / "daemon.json").read_text())["mailboxes"]
    assert status["dead"]["last_error"] == "connection refused (connect)" and status["dead"]["failures"] >= 3
    assert status["tech"]["last_error"] is None and status["tech"]["counts"]["new"] == 3


def test_the_daemon_says_when_a_failing_mailbox_recovers(own_dovecot, tmp_path):
    box = Box(own_dovecot, tmp_path)
    own_dovecot.stop()
    box.put(*many(2))
    config = write_toml(tmp_path, box.entry(interval=0.1, backoff_max="0.4s"))
    log = tmp_path / "daemon.log"
    daemon = start_daemon(config, log)
    try:
        wait_for(lambda: len(logged(log, "pop3_failed")) >= 2, "the stopped server to be retried")
        own_dovecot.start()
        wait_for(lambda: logged(log, "pop3_recovered"), "the recovery to be logged")
        wait_for(lambda: box.left == 0, "the mailbox to be emptied")
    finally:
        daemon.terminate()
        assert daemon.wait(timeout=60) == 0
    [recovered] = logged(log, "pop3_recovered")
    assert recovered["mailbox"] == "support" and recovered["after_failures"] >= 2


def test_asked_to_stop_while_retrieving_the_retrieved_batch_stays_on_the_server(dovecot, tmp_path, monkeypatch):
    from helpdeskd.sources import pop3 as pop3_source

    box = Box(dovecot, tmp_path)
    box.put(*many(9))
    svc = services(tmp_path, box.entry(batch=3))
    real_retrieve, retrieved = pop3_source.Pop3Session.retrieve, []

    def retrieve(self, numbers, limit):
        retrieved.append(numbers)
        return real_retrieve(self, numbers, limit)

    monkeypatch.setattr(pop3_source.Pop3Session, "retrieve", retrieve)
    result = poll_pop3(svc.config.mailboxes[0], svc, should_stop=lambda: len(retrieved) >= 2)  # SIGTERM in the 2nd
    assert result.error is None and result.more and result.counts == {"new": 3}
    assert box.left == 6 and len(tickets(svc)) == 3  # the first batch filed and deleted; the second left alone


def test_the_daemon_starts_its_helper_with_itself_not_with_the_first_mail(dovecot, tmp_path):
    """With a POP3 mailbox and the helper on, the helper is up before any mail arrives (its ~0.2 s
    start is not paid by the first batch); with the helper off, no helper ever starts."""
    import tomli_w

    box = Box(dovecot, tmp_path)
    for helper_on, log_name in ((True, "on.log"), (False, "off.log")):
        data = config_data(tmp_path, box.entry())
        data["mail_gateway"] = {"helper_process": helper_on}
        config, log = tmp_path / f"{log_name}.toml", tmp_path / log_name
        config.write_text(tomli_w.dumps(data))
        daemon = start_daemon(config, log)
        try:
            wait_for(lambda: logged(log, "started"), "the daemon to start")
            if helper_on:  # the helper: a python process in the daemon's forkserver's family, running helper code
                wait_for(lambda: _helper_running(daemon.pid), "the helper to start", 30)
            else:
                time.sleep(1.0)  # (time to start one, were it to)
                assert not _helper_running(daemon.pid)
            assert box.left == 0
        finally:
            daemon.send_signal(signal.SIGTERM)
            daemon.wait(timeout=60)


def _helper_running(daemon_pid: int) -> bool:
    """A process descended from ``daemon_pid`` runs concurrent.futures' process worker (the helper)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    children[int(entry)] = int(stat.read().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
    family, grew = {daemon_pid}, True
    while grew:
        more = {pid for pid, parent in children.items() if parent in family} - family
        family |= more
        grew = bool(more)
    for pid in family - {daemon_pid}:
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
                if b"forkserver" in cmdline.read():  # the forkserver's children are the helper
                    if any(children.get(p) == pid for p in children):
                        return True
        except OSError:
            continue
    return False
