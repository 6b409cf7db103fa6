"""[smtp] and [autoreply]: validated whole like the rest; secrets never in the TOML."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpdeskd.config import build_config
from helpdeskd.errors import ConfigError
from helpdeskd.settings import AutoReply
from helpdeskd.smtp import resolve_password

from conftest import default_config_data


def build(smtp: dict | None = None, autoreply: dict | None = None):
    data = default_config_data()
    if smtp is not None:
        data["smtp"] = smtp
    if autoreply is not None:
        data["autoreply"] = autoreply
    return build_config(data, Path("/etc/helpdeskd"))


def problems(**sections) -> list[str]:
    with pytest.raises(ConfigError) as err:
        build(**sections)
    return err.value.problems


def test_absent_smtp_means_outbox_only_and_default_limits():
    config = build()
    assert config.smtp is None and config.autoreply == AutoReply()


def test_defaults_are_starttls_on_587_with_null_sender():
    smtp = build({"host": "mail.example.com"}).smtp
    assert (smtp.port, smtp.security, smtp.envelope_sender, smtp.user) == (587, "starttls", "", None)
    assert build({"host": "mail.example.com", "security": "tls"}).smtp.port == 465


def test_every_smtp_problem_at_once():
    found = problems(smtp={"security": "none", "user": "u", "password_env": "A", "password_file": "f",
                           "port": 70000, "timeout": "soon", "envelope_sender": "Bad <x@y>", "retry_max": "1s",
                           "password_credential": "../etc/shadow", "hots": "x"})
    text = "\n".join(found)
    for expected in ("smtp.host: missing", "smtp.port", "allow_plaintext", ": give only one of password_file",
                     "clear text", "smtp.timeout", "smtp.envelope_sender", "smtp.retry_max",
                     "smtp.password_credential", 'smtp.hots: unknown key (did you mean "host"?)'):
        assert expected in text, expected


def test_login_needs_exactly_one_password_source():
    assert any("needs a password" in p for p in problems(smtp={"host": "h.example", "user": "u"}))
    assert any("without a user" in p for p in problems(smtp={"host": "h.example", "password_env": "X"}))


def test_plaintext_allowed_explicitly():
    smtp = build({"host": "127.0.0.1", "security": "none", "allow_plaintext": True}).smtp
    assert (smtp.port, smtp.security) == (25, "none")


def test_relative_paths_and_durations():
    smtp = build({"host": "h.example", "user": "u", "password_file": "smtp.pw", "ca_file": "ca.pem",
                  "give_up_after": "2d", "retry_first": "30s"}).smtp
    assert smtp.password_file == Path("/etc/helpdeskd/smtp.pw") and smtp.ca_file == Path("/etc/helpdeskd/ca.pem")
    assert (smtp.give_up_seconds, smtp.retry_first_seconds) == (172800.0, 30.0)


def test_autoreply_limits():
    limits = build(autoreply={"per_recipient": 2, "per_recipient_window": "1d", "global_max": 50}).autoreply
    assert (limits.per_recipient, limits.per_recipient_window_seconds, limits.global_max) == (2, 86400.0, 50)
    assert any("autoreply.per_recipient" in p for p in problems(autoreply={"per_recipient": 0}))


def test_password_sources(tmp_path):
    (tmp_path / "pw").write_text("from-file\n")
    smtp = build({"host": "h.example", "user": "u", "password_credential": "pw"}).smtp
    assert resolve_password(smtp, {"CREDENTIALS_DIRECTORY": str(tmp_path)}) == "from-file"
    with pytest.raises(ConfigError, match="CREDENTIALS_DIRECTORY"):
        resolve_password(smtp, {})
    env = build({"host": "h.example", "user": "u", "password_env": "PW"}).smtp
    assert resolve_password(env, {"PW": "from-env"}) == "from-env"
    with pytest.raises(ConfigError, match="PW is not set"):
        resolve_password(env, {})
