"""Outgoing mail as built by ``outmail.compose``: parsed back with the email package's strict
(default) policy, every header and body must decode to what was given, the bytes must be 7-bit CRLF
mail within the line limits, and the decoded values must match the former compat32 implementation
(``tests/outmail_compat32.py``) on the same inputs."""

from __future__ import annotations

import email
import email.header
import email.policy
import random
import re
from datetime import datetime, timedelta, timezone

import pytest

from helpdeskd.outmail import LOOP_HEADER_NAME, Rendered, compose, one_line, seven_bit
from helpdeskd.parse import parse as parse_inbound
from outmail_compat32 import compose as old_compose

DATE = datetime(2026, 11, 22, 9, 30, 5, tzinfo=timezone(timedelta(hours=1)))
BASE = dict(from_name="Soporte", from_addr="soporte@helpdesk.example", to_name="Ana", to_addr="ana@cliente.es",
            message_id="hd.7.0123456789abcdef.aa11@helpdesk.example", date=DATE)
REFS = tuple(f"ref{i}.{'x' * (i % 7)}@mail{i}.example" for i in range(27))
LONG_LINE = ("Una línea muy larga sin saltos, con acentos y eñes: " * 40)[:2000]

CASES = {
    "ascii": dict(rendered=Rendered("[#7] Your request", "Hello Ana,\n\nWe got it.\n", None)),
    "spanish": dict(
        rendered=Rendered("Re: [#42] Solicitud de información — facturación de España",
                          "Hola José,\n\nHemos recibido su petición sobre la facturación.\nSaludos,\nEl equipo\n",
                          "<p>Hola José,</p>\n<p>Hemos recibido su petición.</p>\n"),
        from_name="Soporte Técnico (Atención al cliente)", to_name="José Pérez Muñoz",
        in_reply_to="CAB+x1=ab@mail.cliente.es", references=("CAB+x1=ab@mail.cliente.es",)),
    "emoji": dict(rendered=Rendered("🎉 Ticket abierto 🚀 ok", "Gracias 🙏\nVale 👍🏽 👨‍👩‍👧\n", "<b>🎉</b>"),
                  from_name="Help 🤖 Desk", to_name="😀 Ana"),
    "long single line": dict(rendered=Rendered("Long", LONG_LINE, LONG_LINE)),
    "From and dots": dict(rendered=Rendered(
        "Dots", "From here on.\n.\n..\n.x\nFrom: me\n" + "x" * 75 + "From the start\n" + "y" * 75 + ".\n"
        + "z" * 74 + "From  two\nlast line.\n.", "From <b>here</b>\n.\n")),
    "trailing whitespace": dict(rendered=Rendered(
        "Spaces", "a \nb\t\nc  \t\n   \n\t\n" + "x" * 74 + " \n" + "y" * 75 + "\t\n" + "w" * 73 + "=  \nend ",
        "<p>x</p> \t\n")),
    "mixed line ends": dict(rendered=Rendered("Ends", "one\r\ntwo\nthree\rfour\r\n\r\nfive\n\rsix\r", "a\rb\nc\r\n")),
    "very long subject": dict(rendered=Rendered(" ".join(f"word{i}" for i in range(400)), "x", None)),
    "very long accented subject": dict(rendered=Rendered(("Información útil 🚀 sobre ñandúes " * 40), "x", None)),
    "many references": dict(rendered=Rendered("Refs", "x\n", None), in_reply_to=REFS[-1], references=REFS),
    "staff answer": dict(rendered=Rendered("Re: [#7] hola", "Respuesta de una persona.\n", "<p>Respuesta</p>"),
                         auto_submitted="no", from_name="Luis (Soporte)"),
    "notification": dict(rendered=Rendered("New ticket", "x\n", None), auto_submitted="auto-generated", to_name=""),
    "reply-to": dict(rendered=Rendered("[#7] ok", "x", None),
                     reply_to="soporte+7-0123456789abcdef@helpdesk.example"),
    "specials in names": dict(rendered=Rendered("Names", "x", None), from_name='Smith, John "Jack" (IT) \\ co.',
                              to_name='Pérez, José "Pepe"'),
    "long ascii name": dict(rendered=Rendered("Names", "x", None),
                            from_name=("Departamento de Atencion al Cliente, Soporte Tecnico " * 5),
                            to_name=("Maria " * 40)),
    "long non-ascii name": dict(rendered=Rendered("Names", "x", None), to_name="😀" * 200, from_name="Ñ" * 200),
    "long first encoded words": dict(rendered=Rendered("😀" * 40, "x", None), from_name="ñandú" * 15,
                                     to_name="Ñ" * 60, reply_to="soporte+7@helpdesk.example"),
    "empty": dict(rendered=Rendered("", "", "")),
    "control and odd characters": dict(rendered=Rendered(
        "Odd\x01 chars\x7f here", "form\x0cfeed, nul\x00, tab\tin line, = and =_ and =?utf-8?q?x?= 100%\n"
        "line\u2028separator\x85next _under_ ?q?\n", "<p>=_=</p>")),
    "text ending in newlines": dict(rendered=Rendered("x", "a\n\n\n", "b\n\n")),
    "full last line": dict(rendered=Rendered("x", "Última línea llena:\n" + "x" * 67 + "é\t", None)),
    "full only line": dict(rendered=Rendered("x", "x" * 67 + "é\t", None)),
}


