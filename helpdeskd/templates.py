"""Jinja templates for the mail we send, per language, with per-queue overrides.

Layout of the templates folder::

    <lang>/<name>.subject        one line (rendered, whitespace collapsed)
    <lang>/<name>.txt            the plain-text body (always)
    <lang>/<name>.html           optional HTML alternative (autoescaped)
    queues/<queue>/<lang>/...    same names; wins over the general one for that queue's tickets

Lookup for a requester language L: queue override in L, general L, then the same for the helpdesk's
default language, then English. Mail content is only ever passed as data (template variables),
never as template source; ``StrictUndefined`` turns a misspelt variable into an error at check time.
"""

from __future__ import annotations

from pathlib import Path

import jinja2

from .errors import ConfigError
from .matching import render_tag
from .outmail import Rendered
from .settings import LANGUAGES, Config
from .ticket import Requester, Status, Ticket

TICKET_TEMPLATES = (  # rendered with context_for
    "ack_new", "ack_followup", "reopened", "closed", "closed_reply", "escalated", "command_error",
    "staff_new", "staff_followup", "staff_escalation", "staff_answer",
)
PLAIN_TEMPLATES = ("refused",)  # no ticket exists: rendered with refusal_context
STATUS_TEMPLATES = ("status_list", "status_confirm")  # "my tickets": status_context / confirm_context
REQUIRED = TICKET_TEMPLATES + PLAIN_TEMPLATES + STATUS_TEMPLATES
PARTS = ("subject", "txt", "html")
STATUS_NAMES = {
    "es": {"new": "nuevo", "open": "abierto", "closed": "cerrado", "reopened": "reabierto"},
    "en": {"new": "new", "open": "open", "closed": "closed", "reopened": "reopened"},
}


class _Environment(jinja2.Environment):
    """Jinja's environment, with ``a.b`` on a plain dict looking up the key first.

    Every variable a template sees is a plain value, a list or a dict of them (:func:`context_for`).
    Jinja tries the attribute first and the key after, so each ``ticket.id`` raised and caught an
    AttributeError: about a third of rendering an acknowledgment. A key that shares its name with a
    dict method (``items``, ``get``) would now win over the method; no key of the context does."""

    def make_globals(self, d):
        """A template's globals as a plain dict, not Jinja's ChainMap over the environment's: every
        render copies them into a new context, and copying a ChainMap runs in Python (~8 us of a
        render). Jinja's ChainMap shows later changes to the environment's globals; ours never change."""
        return {**self.globals, **(d or {})}

    def getattr(self, obj, attribute):
        if type(obj) is dict:
            try:
                return obj[attribute]
            except KeyError:
                pass
        return super().getattr(obj, attribute)


