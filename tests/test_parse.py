"""Tests of helpdeskd.parse (and helpdeskd.htmltext) over hand-written .eml fixtures.

Correctness only: no timing assertions (the pathological inputs below must simply finish).
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

import pytest

from helpdeskd import parse as parse_module
from helpdeskd.htmltext import html_to_text
from helpdeskd.message import Address, Message
from helpdeskd.parse import message_key, parse
from helpdeskd.settings import Limits

FIXTURES = Path(__file__).parent / "fixtures" / "mail"
STORAGE_NAME = re.compile(r"^att-\d+-[0-9a-f]{10}\.[a-z0-9]{1,10}$")


def load(name: str) -> bytes:
    return (FIXTURES / name).read_bytes()


# ------------------------------------------------------------------------------------------------
# Table: fixture → expected field values. Fields not listed are checked by the focused tests below.
# "defects" lists defects that must be present; "no_defects" asserts the tuple is empty.
# ------------------------------------------------------------------------------------------------

EXPECTED: dict[str, dict[str, Any]] = {
    "plain.eml": {
        "message_id": "plain-1@mail.example.org",
        "subject": "Cannot log in to the control panel",
        "sender": Address("ana@example.org", "Ana Customer"),
        "to": (Address("support@helpdesk.example", "Support"),),
        "return_path": "ana@example.org",
        "date": "Mon, 3 Jun 2024 10:15:00 +0200",
        "text": "Hello,\n\nI cannot log in since this morning.\n\nThanks,\nAna",
        "html": False,
        "attachments": (),
        "languages": (),
        "no_defects": True,
    },
    "spanish_qp.eml": {
        "message_id": "qp-es-1@correo.example.es",
        "subject": "No puedo acceder al correo electrónico",
        "sender": Address("jm.perez@correo.example.es", "José María Pérez"),
        "languages": ("es",),
        "text": "Buenos días:\n\nDesde ayer no puedo acceder a mi buzón. ¿Podrían revisarlo?\n\n"
        "Gracias, José María",
        "return_path": None,
        "no_defects": True,
    },
    "rfc2047.eml": {
        "subject": "Réunion über le projet",
        "sender": Address("francois@example.fr", "François Dürr"),
        "reply_to": (Address("ti@example.fr", "Soporte, TI"), Address("plain@example.fr", "")),
        "cc": (Address("bjork@example.is", "Björk"),),
        "text": "Bonjour.",
        "no_defects": True,
    },
    "rfc2231.eml": {
        "text": "See attached.",
        "attachment_names": ("Factura nº 1 de ñandú.pdf",),
        "attachment_types": ("application/pdf",),
        "attachment_sizes": (16,),
        "no_defects": True,
    },
    "latin1_nocharset.eml": {
        "text": "La factura de España está mal.",
        "defects": ("8-bit body text without charset (decoded as windows-1252)",),
    },
    "unknown_charset.eml": {
        "subject": "caf\ufffd time",
        "text": "Price: 5\ufffd and more",
        "defects": ("unknown charset 'x-unknown-foo' in body", "unknown charset 'x-unknown-foo' in header"),
    },
    "mislabelled.eml": {
        "text": "Señor, the cañón is broken.",
        "defects": ("charset mislabelled in body: declared 'us-ascii', decoded as utf-8",),
    },
    "8bit_headers.eml": {
        "subject": "Mañana no funciona",
        "sender": Address("jose@example.es", "José García"),
        "to": (Address("support@helpdesk.example", "Soporte"),),
        "cc": (Address("andre@example.fr", "André Dupont"),),
        "text": "Hola.",
        "attachment_names": ("señal.txt",),
        "defects": (
            "8-bit bytes in subject header (decoded as utf-8)",
            "8-bit bytes in cc header (decoded as windows-1252)",
            "8-bit bytes in content-disposition header (decoded as utf-8)",
        ),
    },
    "html_only.eml": {
        "html": True,
        "text": "Hola equipo & amigos,\n\nPrimera línea\nsegunda línea\n\n- uno\n- dos\n\n"
        "1. first\n2. second\n\nVer el panel (https://panel.example.com/ticket?id=7) o arriba.\n\n<fin> €5",
        "no_defects": True,
    },
    "alternative.eml": {"text": "Plain version wins.", "html": False, "attachments": (), "no_defects": True},
    "evil_filenames.eml": {
        "text": "Please look.",
        "attachment_names": ("passwd", "x.exe", "a b c"),
        "attachment_sizes": (10, 4, 1),
    },
    "missing_close_boundary.eml": {
        "text": "First part is complete.",
        "attachment_names": ("doc.pdf",),
        "defects": ("closing MIME boundary missing (message truncated?)",),
    },
    "boundary_absent.eml": {
        "text": "Just some text, no MIME parts at all.",
        "defects": ("multipart boundary declared but not found in body",),
    },
    "no_boundary_param.eml": {
        "text": "Text without any boundary.",
        "defects": ("multipart without boundary parameter",),
    },
    "no_message_id.eml": {"message_id": "", "subject": "No id", "defects": ("missing Message-ID",)},
    "odd_message_id.eml": {"message_id": "odd.id@example.net", "no_defects": True},
    "outlook_tnef.eml": {
        "message_id": "DB7PR01MB1234ABCD@DB7PR01MB1234.eurprd01.prod.outlook.example",
        "subject": "RE: Problema con la VPN",
        "sender": Address("maria.lopez@corp.example", "María López"),
        "to": (Address("support@helpdesk.example", "Soporte"),),
        "in_reply_to": ("ticket-42.abcdef@helpdesk.example",),
        "languages": ("es", "en"),
        "text": "La VPN sigue sin conectar desde el portátil.\n\nSaludos,\nMaría",
        "attachment_names": ("winmail.dat",),
        "attachment_types": ("application/ms-tnef",),
        "attachment_sizes": (16,),
        "no_defects": True,
    },
    "nested_rfc822.eml": {
        "text": "See the forwarded mail below.",
        "attachment_names": ("Original problem.eml",),
        "attachment_types": ("message/rfc822",),
        "no_defects": True,
    },
    "deep_nesting.eml": {
        "subject": "Deep",
        "text": "",
        "defects": ("MIME nesting deeper than 20; deeper parts ignored",),
    },
    "empty.eml": {
        "message_id": "",
        "subject": "",
        "sender": None,
        "text": "",
        "headers": (),
        "defects": ("empty message", "missing Message-ID", "missing From"),
    },
    "headers_only.eml": {
        "message_id": "headers-only@example.net",
        "subject": "Only headers",
        "text": "",
        "no_defects": True,
    },
    "crlf_injection.eml": {
        "subject": "hi Bcc: x@y",
        "defects": ("control characters removed from subject header",),
    },
    "null_return_path.eml": {
        "return_path": "",
        "sender": Address("mailer-daemon@mx.example.net", "Mail Delivery System"),
        "no_defects": True,
    },
    "threading.eml": {
        "in_reply_to": ("ticket-42.a1@helpdesk.example",),
        "references": ("first@example.com", "ticket-42.a1@helpdesk.example", "spaced@example.com",
                       "last@example.com"),
        "subject": "Re: [Soporte #42] Problema",
        "no_defects": True,
    },
    "long_header.eml": {"subject": "Long header test", "text": "Body.", "no_defects": True},
}


def test_every_fixture_is_in_the_table() -> None:
    assert sorted(p.name for p in FIXTURES.glob("*.eml")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_fields(name: str) -> None:
    raw = load(name)
    message = parse(raw)
    expected = dict(EXPECTED[name])
    if expected.pop("no_defects", False):
        assert message.defects == ()
    for defect in expected.pop("defects", ()):
        assert defect in message.defects
    for field, attr in (("attachment_names", "filename"), ("attachment_types", "content_type"),
                        ("attachment_sizes", "size")):
        if field in expected:
            assert tuple(getattr(a, attr) for a in message.attachments) == expected.pop(field)
    for field, value in expected.items():
        assert getattr(message, field) == value, field
    assert message.size == len(raw)
    assert message.key == message_key(message.message_id, raw)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_invariants(name: str) -> None:
    """Properties every parse result has, whatever the mail."""
    message = parse(load(name))
    for attachment in message.attachments:
        assert STORAGE_NAME.match(attachment.storage_name)
        assert "/" not in attachment.filename and "\\" not in attachment.filename
        assert not re.search(r"[\x00-\x1f\x7f]", attachment.filename)
    for key, value in message.headers:
        assert key == key.lower()
        assert "\r" not in value and "\n" not in value
    for text in (message.subject, message.date, message.message_id):
        assert "\r" not in text and "\n" not in text
    assert "\r" not in message.text
    assert len(message.defects) == len(set(message.defects))


# ------------------------------------------------------------------------------------------------
# Focused behaviour
# ------------------------------------------------------------------------------------------------


def test_headers_keep_order_and_decode_values() -> None:
    message = parse(load("outlook_tnef.eml"))
    names = [name for name, _ in message.headers]
    assert names[:4] == ["received", "from", "to", "subject"]
    assert message.header("From") == "María López <Maria.Lopez@Corp.Example>"
    assert message.header("thread-index") == "AdqyHXxg5b1a2b3c4d5e6f7g8h9i0j=="
    assert message.header("accept-language") == "es-ES, en-US"


def test_headers_are_unfolded() -> None:
    message = parse(load("rfc2047.eml"))
    assert message.header("subject") == "Réunion über le projet"
    refs = parse(load("threading.eml")).header("references")
    assert refs is not None and refs.startswith("<first@example.com> <ticket-42.a1@helpdesk.example>")


def test_crlf_and_lf_copies_parse_alike_and_share_a_key() -> None:
    lf = load("plain.eml")
    crlf = lf.replace(b"\n", b"\r\n")
    a, b = parse(lf), parse(crlf)
    assert a.key == b.key
    assert (a.subject, a.text, a.sender, a.headers) == (b.subject, b.text, b.sender, b.headers)
    assert b.size == len(crlf)


def test_outlook_crlf_fixture_text_has_no_carriage_returns() -> None:
    assert "\r" not in parse(load("outlook_tnef.eml")).text


def test_evil_filenames_never_reach_storage_names() -> None:
    message = parse(load("evil_filenames.eml"))
    names = [a.storage_name for a in message.attachments]
    assert names[0].startswith("att-1-") and names[0].endswith(".bin")
    assert names[1].startswith("att-2-") and names[1].endswith(".exe")
    assert all(".." not in n and "passwd" not in n for n in names)


def test_long_header_is_capped_with_a_defect() -> None:
    message = parse(load("long_header.eml"), Limits(max_header_bytes=1000))
    value = message.header("x-long")
    assert value is not None and len(value.encode("utf-8")) <= 1000
    assert value.startswith("word0000 word0001")
    assert "x-long header longer than 1000 bytes, truncated" in message.defects


def test_megabyte_header_line_is_capped_at_the_default_limit() -> None:
    raw = b"From: a@example.com\nSubject: " + b"x" * 1_000_000 + b"\nMessage-ID: <big@example.com>\n\nbody\n"
    message = parse(raw)
    assert len(message.subject) == Limits().max_header_bytes
    assert message.message_id == "big@example.com"
    assert message.text == "body"


def test_multibyte_header_cap_cuts_on_a_character_boundary() -> None:
    raw = ("Subject: " + "ñ" * 600 + "\n\nx\n").encode("utf-8")
    message = parse(raw, Limits(max_header_bytes=1001))
    assert len(message.subject.encode("utf-8")) <= 1001
    assert set(message.subject) == {"ñ"}


def test_max_parts_stops_the_walk() -> None:
    message = parse(load("evil_filenames.eml"), Limits(max_parts=2))
    assert len(message.attachments) == 1
    assert "more than 2 MIME parts; the rest ignored" in message.defects


def test_max_depth_is_configurable() -> None:
    message = parse(load("deep_nesting.eml"), Limits(max_depth=30))
    assert message.text == "too deep to read"
    assert not any("nesting" in d for d in message.defects)


def test_nesting_beyond_the_stdlib_recursion_limit_degrades_to_headers() -> None:
    body = b"".join(b'Content-Type: multipart/mixed; boundary="n%d"\n\n--n%d\n' % (i, i) for i in range(3000))
    raw = b"From: Deep <deep@example.net>\nSubject: very deep\n" + body + b"Content-Type: text/plain\n\nx\n"
    message = parse(raw)
    assert message.subject == "very deep"
    assert message.sender == Address("deep@example.net", "Deep")
    assert message.text == ""
    assert any("body not read" in d for d in message.defects)


def test_parser_failure_still_returns_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_args: object, **_kwargs: object) -> Message:
        raise KeyError("boom")

    monkeypatch.setattr(parse_module, "body_and_attachments", broken)
    raw = load("plain.eml")
    message = parse(raw)
    assert message.subject == "Cannot log in to the control panel"
    assert message.size == len(raw)
    assert "parser failure (KeyError); body not read" in message.defects


def test_return_path_absent_null_and_present() -> None:
    assert parse(b"From: a@b.example\n\nx").return_path is None
    assert parse(b"Return-Path: <>\nFrom: a@b.example\n\nx").return_path == ""
    assert parse(b"Return-Path:  < >\n\nx").return_path == ""
    assert parse(b"Return-Path: <Bounce+X@Lists.Example>\n\nx").return_path == "bounce+x@lists.example"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        (b"Content-Language: es-ES\n", ("es",)),
        (b"Accept-Language: en;q=0.5, es-ES, *;q=0.1\n", ("es", "en")),
        (b"Content-Language: EN-gb\nAccept-Language: es-MX, en-US\n", ("en", "es")),
        (b"Accept-Language: fr;q=0, x-klingon, de\n", ("de",)),
        (b"Accept-Language: ;;;, q=abc, es;q=zz\n", ("es",)),
        (b"", ()),
    ],
)
def test_languages(headers: bytes, expected: tuple[str, ...]) -> None:
    assert parse(b"From: a@b.example\n" + headers + b"\nx").languages == expected


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (b"Message-ID: <a@b>", "a@b"),
        (b"Message-ID: a@b", "a@b"),
        (b"Message-ID: <a@b> <c@d>", "a@b"),
        (b"Message-ID: <>", ""),
        (b"Message-ID: garbage", ""),
        (b"Message-Id:\n\t<x y@z>", "xy@z"),
    ],
)
def test_message_id_shapes(header: bytes, expected: str) -> None:
    assert parse(header + b"\nFrom: a@b.example\n\nx").message_id == expected


def test_reference_junk_is_tolerated() -> None:
    raw = b"In-Reply-To: bare@id.example (comment)\nReferences: <a@x> <a@x> <<b@x>> junk\n\nx"
    message = parse(raw)
    assert message.in_reply_to == ("bare@id.example",)
    assert message.references == ("a@x", "b@x")


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (b"=?utf-8?q?a?= =?utf-8?q?b?=", "ab"),  # whitespace between words is dropped
        (b"=?utf-8?q?a?= b =?utf-8?q?c?=", "a b c"),
        (b"=?UTF-8?B?w7Fh?=", "ña"),
        (b"=?utf-8?b?w7Fh?=", "ña"),  # B without padding problems
        (b"=?utf-8?b?w7F?=", "ñ"),  # missing padding is repaired
        (b"=?utf-8*es?q?hola?=", "hola"),  # RFC 2231 language suffix
        (b"=?gb2312?b?xOO6ww==?=", "你好"),
        (b"=?utf-8?q?broken=?= x", "broken= x"),  # stray '=' kept
        (b"no =?words here", "no =?words here"),
        (b"=?utf-8?b?!!!!?=", "=?utf-8?b?!!!!?="),  # undecodable word left alone
    ],
)
def test_encoded_words(subject: bytes, expected: str) -> None:
    assert parse(b"Subject: " + subject + b"\n\nx").subject == expected


def test_encoded_display_name_cannot_forge_addresses() -> None:
    # The decoded name contains "<evil@x>, " but addresses are split before decoding.
    raw = b"From: =?utf-8?q?Mallory_=3Cevil@x.example=3E=2C?= <real@example.com>\n\nx"
    message = parse(raw)
    assert message.sender == Address("real@example.com", "Mallory <evil@x.example>,")


def test_nested_comment_bomb_in_address_header() -> None:
    message = parse(b"From: " + b"(" * 20000 + b" a@b.example\nSubject: s\n\nx")
    assert message.subject == "s"
    assert "unparsable from header" in message.defects


def test_body_charsets_via_codecs() -> None:
    raw = b"Content-Type: text/plain; charset=gb2312\n\n" + "你好，世界".encode("gb18030")
    assert parse(raw).text == "你好，世界"
    raw = b"Content-Type: text/plain; charset=windows-1251\n\n" + "Привет".encode("cp1251")
    assert parse(raw).text == "Привет"


def test_invalid_utf8_body_becomes_replacement_characters() -> None:
    message = parse(b"Content-Type: text/plain; charset=utf-8\n\nok \xff\xfe end")
    assert message.text == "ok \ufffd\ufffd end"
    assert "invalid bytes for charset 'utf-8' in body replaced" in message.defects


@pytest.mark.parametrize("charset", [b"base64", b"punycode", b"unicode_escape", b"\"\x00\"", b"a" * 300])
def test_non_mail_codecs_are_treated_as_unknown(charset: bytes) -> None:
    message = parse(b"Content-Type: text/plain; charset=" + charset + b"\n\nabc \xc3\xa9")
    assert message.text == "abc é"
    assert any(d.startswith("unknown charset") for d in message.defects)


def test_html_part_of_alternative_is_used_when_plain_is_empty() -> None:
    raw = (b"Content-Type: multipart/alternative; boundary=b\n\n--b\nContent-Type: text/plain\n\n \n"
           b"--b\nContent-Type: text/html\n\n<p>Only <i>here</i></p>\n--b--\n")
    message = parse(raw)
    assert (message.text, message.html) == ("Only here", True)


def test_inline_text_parts_are_joined_in_order() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\none\n"
           b"--b\nContent-Type: image/png\nContent-Disposition: inline\n\nPNG\n"
           b"--b\nContent-Type: text/plain\n\ntwo\n--b--\n")
    message = parse(raw)
    assert message.text == "one\n\ntwo"
    assert [a.content_type for a in message.attachments] == ["image/png"]
    assert message.attachments[0].storage_name.endswith(".png")


def test_text_attachment_with_a_name_is_not_body() -> None:
    raw = (b"Content-Type: multipart/mixed; boundary=b\n\n--b\nContent-Type: text/plain\n\nbody\n"
           b"--b\nContent-Type: text/plain; name=log.txt\n\nlog line\n--b--\n")
    message = parse(raw)
    assert message.text == "body"
    assert [(a.filename, a.size) for a in message.attachments] == [("log.txt", 8)]


def test_long_attachment_name_is_capped_keeping_the_extension() -> None:
    raw = (b'Content-Type: application/pdf\nContent-Disposition: attachment; filename="'
           + b"a" * 500 + b'.pdf"\n\nx')
    (attachment,) = parse(raw).attachments
    assert len(attachment.filename) == 200 and attachment.filename.endswith(".pdf")


def test_control_characters_are_removed_from_body() -> None:
    assert parse(b"\nline\x00one\r\nline\x07two\r\n").text == "lineone\nlinetwo"


# ------------------------------------------------------------------------------------------------
# message_key
# ------------------------------------------------------------------------------------------------


def test_message_key_shape_and_stability() -> None:
    key = message_key("a@b", b"raw\n")
    assert re.fullmatch(r"[0-9a-f]{32}", key)
    assert key == message_key("<a@b>", b"raw\n") == message_key(" <a@b> ", b"raw\r\n")
    assert key == message_key("a@b", b"raw")  # a dropped final line break is framing too


def test_message_key_differs_on_content_and_id() -> None:
    assert message_key("a@b", b"one") != message_key("a@b", b"two")
    assert message_key("a@b", b"one") != message_key("c@d", b"one")
    assert message_key("", b"one") != message_key("a@b", b"one")
    assert message_key("", b"one") == message_key("", b"one")


# ------------------------------------------------------------------------------------------------
# Robustness: parse never raises
# ------------------------------------------------------------------------------------------------


def _check(raw: bytes) -> None:
    message = parse(raw)
    assert isinstance(message, Message)
    assert message.size == len(raw)
    assert re.fullmatch(r"[0-9a-f]{32}", message.key)


def test_random_bytes_never_raise() -> None:
    rng = random.Random(20240603)
    alphabet = b"\r\n\t :;=?<>\"'()-_/\\@.,abcXYZ019\x00\x80\xff\xc3\xa9" + b"--b" * 3
    for _ in range(300):
        size = rng.randrange(0, 400)
        _check(bytes(rng.choice(alphabet) for _ in range(size)))
        _check(rng.randbytes(size))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_truncated_and_mutated_fixtures_never_raise(name: str) -> None:
    raw = load(name)
    rng = random.Random(name)
    for cut in range(0, len(raw), max(1, len(raw) // 40)):
        _check(raw[:cut])
    for _ in range(40):
        mutated = bytearray(raw)
        for _ in range(rng.randrange(1, 8)):
            if mutated:
                mutated[rng.randrange(len(mutated))] = rng.randrange(256)
        _check(bytes(mutated))


@pytest.mark.parametrize(
    "raw",
    [
        b"\x00" * 1000,
        b"\n" * 5000,
        b":" * 5000,
        b"From: " + b'"' * 50000 + b"\n\nx",
        b"To: " + b"<" * 50000 + b"\n\nx",
        b"Subject: " + b"=?utf-8?q?" * 10000 + b"\n\nx",
        b"References: " + b"<a@b> " * 20000 + b"\n\nx",
        b"Content-Type: multipart/mixed; boundary=\n\n--\n--\n",
        b"Content-Type: multipart/mixed; boundary=b\n\n" + b"--b\n" * 5000,
        b"Content-Type: message/rfc822\n\n" * 300 + b"Subject: x\n\nhi",
        b"Content-Type: text/plain; charset*=''\n\nx",
        b"Content-Type: text/plain\nContent-Transfer-Encoding: base64\n\n====a===b",
        b"Content-Type: text/plain\nContent-Transfer-Encoding: x-uuencode\n\nbegin 644 f\n!!!!\nend\n",
        b"Content-Disposition: attachment; filename*0*=bogus'xx'%ZZ; filename*1=\"\"\n\nx",
        b"Content-Disposition: attachment; filename*=x-nope''%E9t%E9\n\nx",
        b"Content-Type: text/html\n\n" + b"</" * 20000,
        b"From: a\x80@\xffb\n\n\xff",
        b"".join(b"X-H%d: v\xe9\n" % i for i in range(3000)) + b"\nx",
    ],
)
def test_pathological_inputs_never_raise(raw: bytes) -> None:
    _check(raw)


def test_defect_list_is_bounded() -> None:
    raw = b"".join(b"X-H%d: v\xe9\n" % i for i in range(3000)) + b"\nx"
    message = parse(raw)
    assert len(message.defects) <= 51
    assert message.defects[-1] == "more defects omitted"


# ------------------------------------------------------------------------------------------------
# htmltext
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("html", "expected"),
    [
        ("<p>a</p><p>b</p>", "a\n\nb"),
        ("a<br>b<br/>c", "a\nb\nc"),
        ("<ul><li>x</li><li>y<ul><li>z</li></ul></li></ul>", "- x\n- y\n\n  - z"),
        ("<ol><li>x<li>y</ol>", "1. x\n2. y"),
        ('<a href="https://e.example/">https://e.example/</a>', "https://e.example/"),
        ('<a href="mailto:x@y.example">write</a>', "write (x@y.example)"),
        ('<a href="javascript:evil()">click</a>', "click"),
        ("<style>p{}</style><script>x()</script><p>seen</p>", "seen"),
        ("&lt;b&gt; &amp; &eacute; &#233; &#x20ac; &nbsp;x", "<b> & é é € x"),
        ("<blockquote>quoted<br>more</blockquote>after", "> quoted\n> more\n\nafter"),
        ("<pre>  keep\n    spaces</pre>", "  keep\n    spaces"),
        ("<table><tr><td>a</td><td>b</td></tr><tr><td>c</td></tr></table>", "a b\nc"),
        ('<img src="x.png" alt="logo"> text', "[logo] text"),
        ("a<!-- hidden -->b <![if !x]>c<![endif]>", "ab c"),
        ("<![foo[ x ]]> y", "y"),
        ("unclosed <b", "unclosed &lt;b".replace("&lt;", "<")),
        ("", ""),
    ],
)
def test_html_to_text(html: str, expected: str) -> None:
    assert html_to_text(html) == expected


@pytest.mark.parametrize("html", ["</" * 50000, "<!" * 50000, "<!--a>" * 20000, "<" * 50000, "<a b='" * 20000])
def test_html_to_text_survives_hostile_markup(html: str) -> None:
    assert isinstance(html_to_text(html), str)


def test_a_plain_mail_that_mentions_message_types_keeps_its_body() -> None:
    body = "\r\n".join(f"see https://example.net/docs/message/{i} for the log" for i in range(400))
    raw = ("From: ana@cliente.es\r\nSubject: logs\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n"
           + body + "\r\n").encode()
    message = parse(raw, Limits())
    assert "message/399" in message.text and not any("containers" in d for d in message.defects)


@pytest.mark.parametrize("header", ["Content-Type: multipart/mixed; boundary=", "CONTENT-TYPE: MULTIPART/MIXED; BOUNDARY ="])
def test_a_mail_with_more_containers_than_parts_allowed_is_not_walked(header: str) -> None:
    parts = "".join(f"--b{i}\r\n{header}b{i + 1}\r\n\r\n" for i in range(5))
    raw = f"From: ana@cliente.es\r\nSubject: nested\r\nMIME-Version: 1.0\r\n{header}b0\r\n\r\n{parts}".encode()
    assert "too many MIME containers (limit 4); body not read" in parse(raw, Limits(max_parts=4)).defects
    assert not any("containers" in d for d in parse(raw, Limits(max_parts=6)).defects)


def test_the_short_cut_for_simple_address_headers_splits_as_the_stdlib_does() -> None:
    import random
    from email.utils import getaddresses

    from helpdeskd.mailheaders import _SIMPLE_ADDRESS, _split_addresses

    rng, taken, blank = random.Random(7), 0, " \t"

    def some(chars: str, most: int) -> str:
        return "".join(rng.choice(chars) for _ in range(rng.randint(0, most)))

    for _ in range(20000):
        shape = rng.random()
        if shape < 0.4:
            value = f"{some('aZ09._-' + blank, 12)}<{some('aZ09._%+=-', 6)}@{some('aZ09.-', 6)}>{some(blank, 2)}"
        elif shape < 0.7:
            value = f"{some(blank, 2)}{some('aZ09._%+=- ', 6)}@{some('aZ09.- ', 6)}"
        else:  # anything the parser treats specially: quotes, comments, groups, lists, routes
            value = some("aZ09._-%+=@<>,;:\"'()[]\\" + blank, 25)
        taken += bool(_SIMPLE_ADDRESS.fullmatch(value))
        assert _split_addresses([value]) == getaddresses([value]), value
    assert taken > 5000  # the short cut was exercised, not only the fallback
    assert _split_addresses(["Ana  García\t <ana@x>"]) == getaddresses(["Ana  García\t <ana@x>"])  # not ASCII
    assert _split_addresses(["a@x", "b@y"]) == [("", "a@x"), ("", "b@y")]  # several headers: the stdlib


def test_a_long_run_of_blanks_in_an_address_header_is_parsed_without_backtracking() -> None:
    # Three quantifiers in a row that all take blanks once made this cost the cube of the run's length
    # (hours at 64 KiB). Run in a child process: a regression shows as a timeout, not a hung suite.
    import subprocess
    import sys

    script = ("from helpdeskd.parse import parse\n"
              "for value in (b' ' * 64000 + b'x', b' a' + b'\\t' * 64000 + b'!', b' ' * 64000 + b'<a@b.example'):\n"
              "    message = parse(b'From:\\r\\n' + value + b'\\r\\nSubject: s\\r\\n\\r\\nx')\n"
              "    assert message.subject == 's', message.subject\n"
              "print('ok')\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "ok", done.stderr


@pytest.mark.parametrize("value,expected", [
    (b"<@relay1.example,@relay2.example:eve@evil.example>", Address("eve@evil.example", "")),  # obs-route
    (b"Eve <@relay.example:eve@evil.example>", Address("eve@evil.example", "Eve")),
    (b"<@relay2.example>", None),  # a route and no address
    (b'"Ana <@x:y" <ana@a.example>', Address("ana@a.example", "Ana <@x:y")),  # route-shaped, but quoted
    (b"(<@a) evil@x.example, (b:) good@y.example", Address("evil@x.example", "<@a")),  # or in a comment
    (b"Mail Delivery System <MAILER-DAEMON>", Address("mailer-daemon", "Mail Delivery System")),  # kept as is
])
def test_an_obsolete_route_before_an_address_is_dropped(value: bytes, expected: Address | None) -> None:
    assert parse(b"From: " + value + b"\r\nSubject: s\r\n\r\nx").sender == expected


def test_header_control_characters_are_all_unprintable():
    """sanitise() skips its regex for printable text: that is exact only while every character the
    pattern removes is one str.isprintable() rejects."""
    from helpdeskd.mailheaders import _CONTROLS, sanitise

    removed = [chr(c) for c in range(0x110000) if _CONTROLS.match(chr(c))]
    assert removed and not any(ch.isprintable() for ch in removed)
    assert sanitise("a\tb\x00c\u2028d\u00a0e") == "a b c d\u00a0e"


def test_the_control_character_check_agrees_with_the_pattern_it_stands_for() -> None:
    """mimewalk._has_controls decides whether the body needs _BODY_CONTROLS removed: it must see every
    character the pattern matches, and nothing else, lone surrogates (from undecodable bytes) included."""
    from helpdeskd.mimewalk import _BODY_CONTROLS, _has_controls

    rng = random.Random(20261122)
    alphabet = [chr(c) for c in range(0x2100)] + ["\udc80", "\ud800", "\U0001F600", "\r\n"]
    for _ in range(20000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 30)))
        assert _has_controls(text) == (_BODY_CONTROLS.search(text) is not None), repr(text)
    assert all(_has_controls(chr(c)) == (_BODY_CONTROLS.match(chr(c)) is not None) for c in range(0x110000)
               if not 0xD800 <= c <= 0xDFFF)