def crlf(text: str) -> str:
    return re.sub(r"\r\n|\r|\n", "\r\n", text)


def build(case: dict, impl=compose) -> bytes:
    args = {**BASE, **case}
    return impl(args.pop("rendered"), **args)


def parse(data: bytes) -> email.message.EmailMessage:
    return email.message_from_bytes(data, policy=email.policy.default)


def decoded(data: bytes) -> dict:
    """What a reader of the mail sees: every header decoded, and the decoded bodies."""
    msg = parse(data)
    seen = {name.lower(): str(value) for name, value in msg.items()
            if name.lower() not in ("content-type", "content-transfer-encoding", "mime-version")}
    for who in ("from", "to", "reply-to"):
        if who in msg:
            [address] = msg[who].addresses
            seen[who] = (display_name(msg, who), address.addr_spec)
    seen["date"] = msg["date"].datetime
    seen["text"] = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",))
    seen["html"] = html.get_content() if html is not None else None
    return seen


def display_name(msg: email.message.EmailMessage, who: str) -> str:
    """The display name as RFC 2047 6.2 reads it. The address parser of Python 3.11's email package
    shows a space between two adjacent encoded words in a name (gh-128110), so a name written
    as several encoded words in a row is decoded with ``email.header`` here instead."""
    [address] = msg[who].addresses
    raw = " ".join(next(v for k, v in msg.raw_items() if k.lower() == who).split())
    phrase = raw.rpartition(" <")[0]
    if "?= =?" not in phrase:
        return address.display_name
    return str(email.header.make_header(email.header.decode_header(phrase)))


def lines_of(data: bytes) -> list[bytes]:
    if not data:
        return []
    assert data.endswith(b"\r\n")
    return data[:-2].split(b"\r\n")


def sent_text(rendered: Rendered, data: bytes) -> str:
    """The text a reader of ``data`` sees: the text given, line ends as CRLF — and a single part
    written as it is ends with a line break (SMTP would add one)."""
    text = crlf(rendered.text)
    if rendered.html is None and text and not text.endswith("\r\n") and b"quoted-printable" not in data:
        text += "\r\n"
    return text


def check_parts(data: bytes) -> None:
    """CRLF lines within their limits; each leaf part 7bit, 8bit or quoted-printable, each safe as
    it is for SMTP and mbox (RFC 2045 6.7 for the quoted ones)."""
    assert re.search(rb"\r(?!\n)|(?<!\r)\n", data) is None, "a bare CR or LF"
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.isascii() and max(map(len, lines_of(head + b"\r\n"))) <= 78  # no word in these cases is longer
    msg = parse(data)
    assert msg.defects == [] and all(part.defects == [] for part in msg.walk())
    for part in msg.walk():
        if part.is_multipart():
            continue
        assert part.get_content_charset() == "utf-8"
        payload = part.get_payload(decode=False).encode("utf-8", "surrogateescape")
        lines = payload.split(b"\r\n") if b"\r\n" in payload else payload.splitlines()
        if part["content-transfer-encoding"] == "quoted-printable":
            assert payload.isascii()
            assert all(len(line) <= 76 and line != b"." and not line.startswith(b"From ") for line in lines)
        else:
            assert part["content-transfer-encoding"] == ("7bit" if payload.isascii() else "8bit")
            assert all(len(line) <= 998 and not line.startswith((b"From ", b"--=_")) for line in lines)


