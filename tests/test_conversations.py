"""Conversations by email: who may join a ticket, commands in both languages, staff answers and notes,
closed-ticket policies, collaborators — filed through the real pipeline into a real state directory."""

from __future__ import annotations

import pytest

from helpdeskd.cycle import Services, file_safely
from helpdeskd.matching import make_message_id, plus_address
from helpdeskd.message import Inbound
from helpdeskd.parse import parse
from helpdeskd.templates import load_templates

from conftest import make_config, mail

STAFF = "agente@helpdesk.localhost"  # staff of the "general" queue in the shipped config
ESCALATION = "responsable@helpdesk.localhost"  # escalation contact of "technical"
counter = iter(range(1, 10_000))


def helpdesk(tmp_path, **changes) -> Services:
    config = make_config(tmp_path, **changes)
    return Services.open(config, load_templates(config))


@pytest.fixture
def svc(tmp_path) -> Services:
    return helpdesk(tmp_path)


def send(svc, raw: bytes):
    return file_safely(Inbound("test", str(next(counter)), raw), svc)


def mails(svc, to: str | None = None, template: str | None = None) -> list:
    """Queued outgoing mail, optionally only to one address or of one template."""
    return [e for e in svc.outbox.entries()
            if (to is None or e.envelope["to"] == [to]) and (template is None or e.envelope["template"] == template)]


def open_ticket(svc, **kwargs) -> tuple[int, object]:
    """A customer opens a ticket; returns its number and the acknowledgment (as queued bytes)."""
    outcome = send(svc, mail(**kwargs))
    [ack] = mails(svc, template="ack_new")
    return outcome.ticket, ack


def answer_to(entry, body: str, sender: str, message_id: str | None = None, subject: str | None = None,
              extra: str = "") -> bytes:
    """The reply a mail client writes to one of our mails (threading headers kept)."""
    ours = parse(entry.data)
    refs = " ".join(f"<{r}>" for r in (*ours.references, ours.message_id))
    return mail(subject=subject or f"Re: {ours.subject}", body=body, sender=sender,
                message_id=message_id or f"<{next(counter)}@mua.example>",
                extra=f"In-Reply-To: <{ours.message_id}>\nReferences: {refs}\n{extra}")


# -- matching ---------------------------------------------------------------------------------------
def test_reply_by_our_message_id_from_another_address_joins_as_guest(svc):
    tid, ack = open_ticket(svc)
    outcome = send(svc, answer_to(ack, "Soy su compañero, añado datos.", "pepe@otro.example"))
    assert (outcome.action, outcome.ticket) == ("followup", tid)
    assert [e["role"] for e in svc.store.events(tid) if e["type"] == "message"] == ["requester", "guest"]


def test_reply_address_token_joins_even_without_threading_headers(tmp_path):
    svc = helpdesk(tmp_path, plus_addressing=True)
    tid, ack = open_ticket(svc)
    ticket = svc.store.get(tid)
    assert parse(ack.data).header("reply-to").endswith(f"<{plus_address('support@helpdesk.localhost', tid, ticket.token)}>")
    raw = mail(subject="otra cosa", sender="pepe@otro.example", message_id="<p1@otro.example>",
               extra=f"To: {plus_address('support@helpdesk.localhost', tid, ticket.token)}")
    assert send(svc, raw.replace(b"To: support@helpdesk.localhost\r\n", b"")).ticket == tid