class Templates:
    def __init__(self, directory: Path, default_language: str) -> None:
        self.directory = directory
        self.default_language = default_language
        # Every file is read once, here: the running templates are a snapshot, so an edit on disk
        # (even a broken one) changes nothing until a reload has validated it.
        self._sources, self._unreadable = _snapshot(directory)
        self._environments()

    def _environments(self) -> None:
        loader = jinja2.DictLoader(self._sources)
        common = dict(loader=loader, undefined=jinja2.StrictUndefined, auto_reload=False, keep_trailing_newline=True)
        self._plain = _Environment(autoescape=False, **common)
        self._html = _Environment(autoescape=True, **common)
        self._found: dict[tuple[str, str, str, str | None], jinja2.Template | None] = {}  # the snapshot never changes

    def __getstate__(self) -> dict:
        """Pickled as its snapshot (the helper process renders with exactly these templates)."""
        return {"directory": self.directory, "default_language": self.default_language,
                "sources": self._sources, "unreadable": self._unreadable}

    def __setstate__(self, state: dict) -> None:
        self.directory, self.default_language = state["directory"], state["default_language"]
        self._sources, self._unreadable = state["sources"], state["unreadable"]
        self._environments()

    def _chain(self, name: str, part: str, lang: str, queue: str | None) -> list[str]:
        paths: list[str] = []
        for candidate in dict.fromkeys((lang, self.default_language, "en")):
            if queue:
                paths.append(f"queues/{queue}/{candidate}/{name}.{part}")
            paths.append(f"{candidate}/{name}.{part}")
        return paths

    def _find(self, name: str, part: str, lang: str, queue: str | None) -> jinja2.Template | None:
        key = (name, part, lang, queue)
        if key not in self._found:
            env = self._html if part == "html" else self._plain
            try:
                self._found[key] = env.select_template(self._chain(name, part, lang, queue))
            except jinja2.TemplatesNotFound:
                self._found[key] = None
        return self._found[key]

    def render(self, name: str, lang: str, queue: str | None, context: dict) -> Rendered:
        """Render one template's parts. Raises ConfigError when a required part is missing or broken."""
        try:
            subject_t = self._find(name, "subject", lang, queue)
            text_t = self._find(name, "txt", lang, queue)
            if subject_t is None or text_t is None:
                raise ConfigError([f"template {name!r}: no .subject/.txt for language {lang!r} or any fallback"])
            html_t = self._find(name, "html", lang, queue)
            subject = " ".join(subject_t.render(context).split())
            return Rendered(subject, text_t.render(context), html_t.render(context) if html_t else None)
        except jinja2.TemplateSyntaxError as exc:
            raise ConfigError([f"template {exc.name}, line {exc.lineno}: {exc.message}"]) from exc
        except jinja2.TemplateError as exc:
            raise ConfigError([f"template {name!r} ({lang}): {exc}"]) from exc

    def check(self, config: Config) -> list[str]:
        """Compile every template file and render each required one in every language and queue.

        Returns the problems found (empty when all is well); run at config load and by check-config.
        """
        problems = self._compile_all()
        sample = sample_ticket(config)
        for name in REQUIRED:
            for lang in LANGUAGES:
                for queue in (None, *(q.key for q in config.queues)):
                    ticket = sample.with_changes(queue=queue or sample.queue)
                    if name in TICKET_TEMPLATES:
                        context = context_for(ticket, config, lang, message=SAMPLE_MESSAGE, errors=["#x: sample"],
                                              reason="sample reason")
                    elif name in STATUS_TEMPLATES:
                        context = _status_sample(name, ticket, config, lang)
                    else:
                        context = refusal_context(config, lang, "Sample subject", "sample reason", "disabled")
                    try:
                        self.render(name, lang, queue, context)
                    except ConfigError as exc:
                        problems.extend(p for p in exc.problems if p not in problems)
        return problems

    def _compile_all(self) -> list[str]:
        if not self.directory.is_dir():
            return [f"templates directory {self.directory} does not exist"]
        problems = list(self._unreadable)
        for rel in sorted(self._sources):
            env = self._html if rel.endswith(".html") else self._plain
            try:
                env.get_template(rel)
            except jinja2.TemplateSyntaxError as exc:
                problems.append(f"template {rel}, line {exc.lineno}: {exc.message}")
        return problems


def _snapshot(directory: Path) -> tuple[dict[str, str], list[str]]:
    """Every template file under ``directory`` by relative name, and the problems of those unreadable."""
    sources: dict[str, str] = {}
    problems: list[str] = []
    paths = sorted(directory.rglob("*")) if directory.is_dir() else []
    for path in (p for p in paths if p.suffix.lstrip(".") in PARTS and p.is_file()):
        rel = path.relative_to(directory).as_posix()
        try:
            sources[rel] = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"template {rel}: cannot be read: {exc}")
    return sources, problems


def load_templates(config: Config) -> Templates:
    """Templates for ``config``, all compiled and test-rendered; raises ConfigError listing every problem."""
    templates = Templates(config.helpdesk.templates_dir, config.helpdesk.default_language)
    problems = templates.check(config)
    if problems:
        raise ConfigError(problems, source=str(config.helpdesk.templates_dir))
    return templates


