"""The daemon as a service: real ``helpdeskd run`` processes, real signals, a real notify socket.

Reload (a valid change, broken TOML, a broken template), SIGTERM in the middle of a poll, the sd_notify
messages systemd would receive, and ``helpdeskctl status``. Nothing asserts on time: every wait polls
with a generous deadline.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import tomli_w

from conftest import ROOT, default_config_data, mail
from crashkit import Daemon as CrashDaemon
from crashkit import drop, make_mails, pending, problems, read_outcome, run_cli, wait_for
from crashkit import write_config as crash_config

DEADLINE = 60.0


# -- helpers ------------------------------------------------------------------------------------------------


def config_data(tmp_path: Path, templates: Path = ROOT / "templates") -> dict:
    """The shipped config with its state, Maildir and templates under ``tmp_path``."""
    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(tmp_path / "state"), "templates_dir": str(templates)})
    data["mailboxes"] = [{"name": "local", "protocol": "maildir", "path": str(tmp_path / "inbox"), "interval": 0.2}]
    return data


def write(path: Path, data: dict) -> Path:
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


class Running:
    """One ``helpdeskd run`` with its JSON log in a file; ``env`` adds environment variables."""

    def __init__(self, config: Path, log: Path, **env: str) -> None:
        self.log_path = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen([sys.executable, "-m", "helpdeskd.cli", "run", "-c", str(config)],
                                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         env=os.environ | env)

    def events(self, name: str | None = None) -> list[dict]:
        lines = self.log_path.read_text(encoding="utf-8", errors="replace").splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if name is None or r.get("event") == name]

    def wait_event(self, name: str, count: int = 1) -> list[dict]:
        def seen():
            assert self.proc.poll() is None, f"daemon exited with {self.proc.returncode}:\n{self.log_path.read_text()}"
            return len(self.events(name)) >= count
        wait_for(seen, DEADLINE, f"{count} '{name}' log line(s) in {self.log_path}")
        return self.events(name)

    def signal(self, sig: int) -> None:
        self.proc.send_signal(sig)

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=DEADLINE)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=DEADLINE)


@pytest.fixture
def running():
    started: list[Running] = []

    def start(config: Path, log: Path, **env: str) -> Running:
        started.append(Running(config, log, **env))
        return started[-1]

    yield start
    for daemon in started:
        daemon.kill()


def ticket_file(state: Path, n: int) -> Path:
    return state / "tickets" / str(n // 1000) / str(n) / "ticket.toml"


def ctl(config: Path, *args: str) -> subprocess.CompletedProcess:
    return run_cli("-c", str(config), *args, ctl=True)


def status_json(config: Path, *extra: str) -> tuple[int, dict]:
    done = ctl(config, "status", "--json", *extra)
    return done.returncode, json.loads(done.stdout)


# -- reload -------------------------------------------------------------------------------------------------


def test_reload_applies_a_valid_change_between_messages(tmp_path, running):
    data = config_data(tmp_path)
    config = write(tmp_path / "helpdeskd.toml", data)
    state = tmp_path / "state"
    daemon = running(config, tmp_path / "daemon.log")
    daemon.wait_event("started")
    drop(tmp_path / "inbox", mail())
    wait_for(ticket_file(state, 1).exists, DEADLINE, "ticket 1")
    assert ctl(config, "set", "1", "queue", "vip").returncode == 1  # not a queue yet

    data["queues"].append({"key": "vip", "name": {"es": "VIP", "en": "VIP"}, "staff": ["vip@helpdesk.localhost"]})
    data["mailboxes"].append({"name": "vip-box", "protocol": "maildir", "path": str(tmp_path / "vip"),
                              "interval": 0.2, "queue": "vip"})
    data["logging"] = {"level": "warning"}
    write(config, data)
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reloaded")
    drop(tmp_path / "vip", mail(message_id="<vip@cliente.es>", subject="Urgente", body="Todo caído, ayuda."))
    wait_for(ticket_file(state, 2).exists, DEADLINE, "ticket 2, from the mailbox the reload added")

    assert json.loads(ctl(config, "show", "2", "--json").stdout)["ticket"]["queue"] == "vip"
    assert ctl(config, "set", "1", "queue", "vip").returncode == 0
    wait_for(lambda: status_json(config)[1]["status"]["mailboxes"]["vip-box"]["counts"].get("new") == 1,
             DEADLINE, "the status to count the new mailbox's ticket")
    code, report = status_json(config)
    assert code == 0 and report["attention"] == [] and report["status"]["reload_failed"] is None
    assert daemon.stop() == 0
    after = [e["event"] for e in daemon.events()][[e["event"] for e in daemon.events()].index("reloaded") + 1:]
    assert "message" not in after  # [logging] level = "warning" took effect at the reload
    code, report = status_json(config)
    assert code == 2 and "not running" in report["attention"][0]


def test_reload_with_broken_toml_or_template_keeps_the_old_config(tmp_path, running):
    templates = tmp_path / "tpl"
    shutil.copytree(ROOT / "templates", templates)
    data = config_data(tmp_path, templates)
    config = write(tmp_path / "helpdeskd.toml", data)
    state = tmp_path / "state"
    daemon = running(config, tmp_path / "daemon.log")
    daemon.wait_event("started")

    good = config.read_text()
    config.write_text(good.replace("[helpdesk]", "[helpdesk", 1))
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_event("reload_refused")
    assert refused[0]["level"] == "error" and refused[0]["problems"]
    drop(tmp_path / "inbox", mail())
    wait_for(ticket_file(state, 1).exists, DEADLINE, "ticket 1, filed on the old config")
    code, report = status_json(config, "--state-dir", str(state))  # the broken file cannot say where
    assert code == 1 and report["status"]["reload_failed"]["problems"] == refused[0]["problems"]
    assert any("is invalid" in line for line in report["attention"])
    alone = run_cli("status", "--json", "--state-dir", str(state), ctl=True)  # no -c: the daemon's own config
    assert alone.returncode == 1
    assert any(str(config) in line and "is invalid" in line for line in json.loads(alone.stdout)["attention"])
    assert ctl(config, "status").returncode == 1  # the broken file cannot say where: attention, not "down"
    config.write_text(good.replace('default_queue = "general"', 'default_queue = "sales"'))  # TOML, not valid
    code, report = status_json(config)  # no --state-dir: the state_dir the file names is still read
    assert code == 1 and report["status"]["state"] == "running" and report["status"]["reload_failed"]
    assert any("sales" in line and "is invalid" in line for line in report["attention"])
    assert not any("--state-dir" in line for line in report["attention"])

    config.write_text(good)
    (templates / "en" / "ack_new.txt").write_text("{{ ticket.id }\n")
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_event("reload_refused", 2)
    assert any("en/ack_new.txt, line 1" in p for p in refused[1]["problems"])
    drop(tmp_path / "inbox", mail(message_id="<en@customer.example>", subject="My site is down",
                                  body="Hello, my web site has been down since this morning. Thanks."))
    wait_for(ticket_file(state, 2).exists, DEADLINE, "ticket 2, answered with the old templates")
    code, report = status_json(config)
    assert code == 1 and "en/ack_new.txt" in " ".join(report["attention"])
    human = ctl(config, "status")
    assert human.returncode == 1 and "last reload refused" in human.stdout

    (templates / "en" / "ack_new.txt").write_text((ROOT / "templates" / "en" / "ack_new.txt").read_text())
    daemon.signal(signal.SIGHUP)
    daemon.wait_event("reloaded")
    assert daemon.stop() == 0
    outcome = read_outcome(config, state, tmp_path / "inbox")
    acks = {a["ticket"]: a for a in outcome.acks if a.get("kind") == "auto-reply"}
    assert sorted(acks) == [1, 2] and acks[2]["template"] == "ack_new"
    assert outcome.leftovers["quarantine"] == []


# -- stop ---------------------------------------------------------------------------------------------------


def test_sigterm_during_a_poll_loses_nothing_and_a_restart_duplicates_nothing(tmp_path):
    config = crash_config(tmp_path, interval=0.2)
    inbox, state = tmp_path / "inbox", tmp_path / "state"
    # More than two filing batches (64 each): the first "message" line comes once batch one is committed,
    # so the SIGTERM below lands while later batches are being filed (not asserted: it is a race).
    mails = make_mails(150, random.Random(5))
    for m in mails:
        drop(inbox, m.raw)
    daemon = CrashDaemon(config, tmp_path)
    try:
        daemon.start()
        daemon.wait_started()
        second = run_cli("run", "-c", str(config), timeout=DEADLINE)
        assert second.returncode == 1 and "already running" in second.stderr
        wait_for(lambda: '"event": "message"' in daemon.log(), DEADLINE, "the first message to be filed")
        assert daemon.terminate() == 0
        assert '"event": "stopped"' in daemon.log()
        print(f"left in new/ by the first daemon: {len(pending(inbox))} of {len(mails)}")
        daemon.start()
        daemon.wait_started()
        wait_for(lambda: not pending(inbox), DEADLINE * 3, "the restarted daemon to empty new/")
        assert daemon.terminate() == 0
    finally:
        daemon.ensure_dead()
    assert problems(read_outcome(config, state, inbox), mails) == []


# -- systemd notify -----------------------------------------------------------------------------------------


class NotifySocket:
    """A unix datagram socket standing in for systemd's; collects every message it receives."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="hd-", dir="/tmp")  # short: AF_UNIX paths are limited to 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []

    def wait(self, predicate, what: str) -> dict[str, str]:
        """The first message (already received or arriving) for which ``predicate`` holds."""
        def found():
            self._drain()
            return next((m for m in self.messages if predicate(m)), None)
        return wait_for(found, DEADLINE, what)

    def _drain(self) -> None:
        try:
            while True:
                data = self.sock.recv(4096).decode()
                self.messages.append(dict(line.split("=", 1) for line in data.splitlines()))
        except TimeoutError:
            pass

    def close(self) -> None:
        self.sock.close()
        shutil.rmtree(self.dir, ignore_errors=True)


