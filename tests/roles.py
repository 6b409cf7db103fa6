"""A hosting provider with every role, and one ticket from every kind of sender (tests of issue 6).

    admin      root@hosting.example
    reseller   acme  (ventas@acme.example)  customers uno.example (owner jefe@), dos.example (no owner)
    reseller   beta  (info@beta.example)    customer  tres.example (owner duena@)
    the admin's own customer cuatro.example (owner jefa@)
"""

from __future__ import annotations

import copy
import itertools
import tomllib
from pathlib import Path

import tomli_w

from helpdeskd.config import build_config
from helpdeskd.cycle import Services, file_safely
from helpdeskd.message import Inbound
from helpdeskd.store.fsutil import Syncer
from helpdeskd.store.holding import Holding
from helpdeskd.store.outbox import Outbox
from helpdeskd.store.tickets import TicketStore
from helpdeskd.templates import load_templates

from conftest import ROOT, default_config_data, mail

ACCESS = {
    "access": {"admins": ["root@hosting.example"]},
    "resellers": [
        {"name": "acme", "contacts": ["ventas@acme.example"], "domains": ["uno.example", "dos.example"]},
        {"name": "beta", "contacts": ["info@beta.example"], "domains": ["tres.example"]},
    ],
    "domains": [
        {"domain": "uno.example", "owners": ["jefe@uno.example"]},
        {"domain": "tres.example", "owners": ["duena@tres.example"]},
        {"domain": "cuatro.example", "owners": ["jefa@cuatro.example"]},
    ],
}

# One ticket per origin: label -> sender. "old" is a ticket filed before roles existed (no origin fields).
SENDERS = {
    "admin": "root@hosting.example",
    "acme": "ventas@acme.example",
    "beta": "info@beta.example",
    "uno-owner": "jefe@uno.example",
    "uno-user": "ana@uno.example",
    "uno-old": "viejo@uno.example",
    "dos-user": "luis@dos.example",
    "tres-owner": "duena@tres.example",
    "tres-user": "pepe@tres.example",
    "cuatro-owner": "jefa@cuatro.example",
    "cuatro-user": "maria@cuatro.example",
    "unknown": "extra@gmail.example",
}

# Who sees what, written out by hand from the panel's rules (never computed by the code under test).
ALL = set(SENDERS)
VISIBLE = {
    "admin": ALL,
    "reseller:acme": {"acme", "uno-owner", "uno-user", "uno-old", "dos-user"},
    "reseller:beta": {"beta", "tres-owner", "tres-user"},
    "domain:uno.example": {"uno-owner", "uno-user", "uno-old"},
    "domain:dos.example": {"dos-user"},
    "domain:tres.example": {"tres-owner", "tres-user"},
    "domain:cuatro.example": {"cuatro-owner", "cuatro-user"},
    "user:ana@uno.example": {"uno-user"},
    "user:jefe@uno.example": {"uno-owner"},
    "user:extra@gmail.example": {"unknown"},
    "user:nobody@nowhere.example": set(),
}

counter = itertools.count(1)


def config_data(tmp_path: Path, **sections: dict) -> dict:
    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(tmp_path / "state"), "templates_dir": str(ROOT / "templates")})
    for box in data.get("mailboxes", []):
        box["path"] = str(tmp_path / "inbox")
    data.update(copy.deepcopy(ACCESS))  # tests change it
    for name, values in sections.items():
        data[name] = values if isinstance(values, list) else {**data.get(name, {}), **values}
    return data


def write(tmp_path: Path, **sections: dict) -> Path:
    path = tmp_path / "helpdeskd.toml"
    path.write_text(tomli_w.dumps(config_data(tmp_path, **sections)), encoding="utf-8")
    return path


def services(tmp_path: Path, **sections: dict) -> Services:
    """Services on the roles config. Without fsync: durability is tested elsewhere, these tests file
    dozens of tickets each."""
    config = build_config(config_data(tmp_path, **sections), tmp_path)
    state, sync = config.helpdesk.state_dir, Syncer(enabled=False)
    return Services(config, TicketStore(state, sync=sync), Outbox(state, sync), Holding(state, "quarantine", sync),
                    Holding(state, "refused", sync), load_templates(config))


def send(svc: Services, raw: bytes):
    return file_safely(Inbound("test", str(next(counter)), raw), svc)


def ticket_mail(label: str, sender: str) -> bytes:
    return mail(subject=f"Problema de {label}", body=f"Hola, soy {label} y tengo un problema con el correo.",
                sender=sender, message_id=f"<{label}.{next(counter)}@mua.example>")


def file_every_origin(svc: Services) -> dict[str, int]:
    """One ticket per SENDERS entry; returns label -> ticket id. "uno-old" loses its origin fields."""
    ids = {}
    for label, sender in SENDERS.items():
        outcome = send(svc, ticket_mail(label, sender))
        assert outcome.action == "new", (label, outcome)
        ids[label] = outcome.ticket
    toml = svc.store.ticket_dir(ids["uno-old"]) / "ticket.toml"
    data = tomllib.loads(toml.read_text(encoding="utf-8"))
    for key in ("origin_role", "origin_domain", "origin_reseller"):
        del data[key]
    toml.write_text(tomli_w.dumps(data), encoding="utf-8")
    return ids