def context_for(ticket: Ticket, config: Config, lang: str, **extra: object) -> dict:
    """The variables every template sees. Values from mail arrive here as plain strings (data)."""
    queue, priority, category = (
        config.queue(ticket.queue), config.priority(ticket.priority), config.category(ticket.category)
    )
    default = config.helpdesk.default_language
    return {
        "message": {"from": "", "from_name": "", "subject": "", "text": "", "role": ""},
        "errors": [],
        "reason": "",
        "lang": lang,
        "helpdesk": {"name": config.helpdesk.name, "address": config.helpdesk.address},
        "ticket": {
            "id": ticket.id,
            "tag": render_tag(config.helpdesk.subject_tag, ticket.id),
            "subject": ticket.subject or ("(sin asunto)" if lang == "es" else "(no subject)"),
            "status": str(ticket.status),
            "status_name": STATUS_NAMES.get(lang, STATUS_NAMES["en"]).get(str(ticket.status), str(ticket.status)),
            "queue": queue.name.get(lang, default) if queue else ticket.queue,
            "priority": priority.name.get(lang, default) if priority else ticket.priority,
            "priority_description": priority.description.get(lang, default) if priority else "",
            "response_target": _duration(priority.response_target_minutes, lang) if priority else "",
            "category": category.name.get(lang, default) if category else ticket.category,
            "requester_name": ticket.requester.name,
            "requester": ticket.requester.addr,
            "assignee": ticket.assignee,
            "collaborators": list(ticket.collaborators),
            "escalated": ticket.escalated,
            "linked": list(ticket.linked),
        },
        **extra,
    }


def refusal_context(config: Config, lang: str, subject: str, reason: str, code: str = "") -> dict:
    """Variables for answers about mail that did not become a ticket."""
    return {
        "lang": lang,
        "helpdesk": {"name": config.helpdesk.name, "address": config.helpdesk.address},
        "subject": subject,
        "reason": reason,
        "reason_code": code,
    }


def status_context(config: Config, lang: str, tickets: list[Ticket], total: int, scope: str,
                   proven_by: str) -> dict:
    """Variables of ``status_list``: the tickets the sender's scope may see (already filtered)."""
    rows = []
    for ticket in tickets:
        row = context_for(ticket, config, lang)["ticket"]
        rows.append(row | {"updated": ticket.updated[:16].replace("T", " "), "created": ticket.created[:10]})
    kind, _, name = scope.partition(":")
    return {"lang": lang, "helpdesk": {"name": config.helpdesk.name, "address": config.helpdesk.address},
            "tickets": rows, "total": total, "shown": len(rows), "scope": {"kind": kind, "name": name},
            "proven_by": proven_by}


def confirm_context(config: Config, lang: str, code: str, valid_minutes: int, reason_code: str, subject: str) -> dict:
    """Variables of ``status_confirm``: the one-time code, how long it is valid, why a new one."""
    return {"lang": lang, "helpdesk": {"name": config.helpdesk.name, "address": config.helpdesk.address},
            "code": code, "valid_for": _duration(valid_minutes, lang), "reason_code": reason_code,
            "subject": subject}


def _status_sample(name: str, ticket: Ticket, config: Config, lang: str) -> dict:
    if name == "status_list":
        return status_context(config, lang, [ticket], 3, "domain:example.com", "dmarc")
    return confirm_context(config, lang, "ABCD-EFGH", 60, "expired", "Sample subject")


def _duration(minutes: int, lang: str) -> str:
    units = (("d", 1440, "día", "días", "day", "days"), ("h", 60, "hora", "horas", "hour", "hours"))
    for _, size, es1, esn, en1, enn in units:
        if minutes >= size and minutes % size == 0:
            n = minutes // size
            word = (es1 if n == 1 else esn) if lang == "es" else (en1 if n == 1 else enn)
            return f"{n} {word}"
    return f"{minutes} min"


SAMPLE_MESSAGE = {"from": "customer@example.com", "from_name": "Sample Customer", "subject": "Sample subject",
                  "text": "Sample text", "role": "requester"}


def sample_ticket(config: Config) -> Ticket:
    hd = config.helpdesk
    return Ticket(
        id=1234, subject="Sample subject", status=Status.NEW, queue=hd.default_queue,
        priority=hd.default_priority, category=hd.default_category,
        requester=Requester("customer@example.com", "Sample Customer", hd.default_language),
        created="2026-01-01T00:00:00+00:00", updated="2026-01-01T00:00:00+00:00", token="sample",
    )