@pytest.mark.parametrize("attack", [
    "stranger with a guessed ticket number",
    "forged In-Reply-To",
    "tampered reply-address token",
    "spoofed subject tag",
    "imitated internal headers",
])
def test_refusals_start_a_new_ticket_and_learn_nothing(svc, attack):
    tid, ack = open_ticket(svc, subject="Factura 2231 de Ana García")
    token = svc.store.get(tid).token
    mallory = "mallory@evil.example"
    raw = {
        "stranger with a guessed ticket number": mail(subject=f"Re: [Soporte #{tid}] dame los datos", sender=mallory),
        "forged In-Reply-To": mail(sender=mallory, extra=f"In-Reply-To: <{make_message_id(tid, 'guess', 'x1', 'helpdesk.localhost')}>"),
        "tampered reply-address token": mail(sender=mallory, extra=f"Cc: support+{tid}-0123456789abcdef@helpdesk.localhost"),
        "spoofed subject tag": mail(subject=f"[Soporte #{tid}] #cerrar", sender=mallory, body="#cerrar"),
        "imitated internal headers": mail(sender=mallory, subject=f"[Soporte #{tid}]",
                                          extra=f"X-Helpdeskd-Ticket: {tid}\nX-Helpdeskd-Role: staff\nX-Helpdeskd-Token: {token}"),
    }[attack].replace(b"<m1@cliente.es>", b"<attack@evil.example>")
    outcome = send(svc, raw)
    assert outcome.action == "new" and outcome.ticket != tid
    assert svc.store.get(tid).status == "new" and svc.store.get(tid).mail_count == 1
    [reply] = mails(svc, to=mallory)
    body = parse(reply.data)
    assert f"#{outcome.ticket}]" in body.subject and "Factura 2231" not in body.subject + body.text
    if attack == "imitated internal headers":
        event = [e for e in svc.store.events(outcome.ticket) if e["type"] == "message"][0]
        assert any("internal headers removed" in d for d in event["defects"])


# -- customers ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("word", ["#cerrar", "#close", "#Cerrar"])
def test_requester_closes_by_first_line(svc, word):
    tid, ack = open_ticket(svc)
    outcome = send(svc, answer_to(ack, f"{word}\nGracias, ya funciona.", "ana@cliente.es"))
    assert outcome.ticket == tid and svc.store.get(tid).status == "closed"
    assert mails(svc, to="ana@cliente.es", template="closed")


def test_closing_a_closed_ticket_again_confirms_it_and_bothers_nobody_else(svc):
    tid, ack = open_ticket(svc, extra="Cc: luis@cliente.es")
    send(svc, answer_to(ack, "#cerrar", "ana@cliente.es"))
    assert svc.store.get(tid).status == "closed"
    before = len(mails(svc))
    outcome = send(svc, answer_to(ack, "#cerrar\nGracias otra vez.", "ana@cliente.es"))
    assert (outcome.action, outcome.ticket, svc.store.get(tid).status) == ("followup", tid, "closed")
    assert sorted((e.envelope["template"], e.envelope["to"][0]) for e in mails(svc)
                  if e.envelope["template"] != "ack_new") == [
        ("closed", "ana@cliente.es"), ("closed", "ana@cliente.es"),  # a confirmation for each #cerrar
        ("staff_followup", STAFF), ("staff_new", STAFF)]  # staff heard of the first close only
    assert len(mails(svc)) == before + 1
    # staff closing it once more: the customers are not told again either
    send(svc, answer_to(staff_notice(svc, tid), "#estado cerrado\n#nota ya estaba", STAFF))
    assert len(mails(svc)) == before + 1 and not mails(svc, to="luis@cliente.es", template="closed")


@pytest.mark.parametrize("subject", ["Re: [Soporte #{id}] #cerrar", "Re: [Soporte #{id}] #close please"])
def test_requester_closes_by_subject(svc, subject):
    tid, ack = open_ticket(svc)
    send(svc, answer_to(ack, "Gracias.", "ana@cliente.es", subject=subject.format(id=tid)))
    assert svc.store.get(tid).status == "closed"


