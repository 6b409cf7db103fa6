"""Tests for helpdeskd.config: every rule's exact message, defaults, paths, and the shipped files."""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import pytest
import tomli_w

from helpdeskd.config import build_config, load_config
from helpdeskd.errors import ConfigError
from helpdeskd.settings import LANGUAGES, Limits, Localized

REPO = Path(__file__).resolve().parent.parent
DELETE = object()  # patch value: remove the key

BASE: dict[str, Any] = {
    "helpdesk": {
        "enabled": True,
        "name": "Soporte",
        "address": "support@example.com",
        "allow_customer_tickets": True,
        "default_queue": "general",
        "default_priority": "normal",
        "default_category": "general",
        "subject_tag": "[Soporte #{id}]",
        "default_language": "es",
    },
    "queues": [
        {"key": "general", "name": {"es": "General", "en": "General"}},
        {"key": "sales", "name": {"es": "Ventas", "en": "Sales"}, "staff": ["ana@example.com"]},
        {"key": "billing", "name": {"es": "Facturación", "en": "Billing"}},
    ],
    "priorities": [
        {"key": "high", "name": {"es": "Alta", "en": "High"},
         "description": {"es": "Urgente", "en": "Urgent"}, "response_target": "4h"},
        {"key": "normal", "name": {"es": "Normal", "en": "Normal"},
         "description": {"es": "Normal", "en": "Normal"}, "response_target": 1440},
    ],
    "categories": [{"key": "general", "name": {"es": "General", "en": "General"}}],
    "mailboxes": [{"name": "local", "protocol": "maildir", "path": "inbox"}],
}


def patched(patches: dict[str, Any]) -> dict[str, Any]:
    """A deep copy of BASE with each dotted path ("queues[1].name.en") set, or removed with DELETE."""
    data = copy.deepcopy(BASE)
    for path, value in patches.items():
        *parents, last = re.findall(r"[^.\[\]]+", path)
        node: Any = data
        for part in parents:
            node = node[int(part)] if part.isdigit() else node[part]
        key: Any = int(last) if last.isdigit() else last
        if value is DELETE:
            del node[key]
        else:
            node[key] = value
    return data


def problems(patches: dict[str, Any], base_dir: Path = Path("/srv/helpdesk/config")) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        build_config(patched(patches), base_dir, source="test.toml")
    return caught.value.problems


def build(patches: dict[str, Any] | None = None, base_dir: Path = Path("/srv/helpdesk/config")):
    return build_config(patched(patches or {}), base_dir)


DURATION = 'expected minutes as an integer, or a duration like "30m", "4h", "1h30m", "2d"'
INTERVAL = 'expected seconds as a positive number, or a duration like "30s", "5m", "1h30m", "2d"'
BAD_ADDRESS = "is not a valid email address (write it bare, like support@example.com)"

