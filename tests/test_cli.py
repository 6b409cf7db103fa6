"""The commands as a user runs them: real processes, real files, exit codes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from conftest import ROOT, mail, write_config


def helpdeskd(*args: str, stdin: bytes | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpdeskd.cli", *args], input=stdin, capture_output=True,
                          timeout=timeout, cwd=ROOT)


def helpdeskctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "helpdeskd.ctl", *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)


def test_check_config_accepts_the_shipped_files():
    for path in sorted((ROOT / "config").rglob("*.toml")):
        result = helpdeskd("check-config", "-c", str(path))
        assert result.returncode == 0, result.stderr
        assert b"is valid" in result.stdout


def test_check_config_lists_every_problem_with_its_path(tmp_path):
    path = write_config(tmp_path, lambda t: t.replace('default_queue = "general"', 'default_queue = "nope"')
                        .replace('default_language = "es"', 'default_language = "fr"'))
    result = helpdeskd("check-config", "-c", str(path))
    assert result.returncode == 1 and b"Traceback" not in result.stderr
    assert b"helpdesk.default_queue" in result.stderr and b"helpdesk.default_language" in result.stderr


def test_check_config_catches_a_broken_template(tmp_path):
    import shutil

    shutil.copytree(ROOT / "templates", tmp_path / "tpl")
    (tmp_path / "tpl" / "en" / "reopened.txt").write_text("{{ ticket.id }\n")
    path = write_config(tmp_path, templates_dir=str(tmp_path / "tpl"))
    result = helpdeskd("check-config", "-c", str(path))
    assert result.returncode == 1 and b"en/reopened.txt, line 1" in result.stderr


def test_deliver_files_and_show_displays_it(tmp_path):
    path = write_config(tmp_path)
    result = helpdeskd("deliver", "-c", str(path), stdin=mail().replace(b"\r\n", b"\n"))
    assert result.returncode == 0, result.stderr
    listing = json.loads(helpdeskctl("-c", str(path), "list", "--json").stdout)
    assert [(t["id"], t["subject"], t["token"]) for t in listing] == [(1, "Mi sitio no carga", None)]
    shown = helpdeskctl("-c", str(path), "show", "1")
    assert shown.returncode == 0
    assert "desde esta mañana mi sitio web no carga" in shown.stdout
    assert "[Soporte #1] Hemos recibido su solicitud" in shown.stdout
    outbox = helpdeskctl("-c", str(path), "outbox")
    assert "ana@cliente.es" in outbox.stdout and "2 new" in outbox.stdout  # the ack and the staff notice


def test_output_cut_short_by_its_reader_is_not_an_error(tmp_path):
    path = write_config(tmp_path)
    assert helpdeskd("deliver", "-c", str(path), stdin=mail()).returncode == 0
    reader = subprocess.Popen([sys.executable, "-m", "helpdeskd.ctl", "-c", str(path), "show", "1"], cwd=ROOT,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    reader.stdout.close()  # like "| head -0": gone before the first line is written
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 0 and "Traceback" not in stderr and "BrokenPipe" not in stderr


def test_deliver_the_same_mail_twice_is_one_ticket(tmp_path):
    path = write_config(tmp_path)
    for _ in range(2):
        assert helpdeskd("deliver", "-c", str(path), stdin=mail()).returncode == 0
    assert len(json.loads(helpdeskctl("-c", str(path), "list", "--json").stdout)) == 1


def test_fsck_reports_what_it_checked_and_indexed(tmp_path):
    config = write_config(tmp_path)
    assert helpdeskd("deliver", "-c", str(config), stdin=mail()).returncode == 0
    checked = helpdeskd("fsck", "-c", str(config), "--check-only")
    assert checked.returncode == 0 and checked.stdout.decode().strip() == "1 tickets checked, 0 problems"
    rebuilt = helpdeskd("fsck", "-c", str(config))
    assert rebuilt.returncode == 0
    assert rebuilt.stdout.decode().strip() == "1 tickets checked, 1 Message-IDs and 1 message keys indexed, 0 problems"
    [eml] = (tmp_path / "state" / "tickets" / "0" / "1").glob("*.eml")
    eml.write_bytes(b"")
    assert helpdeskd("fsck", "-c", str(config), "--check-only").returncode == 0  # not read without asking
    verified = helpdeskd("fsck", "-c", str(config), "--check-only", "--verify-mail")
    assert verified.returncode == 1 and "does not match its message key" in verified.stdout.decode()


def test_deliver_asks_the_mta_to_retry_on_a_bad_config(tmp_path):
    path = write_config(tmp_path, lambda t: t.replace("[helpdesk]", "[helpdesk]\nbogus = 1"))
    assert helpdeskd("deliver", "-c", str(path), stdin=mail()).returncode == 75


def test_deliver_asks_the_mta_to_retry_when_the_store_stays_busy(tmp_path):
    path = write_config(tmp_path)
    state = tmp_path / "state"
    code = ("import time; from pathlib import Path; from helpdeskd.store.lock import StateLock;"
            f"StateLock(Path({str(state)!r})).acquire(); print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT)
    try:
        assert holder.stdout.readline().strip() == "held"
        result = helpdeskd("deliver", "-c", str(path), "--wait", "0.3", stdin=mail())
        assert result.returncode == 75 and b"busy" in result.stderr
    finally:
        holder.kill()
        holder.wait()
    assert helpdeskd("deliver", "-c", str(path), stdin=mail()).returncode == 0


def test_deliver_refuses_oversized_mail(tmp_path):
    path = write_config(tmp_path, lambda t: t + "\n[limits]\nmax_message_bytes = 100\n")
    result = helpdeskd("deliver", "-c", str(path), stdin=mail())
    assert result.returncode == 65 and b"max_message_bytes" in result.stderr


def drop(inbox: Path, name: str, raw: bytes) -> None:
    """Deliver into a Maildir the way an MTA does: write in tmp/, rename into new/."""
    for sub in ("tmp", "new", "cur"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    (inbox / "tmp" / name).write_bytes(raw)
    os.rename(inbox / "tmp" / name, inbox / "new" / name)


def test_once_files_the_maildir(tmp_path):
    path = write_config(tmp_path)
    drop(tmp_path / "inbox", "1.eml", mail())
    drop(tmp_path / "inbox", "2.eml", mail(message_id="<m2@x>", subject="Otro", body="Otro problema, gracias"))
    result = helpdeskd("once", "-c", str(path))
    assert result.returncode == 0 and b"local: 2 new" in result.stdout
    assert list((tmp_path / "inbox" / "new").iterdir()) == []
    assert len(list((tmp_path / "inbox" / "cur").iterdir())) == 2


def wait_for(predicate, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_run_files_mail_as_it_arrives_and_stops_on_sigterm(tmp_path):
    path = write_config(tmp_path)
    proc = subprocess.Popen([sys.executable, "-m", "helpdeskd.cli", "run", "-c", str(path)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        drop(tmp_path / "inbox", "1.eml", mail())
        ticket = tmp_path / "state" / "tickets" / "0" / "1" / "ticket.toml"
        assert wait_for(ticket.exists)
        second = helpdeskd("run", "-c", str(path), timeout=20)
        assert second.returncode == 1 and b"already running" in second.stderr
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    logs = [json.loads(line) for line in proc.stderr.read().splitlines() if line.startswith(b"{")]
    filed = [entry for entry in logs if entry.get("event") == "message"]
    assert filed and filed[0]["action"] == "new" and filed[0]["ticket"] == 1 and filed[0]["source"] == "local"
    assert {"message_id", "duration_ms", "component"} <= filed[0].keys()


def test_staff_work_from_the_command_line(tmp_path):
    path = write_config(tmp_path)
    assert helpdeskd("deliver", "-c", str(path), stdin=mail()).returncode == 0
    c = ("-c", str(path))
    staff = ("--from", "agente@helpdesk.localhost", "--name", "María")
    replied = helpdeskctl(*c, "reply", "1", *staff, "-m", "Hola Ana, reiniciado.")
    assert replied.returncode == 0 and "status open" in replied.stdout and "1 mail(s) queued" in replied.stdout
    assert helpdeskctl(*c, "note", "1", *staff, "-m", "cliente importante").returncode == 0
    assert helpdeskctl(*c, "set", "1", "priority", "alta").returncode == 0
    assert helpdeskctl(*c, "assign", "1", *staff).returncode == 0
    bad = helpdeskctl(*c, "set", "1", "queue", "nope")
    assert bad.returncode == 1 and "unknown queue" in bad.stderr
    assert helpdeskctl(*c, "close", "1").returncode == 0
    assert helpdeskctl(*c, "reopen", "1", "--quiet").returncode == 0
    assert helpdeskctl(*c, "close", "99").returncode == 1
    ticket = json.loads(helpdeskctl(*c, "show", "1", "--json").stdout)
    t, events = ticket["ticket"], ticket["events"]
    assert (t["status"], t["priority"], t["assignee"], t["queue"]) == ("reopened", "high", "agente@helpdesk.localhost",
                                                                       "general")
    sent = {(e["template"], e["to"]) for e in events if e["type"] == "reply_queued"}
    assert ("staff_answer", "ana@cliente.es") in sent and ("closed", "ana@cliente.es") in sent
    outbox = json.loads(helpdeskctl(*c, "outbox", "--json").stdout)
    to_customer = [m for m in outbox if m["envelope"]["to"] == ["ana@cliente.es"]]
    assert {m["envelope"]["template"] for m in to_customer} == {"ack_new", "staff_answer", "closed"}
    shown = helpdeskctl(*c, "show", "1").stdout
    assert "INTERNAL NOTE" in shown and "cliente importante" in shown
    assert helpdeskctl(*c, "close", "1", "--quiet").returncode == 0
    listed = helpdeskctl(*c, "list").stdout  # the closed ticket is not listed, but said to be there
    assert "0 ticket(s); 1 closed not shown (--all shows them)" in listed
    assert "1 ticket(s)\n" in helpdeskctl(*c, "list", "--all").stdout
    other_queue = helpdeskctl(*c, "list", "--queue", "billing").stdout
    assert other_queue.endswith("0 ticket(s)\n")  # another queue's closed tickets are not counted


def test_helpdeskctl_takes_the_config_before_or_after_the_command():
    from helpdeskd.ctl import _parser

    parser = _parser()
    assert parser.parse_args(["-c", "a.toml", "status"]).config == "a.toml"
    assert parser.parse_args(["status", "-c", "b.toml"]).config == "b.toml"  # as "helpdeskd deliver -c FILE"
    assert parser.parse_args(["outbox", "retry", "--all", "-c", "c.toml"]).config == "c.toml"
    assert parser.parse_args(["--config", "d.toml", "list", "--c", "dns"]).category == ["dns"]  # still --category
    assert parser.parse_args(["show", "3"]).config is None  # then $HELPDESKD_CONFIG or /etc/helpdeskd