@pytest.mark.parametrize("subject,body,lang", [
    # nothing in them says which language: the ticket's (English), not the default (Spanish)
    ("Re: [Soporte #{id}] #close", "ok", "en"),
    ("Re: [Soporte #{id}]", "#close", "en"),
    ("Re: [Soporte #{id}]", "ok", "en"),
    ("Re: [Soporte #{id}]", "#close\nHola, ya funciona todo. Muchas gracias por la ayuda con el correo.", "es"),
])
def test_a_requesters_reply_without_a_language_is_answered_in_the_tickets(svc, subject, body, lang):
    assert svc.config.helpdesk.default_language == "es"
    tid, ack = open_ticket(svc, subject="My site does not load", sender="Ann Smith <ann@client.example>",
                           body="Hello, my web site does not load since this morning. Can you help me please? Thanks")
    assert svc.store.get(tid).requester.language == "en"
    send(svc, answer_to(ack, body, "ann@client.example", subject=subject.format(id=tid)))
    template = "closed" if "#close" in subject + body else "ack_followup"
    assert mails(svc, to="ann@client.example", template=template)
    assert [e["language"] for e in svc.store.events(tid) if e.get("template") == template] == [lang]


@pytest.mark.parametrize("line,lang,phrase", [
    ("#escalar Tenemos la tienda caída y perdemos ventas", "es", "Qué ocurre ahora"),
    ("#escalate Our shop is down and we are losing sales", "en", "What happens next"),
])
def test_escalation_records_reason_notifies_contacts_and_explains(svc, line, lang, phrase):
    tid, ack = open_ticket(svc, subject="Web caída", body="La web no carga." if lang == "es" else "Site down, thanks")
    svc.store.save(svc.store.get(tid).with_changes(queue="technical"))
    body = f"{line}\n" if lang == "es" else f"{line}\nThanks for the help, it is not working."
    send(svc, answer_to(ack, body, "ana@cliente.es", extra=f"Content-Language: {lang}"))
    reason = line.split(" ", 1)[1]
    assert svc.store.get(tid).escalated == reason
    [told] = mails(svc, to=ESCALATION, template="staff_escalation")
    assert reason in parse(told.data).text and parse(told.data).header("auto-submitted") == "auto-generated"
    [ack2] = mails(svc, to="ana@cliente.es", template="escalated")
    assert phrase in parse(ack2.data).text and reason in parse(ack2.data).text


def test_collaborators_from_cc_and_by_command(svc):
    tid, ack = open_ticket(svc, extra=f"Cc: Luis <luis@cliente.es>, {STAFF}, support@helpdesk.localhost")
    assert svc.store.get(tid).collaborators == ("luis@cliente.es",)
    send(svc, answer_to(ack, "#cc añadir marta@cliente.es\n#cc quitar luis@cliente.es", "ana@cliente.es"))
    assert svc.store.get(tid).collaborators == ("marta@cliente.es",)
    send(svc, answer_to(ack, "#cc add pablo@cliente.es", "ana@cliente.es"))
    assert svc.store.get(tid).collaborators == ("marta@cliente.es", "pablo@cliente.es")


def test_a_ticket_has_at_most_max_collaborators(tmp_path):
    svc = helpdesk(tmp_path, max_collaborators=3)
    cc = ", ".join(f"c{n}@cliente.es" for n in range(500))  # one message Cc'd to hundreds
    tid, ack = open_ticket(svc, extra=f"Cc: {cc}")
    ticket = svc.store.get(tid)
    assert ticket.collaborators == ("c0@cliente.es", "c1@cliente.es", "c2@cliente.es")
    notes = [e["text"] for e in svc.store.events(tid) if e["type"] == "note"]
    assert notes == ["only the first 3 of the 500 Cc addresses became collaborators (max_collaborators)"]
    outcome = send(svc, answer_to(ack, "#cc add pablo@cliente.es", "ana@cliente.es"))
    assert outcome.action == "rejected" and "at most 3 collaborators" in outcome.detail
    assert svc.store.get(tid).collaborators == ticket.collaborators
    # one out, one in (asked twice), in the same message: still three
    send(svc, answer_to(ack, "#cc remove c0@cliente.es\n#cc add pablo@cliente.es\n#cc add <pablo@cliente.es>",
                        "ana@cliente.es"))
    assert svc.store.get(tid).collaborators == ("c1@cliente.es", "c2@cliente.es", "pablo@cliente.es")
    # a staff answer goes to the requester and those three, not to five hundred
    staff = next(iter(svc.config.queue("general").staff))
    [notice] = mails(svc, template="staff_new")
    send(svc, answer_to(notice, "Ya está resuelto.", staff))
    assert sorted(e.envelope["to"][0] for e in mails(svc, template="staff_answer")) == [
        "ana@cliente.es", "c1@cliente.es", "c2@cliente.es", "pablo@cliente.es"]