# (patches, the exact problem expected among those reported)
RULES: list[tuple[dict[str, Any], str]] = [
    # required keys and types
    ({"helpdesk": DELETE}, "helpdesk: missing"),
    ({"helpdesk": "x"}, 'helpdesk: expected a table, got string "x"'),
    ({"helpdesk.name": DELETE}, "helpdesk.name: missing"),
    ({"helpdesk.enabled": "yes"}, 'helpdesk.enabled: expected true or false, got string "yes"'),
    ({"helpdesk.enabled": 1}, "helpdesk.enabled: expected true or false, got integer 1"),
    ({"helpdesk.detect_language": 0}, "helpdesk.detect_language: expected true or false, got integer 0"),
    ({"helpdesk.name": 3}, "helpdesk.name: expected a string, got integer 3"),
    ({"helpdesk.name": "  "}, "helpdesk.name: must not be empty"),
    ({"helpdesk.name": "a\r\nBcc: x@y"}, "helpdesk.name: must not contain line breaks"),
    ({"helpdesk.state_dir": ["a"]}, "helpdesk.state_dir: expected a string, got array"),
    # addresses
    ({"helpdesk.address": "not-an-address"}, f'helpdesk.address: "not-an-address" {BAD_ADDRESS}'),
    ({"helpdesk.address": "Soporte <s@example.com>"},
     f'helpdesk.address: "Soporte <s@example.com>" {BAD_ADDRESS}'),
    ({"helpdesk.address": "a@example.com, b@example.com"},
     f'helpdesk.address: "a@example.com, b@example.com" {BAD_ADDRESS}'),
    ({"helpdesk.address": "a..b@example.com"}, f'helpdesk.address: "a..b@example.com" {BAD_ADDRESS}'),
    ({"helpdesk.address": "a@-example.com"}, f'helpdesk.address: "a@-example.com" {BAD_ADDRESS}'),
    ({"helpdesk.address": "s@example.com\n"}, "helpdesk.address: must not contain line breaks"),
    ({"helpdesk.address": 5}, "helpdesk.address: expected an email address, got integer 5"),
    ({"queues[1].staff": ["ok@example.com", "nope"]}, f'queues[1].staff[1]: "nope" {BAD_ADDRESS}'),
    ({"queues[1].staff": "ana@example.com"}, 'queues[1].staff: expected an array, got string "ana@example.com"'),
    ({"queues[0].escalation": ["Support@Example.com"]},
     'queues[0].escalation[0]: "Support@Example.com" is the helpdesk\'s own address; mail to it would loop'),
    ({"helpdesk.message_id_domain": "bad domain"},
     'helpdesk.message_id_domain: "bad domain" is not a valid domain name'),
    # conversations
    ({"helpdesk.closed_reply": "maybe"},
     'helpdesk.closed_reply: "maybe" is not a closed-ticket policy (known: reopen, new, refuse)'),
    ({"helpdesk.notify_staff": "yes"}, 'helpdesk.notify_staff: expected true or false, got string "yes"'),
    ({"helpdesk.plus_addressing": 1}, "helpdesk.plus_addressing: expected true or false, got integer 1"),
    # subject tag
    ({"helpdesk.subject_tag": "[Soporte]"}, "helpdesk.subject_tag: must contain {id} exactly once"),
    ({"helpdesk.subject_tag": "[{id} {id}]"}, "helpdesk.subject_tag: must contain {id} exactly once"),
    ({"helpdesk.subject_tag": "[{name} #{id}]"},
     "helpdesk.subject_tag: no braces other than the one {id} are allowed"),
    ({"helpdesk.subject_tag": "[#{id}}"}, "helpdesk.subject_tag: no braces other than the one {id} are allowed"),
    ({"helpdesk.subject_tag": "[#{id}]\n"}, "helpdesk.subject_tag: must not contain line breaks"),
    # choices and references
    ({"helpdesk.default_language": "fr"},
     'helpdesk.default_language: "fr" is not a supported language (known: es, en)'),
    ({"helpdesk.default_queue": "foo"},
     'helpdesk.default_queue: "foo" is not a configured queue (known: general, sales, billing)'),
    ({"helpdesk.default_priority": "low"},
     'helpdesk.default_priority: "low" is not a configured priority (known: high, normal)'),
    ({"helpdesk.default_category": "dns"},
     'helpdesk.default_category: "dns" is not a configured category (known: general)'),
    ({"mailboxes[0].queue": "support"},
     'mailboxes[0].queue: "support" is not a configured queue (known: general, sales, billing)'),
    ({"mailboxes[0].priority": "urgent"},
     'mailboxes[0].priority: "urgent" is not a configured priority (known: high, normal)'),
    ({"mailboxes[0].category": "x"}, 'mailboxes[0].category: "x" is not a configured category (known: general)'),
    ({"logging": {"level": "verbose"}},
     'logging.level: "verbose" is not a log level (known: debug, info, warning, error)'),
    # keys
    ({"queues[2].key": "Billing"}, 'queues[2].key: "Billing" is not a valid key: use 1-40 lowercase letters, '
                                   "digits, '_' or '-', starting with a letter or digit"),
    ({"queues[2].key": "-x"}, 'queues[2].key: "-x" is not a valid key: use 1-40 lowercase letters, '
                              "digits, '_' or '-', starting with a letter or digit"),
    ({"categories[0].key": "a" * 41},
     f'categories[0].key: "{"a" * 41}" is not a valid key: use 1-40 lowercase letters, digits, '
     "'_' or '-', starting with a letter or digit"),
    ({"queues[2].key": "general"}, 'queues[2].key: duplicate "general" (first defined at queues[0].key)'),
    ({"priorities[1].key": "high", "helpdesk.default_priority": "high"},
     'priorities[1].key: duplicate "high" (first defined at priorities[0].key)'),
    ({"mailboxes": [BASE["mailboxes"][0], {"name": "local", "protocol": "maildir", "path": "x"}]},
     'mailboxes[1].name: duplicate "local" (first defined at mailboxes[0].name)'),
    # sections
    ({"queues": []}, "queues: at least one [[queues]] entry is required"),
    ({"priorities": DELETE}, "priorities: at least one [[priorities]] entry is required"),
    ({"categories": []}, "categories: at least one [[categories]] entry is required"),
    ({"queues": {"key": "general"}}, "queues: expected an array, got table"),
    ({"queues[1]": "sales"}, 'queues[1]: expected a table, got string "sales"'),
    ({"queues[2].name": DELETE}, "queues[2].name: missing"),
    # localized texts
    ({"queues[0].name": "General"},
     'queues[0].name: expected a table with a text per language, like { es = "...", en = "..." }, '
     'got string "General"'),
    ({"queues[0].name.en": DELETE}, "queues[0].name.en: missing"),
    ({"queues[0].name.es": ""}, "queues[0].name.es: must not be empty"),
    ({"queues[0].name.es": 7}, "queues[0].name.es: expected a string, got integer 7"),
    ({"queues[0].name.fr": "Général"}, "queues[0].name.fr: unknown language (supported: es, en)"),
    ({"categories[0].name.en": "Gen\neral"}, "categories[0].name.en: must not contain line breaks"),
    ({"priorities[0].description": DELETE}, "priorities[0].description: missing"),
    # durations and intervals
    ({"priorities[1].response_target": "4 hours"}, f"priorities[1].response_target: {DURATION}"),
    ({"priorities[1].response_target": "h"}, f"priorities[1].response_target: {DURATION}"),
    ({"priorities[1].response_target": 2.5}, f"priorities[1].response_target: {DURATION}"),
    ({"priorities[1].response_target": True}, f"priorities[1].response_target: {DURATION}"),
    ({"priorities[1].response_target": "90s"}, f"priorities[1].response_target: {DURATION}"),  # not whole minutes
    ({"priorities[1].response_target": "30m1h"}, f"priorities[1].response_target: {DURATION}"),  # out of order
    ({"priorities[1].response_target": 0}, "priorities[1].response_target: must be more than zero"),
    ({"priorities[1].response_target": "0m"}, "priorities[1].response_target: must be more than zero"),
    ({"priorities[1].response_target": DELETE}, "priorities[1].response_target: missing"),
    ({"mailboxes[0].interval": 0}, f"mailboxes[0].interval: {INTERVAL}"),
    ({"mailboxes[0].interval": -1.5}, f"mailboxes[0].interval: {INTERVAL}"),
    ({"mailboxes[0].interval": True}, f"mailboxes[0].interval: {INTERVAL}"),
    ({"mailboxes[0].interval": "5 minutes"}, f"mailboxes[0].interval: {INTERVAL}"),
    ({"mailboxes[0].interval": float("nan")}, f"mailboxes[0].interval: {INTERVAL}"),
    ({"mailboxes[0].interval": "1h1h"}, f"mailboxes[0].interval: {INTERVAL}"),
    ({"mailboxes[0].interval": "0s"}, f"mailboxes[0].interval: {INTERVAL}"),
    # mailboxes
    ({"mailboxes[0].protocol": "imap"},
     'mailboxes[0].protocol: "imap" is not supported in this version (supported: maildir, pop3, pop3s)'),
    ({"mailboxes[0].protocol": "pop3"}, "mailboxes[0].host: missing"),
    ({"mailboxes[0].protocol": DELETE}, "mailboxes[0].protocol: missing"),
    ({"mailboxes[0].path": DELETE}, "mailboxes[0].path: missing"),
    ({"mailboxes[0].name": DELETE}, "mailboxes[0].name: missing"),
    # limits
    ({"limits": {"max_parts": 0}}, "limits.max_parts: expected a positive integer, got integer 0"),
    ({"limits": {"max_depth": True}}, "limits.max_depth: expected a positive integer, got boolean true"),
    ({"limits": {"max_message_bytes": "25M"}},
     'limits.max_message_bytes: expected a positive integer, got string "25M"'),
    # unknown keys, with a suggestion when one is close
    ({"helpdesk.colour": "red"}, "helpdesk.colour: unknown key"),
    ({"helpdesk.adress": "x@example.com"}, 'helpdesk.adress: unknown key (did you mean "address"?)'),
    ({"queue": []}, 'queue: unknown key (did you mean "queues"?)'),
    ({"queues[1].stafff": []}, 'queues[1].stafff: unknown key (did you mean "staff"?)'),
    ({"mailboxes[0].intervall": 3}, 'mailboxes[0].intervall: unknown key (did you mean "interval"?)'),
    ({"limits": {"max_part": 3}}, 'limits.max_part: unknown key (did you mean "max_parts"?)'),
    ({"logging": {"lvl": "info"}}, 'logging.lvl: unknown key (did you mean "level"?)'),
]