@pytest.mark.parametrize("name", CASES)
def test_mail_is_crlf_within_line_limits_in_both_forms(name):
    data = build(CASES[name])
    check_parts(data)
    seven = seven_bit(data)  # for a server without 8BITMIME
    check_parts(seven)
    assert seven.isascii() and b"Content-Transfer-Encoding: 8bit" not in seven
    assert (seven == data) == data.isascii()


def test_seven_bit_leaves_what_it_did_not_make_as_it_is():
    cut = build(CASES["spanish"])
    cut = cut[:cut.rindex(b"\r\n--=_")]  # a multipart message without its closing delimiter
    for data in (b"Subject: x\r\n\r\nplain\r\n", b"Subject: x\r\nContent-Transfer-Encoding: 8bit\r\n\r\n\xff\xfe\r\n",
                 b"Subject: x\r\n\r\n\xc3\xa9 without a transfer encoding\r\n", b"\xff",
                 b"Subject: x\nContent-Transfer-Encoding: 8bit\n\n\xc3\xa9 LF only\n", cut):
        assert seven_bit(data) == data


def test_a_body_is_written_as_it_is_where_it_safely_can_be():
    def encodings(text: str, html: str | None = None) -> list[str]:
        msg = parse(build({"rendered": Rendered("s", text, html)}))
        return [p["content-transfer-encoding"] for p in msg.walk() if not p.is_multipart()]

    assert encodings("Hello Ana,\nthanks.\n") == ["7bit"]
    assert encodings("Hola José,\ngracias.\n", "<p>José</p>") == ["8bit", "8bit"]
    assert encodings("Hola\n" + "é" * 499 + "\n") == ["8bit"]  # a line of 998 octets: the most there may be
    assert encodings("Hola\n" + "é" * 499 + "x\n") == ["quoted-printable"]  # 999
    assert encodings("x" * 998, "é" * 499 + "x") == ["7bit", "quoted-printable"]
    assert encodings("Hola\nFrom here\n") == ["quoted-printable"]  # mbox would rewrite it
    assert encodings("x", "a\n--=_hd at the start of a line") == ["7bit", "quoted-printable"]  # like a boundary
    assert encodings("nul \x00 here") == ["quoted-printable"]
    assert encodings(".\n..\n") == ["7bit"]  # (SMTP doubles a leading dot on the way)


@pytest.mark.parametrize("name", CASES)
def test_every_header_and_body_decodes_to_what_was_given(name):
    case = {**BASE, **CASES[name]}
    rendered = case["rendered"]
    seen = decoded(build(CASES[name]))
    assert seen["subject"] == one_line(rendered.subject)
    assert seen["from"] == (one_line(case["from_name"], 200), case["from_addr"])
    assert seen["to"] == (one_line(case["to_name"], 200), case["to_addr"])
    assert seen["message-id"] == f"<{case['message_id']}>"
    assert seen["date"] == DATE
    assert seen.get("in-reply-to") == (f"<{case['in_reply_to']}>" if case.get("in_reply_to") else None)
    refs = case.get("references", ())[-20:]
    assert seen.get("references", "").split() == [f"<{r}>" for r in refs]
    if case.get("reply_to"):
        assert seen["reply-to"] == (one_line(case["from_name"], 200), case["reply_to"])
    else:
        assert "reply-to" not in seen
    automatic = case.get("auto_submitted", "auto-replied")
    if automatic == "no":
        assert "auto-submitted" not in seen and "precedence" not in seen
    else:
        assert seen["auto-submitted"] == automatic and seen["precedence"] == "bulk"
    assert seen["x-auto-response-suppress"] == "All"
    assert seen[LOOP_HEADER_NAME.lower()] == case["from_addr"]
    data = build(CASES[name])
    assert seen["text"] == sent_text(rendered, data)
    assert seen["html"] == (None if rendered.html is None else crlf(rendered.html))
    assert decoded(seven_bit(data)) == seen  # the same, made quoted-printable for a server without 8BITMIME