def test_collaborator_adds_information_but_cannot_close(svc):
    tid, ack = open_ticket(svc, extra="Cc: luis@cliente.es")
    outcome = send(svc, mail(subject=f"Re: [Soporte #{tid}] x", sender="luis@cliente.es", body="#cerrar",
                             message_id="<l1@cliente.es>"))
    assert outcome.action == "rejected" and svc.store.get(tid).status == "new"
    assert outcome.detail == "#cerrar: only the ticket's requester (or the helpdesk staff) may do this"
    assert mails(svc, to="luis@cliente.es", template="command_error")
    assert send(svc, mail(subject=f"Re: [Soporte #{tid}] x", sender="luis@cliente.es",
                          body="Más datos: falla desde las 9.", message_id="<l2@cliente.es>")).action == "followup"


@pytest.mark.parametrize("policy,action,status", [("reopen", "reopened", "reopened"), ("refuse", "followup", "closed")])
def test_reply_to_closed_ticket_policies(tmp_path, policy, action, status):
    svc = helpdesk(tmp_path, closed_reply=policy)
    tid, ack = open_ticket(svc)
    svc.store.save(svc.store.get(tid).with_changes(status="closed"))
    outcome = send(svc, answer_to(ack, "Vuelve a fallar.", "ana@cliente.es"))
    assert (outcome.action, outcome.ticket, svc.store.get(tid).status) == (action, tid, status)
    template = "reopened" if policy == "reopen" else "closed_reply"
    assert mails(svc, to="ana@cliente.es", template=template)


def test_reply_to_closed_ticket_can_start_a_linked_ticket(tmp_path):
    svc = helpdesk(tmp_path, closed_reply="new")
    tid, ack = open_ticket(svc)
    svc.store.save(svc.store.get(tid).with_changes(status="closed"))
    outcome = send(svc, answer_to(ack, "Vuelve a fallar.", "ana@cliente.es"))
    assert outcome.action == "new" and outcome.ticket != tid
    assert svc.store.get(outcome.ticket).linked == (tid,) and svc.store.get(tid).status == "closed"


def test_a_linked_ticket_from_a_closed_one_obeys_the_submission_rules(tmp_path):
    svc = helpdesk(tmp_path, closed_reply="new")
    tid, ack = open_ticket(svc)
    svc.store.save(svc.store.get(tid).with_changes(status="closed"))
    closed = Services.open(make_config(tmp_path, closed_reply="new", allow_customer_tickets=False), svc.templates)
    outcome = send(closed, answer_to(ack, "Vuelve a fallar.", "ana@cliente.es"))
    assert outcome.action == "refused" and closed.store.last_id() == tid  # as fresh mail would be


# -- staff ---------------------------------------------------------------------------------------------
def staff_notice(svc, tid: int):
    [notice] = mails(svc, to=STAFF, template="staff_new")
    assert f"#{tid}]" in parse(notice.data).subject
    return notice