@pytest.mark.parametrize(("patches", "expected"), RULES, ids=[r[1][:60] for r in RULES])
def test_rule_reports_exact_message(patches: dict[str, Any], expected: str) -> None:
    assert expected in problems(patches)


def test_error_message_names_source_and_problems() -> None:
    with pytest.raises(ConfigError) as caught:
        data = patched({"helpdesk.name": DELETE, "categories[0].name.en": DELETE})
        build_config(data, Path("/x"), source="/etc/h.toml")
    assert caught.value.source == "/etc/h.toml"
    assert str(caught.value) == (
        "/etc/h.toml: helpdesk.name: missing; categories[0].name.en: missing")


def test_one_problem_does_not_cascade() -> None:
    # A queue with a bad name is still a declared queue: the default referring to it is not flagged.
    assert problems({"queues[0].name": DELETE}) == ["queues[0].name: missing"]
    assert problems({"helpdesk": DELETE}) == ["helpdesk: missing"]


def test_several_problems_reported_together() -> None:
    found = problems({
        "helpdesk.address": "nope",
        "helpdesk.colour": "red",
        "queues[2].name": DELETE,
        "priorities[1].response_target": "soon",
        "mailboxes[0].protocol": "imap",
    })
    assert found == [
        f'helpdesk.address: "nope" {BAD_ADDRESS}',
        "helpdesk.colour: unknown key",
        "queues[2].name: missing",
        f"priorities[1].response_target: {DURATION}",
        'mailboxes[0].protocol: "imap" is not supported in this version (supported: maildir, pop3, pop3s)',
    ]