@pytest.mark.parametrize("name", CASES)
def test_decodes_like_the_former_compat32_mail(name):
    ours, former = decoded(build(CASES[name])), decoded(build(CASES[name], old_compose))
    if ours["text"] == former["text"] + "\r\n":  # a single part written as it is ends with a line break
        ours["text"] = former["text"]
    assert ours == former


@pytest.mark.parametrize("name", [n for n in CASES if n != "control and odd characters"])  # parse drops those
def test_helpdeskd_reads_its_own_mail_back(name):
    """Our mail can come back to us (forwarded, bounced): our own parser must read it as written."""
    case = {**BASE, **CASES[name]}
    message = parse_inbound(build(CASES[name]))
    assert message.defects == ()
    assert message.subject == one_line(case["rendered"].subject)
    assert (message.sender.name, message.sender.addr) == (one_line(case["from_name"], 200), case["from_addr"])
    assert [(a.name, a.addr) for a in message.to] == [(one_line(case["to_name"], 200), case["to_addr"])]
    assert message.message_id == case["message_id"]
    assert message.in_reply_to == ((case["in_reply_to"],) if case.get("in_reply_to") else ())
    assert message.references == case.get("references", ())[-20:]


@pytest.mark.parametrize("name", ["ascii", "spanish", "staff answer"])
def test_mime_structure(name):
    msg = parse(build(CASES[name]))
    assert msg["mime-version"] == "1.0"
    if CASES[name]["rendered"].html is None:
        assert msg.get_content_type() == "text/plain"
    else:
        assert msg.get_content_type() == "multipart/alternative"
        assert msg.get_boundary().startswith("=_")
        assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]


def test_the_same_values_give_the_same_bytes():
    assert build(CASES["spanish"]) == build(CASES["spanish"])
    other = build({**CASES["spanish"], "message_id": "other@helpdesk.example"})
    assert parse(other).get_boundary() != parse(build(CASES["spanish"])).get_boundary()


def test_random_bodies_round_trip():
    rng = random.Random(20261122)
    alphabet = ["a", " ", "\t", ".", "=", "_", "?", "é", "😀", "F", "From ", "\n", "\r\n", "\r", "\x0c", "\x00",
                "x" * 67, "x" * 70, "x" * 73, "x" * 74, "--=_", "é" * 300, "\u2028", "\x85", "\x0b"]
    for _ in range(1000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        html = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 120)))
        for rendered in (Rendered("s", text, None), Rendered("s", text, html)):
            data = build({"rendered": rendered})
            for form in (data, seven_bit(data)):
                check_parts(form)
                msg = parse(form)
                assert msg.get_body(("plain",)).get_content() == sent_text(rendered, data), text
                if rendered.html is not None:
                    assert msg.get_body(("html",)).get_content() == crlf(html), html
            assert seven_bit(data).isascii()


# -- what the former mail got wrong --------------------------------------------------------------------

def test_text_that_looks_like_an_encoded_word_is_shown_as_written():
    subject = "Re: =?utf-8?q?hola?= and =?x?"
    data = build({"rendered": Rendered(subject, "x", None), "to_name": "=?utf-8?q?Jefe?="})
    assert decoded(data)["subject"] == subject
    assert decoded(data)["to"] == ("=?utf-8?q?Jefe?=", "ana@cliente.es")


def test_long_encoded_values_are_folded_into_short_encoded_words():
    data = build(CASES["long non-ascii name"]) + build(CASES["very long accented subject"])
    words = re.findall(rb"=\?utf-8\?[qb]\?[^?]*\?=", data)
    assert len(words) > 10 and max(map(len, words)) <= 75