def test_staff_answer_is_relayed_without_the_quoted_notice(svc):
    tid, _ = open_ticket(svc, extra="Cc: luis@cliente.es")
    notice = staff_notice(svc, tid)
    quoted = "\n".join("> " + line for line in parse(notice.data).text.splitlines())
    body = f"Hola Ana, he reiniciado el servicio.\n\nEl lun, 1 ene 2026, Soporte escribió:\n{quoted}\n"
    outcome = send(svc, answer_to(notice, body, f"María <{STAFF}>"))
    assert outcome.action == "staff_answer" and svc.store.get(tid).status == "open"
    relayed = {e.envelope["to"][0]: parse(e.data) for e in mails(svc, template="staff_answer")}
    assert set(relayed) == {"ana@cliente.es", "luis@cliente.es"}
    ana = relayed["ana@cliente.es"]
    assert ana.text.startswith("Hola Ana, he reiniciado el servicio.")
    assert "Responda a este mensaje para contestar" not in ana.text and "Nuevo ticket" not in ana.text
    assert ana.sender.addr == "support@helpdesk.localhost" and ana.sender.name == "María (Soporte)"
    assert ana.header("auto-submitted") is None  # a person's answer, not an automatic one


@pytest.mark.parametrize("commands,expect", [
    ("#prioridad alta\n#categoria DNS\n#cola facturación", {"priority": "high", "category": "dns", "queue": "billing"}),
    ("#priority low\n#category mail\n#queue technical", {"priority": "low", "category": "mail", "queue": "technical"}),
    ("#asignar yo", {"assignee": STAFF}),
    ("#assign tecnico@helpdesk.localhost", {"assignee": "tecnico@helpdesk.localhost"}),
    ("#estado cerrado", {"status": "closed"}),
    ("#status open", {"status": "open"}),
])
def test_staff_commands_in_both_languages(svc, commands, expect):
    tid, _ = open_ticket(svc)
    send(svc, answer_to(staff_notice(svc, tid), f"{commands}\n#nota hecho", STAFF))
    ticket = svc.store.get(tid)
    assert {k: getattr(ticket, k) for k in expect} == expect


@pytest.mark.parametrize("body", ["#prioridad urgentísima\nYa lo miro", "#frobnicate\nYa lo miro",
                                  "#assign nobody@else.example\nYa lo miro"])
def test_bad_staff_command_changes_nothing_and_is_explained(svc, body):
    tid, _ = open_ticket(svc)
    before = svc.store.get(tid)
    outcome = send(svc, answer_to(staff_notice(svc, tid), body, STAFF))
    after = svc.store.get(tid)
    assert outcome.action == "rejected"
    assert (after.priority, after.status, after.assignee) == (before.priority, before.status, before.assignee)
    [error] = mails(svc, to=STAFF, template="command_error")
    assert body.splitlines()[0].split()[0] in parse(error.data).text
    assert not mails(svc, to="ana@cliente.es", template="staff_answer")  # "Ya lo miro" was not relayed


@pytest.mark.parametrize("word", ["#nota", "#note"])
def test_internal_notes_never_reach_customers(svc, word):
    tid, _ = open_ticket(svc, extra="Cc: luis@cliente.es")
    secret = "el cliente debe 3 facturas"
    outcome = send(svc, answer_to(staff_notice(svc, tid), f"{word}\n{secret}", STAFF))
    assert outcome.action == "note"
    for entry in svc.outbox.entries():
        if entry.envelope["to"] != [STAFF]:
            assert secret not in parse(entry.data).text
    notes = [e for e in svc.store.events(tid) if e["type"] == "message" and e.get("internal")]
    assert notes and secret in notes[0]["new_text"]


def test_staff_of_another_queue_is_just_a_guest_without_powers(svc):
    tid, ack = open_ticket(svc)
    outcome = send(svc, mail(subject=f"Re: [Soporte #{tid}] x", sender="facturacion@helpdesk.localhost",
                             body="#cerrar", message_id="<f1@helpdesk.localhost>"))
    assert outcome.action == "new" and svc.store.get(tid).status == "new"  # unproven: a new ticket