def test_non_table_document_is_refused() -> None:
    with pytest.raises(ConfigError, match="expected a TOML table at the top level"):
        build_config([], Path("/x"))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- values and defaults


def test_defaults_applied() -> None:
    config = build()
    helpdesk = config.helpdesk
    assert helpdesk.detect_language is True and helpdesk.acknowledge_followups is True
    assert helpdesk.message_id_domain == "example.com"
    assert helpdesk.state_dir == Path("/srv/helpdesk/state")
    assert helpdesk.templates_dir == Path("/srv/helpdesk/templates")
    assert config.log_level == "info" and config.limits == Limits()
    assert config.mailboxes[0].interval_seconds == 10.0
    assert config.mailboxes[0].queue is config.mailboxes[0].priority is config.mailboxes[0].category is None
    assert config.queues[0].staff == () and config.queues[0].escalation == ()
    assert config.source_path is None


def test_values_are_frozen_and_ordered() -> None:
    config = build({"queues[0].name": {"en": "General EN", "es": "General ES"}})
    assert config.queues[0].name == Localized(texts=(("es", "General ES"), ("en", "General EN")))
    assert tuple(lang for lang, _ in config.queues[0].name.texts) == LANGUAGES
    assert [q.key for q in config.queues] == ["general", "sales", "billing"]
    assert config.queues[1].staff == ("ana@example.com",)
    assert [(p.key, p.rank) for p in config.priorities] == [("high", 0), ("normal", 1)]
    assert isinstance(config.queues, tuple) and isinstance(config.mailboxes, tuple)
    with pytest.raises(AttributeError):
        config.helpdesk.name = "x"  # type: ignore[misc]


def test_explicit_values_override_defaults() -> None:
    config = build({
        "helpdesk.message_id_domain": "mid.example.net",
        "helpdesk.detect_language": False,
        "logging": {"level": "debug"},
        "limits": {"max_parts": 50},
        "mailboxes[0].queue": "sales",
        "mailboxes[0].priority": "high",
        "mailboxes[0].category": "general",
    })
    assert config.helpdesk.message_id_domain == "mid.example.net"
    assert config.helpdesk.detect_language is False and config.log_level == "debug"
    assert config.limits == Limits(max_parts=50)
    assert (config.mailboxes[0].queue, config.mailboxes[0].priority) == ("sales", "high")


