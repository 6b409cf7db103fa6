"""The pieces of running as a service, in-process: supervision, sd_notify, journald priorities, the
status file, tickets whose queue/priority/category a reload removed, and the systemd files."""

from __future__ import annotations

import asyncio
import io
import json
import os
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest
import tomli_w

from conftest import ROOT, default_config_data, mail
from crashkit import drop
from helpdeskd import ctl, logs
from helpdeskd.config import load_config
from helpdeskd.cycle import Services, file_safely
from helpdeskd.daemon import Daemon
from helpdeskd.health import Health, MailboxHealth, attention, read_status
from helpdeskd.message import Inbound
from helpdeskd.runtime import load
from helpdeskd.sdnotify import Notifier
from helpdeskd.settings import Mailbox
from helpdeskd.supervisor import Backoff, supervise
from helpdeskd.templates import load_templates

SYSTEMD = ROOT / "systemd"


# -- supervision ----------------------------------------------------------------------------------------------


def test_backoff_doubles_up_to_its_ceiling():
    backoff = Backoff(first=1, most=300)
    assert [backoff.delay(n) for n in (1, 2, 3, 9, 10, 100)] == [1, 2, 4, 256, 300, 300]


def test_supervisor_logs_records_and_restarts_a_crashing_task():
    record, runs = MailboxHealth(), []

    async def flaky() -> None:
        runs.append(time.monotonic())
        if len(runs) <= 2:
            raise TypeError("unsupported operand")
        await asyncio.Event().wait()  # then runs until cancelled

    async def scenario() -> None:
        task = asyncio.create_task(supervise("box", flaky, record, Backoff(first=0.01, most=0.02), mailbox="box"))
        while len(runs) < 3:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task  # cancellation is a stop, not a crash: it passes through

    asyncio.run(scenario())
    assert record.restarts == 2 and record.failures == 2
    assert record.last_error == "task crashed: TypeError: unsupported operand"


def test_a_poller_that_crashes_is_restarted_and_files_the_mail(tmp_path, monkeypatch):
    """What used to end a poller task silently (a TypeError in its status writer) is now a restart."""
    config = write_config(tmp_path, config_data(tmp_path))
    import helpdeskd.daemon as daemon_module

    real, calls = daemon_module.poll_maildir, []

    def first_call_breaks(*args, **kwargs):
        calls.append(1)
        if len(calls) == 1:
            raise TypeError("'NoneType' object is not subscriptable")
        return real(*args, **kwargs)

    monkeypatch.setattr(daemon_module, "poll_maildir", first_call_breaks)
    daemon = Daemon(config, load(config), notifier=Notifier())
    drop(ensure_maildir(tmp_path / "inbox"), mail())
    assert asyncio.run(run_until(daemon, lambda: ticket_exists(tmp_path, 1))) == 0
    box = read_status(tmp_path / "state")["mailboxes"]["local"]
    assert box["restarts"] == 1 and box["last_error"] is None and box["counts"] == {"new": 1}


async def run_until(daemon: Daemon, done, deadline: float = 60.0) -> int:
    """Run the daemon in this loop until ``done()``, then stop it the way SIGTERM does."""
    runner = asyncio.create_task(daemon.run())
    limit = time.monotonic() + deadline
    while not done():
        assert time.monotonic() < limit and not runner.done(), "the daemon did not get there"
        await asyncio.sleep(0.05)
    daemon._on_stop("SIGTERM")
    return await runner


# -- sd_notify ------------------------------------------------------------------------------------------------


def test_notify_reaches_an_abstract_namespace_socket():
    name = f"helpdeskd-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as server:
        server.bind("\0" + name)
        notifier = Notifier(f"@{name}")
        assert notifier.ready("2 mailboxes\nsecond line")
        assert server.recv(4096) == b"READY=1\nSTATUS=2 mailboxes second line"


def test_notify_is_a_no_op_outside_systemd_and_watchdog_follows_its_pid():
    assert not Notifier().send(READY=1) and not Notifier("relative/path").enabled
    assert Notifier(None, "30000000").watchdog_seconds == 30.0
    assert Notifier(None, "30000000", str(os.getpid())).watchdog_seconds == 30.0
    assert Notifier(None, "30000000", "1").watchdog_seconds is None  # meant for another process
    assert Notifier(None, "0").watchdog_seconds is None