def test_a_subject_of_one_long_word_stays_within_998():
    word = "x" * 2000
    data = build({"rendered": Rendered(word, "x", None)})
    assert decoded(data)["subject"] == word[:900]
    assert max(map(len, lines_of(data))) <= 998


def test_inbound_message_ids_that_cannot_be_written_are_left_out():
    unwritable = ("café@cliente.es", "a b@cliente.es", "a<b>@c.es", "x" * 901 + "@c.es")
    for bad in unwritable:
        seen = decoded(build({"rendered": Rendered("s", "x", None), "in_reply_to": bad,
                              "references": ("ok@c.es", bad, "fine@c.es")}))
        assert "in-reply-to" not in seen and seen["references"] == "<ok@c.es> <fine@c.es>", bad


# -- refusals -----------------------------------------------------------------------------------------

def test_line_breaks_in_subject_and_names_are_flattened():
    case = {"rendered": Rendered("Hello\r\nBcc: evil@attacker.example\nX-Evil: 1\r", "x", None),
            "to_name": "Ana\r\nBcc: evil@attacker.example", "from_name": "Soporte\nX-Evil: 2"}
    data = build(case)
    msg = parse(data)
    assert msg["subject"] == "Hello Bcc: evil@attacker.example X-Evil: 1"
    assert msg["to"].addresses[0].display_name == "Ana Bcc: evil@attacker.example"
    assert "bcc" not in {k.lower() for k in msg.keys()} and "x-evil" not in {k.lower() for k in msg.keys()}
    assert b"\r\nBcc:" not in data and b"\r\nX-Evil" not in data


@pytest.mark.parametrize("brk", ["\r", "\n", "\r\n"])
@pytest.mark.parametrize("field", ["message_id", "in_reply_to", "references", "auto_submitted"])
def test_line_breaks_in_other_values_are_refused(field, brk):
    value = f"abc@x.example{brk}Bcc: evil@attacker.example"
    case = {"rendered": Rendered("s", "x", None), field: (value,) if field == "references" else value}
    with pytest.raises(ValueError, match="line break"):
        build(case)


@pytest.mark.parametrize("bad", ["", "no-at-sign", "a@b@c.es", "jo sé@x.es", "a<b>@x.es", "ana@café.example",
                                 '"a b"@cliente.es', "a@b.es\r\nBcc: x@y.es", "a,b@c.es", "x" * 1000 + "@c.es"])
@pytest.mark.parametrize("field", ["to_addr", "from_addr", "reply_to"])
def test_an_unusable_address_is_refused(field, bad):
    if field == "reply_to" and not bad:
        return  # no Reply-To is the default
    with pytest.raises(ValueError):
        build({"rendered": Rendered("s", "x", None), field: bad})
    if len(bad) < 998:  # the former compose refused them too
        with pytest.raises(ValueError):
            build({"rendered": Rendered("s", "x", None), field: bad}, old_compose)


@pytest.mark.parametrize("bad", ["café@helpdesk.example", "a b@x", "<a@x>", ""])
def test_an_unwritable_message_id_is_refused(bad):
    with pytest.raises(ValueError):
        build({"rendered": Rendered("s", "x", None), "message_id": bad})


def test_the_date_header_is_the_instant_given_in_its_own_zone():
    """The Date header of mail composed in the same second is formatted once (in UTC, the daemon's
    clock); the same instant in another zone is still written in that zone."""
    def date_of(when: datetime) -> str:
        raw = compose(Rendered("s", "t\n", None), from_name="H", from_addr="h@x.es", to_name="", to_addr="a@y.es",
                      message_id="m1@x.es", date=when)
        return next(line for line in raw.decode().split("\r\n") if line.startswith("Date: "))

    utc = datetime(2026, 11, 22, 10, 0, 0, 123456, tzinfo=timezone.utc)
    assert date_of(utc) == date_of(utc.replace(microsecond=0)) == "Date: Sun, 22 Nov 2026 10:00:00 +0000"
    assert date_of(utc.astimezone(timezone(timedelta(hours=1)))) == "Date: Sun, 22 Nov 2026 11:00:00 +0100"