@pytest.mark.parametrize(("value", "minutes"), [
    ("30m", 30), ("4h", 240), ("2d", 2880), ("1d12h", 2160), ("1h 30m", 90), ("4H", 240), (45, 45),
    ("120s", 2), ("1.5h", 90), ("1.1h", 66),
])
def test_response_target_durations(value: Any, minutes: int) -> None:
    config = build({"priorities[0].response_target": value})
    assert config.priorities[0].response_target_minutes == minutes


@pytest.mark.parametrize(
    ("value", "seconds"), [(5, 5.0), (0.5, 0.5), ("30s", 30.0), ("5m", 300.0), ("1h", 3600.0),
                           ("1m30s", 90.0), ("2d", 172800.0), ("1.5m", 90.0), ("1H 2M", 3720.0)])
def test_mailbox_intervals(value: Any, seconds: float) -> None:
    assert build({"mailboxes[0].interval": value}).mailboxes[0].interval_seconds == seconds


def test_descriptions_may_span_lines() -> None:
    config = build({"priorities[0].description.en": "Line one.\nLine two."})
    assert config.priorities[0].description.get("en") == "Line one.\nLine two."


def test_no_mailboxes_is_valid() -> None:
    assert build({"mailboxes": DELETE}).mailboxes == ()


@pytest.mark.parametrize("address", ["support@example.com", "a.b+tag@mail.example.co.uk", "agent@localhost"])
def test_good_addresses(address: str) -> None:
    assert build({"helpdesk.address": address}).helpdesk.address == address


# --------------------------------------------------------------------------- files and paths


