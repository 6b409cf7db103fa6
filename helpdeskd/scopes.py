"""Who is who and who sees what: the hosting panel's visibility rules, as pure functions.

The panel's document (``shared/seeds``): the admin's helpdesk shows every ticket; a reseller's shows
the tickets sent by the reseller or by the reseller's customers; a domain owner's shows the tickets
sent by the owner or by the mail users of the owner's domain. A mail user sees their own tickets.

Every ticket records its :class:`Origin` when it is filed (role, domain, reseller), and a scope is
checked against that record, so a ticket stays where it was filed when the config changes later.
Tickets filed before roles existed carry no origin; theirs is worked out from the requester's address
under the current config (:func:`origin_of`). No I/O here: the cycle and ``helpdeskctl`` call these.
"""

from __future__ import annotations

from dataclasses import dataclass

from .settings import Access, DomainOwner
from .ticket import Ticket


@dataclass(frozen=True)
class Origin:
    """Who sent a ticket's first message: their role, and the domain and reseller it belongs to."""

    role: str  # admin | reseller | owner | user | unknown
    domain: str = ""  # the customer domain (owners and mail users)
    reseller: str = ""  # the reseller (its contacts, and customers of its domains)


@dataclass(frozen=True)
class Scope:
    """What one viewer may see: ``admin``, ``reseller`` NAME, ``domain`` DOMAIN or ``user`` ADDRESS."""

    kind: str
    name: str = ""

    def __str__(self) -> str:
        return self.kind if self.kind == "admin" else f"{self.kind}:{self.name}"


ADMIN = Scope("admin")


def domain_of(addr: str) -> str:
    return addr.rpartition("@")[2].lower() if "@" in addr else ""


def find_domain(access: Access, domain: str) -> DomainOwner | None:
    return next((d for d in access.domains if d.domain == domain), None)


def classify(addr: str, access: Access) -> Origin:
    """The role of ``addr`` under ``access``. Validation makes roles exclusive, so order is only a
    tie-break for hand-built values: admin, reseller contact, domain owner, mail user, unknown."""
    addr = addr.lower()
    if addr and addr in access.admins:
        return Origin("admin")
    for reseller in access.resellers:
        if addr in reseller.contacts:
            return Origin("reseller", reseller=reseller.name)
    for entry in access.domains:
        if addr in entry.owners:
            return Origin("owner", entry.domain, entry.reseller)
    entry = find_domain(access, domain_of(addr))
    if entry is not None:
        return Origin("user", entry.domain, entry.reseller)
    return Origin("unknown")


def origin_of(ticket: Ticket, access: Access) -> Origin:
    """The ticket's recorded origin; for tickets filed before roles existed, its requester's role now."""
    if ticket.origin_role:
        return Origin(ticket.origin_role, ticket.origin_domain, ticket.origin_reseller)
    return classify(ticket.requester.addr, access)


def visible(scope: Scope, ticket: Ticket, access: Access) -> bool:
    """True when ``scope`` may see (and act on) ``ticket``: exactly the panel's rules."""
    if scope.kind == "admin":
        return True
    if scope.kind == "user":
        return bool(scope.name) and ticket.requester.addr.lower() == scope.name
    origin = origin_of(ticket, access)
    if scope.kind == "reseller":
        return bool(scope.name) and origin.reseller == scope.name
    if scope.kind == "domain":
        return bool(scope.name) and origin.domain == scope.name
    return False  # an unknown kind sees nothing, never everything


def scope_of(addr: str, access: Access) -> Scope:
    """The scope a person writing from ``addr`` gets ("my tickets" by email): their role's view."""
    origin = classify(addr, access)
    if origin.role == "admin":
        return ADMIN
    if origin.role == "reseller":
        return Scope("reseller", origin.reseller)
    if origin.role == "owner":
        return Scope("domain", origin.domain)
    return Scope("user", addr.lower())


def parse_scope(text: str, access: Access) -> Scope | str:
    """``admin`` | ``reseller:NAME`` | ``domain:DOMAIN`` | ``user:ADDRESS`` as a Scope, or why not.

    A reseller or domain must be configured: a typo must fail loudly rather than show an empty list.
    """
    kind, _, name = text.strip().partition(":")
    kind, name = kind.lower(), name.strip().lower()
    if kind == "admin" and not name:
        return ADMIN
    if kind == "reseller" and any(r.name == name for r in access.resellers):
        return Scope(kind, name)
    if kind == "domain" and find_domain(access, name) is not None:
        return Scope(kind, name)
    if kind == "user" and "@" in name and not any(c.isspace() for c in name):
        return Scope(kind, name)
    known = {"reseller": [r.name for r in access.resellers], "domain": [d.domain for d in access.domains]}
    if kind in known:
        return f"unknown {kind} {name!r} (known: {', '.join(known[kind]) or 'none'})"
    return f"{text!r}: expected admin, reseller:NAME, domain:DOMAIN or user:ADDRESS"


def submission_refusal(origin: Origin, addr: str, access: Access, allow_customer_tickets: bool,
                       released: bool = False) -> tuple[str, str, str] | None:
    """Why a new ticket from ``addr`` may not be opened, as (verdict, code, reason), or None.

    verdict is ``refuse`` (kept in refused/, answered) or ``hold`` (kept in held/ for an admin).
    Admins always may. ``released``: an admin let this message out of held/, so the unknown-sender
    policy has been applied already (by a person).
    """
    if origin.role == "admin":
        return None
    domain = domain_of(addr)
    if not allow_customer_tickets:
        return "refuse", "customers_not_allowed", "customers may not open tickets by mail"
    if domain in access.deny_domains:
        return "refuse", "domain_denied", f"mail from {domain or 'this sender'} may not open tickets"
    configured = origin.role in ("reseller", "owner")
    if access.allow_domains and domain not in access.allow_domains and not configured:
        return "refuse", "domain_not_allowed", f"mail from {domain or 'this sender'} may not open tickets"
    if origin.role == "unknown" and not released and access.unknown_senders != "accept":
        verdict = access.unknown_senders
        return verdict, "unknown_sender", "the sender is not a known customer"
    return None