# -- logs -----------------------------------------------------------------------------------------------------


def test_journal_lines_carry_their_syslog_priority(tmp_path, monkeypatch):
    out = io.StringIO()
    logs.setup("info", json=True, stream=out, journal=True)
    logs.get("daemon").error("reload_refused", problems=["x"])
    logs.get("intake").info("message", ticket=3, message_id="<a@b>")
    error, info = out.getvalue().splitlines()
    assert error.startswith("<3>{") and json.loads(error[3:])["component"] == "daemon"
    assert info.startswith("<6>{") and json.loads(info[3:])["ticket"] == 3
    with open(tmp_path / "stream", "w") as stream:
        st = os.fstat(stream.fileno())
        monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
        assert logs.is_journal(stream) and not logs.is_journal(io.StringIO())
    logs.setup("info")


def test_a_component_logger_is_made_once_and_again_after_each_setup(monkeypatch):
    import structlog

    out = io.StringIO()
    logs.setup("warning", json=True, stream=out)
    log = logs.get("intake")  # made before the level changes, as every module's logger is
    made = []
    real = structlog.get_logger
    monkeypatch.setattr(structlog, "get_logger", lambda *a, **k: made.append(1) or real(*a, **k))
    log.info("hidden")
    log.warning("shown", path=Path("/x"), ticket=3)  # a value JSON has no form for: its repr
    assert len(made) == 1
    logs.setup("info", json=True, stream=out)  # a reload lowering the level
    log.info("now_shown")
    log.info("again")
    assert len(made) == 2
    logs.setup("warning", json=True, stream=out)

    class ReloadedMeanwhile:  # a reload in another thread just after the logger is made
        def __init__(self, *args, **kwargs):
            made.append(1)
            self.proxy = real(*args, **kwargs)

        def bind(self, **context):
            bound = self.proxy.bind(**context)  # with the configuration in force: warning
            logs.setup("info", json=True, stream=out)
            return bound

    monkeypatch.setattr(structlog, "get_logger", ReloadedMeanwhile)
    log.info("made_before_the_reload")  # made with the old configuration (warning): not shown
    monkeypatch.setattr(structlog, "get_logger", real)
    log.info("after_it")  # made again: the reload's level
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["event"] for line in lines] == ["shown", "now_shown", "again", "after_it"]
    assert lines[0]["path"] == "PosixPath('/x')" and lines[0]["component"] == "intake"
    logs.setup("info")


def test_deferred_lines_come_out_together_at_the_end_and_a_warning_brings_them_out_first():
    class Stream(io.StringIO):
        writes = 0

        def write(self, text):
            self.writes += 1
            return super().write(text)

    out = Stream()
    logs.setup("info", json=True, stream=out)
    log = logs.get("intake")
    elsewhere = threading.Thread(target=lambda: log.info("other_thread"))
    with logs.deferred():
        log.info("one")
        log.debug("not_shown")  # (filtered by the level, as ever)
        with logs.deferred():  # nested: still the outer block's
            log.info("two")
        elsewhere.start()
        elsewhere.join()
        assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == ["other_thread"]
        log.warning("three")
        log.info("four")
        assert out.writes == 2  # the other thread's line; "one", "two" and "three" in one write
    assert [json.loads(line)["event"] for line in out.getvalue().splitlines()] == [
        "other_thread", "one", "two", "three", "four"]
    assert out.writes == 3
    log.info("five")  # outside a block: at once
    assert out.writes == 4 and json.loads(out.getvalue().splitlines()[-1])["event"] == "five"
    logs.setup("info")


