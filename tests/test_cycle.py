"""The filing pipeline in-process against a real state directory: tickets, answers, idempotence, crashes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from helpdeskd import cycle
from helpdeskd.cycle import file_message, file_safely
from helpdeskd.message import Inbound
from helpdeskd.parse import parse
from helpdeskd.store.outbox import Outbox

from conftest import mail


def inbound(raw: bytes) -> Inbound:
    return Inbound("test", "1", raw)


def outbox_entries(svc, kind: str = "auto-reply"):
    """Queued mail of one kind: by default the answers to senders (staff notices are "notification")."""
    return [e for e in svc.outbox.entries() if e.envelope["kind"] == kind]


def test_new_message_becomes_ticket_and_spanish_ack(svc):
    raw = mail()
    outcome = file_safely(inbound(raw), svc)
    assert (outcome.action, outcome.ticket, outcome.reply) == ("new", 1, "ack_new")
    ticket = svc.store.get(1)
    assert ticket.subject == "Mi sitio no carga" and ticket.status == "new"
    assert ticket.requester.addr == "ana@cliente.es" and ticket.requester.language == "es"
    assert ticket.message_ids == ("m1@cliente.es",)
    folder = svc.store.ticket_dir(1)
    assert [p.read_bytes() for p in folder.glob("*.eml")] == [raw]  # byte for byte
    assert sorted(p.name for p in folder.iterdir() if not p.name.endswith(".eml")) == ["events.jsonl", "ticket.toml"]
    [entry] = outbox_entries(svc)
    assert entry.envelope["to"] == ["ana@cliente.es"] and entry.envelope["from"] == ""
    ack = parse(entry.data)
    assert ack.subject.startswith("[Soporte #1] Hemos recibido su solicitud")
    assert "registrado con el número 1" in ack.text
    assert ack.in_reply_to == ("m1@cliente.es",)
    assert ack.header("auto-submitted") == "auto-replied"
    assert b"\r\n" in entry.data and b"\n" not in entry.data.replace(b"\r\n", b"")


def test_english_sender_gets_english_ack(svc):
    raw = mail(subject="Cannot send mail", body="Hello, I cannot send mail from my account since yesterday. Thanks.")
    file_safely(inbound(raw), svc)
    [entry] = outbox_entries(svc)
    assert "We have received your request" in parse(entry.data).text


def test_same_bytes_twice_is_one_ticket_one_ack(svc):
    raw = mail()
    first, second = file_safely(inbound(raw), svc), file_safely(inbound(raw), svc)
    assert first.action == "new" and second.action == "duplicate" and second.ticket == 1
    assert first.reply == "ack_new" and second.reply is None  # the log line must not claim a second answer
    assert svc.store.last_id() == 1 and len(outbox_entries(svc)) == 1


def test_same_message_id_other_bytes_is_ignored(svc):
    file_safely(inbound(mail()), svc)
    copy = mail(extra="Received: from relay2.example by mx.example")  # same message through another path
    outcome = file_safely(inbound(copy), svc)
    assert outcome.action == "ignored" and "#1" in outcome.detail
    assert svc.store.last_id() == 1 and len(outbox_entries(svc)) == 1


def test_missing_message_id_uses_a_synthetic_key(svc):
    raw = mail(message_id=None)
    assert file_safely(inbound(raw), svc).action == "new"
    assert file_safely(inbound(raw), svc).action == "duplicate"
    assert file_safely(inbound(mail(message_id=None, body="otro texto distinto")), svc).ticket == 2


def reply_to_ack(svc, ack_bytes: bytes, body: str, sender: str = "Ana García <ana@cliente.es>") -> bytes:
    """What a mail client sends when the customer answers the acknowledgment it received."""
    ack = parse(ack_bytes)
    refs = " ".join(f"<{r}>" for r in (*ack.references, ack.message_id))
    return mail(subject=f"Re: {ack.subject}", body=body, sender=sender, message_id="<r1@cliente.es>",
                extra=f"In-Reply-To: <{ack.message_id}>\nReferences: {refs}")


def test_reply_to_ack_joins_ticket(svc):
    file_safely(inbound(mail()), svc)
    [ack] = outbox_entries(svc)
    outcome = file_safely(inbound(reply_to_ack(svc, ack.data, "Adjunto más datos: el error es 500.")), svc)
    assert (outcome.action, outcome.ticket, outcome.reply) == ("followup", 1, "ack_followup")
    ticket = svc.store.get(1)
    assert ticket.mail_count == 2 and "r1@cliente.es" in ticket.message_ids
    messages = [e for e in svc.store.events(1) if e["type"] == "message"]
    assert messages[-1]["text"].startswith("Adjunto más datos")


def test_the_history_keeps_a_text_once_and_a_replys_new_words_beside_it(svc):
    file_safely(inbound(mail()), svc)
    [ack] = outbox_entries(svc)
    body = "Sigue sin cargar.\n\nEl lunes, Soporte escribió:\n> Hemos recibido su solicitud"
    file_safely(inbound(reply_to_ack(svc, ack.data, body)), svc)
    first, reply = [e for e in svc.store.events(1) if e["type"] == "message"]
    assert "new_text" not in first and first["text"].startswith("Hola")  # all new: kept once
    assert reply["new_text"] == "Sigue sin cargar." and reply["text"].endswith("> Hemos recibido su solicitud")


def test_a_new_tickets_claim_records_the_action_as_asdict_would():
    from dataclasses import asdict

    from helpdeskd.actions import NewTicket
    from helpdeskd.ticket import Requester

    action = NewTicket("Asunto", Requester("ana@cliente.es", "Ana", "es"), "general", "normal", "web",
                       ("luis@cliente.es",), (7,), "customer", "cliente.es", "rev1")
    assert cycle._plain(action) == asdict(action)


def test_a_ticket_whose_mail_is_in_a_mail_folder_keeps_it_there(svc):
    """Tickets made before the raw mail went into the ticket's own folder have it under ``mail/``:
    their next message goes there too, and every reader finds all of it."""
    from helpdeskd.store.fsck import fsck

    raw = mail()
    file_safely(inbound(raw), svc)
    folder = svc.store.ticket_dir(1)
    [first] = folder.glob("*.eml")
    (folder / "mail").mkdir()
    first.rename(folder / "mail" / first.name)  # as an older version left it
    [ack] = outbox_entries(svc)
    reply = reply_to_ack(svc, ack.data, "Adjunto más datos.")
    assert file_safely(inbound(reply), svc).action == "followup"
    keys = svc.store.get(1).message_keys
    names = [svc.store.find_mail(1, key) for key in keys]
    assert sorted(p.name for p in (folder / "mail").iterdir()) == sorted(names) and not list(folder.glob("*.eml"))
    assert [svc.store.read_mail(1, name) for name in names] == [raw, reply]
    assert file_safely(inbound(reply), svc).action == "duplicate" and len(list((folder / "mail").iterdir())) == 2
    assert fsck(svc.config.helpdesk.state_dir, rebuild=False, verify_mail=True).problems == []


def test_reply_to_closed_ticket_reopens(svc):
    file_safely(inbound(mail()), svc)
    svc.store.save(svc.store.get(1).with_changes(status="closed"))
    [ack] = outbox_entries(svc)
    outcome = file_safely(inbound(reply_to_ack(svc, ack.data, "Sigue sin funcionar.")), svc)
    assert outcome.action == "reopened" and svc.store.get(1).status == "reopened"
    assert any(e["type"] == "change" and e["field"] == "status" and e["to"] == "reopened" for e in svc.store.events(1))


def test_refused_mail_is_kept_and_answered(tmp_path):
    from conftest import make_config
    from helpdeskd.cycle import Services
    from helpdeskd.templates import load_templates

    config = make_config(tmp_path, enabled=False)
    svc = Services.open(config, load_templates(config))
    raw = mail()
    outcome = file_safely(inbound(raw), svc)
    assert outcome.action == "refused" and outcome.ticket is None
    [kept] = list(svc.refused.items())
    assert "disabled" in kept.reason and kept.path.read_bytes() == raw
    [answer] = outbox_entries(svc)
    assert "desactivado" in parse(answer.data).text
    assert file_safely(inbound(raw), svc).action == "duplicate" and len(outbox_entries(svc)) == 1


def test_processing_error_quarantines_with_reason(svc, monkeypatch):
    def broken(*args, **kwargs):
        raise ValueError("simulated bug")

    monkeypatch.setattr(cycle, "decide", broken)
    raw = mail()
    outcome = file_safely(inbound(raw), svc)
    assert outcome.action == "quarantined" and "simulated bug" in outcome.detail
    [item] = list(svc.quarantine.items())
    assert item.path.read_bytes() == raw and "ValueError: simulated bug" in item.reason


def test_storage_failure_is_transient_not_quarantined(svc, monkeypatch):
    from helpdeskd.errors import TransientError

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(svc.store, "save", full)
    with pytest.raises(TransientError, match="No space left"):
        file_safely(inbound(mail()), svc)
    assert list(svc.quarantine.items()) == []


STEPS = ["allocate_id", "write_claim", "save", "store_mail", "append_event", "index_message_id", "enqueue"]


@pytest.mark.parametrize("step", STEPS)
@pytest.mark.parametrize("nth", [1, 2])
def test_crash_at_any_step_then_refile_gives_one_ticket_one_ack(svc, monkeypatch, step, nth):
    """Simulate a crash (an exception the pipeline does not catch) at the nth call of each side effect."""

    class Crash(BaseException):
        pass

    target = svc.outbox if step == "enqueue" else svc.store
    real = getattr(target, step)
    calls = {"n": 0}

    def crashing(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == nth:
            raise Crash()
        return real(*args, **kwargs)

    monkeypatch.setattr(target, step, crashing)
    raw = mail()
    try:
        file_message(inbound(raw), svc)
    except Crash:
        pass
    monkeypatch.setattr(target, step, real)
    file_message(inbound(raw), svc)
    file_message(inbound(raw), svc)
    ids = list(svc.store.iter_ids())
    assert len(ids) == 1
    ticket = svc.store.get(ids[0])
    assert ticket is not None and ticket.message_keys == (parse(raw).key,)
    assert len(outbox_entries(svc)) == 1
    events = svc.store.events(ticket.id)
    assert [e["type"] for e in events].count("message") == 1
    assert [e.get("template") for e in events if e["type"] == "reply_queued"].count("ack_new") == 1


@pytest.mark.parametrize("lost", ["mail", "history", "both", "cut short", "whole history"])
def test_refiling_restores_what_a_power_failure_lost_behind_saved_metadata(svc, lost):
    """Without a journal, a power failure before the group commit may keep ticket.toml (which lists
    the message as filed) and lose the raw mail or its history line, written just before it: filing
    the same bytes again (they are still upstream) puts them back, once."""
    raw = mail()
    first = file_message(inbound(raw), svc)
    folder = svc.store.ticket_dir(first.ticket)
    [eml] = list(folder.glob("*.eml"))
    if lost in ("mail", "both"):
        eml.unlink()
    if lost == "cut short":
        eml.write_bytes(raw[:10])
    if lost in ("history", "both"):
        events = (folder / "events.jsonl").read_bytes().splitlines(keepends=True)
        (folder / "events.jsonl").write_bytes(b"".join(e for e in events if b'"type": "message"' not in e))
    if lost == "whole history":
        (folder / "events.jsonl").unlink()
    again = file_message(inbound(raw), svc)
    assert (again.action, again.ticket, again.reply) == ("duplicate", first.ticket, None)
    expected = {"mail": ["raw mail"], "cut short": ["raw mail", "cut short"], "history": ["message restored"],
                "both": ["raw mail", "message restored"], "whole history": ["'created' restored", "message restored"]}
    assert all(part in again.detail for part in expected[lost]), again.detail
    assert [(p.name, p.read_bytes()) for p in folder.glob("*.eml")] == [(eml.name, raw)]  # as it was
    messages = [e for e in svc.store.events(first.ticket) if e["type"] == "message"]
    assert len(messages) == 1 and (folder / messages[0]["file"]).read_bytes() == raw
    assert svc.store.get(first.ticket).mail_count == 1 and len(outbox_entries(svc)) == 1
    assert [e["type"] for e in svc.store.events(first.ticket)].count("created") == 1
    assert "restored" not in file_message(inbound(raw), svc).detail  # and again: nothing more
    assert len(list(folder.glob("*.eml"))) == 1
    assert [e["type"] for e in svc.store.events(first.ticket)].count("message") == 1


def test_a_lost_history_is_restored_after_fsck_rebuilt_the_claim_too(svc):
    from helpdeskd.store.fsck import fsck

    raw = mail()
    first = file_message(inbound(raw), svc)
    (svc.store.ticket_dir(first.ticket) / "events.jsonl").unlink()
    Path(svc.store._key_path(parse(raw).key)).unlink()
    state = svc.config.helpdesk.state_dir
    assert len(fsck(state).problems) == 2  # (and the claim is rebuilt: a followup with nothing to send)
    again = file_message(inbound(raw), svc)
    assert "'created' restored" in again.detail and "message restored" in again.detail
    assert fsck(state, rebuild=False, verify_mail=True).problems == [] and len(outbox_entries(svc)) == 1


def test_a_ticket_folder_lost_whole_is_filed_again_without_a_second_answer(svc):
    raw = mail()
    first = file_message(inbound(raw), svc)
    shutil.rmtree(svc.store.ticket_dir(first.ticket))
    again = file_message(inbound(raw), svc)
    assert (again.action, again.ticket, again.reply) == ("new", first.ticket, None)  # nothing queued now
    assert svc.store.get(first.ticket).message_keys == (parse(raw).key,) and len(outbox_entries(svc)) == 1


def test_refiling_keeps_a_stored_mail_that_differs_only_in_line_ends(svc):
    """The same message delivered with other line ends has the same key: what is stored stays."""
    raw = mail().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
    first = file_message(inbound(raw), svc)
    [eml] = list(svc.store.ticket_dir(first.ticket).glob("*.eml"))
    assert file_message(inbound(raw.replace(b"\r\n", b"\n")), svc).action == "duplicate"
    assert eml.read_bytes() == raw


def test_subject_cannot_inject_headers(svc):
    raw = mail(subject="=?utf-8?q?hola=0D=0ABcc:_victim@example.org?=")
    file_safely(inbound(raw), svc)
    [entry] = outbox_entries(svc)
    assert b"\r\nBcc:" not in entry.data and b"victim@example.org" in entry.data
    assert parse(entry.data).header("bcc") is None


def test_display_name_cannot_inject_headers(svc):
    raw = mail(sender='"=?utf-8?q?Ana=0D=0ABcc:_x@y.example?=" <ana@cliente.es>')
    file_safely(inbound(raw), svc)
    [entry] = outbox_entries(svc)
    assert parse(entry.data).header("bcc") is None


def test_ack_does_not_echo_the_customer_message(svc):
    secret = "VIAGRA-CHEAP-PILLS-http://spam.example"
    file_safely(inbound(mail(body=f"Hola, gracias. {secret}")), svc)
    [entry] = outbox_entries(svc)
    assert secret.encode() not in entry.data


def test_outbox_envelope_is_json_first_line(svc):
    file_safely(inbound(mail()), svc)
    heads = [json.loads(p.read_bytes().split(b"\n", 1)[0]) for p in (svc.outbox.root / "new").glob("*.msg")]
    [head] = [h for h in heads if h["kind"] == "auto-reply"]
    assert head["ticket"] == 1 and head["template"] == "ack_new" and head["kind"] == "auto-reply"
    assert Outbox(svc.config.helpdesk.state_dir).depth() == {"new": 2, "cur": 0, "failed": 0}  # + staff notice


def test_long_non_ascii_subject_is_folded_not_refused(svc):
    subject = "Configuración del correo electrónico — " + "información adicional " * 12
    outcome = file_safely(inbound(mail(subject=subject)), svc)
    assert outcome.action == "new" and list(svc.quarantine.items()) == []
    [entry] = outbox_entries(svc)
    assert " ".join(subject.split()) in parse(entry.data).subject
    assert all(len(line) <= 998 for line in entry.data.split(b"\r\n"))


def test_a_different_message_reusing_a_message_id_is_not_dropped(svc):
    """A script with a fixed Message-ID, or a stranger quoting a known one: filed on its own, never lost
    and never joined to the first ticket by the id alone."""
    file_safely(inbound(mail()), svc)
    other = mail(sender="monitor@servidor.example", subject="ALERTA disco lleno", body="/var al 98%")
    outcome = file_safely(inbound(other), svc)
    assert outcome.action == "new" and outcome.ticket == 2
    assert svc.store.get(1).mail_count == 1 and svc.store.get(2).requester.addr == "monitor@servidor.example"


def test_a_relay_copy_is_a_duplicate_even_while_the_first_copy_is_half_filed(svc, monkeypatch):
    """A crash right after the first copy's decision was recorded: a copy through another relay must not
    become a second ticket before the first copy is filed again."""

    class Crash(BaseException):
        pass

    real = svc.store.store_mail

    def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(svc.store, "store_mail", crash)
    with pytest.raises(Crash):
        file_message(inbound(mail()), svc)
    monkeypatch.setattr(svc.store, "store_mail", real)
    copy = mail(extra="Received: from relay2.example by mx.example")
    assert file_safely(inbound(copy), svc).action == "ignored"
    assert file_safely(inbound(mail()), svc).action == "new"  # the first copy, offered again, completes
    assert svc.store.last_id() == 1


def test_a_re_run_that_queues_only_the_staff_notice_does_not_name_the_senders_answer(svc):
    raw = mail()
    first = file_safely(Inbound("t", "1", raw), svc)
    assert (first.action, first.reply) == ("new", "ack_new")
    [staff] = [e for e in svc.outbox.entries() if e.envelope["template"] == "staff_new"]
    staff.path.unlink()  # a crash after the acknowledgment was queued, before the staff notice was
    again = file_safely(Inbound("t", "1", raw), svc)
    assert (again.action, again.reply) == ("new", None)  # the notice is queued now; the ack was already
    assert sorted(e.envelope["template"] for e in svc.outbox.entries()) == ["ack_new", "staff_new"]
    assert file_safely(Inbound("t", "1", raw), svc).action == "duplicate"


def test_every_note_of_a_decision_is_in_the_history_once(svc):
    cc = ", ".join(f"c{i}@cliente.es" for i in range(12))
    raw = mail(extra=f"Cc: {cc}\r\nAuto-Submitted: auto-generated")  # too many Cc, and mail we never answer
    outcome = file_safely(inbound(raw), svc)
    assert outcome.action == "new"
    notes = [e["text"] for e in svc.store.events(outcome.ticket) if e["type"] == "note"]
    assert len(notes) == 2 and notes[0].startswith("no automatic answer") and "Cc addresses" in notes[1]
    assert file_safely(inbound(raw), svc).action == "duplicate"
    assert len([e for e in svc.store.events(outcome.ticket) if e["type"] == "note"]) == 2
