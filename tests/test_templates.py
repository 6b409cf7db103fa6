"""Templates: every shipped one renders in every language; broken edits are caught at load."""

from __future__ import annotations

import shutil
from dataclasses import replace

import pytest

from helpdeskd.errors import ConfigError
from helpdeskd.settings import LANGUAGES
from helpdeskd.templates import REQUIRED, Templates, context_for, load_templates, sample_ticket

from conftest import ROOT


def config_with_templates(config, directory):
    return replace(config, helpdesk=replace(config.helpdesk, templates_dir=directory))


@pytest.fixture
def tdir(tmp_path):
    target = tmp_path / "templates"
    shutil.copytree(ROOT / "templates", target)
    return target


def test_shipped_templates_exist_for_every_language(config):
    for name in REQUIRED:
        for lang in LANGUAGES:
            assert (ROOT / "templates" / lang / f"{name}.subject").is_file()
            assert (ROOT / "templates" / lang / f"{name}.txt").is_file()
    load_templates(config)  # raises ConfigError listing any problem


def test_syntax_error_is_reported_with_file_and_line(config, tdir):
    (tdir / "es" / "ack_new.txt").write_text("Hola\n{% if %}\n")
    with pytest.raises(ConfigError) as err:
        load_templates(config_with_templates(config, tdir))
    assert any("es/ack_new.txt, line 2" in p for p in err.value.problems)


def test_undefined_variable_is_caught_at_load(config, tdir):
    (tdir / "en" / "closed.txt").write_text("Hello {{ ticket.nmber }}\n")
    with pytest.raises(ConfigError) as err:
        load_templates(config_with_templates(config, tdir))
    assert any("closed" in p and "nmber" in p for p in err.value.problems)


def test_missing_language_falls_back_to_english(config, tdir):
    (tdir / "es" / "closed.txt").unlink()
    (tdir / "es" / "closed.subject").unlink()
    templates = load_templates(config_with_templates(config, tdir))
    out = templates.render("closed", "es", None, context_for(sample_ticket(config), config, "es"))
    assert "has been closed" in out.text


def test_queue_override_wins(config, tdir):
    (tdir / "queues" / "billing" / "es").mkdir(parents=True)
    (tdir / "queues" / "billing" / "es" / "ack_new.txt").write_text("Facturación: ticket {{ ticket.id }}\n")
    templates = load_templates(config_with_templates(config, tdir))
    ticket = sample_ticket(config).with_changes(queue="billing")
    assert templates.render("ack_new", "es", "billing", context_for(ticket, config, "es")).text.startswith("Facturación")
    assert "Hemos recibido" in templates.render("ack_new", "es", "general", context_for(ticket, config, "es")).text


def test_html_is_autoescaped_and_text_is_not_template_source(config):
    templates = Templates(ROOT / "templates", "es")
    ticket = sample_ticket(config).with_changes(subject="<script>alert(1)</script> {{ 7*7 }}")
    out = templates.render("ack_new", "en", None, context_for(ticket, config, "en"))
    assert "&lt;script&gt;" in out.html and "<script>" not in out.html
    assert "{{ 7*7 }}" in out.text and "49" not in out.text


def test_subject_is_one_line(config):
    templates = Templates(ROOT / "templates", "es")
    ticket = sample_ticket(config).with_changes(subject="a\r\nBcc: x@y")
    assert "\n" not in templates.render("ack_new", "es", None, context_for(ticket, config, "es")).subject


def test_an_html_part_says_what_its_text_part_says(config):
    """A reader of the HTML part is told everything the text part tells (the escalation hint was
    missing from the acknowledgment's HTML): each sentence of the text, words only, is in the HTML."""
    import html
    import re

    from helpdeskd.templates import SAMPLE_MESSAGE

    def words(text: str) -> str:
        return " ".join(re.findall(r"\w+", text))

    templates = Templates(ROOT / "templates", "es")
    ticket = sample_ticket(config)
    parts = sorted((ROOT / "templates").glob("*/*.html"))
    assert parts
    for path in parts:
        name, lang = path.stem, path.parent.name
        out = templates.render(name, lang, None, context_for(ticket, config, lang, message=SAMPLE_MESSAGE))
        shown = words(html.unescape(re.sub(r"<[^>]+>", " ", out.html)))
        for sentence in re.split(r"(?<=[.:])\s+", " ".join(out.text.split())):
            if len(words(sentence).split()) > 3:
                assert words(sentence) in shown, (name, lang, sentence)


def test_dotted_names_read_the_context_keys_and_methods_still_work(config, tdir):
    """``ticket.id`` looks the key up first (rendering speed), so a key named like a dict method would
    hide the method: no key of the contexts we render with is named like one."""
    from helpdeskd.templates import confirm_context, refusal_context, status_context

    (tdir / "en" / "closed.txt").write_text("{{ ticket.id }} {{ ticket.tag }} {{ helpdesk.items() | list | length }}\n")
    templates = load_templates(config_with_templates(config, tdir))
    ticket = sample_ticket(config)
    context = context_for(ticket, config, "en")
    assert templates.render("closed", "en", None, context).text == f"{ticket.id} {context['ticket']['tag']} 2\n"
    from helpdeskd.templates import _Environment

    shadowing = "{{ d.items | join(',') }} {{ d.get('x') }} {{ d.x }}"
    assert _Environment().from_string(shadowing).render(d={"items": ["a", "b"], "x": 1}) == "a,b 1 1"  # key first
    contexts = [context, refusal_context(config, "en", "s", "r"), confirm_context(config, "en", "C", 5, "x", "s"),
                status_context(config, "en", [ticket], 1, "domain:example.com", "dmarc")]
    assert not set(dir(dict)) & {key for variables in contexts for key in _keys(variables)}


def _keys(value) -> set[str]:
    """Every key of every dict in ``value``, however deep (lists included)."""
    if isinstance(value, dict):
        return set(value) | {key for item in value.values() for key in _keys(item)}
    if isinstance(value, list):
        return {key for item in value for key in _keys(item)}
    return set()


def test_templates_see_jinja_globals_their_own_and_the_context_first(config, tdir):
    """The globals a render starts from are a plain dict (a ChainMap cost ~8 us a render): Jinja's own
    (``range``, ``namespace``) are there, a template's own overlay them, and the context wins over both."""
    from helpdeskd.templates import _Environment

    (tdir / "en" / "closed.txt").write_text(
        "{% set ns = namespace(n=0) %}{% for i in range(4) %}{% set ns.n = ns.n + i %}{% endfor %}{{ ns.n }}\n")
    templates = load_templates(config_with_templates(config, tdir))
    assert templates.render("closed", "en", None, context_for(sample_ticket(config), config, "en")).text == "6\n"
    own = _Environment().from_string("{{ x }} {{ range(2) | list }} {{ y }}", globals={"x": "own", "y": "own"})
    assert own.render(y="context") == "own [0, 1] context"
    assert type(own.globals) is dict