def test_a_reload_inside_a_deferred_block_keeps_the_lines_in_order_and_a_broken_stream_stops_nothing():
    first, second = io.StringIO(), io.StringIO()
    logs.setup("info", json=True, stream=first)
    log = logs.get("intake")
    with logs.deferred():
        log.info("a")
        logs.setup("info", json=True, stream=second)  # a reload mid-batch
        log.info("b")
        log.warning("c")  # brings out what was held before it, on the stream in use now
    assert first.getvalue() == ""
    assert [json.loads(line)["event"] for line in second.getvalue().splitlines()] == ["a", "b", "c"]

    class Broken(io.StringIO):
        def write(self, text):
            raise BrokenPipeError(32, "Broken pipe")

    logs.setup("info", json=True, stream=Broken())
    with logs.deferred():
        log.info("lost")  # (nowhere to go: dropped, and the work goes on)
    log.error("lost_too")
    logs.setup("info")


# -- status ---------------------------------------------------------------------------------------------------


def test_status_file_is_replaced_whole_and_judged(tmp_path):
    health = Health(config="/etc/helpdeskd/helpdeskd.toml")
    health.mailbox("local", "maildir").polled({"new": 2, "duplicate": 1}, None)
    health.mailbox("pop", "pop3s").polled({}, "authentication failed", needs_admin=True)
    health.state = "running"
    health.write(tmp_path)
    status = read_status(tmp_path)
    assert status["mailboxes"]["local"]["last_ok"] and status["mailboxes"]["pop"]["failures"] == 1
    assert attention(status, {"new": 0, "failed": 1}) == [
        "mailbox pop: failing (1 in a row): authentication failed",
        "1 dead letter(s) in outbox/failed/ (helpdeskctl outbox --state failed)"]
    assert "failing: pop" in health.summary() and "2 filed" in health.summary()
    assert [p.name for p in (tmp_path / "status").iterdir()] == ["daemon.json"]  # no temporary file left
    status["pid"] = 2 ** 22 + 1  # above pid_max: no such process
    assert "not running" in attention(status, {})[0]


def test_status_says_when_automatic_answers_are_paused_or_the_index_is_old(tmp_path):
    from helpdeskd.ctlstatus import _store_notes
    from helpdeskd.store.sentlog import SentLog
    from helpdeskd.store.tickets import TicketStore

    data = config_data(tmp_path)
    data["autoreply"] = {"global_max": 3}
    path = write_config(tmp_path, data)
    config = load_config(path)
    state = config.helpdesk.state_dir
    assert _store_notes(state, config) == []
    for extra in ([], ["--json"]):  # looking makes nothing: status may run as root on another user's folder
        assert ctl.main(["-c", str(path), "status", *extra]) == 2 and not state.exists()
    sent, now = SentLog(state), time.time()
    for n in range(3):
        assert _store_notes(state, config) == []
        sent.record(f"c{n}@cliente.es", f"id{n}", now, 3600)
    [paused] = _store_notes(state, config)
    assert paused.startswith("automatic answers are paused: 3 queued in the last 3600 s (autoreply global_max 3)")
    store = TicketStore(state)
    store.write_claim("abcd" + "0" * 28, {"action": "new", "ticket": 1})
    (state / "index" / "layout").unlink()  # as a store from before the current index layout
    assert _store_notes(state, config)[1] == ("the ticket index is in its old layout (lookups are slower): "
                                              "run helpdeskd fsck")


def test_status_tells_duplicates_from_ignored_mail(capsys):
    from helpdeskd.ctlstatus import _show_mailbox

    _show_mailbox("pop", {"protocol": "pop3s", "counts": {"new": 5, "followup": 2, "duplicate": 3, "ignored": 1,
                                                          "quarantined": 1}})
    assert "filed 7, duplicates 3, ignored 1, quarantined 1, refused 0" in capsys.readouterr().out


# -- retired queue, priority, category ---------------------------------------------------------------------------