def test_notify_ready_reloading_stopping_status_and_watchdog(tmp_path, running):
    config = write(tmp_path / "helpdeskd.toml", config_data(tmp_path))
    notify = NotifySocket()
    try:
        daemon = running(config, tmp_path / "daemon.log", NOTIFY_SOCKET=notify.path, WATCHDOG_USEC="2000000")
        ready = notify.wait(lambda m: m.get("READY") == "1", "READY=1")
        assert "1 mailboxes" in ready["STATUS"]
        notify.wait(lambda m: m.get("WATCHDOG") == "1", "a WATCHDOG=1 ping")
        pings = len([m for m in notify.messages if m.get("WATCHDOG") == "1"])
        notify.wait(lambda m: len([x for x in notify.messages if x.get("WATCHDOG") == "1"]) > pings, "another ping")
        daemon.signal(signal.SIGHUP)
        reloading = notify.wait(lambda m: m.get("RELOADING") == "1", "RELOADING=1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        after = next(i for i, m in enumerate(notify.messages) if m is reloading)
        notify.wait(lambda m: any(x.get("READY") == "1" for x in notify.messages[after:]), "READY=1 after the reload")
        assert daemon.stop() == 0
        notify.wait(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
    finally:
        notify.close()
    assert daemon.events("started")[0]["watchdog_s"] == 2.0


# -- an older store -----------------------------------------------------------------------------------------


def test_a_store_with_the_old_index_layout_is_named_at_start_until_fsck_moves_it(tmp_path, running):
    from helpdeskd.store.tickets import TicketStore

    config = write(tmp_path / "helpdeskd.toml", config_data(tmp_path))
    store = TicketStore(tmp_path / "state")
    store.write_claim("abcd" + "0" * 28, {"action": "new", "ticket": 1})
    old = tmp_path / "state" / "index" / "keys" / "ab" / "cd"
    old.mkdir()
    (old.parent / ("abcd" + "0" * 28)).rename(old / ("abcd" + "0" * 28))  # where stores before 'layout' kept it
    (tmp_path / "state" / "index" / "layout").unlink()
    daemon = running(config, tmp_path / "first.log")
    [warning] = daemon.wait_event("index_old_layout")
    assert "helpdeskd fsck" in warning["hint"] and daemon.stop() == 0
    done = run_cli("fsck", "-c", str(config))
    assert "claims moved to the current index layout: 1" in done.stdout, done.stdout + done.stderr
    daemon = running(config, tmp_path / "second.log")
    daemon.wait_event("started")
    assert daemon.events("index_old_layout") == [] and daemon.stop() == 0
    assert TicketStore(tmp_path / "state").read_claim("abcd" + "0" * 28) == {"action": "new", "ticket": 1}


def test_status_after_kill_9_says_the_daemon_is_not_running(tmp_path, running):
    config = write(tmp_path / "helpdeskd.toml", config_data(tmp_path))
    daemon = running(config, tmp_path / "daemon.log")
    daemon.wait_event("started")
    daemon.kill()  # SIGKILL: its status file still says "running"
    done = ctl(config, "status")
    first = done.stdout.splitlines()[0]
    assert done.returncode == 2 and first.startswith("daemon: not running (its last status said running), pid")
    assert "the daemon is not running" in done.stdout
