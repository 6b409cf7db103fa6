"""Who may open a ticket by mail (allow_customer_tickets, allowed/denied domains, unknown senders),
the held folder, and the mail gateway switch: nothing refused or held is ever dropped."""

from __future__ import annotations

import io
import os
import signal
import json
import subprocess
import sys

import pytest

from helpdeskd import cli, ctl
from helpdeskd.intake import poll_maildir
from helpdeskd.parse import parse
from helpdeskd.sources.maildir import MaildirSource

from conftest import ROOT, mail
from roles import SENDERS, send, services, write


def new_mail(sender: str, n: int = 1) -> bytes:
    return mail(subject="Necesito ayuda", sender=sender, message_id=f"<s{n}.{sender}>")


def answers(svc, template: str) -> list:
    return [e for e in svc.outbox.entries() if e.envelope["template"] == template]


POLICIES = [
    # (sections, sender label, expected action, refusal code or "")
    ({}, "unknown", "new", ""),
    ({"access": {"unknown_senders": "refuse"}}, "unknown", "refused", "unknown_sender"),
    ({"access": {"unknown_senders": "refuse"}}, "uno-user", "new", ""),
    ({"access": {"unknown_senders": "hold"}}, "unknown", "held", ""),
    ({"access": {"unknown_senders": "hold"}}, "cuatro-user", "new", ""),
    ({"access": {"deny_domains": ["uno.example"]}}, "uno-user", "refused", "domain_denied"),
    ({"access": {"deny_domains": ["uno.example"]}}, "uno-owner", "refused", "domain_denied"),
    ({"access": {"deny_domains": ["uno.example"]}}, "dos-user", "new", ""),
    ({"access": {"allow_domains": ["uno.example"]}}, "dos-user", "refused", "domain_not_allowed"),
    ({"access": {"allow_domains": ["uno.example"]}}, "uno-user", "new", ""),
    ({"access": {"allow_domains": ["uno.example"]}}, "acme", "new", ""),  # configured roles are not domains
    ({"access": {"allow_domains": ["uno.example"]}}, "unknown", "refused", "domain_not_allowed"),
    ({"helpdesk": {"allow_customer_tickets": False}}, "uno-user", "refused", "customers_not_allowed"),
    ({"helpdesk": {"allow_customer_tickets": False}}, "admin", "new", ""),  # the admin is no customer
    ({"access": {"deny_domains": ["hosting.example"], "unknown_senders": "refuse"}}, "admin", "new", ""),
]


@pytest.mark.parametrize("sections,label,action,code", POLICIES)
def test_submission_policy(tmp_path, sections, label, action, code):
    svc = services(tmp_path, **sections)
    outcome = send(svc, new_mail(SENDERS[label]))
    assert outcome.action == action
    refused, held = list(svc.refused.items()), list(svc.held.items())
    assert (len(refused), len(held)) == (action == "refused", action == "held")  # kept, never dropped
    if action == "refused":
        [answer] = answers(svc, "refused")
        assert answer.envelope["to"] == [SENDERS[label]] and code in svc.store.read_claim(parse(
            new_mail(SENDERS[label])).key)["code"]
    if action == "held":
        assert not list(svc.outbox.entries())  # nobody is told: an admin decides


@pytest.mark.parametrize("lang,phrase", [("es", "desde su dominio"), ("en", "from your domain")])
def test_refusal_explains_the_domain_in_the_senders_language(tmp_path, lang, phrase):
    svc = services(tmp_path, access={"deny_domains": ["uno.example"]})
    send(svc, mail(sender=SENDERS["uno-user"], extra=f"Content-Language: {lang}"))
    [answer] = answers(svc, "refused")
    assert phrase in parse(answer.data).text


def test_held_mail_is_listed_and_released_as_a_ticket_once(tmp_path, capsys):
    path = write(tmp_path, access={"unknown_senders": "hold"})
    svc = services(tmp_path, access={"unknown_senders": "hold"})
    assert send(svc, new_mail(SENDERS["unknown"])).action == "held"
    assert send(svc, new_mail(SENDERS["unknown"])).action == "duplicate"  # the same bytes again
    assert ctl.main(["-c", str(path), "held"]) == 0
    listing = capsys.readouterr().out
    [item] = list(svc.held.items())
    assert item.id in listing and "not a known customer" in listing and "1 message(s) in held/" in listing
    assert ctl.main(["-c", str(path), "held", "release", item.id]) == 0
    assert "new ticket #1" in capsys.readouterr().out
    ticket = svc.store.get(1)
    assert (ticket.requester.addr, ticket.origin_role) == (SENDERS["unknown"], "unknown")
    assert not list(svc.held.items()) and answers(svc, "ack_new")
    assert send(svc, new_mail(SENDERS["unknown"])).action == "duplicate"  # filed now: never a second ticket
    assert ctl.main(["-c", str(path), "held", "release", item.id]) == 1