def test_tickets_keep_working_when_their_queue_priority_and_category_are_removed(tmp_path, capsys):
    data = config_data(tmp_path)
    svc = Services.open(*runtime_of(write_config(tmp_path, data)))
    box = Mailbox("billing-box", "maildir", tmp_path / "inbox", 1.0, queue="billing", priority="low", category="dns")
    first = file_safely(Inbound("billing-box", "1", mail()), svc, box)
    [ack] = [e for e in svc.outbox.entries() if e.envelope["template"] == "ack_new"]

    data["queues"] = [q for q in data["queues"] if q["key"] != "billing"]
    data["priorities"] = [p for p in data["priorities"] if p["key"] != "low"]
    data["categories"] = [c for c in data["categories"] if c["key"] != "dns"]
    path = write_config(tmp_path, data)
    svc = Services.open(*runtime_of(path))
    reply = file_safely(Inbound("local", "2", answer_to(ack)), svc)
    assert (reply.action, reply.ticket) == ("followup", first.ticket), reply.detail
    assert ctl.main(["-c", str(path), "close", str(first.ticket)]) == 0
    assert ctl.main(["-c", str(path), "list", "--all"]) == 0
    listing = capsys.readouterr().out
    assert "billing (retired)" in listing and "low (retired)" in listing and "dns (retired)" in listing
    to_customer = sorted(e.envelope["template"] for e in svc.outbox.entries() if e.envelope["to"] == ["ana@cliente.es"])
    assert to_customer == ["ack_followup", "ack_new", "closed"] and list(svc.quarantine.items()) == []


def answer_to(entry) -> bytes:
    from helpdeskd.parse import parse

    ours = parse(entry.data)
    return mail(subject=f"Re: {ours.subject}", body="Sigue sin funcionar, gracias.", message_id="<r1@cliente.es>",
                extra=f"In-Reply-To: <{ours.message_id}>\nReferences: <{ours.message_id}>")


# -- the systemd files ----------------------------------------------------------------------------------------


def systemd_tool(name: str) -> str:
    path = shutil.which(name)
    assert path, f"{name} is missing: ./scripts/test installs Debian's systemd package"
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path):
    """Verified in a throwaway root holding what the unit names: /usr/bin/helpdeskd, /bin/kill, systemd's units."""
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    for target, source in (("usr/bin/helpdeskd", None), ("bin/kill", shutil.which("kill"))):
        (root / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(source, root / target) if source else (root / target).write_text("#!/bin/sh\n")
        (root / target).chmod(0o755)
    (root / "etc/systemd/system").mkdir(parents=True)
    shutil.copy(SYSTEMD / "helpdeskd.service", root / "etc/systemd/system")
    done = subprocess.run([systemd_tool("systemd-analyze"), "verify", f"--root={root}", "helpdeskd.service"],
                          capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_unit_exposure_stays_ok_and_the_sysusers_file_creates_the_user(tmp_path):
    done = subprocess.run([systemd_tool("systemd-analyze"), "security", "--offline=true", "--threshold=15",
                           str(SYSTEMD / "helpdeskd.service")], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr  # exposure 1.5 or better ("OK")
    (tmp_path / "etc").mkdir()
    subprocess.run([systemd_tool("systemd-sysusers"), f"--root={tmp_path}", "-"], check=True, timeout=60,
                   input=(SYSTEMD / "helpdeskd.sysusers.conf").read_bytes(), capture_output=True)
    assert "helpdeskd:x:" in (tmp_path / "etc/passwd").read_text()


# -- helpers --------------------------------------------------------------------------------------------------


def config_data(tmp_path: Path) -> dict:
    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(tmp_path / "state"), "templates_dir": str(ROOT / "templates")})
    data["mailboxes"] = [{"name": "local", "protocol": "maildir", "path": str(tmp_path / "inbox"), "interval": 0.1}]
    return data


def write_config(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "helpdeskd.toml"
    path.write_text(tomli_w.dumps(data), encoding="utf-8")
    return path


def runtime_of(path: Path):
    config = load_config(path)
    return config, load_templates(config)


def ensure_maildir(path: Path) -> Path:
    for sub in ("tmp", "new", "cur"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    return path


def ticket_exists(tmp_path: Path, n: int) -> bool:
    return (tmp_path / "state" / "tickets" / str(n // 1000) / str(n) / "ticket.toml").exists()


def test_the_status_names_the_config_by_an_absolute_path(tmp_path, monkeypatch):
    """helpdeskctl status --state-dir reads it from wherever it runs."""
    config = write_config(tmp_path, config_data(tmp_path))
    monkeypatch.chdir(config.parent)
    daemon = Daemon(Path(config.name), load(Path(config.name)), notifier=Notifier())
    assert daemon.health.config == str(config) and Path(daemon.health.config).is_absolute()
