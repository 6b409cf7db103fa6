"""How much faster is ``outmail.compose`` than the compat32 implementation it replaced?

The two mails a new ticket sends are rendered from the shipped Spanish templates (``ack_new``, text
and HTML, to the requester "José Pérez Muñoz"; ``staff_new``, text only, to the queue's staff) with
the default config, as ``mailout`` does it, for two tickets: one whose subject is ASCII and one with
accents (the old code then encoded the subject through ``email.header.Header``). Then, in one process
and one run, each implementation composes each pair ``-n`` times in all (default 2,000 calls each)
with the same arguments, alternating old and new in ``--rounds`` rounds; the best round of each
counts (the least disturbed by the machine's other load). The report gives µs per mail for both and
the ratio new/old, which is what to compare across machines. The old implementation is
``tests/outmail_compat32.py``.

Then the rendering itself: the same two mails' templates through our Jinja environment (dotted
names read dict keys first, globals a plain dict) against a stock ``jinja2.Environment`` given the
same template sources, alternating, best round each; the ratio ours/stock.

Usage::

    .venv/bin/python bench/compose.py            # 2,000 calls each
    .venv/bin/python bench/compose.py -n 10000 --rounds 7
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import jinja2

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

from conftest import make_config  # noqa: E402
from outmail_compat32 import compose as old_compose  # noqa: E402

from helpdeskd.matching import make_message_id, plus_address  # noqa: E402
from helpdeskd.outmail import compose  # noqa: E402
from helpdeskd.templates import context_for, load_templates  # noqa: E402
from helpdeskd.ticket import Requester, Status, Ticket  # noqa: E402


SUBJECTS = {
    "ASCII subject": "No puedo enviar correo desde ayer, el servidor devuelve un error",
    "accented subject": "No puedo enviar correo desde ayer: error de autenticación en el envío",
}


def the_two_mails(subject: str) -> list[tuple]:
    """(rendered, keyword arguments) of a new ticket's acknowledgment and staff notice."""
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(Path(tmp))
    hd = config.helpdesk
    templates = load_templates(config)
    ticket = Ticket(id=1234, subject=subject,
                    status=Status.NEW, queue="general", priority="normal", category="general",
                    requester=Requester("jose.perez@cliente.example", "José Pérez Muñoz", "es"),
                    created="2026-11-22T09:30:00Z", updated="2026-11-22T09:30:00Z", token="t0k3n",
                    message_ids=("CAB+x1=ab.1234@mail.cliente.example",))
    message = {"from": ticket.requester.addr, "from_name": ticket.requester.name, "subject": ticket.subject,
               "text": "Hola, desde ayer no puedo enviar mensajes.\n" * 12, "role": "user"}
    common = dict(from_name=hd.name, from_addr=hd.address, date=datetime.now(timezone.utc),
                  reply_to=plus_address(hd.address, ticket.id, ticket.token))
    mails = []
    for name, to_name, to_addr, refs in (
        ("ack_new", ticket.requester.name, ticket.requester.addr, ticket.message_ids),
        ("staff_new", "", "staff@helpdesk.example", ticket.message_ids),
    ):
        context = context_for(ticket, config, "es", message=message)
        rendered = templates.render(name, "es", ticket.queue, context)
        mid = make_message_id(ticket.id, ticket.token, name, hd.message_id_domain)
        mails.append((rendered, dict(common, to_name=to_name, to_addr=to_addr, message_id=mid,
                                     in_reply_to=refs[0], references=refs)))
    return mails


def render_pairs(config, templates) -> list[tuple]:
    """(template name, context) of the two mails, for the rendering comparison."""
    ticket = Ticket(id=1234, subject=SUBJECTS["accented subject"], status=Status.NEW, queue="general",
                    priority="normal", category="general",
                    requester=Requester("jose.perez@cliente.example", "José Pérez Muñoz", "es"),
                    created="2026-11-22T09:30:00Z", updated="2026-11-22T09:30:00Z", token="t0k3n")
    message = {"from": ticket.requester.addr, "from_name": ticket.requester.name, "subject": ticket.subject,
               "text": "Hola, desde ayer no puedo enviar mensajes.\n" * 12, "role": "user"}
    return [(name, context_for(ticket, config, "es", message=message)) for name in ("ack_new", "staff_new")]


def stock_render(sources: dict, autoescape: bool):
    """The same templates through an unmodified Jinja environment (the baseline)."""
    env = jinja2.Environment(loader=jinja2.DictLoader(sources), undefined=jinja2.StrictUndefined,
                             keep_trailing_newline=True, autoescape=autoescape)
    return lambda name, part, context: env.get_template(f"es/{name}.{part}").render(context)


def rendering(rounds: int, calls: int) -> None:
    """Our environment (key-first lookups, plain-dict globals) against stock Jinja, same templates."""
    with tempfile.TemporaryDirectory() as tmp:
        config = make_config(Path(tmp))
    templates = load_templates(config)
    pairs = render_pairs(config, templates)
    plain, html = stock_render(templates._sources, False), stock_render(templates._sources, True)

    def stock(name: str, context: dict) -> None:
        " ".join(plain(name, "subject", context).split())
        plain(name, "txt", context)
        if f"es/{name}.html" in templates._sources:
            html(name, "html", context)

    def ours(name: str, context: dict) -> None:
        templates.render(name, "es", None, context)

    results = {}
    for impl in (stock, ours) * rounds:
        start = time.perf_counter()
        for _ in range(calls // len(pairs)):
            for name, context in pairs:
                impl(name, context)
        results.setdefault(impl.__name__, []).append(time.perf_counter() - start)
    stock_t, ours_t = min(results["stock"]) / calls * 1e6, min(results["ours"]) / calls * 1e6
    print(f"rendering: ack_new (subject, text, HTML) + staff_new (subject, text), es, "
          f"{calls} per round, {rounds} rounds")
    print(f"  stock Jinja   : {stock_t:8.1f} µs per mail (best round)")
    print(f"  ours          : {ours_t:8.1f} µs per mail (best round)")
    print(f"  ratio ours/stock: {ours_t / stock_t:.3f}")


def timed(impl, mails: list[tuple], pairs: int) -> float:
    start = time.perf_counter()
    for _ in range(pairs):
        for rendered, kwargs in mails:
            impl(rendered, **kwargs)
    return time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000, help="calls of each implementation per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    for label, subject in SUBJECTS.items():
        mails = the_two_mails(subject)
        pairs = max(1, args.n // len(mails))
        calls = pairs * len(mails)
        for impl in (old_compose, compose):  # warm up (imports, caches)
            timed(impl, mails, 20)
        old, new = [], []
        for _ in range(args.rounds):
            old.append(timed(old_compose, mails, pairs))
            new.append(timed(compose, mails, pairs))
        sizes = [len(compose(r, **kw)) for r, kw in mails]
        print(f"{label}: {calls} calls per round, {args.rounds} rounds, ack_new + staff_new (es) of {sizes} bytes")
        print(f"  old (compat32): {min(old) / calls * 1e6:8.1f} µs per mail (best round)")
        print(f"  new (outmail) : {min(new) / calls * 1e6:8.1f} µs per mail (best round)")
        print(f"  ratio new/old : {min(new) / min(old):.3f}   (speed-up {min(old) / min(new):.1f}x)")
    rendering(args.rounds, args.n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