def write(path: Path, data: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(tomli_w.dumps(data).encode())
    return path


def test_relative_paths_resolve_against_the_config_directory(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.chdir("/")  # the working directory must not matter
    data = patched({"helpdesk.state_dir": "var/state", "helpdesk.templates_dir": "/opt/tpl",
                    "mailboxes[0].path": "../inbox"})
    config = load_config(write(tmp_path / "etc" / "helpdeskd.toml", data))
    assert config.helpdesk.state_dir == tmp_path.resolve() / "etc" / "var" / "state"
    assert config.helpdesk.templates_dir == Path("/opt/tpl")
    assert config.mailboxes[0].path == tmp_path.resolve() / "inbox"
    assert config.source_path == tmp_path.resolve() / "etc" / "helpdeskd.toml"


def test_load_config_accepts_a_relative_path(tmp_path: Path, monkeypatch) -> None:
    write(tmp_path / "conf" / "h.toml", BASE)
    monkeypatch.chdir(tmp_path)
    config = load_config("conf/h.toml")
    assert config.source_path == tmp_path.resolve() / "conf" / "h.toml"
    assert config.helpdesk.state_dir == tmp_path.resolve() / "state"


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path)
    assert caught.value.problems == ["cannot read the file: No such file or directory"]


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read the file"):
        load_config(tmp_path)


def test_toml_syntax_error_gives_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text('[helpdesk]\nname = "Soporte"\nenabled = \n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    (problem,) = caught.value.problems
    assert problem.startswith("TOML syntax error: ") and "line 3, column" in problem
    assert str(caught.value).startswith(f"{path}: TOML syntax error")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.toml"
    path.write_bytes('name = "Facturación"\n'.encode("latin-1"))
    with pytest.raises(ConfigError, match="not valid UTF-8"):
        load_config(path)


def test_validation_problems_from_a_file_carry_its_path(tmp_path: Path) -> None:
    path = write(tmp_path / "h.toml", patched({"helpdesk.colour": "red"}))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert caught.value.source == str(path) and caught.value.problems == ["helpdesk.colour: unknown key"]


SHIPPED = sorted((REPO / "config").rglob("*.toml"))


def test_shipped_configs_exist() -> None:
    assert REPO / "config" / "helpdeskd.toml" in SHIPPED
    assert REPO / "config" / "examples" / "msp.toml" in SHIPPED


@pytest.mark.parametrize("path", SHIPPED, ids=[str(p.relative_to(REPO)) for p in SHIPPED])
def test_every_shipped_config_is_valid(path: Path) -> None:
    config = load_config(path)
    assert config.source_path == path
    assert config.queues and config.priorities and config.categories


def test_default_config_matches_the_panel() -> None:
    config = load_config(REPO / "config" / "helpdeskd.toml")
    assert config.helpdesk.name == "Soporte" and config.helpdesk.default_language == "es"
    assert len(config.queues) == 3 and [p.key for p in config.priorities] == ["high", "normal", "low"]
    names = {c.key: (c.name.get("es"), c.name.get("en")) for c in config.categories}
    assert sorted(n for _, n in names.values()) == sorted([
        "Databases", "DNS", "FTP", "General", "Hosting", "Mail", "Mailing Lists", "Site Applications",
        "Tomcat Java"])
    assert names["hosting"] == ("Alojamiento", "Hosting") and names["mailing-lists"][0] == "Listas de correo"
    assert config.helpdesk.state_dir == REPO / "state"
    (mailbox,) = config.mailboxes
    assert (mailbox.name, mailbox.protocol, mailbox.interval_seconds) == ("local", "maildir", 5.0)
    assert mailbox.path == REPO / "state" / "inbox"


def test_msp_profile_ranks_priorities_by_business_impact() -> None:
    config = load_config(REPO / "config" / "examples" / "msp.toml")
    assert config.helpdesk.default_language == "en"
    assert [p.key for p in config.priorities] == [
        "system-down", "significant-impact", "minor-impact", "information-only"]
    assert [p.response_target_minutes for p in config.priorities] == [60, 240, 1440, 4320]


# ----------------------------------------------------------------------------- pop3 mailboxes


def _pop3_problems(**entry: object) -> list[str]:
    from conftest import default_config_data

    data = default_config_data()
    base = {"name": "support", "protocol": "pop3", "host": "mail.example.com", "user": "u", "password_env": "P"}
    data["mailboxes"] = [{k: v for k, v in {**base, **entry}.items() if v is not None}]
    try:
        build_config(data, Path("/tmp"))
    except ConfigError as exc:
        return exc.problems
    return []


def test_pop3_mailbox_defaults():
    from conftest import default_config_data

    data = default_config_data()
    data["mailboxes"] = [{"name": "s", "protocol": "pop3s", "host": "h", "user": "u", "password_file": "pw"}]
    pop3 = build_config(data, Path("/etc/helpdeskd")).mailboxes[0].pop3
    assert (pop3.port, pop3.implicit_tls, pop3.allow_plaintext, pop3.keep) == (995, True, False, False)
    assert pop3.password_file == Path("/etc/helpdeskd/pw") and pop3.oversized == "ticket"


def test_pop3_password_never_in_the_toml():
    assert any(p.startswith("mailboxes[0].password: passwords are not accepted") for p in _pop3_problems(password="x"))


def test_pop3_needs_exactly_one_password_source():
    assert _pop3_problems(password_env=None) == [
        "mailboxes[0].password_file: exactly one of password_file, password_env, password_credential is required"]
    assert "found password_file, password_env" in _pop3_problems(password_file="f")[0]


def test_pop3_checks():
    assert _pop3_problems(protocol="pop3s", allow_plaintext=True) == [
        'mailboxes[0].allow_plaintext: only meaningful with protocol = "pop3"; pop3s is always TLS']
    assert _pop3_problems(password_env=None, password_credential="../x") == [
        "mailboxes[0].password_credential: must be a plain file name under $CREDENTIALS_DIRECTORY"]
    assert _pop3_problems(port=70000) == ["mailboxes[0].port: 70000 is not a TCP port (1-65535)"]
    assert _pop3_problems(oversized="drop")[0].startswith('mailboxes[0].oversized: "drop" is not')
    assert _pop3_problems(path="x", hots="h")[0] == 'mailboxes[0].hots: unknown key (did you mean "host"?)'


def test_the_state_dir_is_read_from_a_file_that_is_toml_but_not_a_valid_config(tmp_path):
    from helpdeskd.config import state_dir_of

    (tmp_path / "etc").mkdir()
    named = tmp_path / "etc" / "named.toml"
    named.write_text('[helpdesk]\nstate_dir = "../var/state"\ndefault_queue = "nowhere"\n')
    assert state_dir_of(named) == (tmp_path / "var" / "state").resolve()
    default = tmp_path / "etc" / "default.toml"
    default.write_text("[helpdesk]\nname = 3\n")
    assert state_dir_of(default) == (tmp_path / "state").resolve()  # as the daemon would: ../state
    for text in ("[helpdesk\n", '[helpdesk]\nstate_dir = 5\n'):
        default.write_text(text)
        assert state_dir_of(default) is None
    assert state_dir_of(tmp_path / "missing.toml") is None
