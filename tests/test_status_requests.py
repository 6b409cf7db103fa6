""""My tickets" by email: proof by the receiving MTA's Authentication-Results or by a one-time code,
and an answer that never shows a ticket outside the sender's scope."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import pytest

from helpdeskd.identity import code_key, parse_auth_results, proven_by
from helpdeskd.parse import parse

from conftest import mail
from roles import SENDERS, VISIBLE, file_every_origin, send, services

MX = "mx.helpdesk.localhost"  # our receiving MTA's authserv-id
TRUSTED = {"status_requests": {"trusted_authserv_ids": [MX]}}


def passed(addr: str, serv_id: str = MX, result: str = "dmarc=pass") -> str:
    domain = addr.rpartition("@")[2]
    return f"Authentication-Results: {serv_id};\n spf=pass smtp.mailfrom={domain};\n {result} header.from={domain}"


def request(addr: str, subject: str = "Estado de mis tickets", extra: str = "", body: str = "¿Cómo van?",
            n: list[int] = [0]) -> bytes:  # noqa: B006 - a counter for unique Message-IDs
    n[0] += 1
    return mail(subject=subject, sender=addr, body=body, message_id=f"<req{n[0]}@mua.example>", extra=extra)


def sent(svc, template: str, to: str | None = None) -> list:
    return [parse(e.data) for e in svc.outbox.entries()
            if e.envelope["template"] == template and (to is None or e.envelope["to"] == [to])]


def tags(text: str) -> set[int]:
    return {int(n) for n in re.findall(r"\[Soporte #(\d+)\]", text)}


@pytest.fixture
def world(tmp_path):
    svc = services(tmp_path, **TRUSTED)
    return svc, file_every_origin(svc)


# -- proof by Authentication-Results --------------------------------------------------------------------
def test_a_trusted_dmarc_pass_gets_the_list_at_once(world):
    svc, ids = world
    outcome = send(svc, request(SENDERS["uno-user"], extra=passed(SENDERS["uno-user"])))
    assert outcome.action == "status" and "proven by dmarc" in outcome.detail
    [answer] = sent(svc, "status_list")
    assert tags(answer.text) == {ids["uno-user"]} and "Problema de uno-user" in answer.text
    assert "estado: nuevo" in answer.text and "prioridad: Normal" in answer.text
    assert "última actualización: 20" in answer.text
    assert not sent(svc, "status_confirm") and svc.store.last_id() == len(ids)  # no ticket was opened


@pytest.mark.parametrize("scope,label", [("admin", "admin"), ("reseller:acme", "acme"), ("reseller:beta", "beta"),
                                         ("domain:uno.example", "uno-owner"), ("domain:tres.example", "tres-owner"),
                                         ("domain:cuatro.example", "cuatro-owner"), ("user:ana@uno.example", "uno-user"),
                                         ("user:extra@gmail.example", "unknown")])
def test_nothing_outside_the_senders_scope_ever_appears_in_the_answer(world, scope, label):
    svc, ids = world
    addr = SENDERS[label]
    send(svc, request(addr, subject="My tickets please", extra=passed(addr) + "\nContent-Language: en"))
    [answer] = sent(svc, "status_list", to=addr)
    assert tags(answer.text) == {ids[k] for k in VISIBLE[scope]}
    hidden = set(SENDERS) - VISIBLE[scope]
    assert not [k for k in hidden if f"Problema de {k}\n" in answer.text or SENDERS[k] in answer.text]


@pytest.mark.parametrize("header", [
    "Authentication-Results: mx.evil.example; dmarc=pass header.from=uno.example",  # untrusted authserv-id
    "Authentication-Results: MX.EVIL.example; dkim=pass header.d=uno.example",
    f"Authentication-Results: {MX}; dmarc=fail header.from=uno.example",
    f"Authentication-Results: {MX}; dmarc=pass header.from=evil.example",  # another domain's pass
    f"Authentication-Results: {MX}; spf=pass smtp.mailfrom=evil.example",  # not aligned
    f"Authentication-Results: {MX}; dkim=pass header.d=example",  # too short to align
    f"Authentication-Results: {MX}; dmarc=none\nAuthentication-Results: {MX}; dmarc=pass header.from=uno.example",
    f"Authentication-Results: {MX} (dmarc=pass); none",  # a comment is not a result
])
def test_a_forged_or_failed_authentication_gets_only_a_confirmation_sent_to_the_address(world, header):
    svc, ids = world
    addr = SENDERS["uno-user"]
    outcome = send(svc, request(addr, extra=header))
    assert outcome.action == "confirm"
    assert not sent(svc, "status_list")
    [confirm] = sent(svc, "status_confirm")
    assert confirm.to[0].addr == addr  # the real owner of the address, whoever wrote
    assert not tags(confirm.text) and "Problema" not in confirm.text


def test_without_trusted_ids_authentication_results_are_never_believed(tmp_path):
    svc = services(tmp_path)
    file_every_origin(svc)
    assert send(svc, request(SENDERS["uno-user"], extra=passed(SENDERS["uno-user"]))).action == "confirm"


# -- proof by a one-time code ----------------------------------------------------------------------------
def code_of(confirm) -> str:
    return re.search(r"[A-Z2-9]{4}-[A-Z2-9]{4}", confirm.subject).group(0)


def reply_to(confirm, addr: str, body: str = "Sí, soy yo.") -> bytes:
    return request(addr, subject=f"Re: {confirm.subject}", body=body,
                   extra=f"In-Reply-To: <{confirm.message_id}>")


def test_confirmation_round_trip_then_the_code_is_spent(world):
    svc, ids = world
    addr = SENDERS["uno-owner"]
    assert send(svc, request(addr)).action == "confirm"
    [confirm] = sent(svc, "status_confirm")
    assert "vale una sola vez durante 1 hora" in confirm.text
    outcome = send(svc, reply_to(confirm, addr))
    assert outcome.action == "status" and "proven by code" in outcome.detail
    [answer] = sent(svc, "status_list")
    assert tags(answer.text) == {ids[k] for k in VISIBLE["domain:uno.example"]}
    again = send(svc, reply_to(confirm, addr))  # the same code once more, in a new message
    assert again.action == "confirm" and "used code" in again.detail
    assert len(sent(svc, "status_list")) == 1
    assert "ya se usó" in sent(svc, "status_confirm")[-1].text


def test_an_expired_code_is_refused_and_a_new_one_sent(world):
    svc, _ = world
    addr = SENDERS["uno-user"]
    send(svc, request(addr))
    [confirm] = sent(svc, "status_confirm")
    later = datetime.now(timezone.utc) + timedelta(hours=2)
    svc.clock = lambda: later
    outcome = send(svc, reply_to(confirm, addr))
    assert outcome.action == "confirm" and "expired code" in outcome.detail
    assert not sent(svc, "status_list")
    fresh = sent(svc, "status_confirm")[-1]
    assert "ha caducado" in fresh.text and code_of(fresh) != code_of(confirm)


def test_a_code_proves_only_the_address_it_was_mailed_to(world):
    svc, _ = world
    mallory = SENDERS["unknown"]
    send(svc, request(mallory))
    [own] = sent(svc, "status_confirm", to=mallory)
    victim = SENDERS["uno-owner"]  # Mallory forges the owner's From and pastes her own valid code
    outcome = send(svc, request(victim, body=f"Código: {code_of(own)}"))
    assert outcome.action == "confirm" and not sent(svc, "status_list")
    [to_victim] = sent(svc, "status_confirm", to=victim)
    assert code_of(to_victim) != code_of(own)
    assert svc.confirmations.get(code_key(code_of(own))).used_by == ""  # and hers is not spent either


def test_refiling_the_same_request_sends_no_second_code(world):
    svc, _ = world
    raw = request(SENDERS["uno-user"])
    assert send(svc, raw).action == "confirm"
    assert send(svc, raw).action == "duplicate"
    assert len(sent(svc, "status_confirm")) == 1 and len(list(svc.confirmations.root.glob("*.json"))) == 1


def test_automatic_mail_asking_for_status_is_kept_and_not_answered(world):
    svc, _ = world
    outcome = send(svc, request(SENDERS["uno-user"], extra="Auto-Submitted: auto-replied"))
    assert outcome.action == "refused" and not sent(svc, "refused") and not sent(svc, "status_confirm")
    assert len(list(svc.refused.items())) == 1


def test_a_reply_to_a_ticket_mentioning_my_tickets_stays_a_reply(world):
    svc, ids = world
    tid = ids["uno-user"]
    outcome = send(svc, request(SENDERS["uno-user"], subject=f"Re: [Soporte #{tid}] y mis tickets?"))
    assert (outcome.action, outcome.ticket) == ("followup", tid)


@pytest.mark.parametrize("subject", ["ESTADO DE MIS TÍCKETS", "my   tickets", "Re: Mis tickets"])
def test_keywords_match_across_case_accents_and_spacing(world, subject):
    svc, _ = world
    assert send(svc, request(SENDERS["uno-user"], subject=subject)).action == "confirm"


def test_configured_keywords_replace_the_defaults(tmp_path):
    svc = services(tmp_path, status_requests={"keywords": ["situación"]})
    assert send(svc, request(SENDERS["uno-user"], subject="Situacion de lo mío")).action == "confirm"
    assert send(svc, request(SENDERS["uno-user"], subject="my tickets")).action == "new"


def test_status_requests_can_be_switched_off(tmp_path):
    svc = services(tmp_path, status_requests={"enabled": False})
    assert send(svc, request(SENDERS["uno-user"])).action == "new"


# -- the Authentication-Results reader --------------------------------------------------------------------
def test_authentication_results_parsing():
    serv, results = parse_auth_results(
        'mx.example.com 1; (checked) dkim=pass (2048-bit key) header.d=Example.com header.s="sel 1";'
        ' spf = softfail smtp.mailfrom=bob@example.net; dmarc=pass reason="ok; fine" header.from=example.com')
    assert serv == "mx.example.com"
    assert [(r.method, r.result) for r in results] == [("dkim", "pass"), ("spf", "softfail"), ("dmarc", "pass")]
    assert results[0].props["header.d"] == "example.com" and results[2].props["header.from"] == "example.com"
    assert parse_auth_results("") == ("", ())


@pytest.mark.parametrize("sender,header,expected", [
    ("ana@example.com", "mx.t; dkim=pass header.d=example.com", "dkim"),
    ("ana@sub.example.com", "mx.t; dkim=pass header.d=example.com", "dkim"),  # relaxed: a parent's key
    ("ana@sub.example.com", "mx.t; dkim=pass header.d=mail.example.com", None),  # a sibling's key does not
    ("ana@example.com", "mx.t; spf=pass smtp.mailfrom=bounces@example.com", "spf"),
    ("ana@example.com", "mx.t; dkim=fail header.d=example.com; spf=fail smtp.mailfrom=example.com", None),
    ("ana@example.com", "mx.t; dmarc=pass", "dmarc"),
    ("ana@example.com", "mx.t; dmarc=fail; dkim=pass header.d=example.com", None),  # DMARC's verdict stands
])
def test_alignment(sender, header, expected):
    message = parse(mail(sender=sender, extra=f"Authentication-Results: {header}"))
    assert proven_by(message, ("mx.t",)) == expected


def test_codes_are_found_exactly_where_a_scan_of_every_position_finds_them():
    import random

    from helpdeskd.identity import _CODE, _codes_in

    rng, tokens, seps, found = random.Random(3), ["ABCD", "EF2H", "A1CD", "ABC", "ABCDE", "2345", "a", "-"], \
        ["-", "-", "-", " ", "", "_", "é", "\n", "."], 0
    for _ in range(20000):
        text = "".join(rng.choice(tokens) + rng.choice(seps) for _ in range(rng.randint(0, 8)))
        expected = [f"{a}-{b}" for a, b in _CODE.findall(text)]
        found += len(expected) > 1
        assert _codes_in(text) == expected, text
    assert found > 20  # runs of codes sharing hyphens were among them ("ABCD-EF2H-2345": one code)
    assert _codes_in("ABCD-EF2H-2345 and WXYZ-2345") == ["ABCD-EF2H", "WXYZ-2345"]