def test_customer_reply_notifies_staff_with_its_new_text_only(svc):
    tid, ack = open_ticket(svc)
    body = "El error es 550.\n\nEl lun, Soporte escribió:\n> Hemos recibido su solicitud"
    send(svc, answer_to(ack, body, "ana@cliente.es"))
    [notice] = mails(svc, to=STAFF, template="staff_followup")
    text = parse(notice.data).text
    assert "El error es 550." in text and "Hemos recibido su solicitud" not in text


# -- forged From headers ------------------------------------------------------------------------------
def test_forged_staff_from_with_a_tag_is_not_relayed_and_changes_nothing(svc):
    tid, _ = open_ticket(svc)
    forged = mail(subject=f"Re: [Soporte #{tid}] x", sender=f"María <{STAFF}>", message_id="<forged@evil.example>",
                  body="#cerrar\nPague aquí: http://phish.example")
    outcome = send(svc, forged)
    assert outcome.ticket == tid and outcome.action == "rejected" and svc.store.get(tid).status == "new"
    assert not mails(svc, to="ana@cliente.es", template="staff_answer")
    assert all(b"phish.example" not in e.data for e in svc.outbox.entries() if e.envelope["to"] != [STAFF])
    [told] = mails(svc, to=STAFF, template="command_error")  # the real staff member learns why
    assert "not relayed" in parse(told.data).text
    event = [e for e in svc.store.events(tid) if e["type"] == "message"][-1]
    assert event["internal"] and event["role"] == "staff"


def test_forged_requester_from_with_a_tag_adds_text_but_no_commands(svc):
    tid, _ = open_ticket(svc)
    forged = mail(subject=f"Re: [Soporte #{tid}] x", sender="ana@cliente.es", message_id="<forged2@evil.example>",
                  body="#cc add spy@evil.example\nañadan a mi socio")
    outcome = send(svc, forged)
    assert outcome.action == "rejected" and svc.store.get(tid).collaborators == ()
    plain = mail(subject=f"Re: [Soporte #{tid}] x", sender="ana@cliente.es", message_id="<plain@cliente.es>",
                 body="Más datos sin órdenes.")
    assert send(svc, plain).action == "followup"


def test_a_subject_that_mentions_a_command_is_not_a_command_in_replies(svc):
    tid, ack = open_ticket(svc, subject="El botón #cerrar del formulario no funciona")
    send(svc, answer_to(ack, "Adjunto captura.", "ana@cliente.es"))
    assert svc.store.get(tid).status == "new"


def test_cc_command_refuses_our_own_addresses(svc):
    tid, ack = open_ticket(svc)
    outcome = send(svc, answer_to(ack, "#cc add support@helpdesk.localhost", "ana@cliente.es"))
    assert outcome.action == "rejected" and svc.store.get(tid).collaborators == ()


def test_staff_whose_mail_client_uses_our_domain_in_message_ids_is_relayed(svc):
    """Staff write from the helpdesk's own domain, so their clients' Message-IDs end in it too."""
    tid, _ = open_ticket(svc)
    notice = staff_notice(svc, tid)
    outcome = send(svc, answer_to(notice, "Hola Ana, revisa la contraseña.", STAFF,
                                  message_id="<3f2a9c@helpdesk.localhost>"))
    assert outcome.action == "staff_answer" and mails(svc, to="ana@cliente.es", template="staff_answer")


def test_a_requester_asking_for_a_staff_command_is_told_it_is_for_staff(svc):
    """Customers may close, escalate and manage Cc; changing the priority is the staff's. The answer
    says so, and does not claim the requester may do it."""
    tid, ack = open_ticket(svc)
    outcome = send(svc, answer_to(ack, "#prioridad alta\nSigue sin funcionar.", "ana@cliente.es"))
    assert outcome.action == "rejected" and svc.store.get(tid).priority == "normal"
    assert outcome.detail == "#prioridad alta: only the helpdesk staff may do this"
    [told] = mails(svc, to="ana@cliente.es", template="command_error")
    assert "only the helpdesk staff may do this" in told.data.decode()