# -- the mail gateway switch --------------------------------------------------------------------------
def drop(inbox, raw: bytes, name: str = "1.eml") -> None:
    MaildirSource("local", inbox).ensure()
    (inbox / "tmp" / name).write_bytes(raw)
    (inbox / "tmp" / name).rename(inbox / "new" / name)


def test_gateway_off_polls_no_mailbox_and_the_mail_stays(tmp_path, capsys):
    path = write(tmp_path, mail_gateway={"enabled": False})
    drop(tmp_path / "inbox", new_mail(SENDERS["uno-user"]))
    assert cli.main(["once", "-c", str(path)]) == 0
    assert "mail gateway disabled" in capsys.readouterr().out
    assert [p.name for p in (tmp_path / "inbox" / "new").iterdir()] == ["1.eml"]
    assert not (tmp_path / "state" / "seq").exists()
    on = write(tmp_path, mail_gateway={"enabled": True})  # switched on again: the waiting mail is filed
    assert cli.main(["once", "-c", str(on)]) == 0
    assert not list((tmp_path / "inbox" / "new").iterdir()) and (tmp_path / "state" / "seq").read_text() == "1\n"


def test_gateway_off_deliver_asks_the_mta_to_keep_the_mail(tmp_path, capsys, monkeypatch):
    path = write(tmp_path, mail_gateway={"enabled": False})
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(new_mail(SENDERS["uno-user"]))))
    assert cli.main(["deliver", "-c", str(path)]) == 75
    assert "mail gateway disabled" in capsys.readouterr().err
    assert not (tmp_path / "state" / "seq").exists()


def test_gateway_off_leaves_the_rest_running(tmp_path, capsys):
    path = write(tmp_path, mail_gateway={"enabled": False})
    svc = services(tmp_path, mail_gateway={"enabled": False})
    assert svc.config.intake_mailboxes() == () and svc.config.mailboxes
    assert poll_maildir(svc.config.mailboxes[0], svc).error is None  # a direct poll still works (tools)
    assert cli.main(["check-config", "-c", str(path)]) == 0
    assert "mail gateway disabled" in capsys.readouterr().out
    assert ctl.main(["-c", str(path), "list"]) == 0


def test_daemon_with_gateway_off_leaves_mail_then_a_reload_switches_it_on(tmp_path):
    from test_cli import wait_for

    MaildirSource("local", tmp_path / "inbox").ensure()
    off = write(tmp_path, mail_gateway={"enabled": False})
    log = tmp_path / "daemon.log"
    proc = subprocess.Popen([sys.executable, "-m", "helpdeskd.cli", "run", "-c", str(off)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=log.open("ab"))

    def started() -> list[dict]:
        lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
        return [e for e in lines if e.get("event") == "started"]

    try:
        assert wait_for(started)
        assert started()[0]["mailboxes"] == []  # no poller at all: nothing will take the mail below
        drop(tmp_path / "inbox", new_mail(SENDERS["uno-user"]))
        assert [p.name for p in (tmp_path / "inbox" / "new").iterdir()] == ["1.eml"]
        write(tmp_path, mail_gateway={"enabled": True}, mailboxes=[{"name": "local", "protocol": "maildir",
                                                                     "path": str(tmp_path / "inbox"), "interval": 0.2}])
        proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: not list((tmp_path / "inbox" / "new").iterdir()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    finally:
        proc.kill()
    assert (tmp_path / "state" / "seq").read_text() == "1\n"


@pytest.mark.skipif(os.geteuid() != 0, reason="starting Dovecot needs root (CI runs as root)")
def test_gateway_off_leaves_pop3_mail_on_the_server(dovecot, tmp_path, capsys):
    from test_pop3 import Box

    box = Box(dovecot, tmp_path)
    box.put(new_mail(SENDERS["uno-user"]))
    off = write(tmp_path, mail_gateway={"enabled": False}, mailboxes=[box.entry()])
    assert cli.main(["once", "-c", str(off)]) == 0
    assert box.left == 1 and "support" not in capsys.readouterr().out  # not even a connection
    on = write(tmp_path, mail_gateway={"enabled": True}, mailboxes=[box.entry()])
    assert cli.main(["once", "-c", str(on)]) == 0
    assert box.left == 0 and "support: 1 new" in capsys.readouterr().out
