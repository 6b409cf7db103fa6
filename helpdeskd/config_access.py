"""Who may do what: [access], [[resellers]], [[domains]], [mail_gateway] and [status_requests].

The roles (admins, resellers and their domains, domain owners) and the submission policy (allowed and
denied domains, unknown senders), checked so every address has one role and every domain one reseller;
the intake switch; and "my tickets" by email. Problems are recorded on the
:class:`~helpdeskd.configreader.Reader`, never raised.
"""

from __future__ import annotations

import dataclasses
import re

from helpdeskd.configreader import (
    ARRAY,
    BOOLEAN,
    POSITIVE_INT,
    Reader,
    addresses,
    check_unique,
    choice,
    describe,
    key,
    quote,
    seconds,
    valid_domain,
)
from helpdeskd.settings import (
    UNKNOWN_SENDER_POLICIES,
    Access,
    DomainOwner,
    MailGateway,
    Reseller,
    StatusRequests,
)


# --------------------------------------------------------------------------- roles and submission
# [access], [[resellers]], [[domains]]: the panel's roles (see helpdeskd.scopes). Addresses and
# domains are compared lower-case. The checks below make every address's role and every domain's
# reseller unambiguous, because a ticket's visibility is decided from them.


def access(root: Reader, own: str | None) -> Access:
    """The roles and the submission policy, with overlaps and unknown references reported."""
    r = root.child("access", required=False) or Reader({}, "access", root.problems)
    resellers = [(reader, _reseller(reader, own)) for reader in root.children("resellers")]
    check_unique([reader for reader, _ in resellers], "name")
    owners = [(reader, _domain_owner(reader, own, [v.name for _, v in resellers])) for reader in root.children("domains")]
    values = {
        "admins": _lower(addresses(r, "admins", own)),
        "allow_domains": _domain_list(r, "allow_domains"),
        "deny_domains": _domain_list(r, "deny_domains"),
        "unknown_senders": choice(r, "unknown_senders", UNKNOWN_SENDER_POLICIES, "a policy", "accept") or "accept",
    }
    for domain in set(values["allow_domains"]) & set(values["deny_domains"]):
        r.problem("deny_domains", f"{quote(domain)} is also in allow_domains")
    r.finish()
    domains = _domain_table(resellers, owners)
    _check_roles(r, values["admins"], resellers, owners, {d.domain: d.reseller for d in domains})
    return Access(resellers=tuple(v for _, v in resellers), domains=domains, **values)


def _reseller(r: Reader, own: str | None) -> Reseller:
    value = Reseller(name=key(r, "name") or "", contacts=_lower(addresses(r, "contacts", own)),
                     domains=_domain_list(r, "domains"))
    r.finish()
    return value


def _domain_owner(r: Reader, own: str | None, reseller_names: list[str]) -> DomainOwner:
    domain = r.text("domain")
    if domain is not None and not valid_domain(domain):
        domain = r.refuse("domain", f"{quote(domain)} is not a valid domain name")
    reseller = r.text("reseller", None)
    if reseller is not None and reseller not in reseller_names:
        known = ", ".join(reseller_names) or "none"
        reseller = r.refuse("reseller", f"{quote(reseller)} is not a configured reseller (known: {known})")
    value = DomainOwner((domain or "").lower(), _lower(addresses(r, "owners", own)), reseller or "")
    r.finish()
    return value


def _domain_table(resellers: list[tuple[Reader, Reseller]],
                  owners: list[tuple[Reader, DomainOwner]]) -> tuple[DomainOwner, ...]:
    """Every known domain once, with its one reseller: a domain under two resellers is an overlap."""
    reseller_of: dict[str, tuple[str, str]] = {}  # domain -> (reseller, where it was said)
    for reader, reseller in resellers:
        for index, domain in enumerate(reseller.domains):
            _claim_domain(reseller_of, domain, reseller.name, reader, f"domains[{index}]")
    table: dict[str, DomainOwner] = {}
    for reader, entry in owners:
        if entry.domain in table:
            reader.problem("domain", f"{quote(entry.domain)} is listed twice in [[domains]]")
        if entry.reseller:
            _claim_domain(reseller_of, entry.domain, entry.reseller, reader, "reseller")
        table.setdefault(entry.domain, entry)
    for domain, (name, _) in reseller_of.items():
        entry = table.get(domain, DomainOwner(domain))
        table[domain] = dataclasses.replace(entry, reseller=name)
    return tuple(table.values())


def _claim_domain(reseller_of: dict[str, tuple[str, str]], domain: str, name: str, reader: Reader,
                  key: str) -> None:
    first = reseller_of.get(domain)
    if first is None:
        reseller_of[domain] = (name, reader.at(key))
    elif first[0] != name:
        reader.problem(key, f"{quote(domain)} already belongs to reseller {quote(first[0])} ({first[1]}); "
                            "a domain has one reseller")


def _check_roles(r: Reader, admins: tuple[str, ...], resellers: list[tuple[Reader, Reseller]],
                 owners: list[tuple[Reader, DomainOwner]], reseller_of: dict[str, str]) -> None:
    """One role per address. The one combination allowed: a reseller's contact who also owns one of
    that reseller's domains (the reseller's view already contains the domain's)."""
    roles: dict[str, tuple[str, str, str]] = {}  # address -> (role, reseller, where)

    def assign(addr: str, role: str, reseller: str, reader: Reader, key: str) -> None:
        first = roles.setdefault(addr, (role, reseller, reader.at(key)))
        if first[2] == reader.at(key):
            return  # its own first assignment
        same_reseller = {first[0], role} == {"reseller", "owner"} and first[1] == reseller and reseller
        if not same_reseller:
            reader.problem(key, f"{quote(addr)} is already {first[0]} ({first[2]}); an address has one role")

    for index, addr in enumerate(admins):
        assign(addr, "admin", "", r, f"admins[{index}]")
    for reader, reseller in resellers:
        for index, addr in enumerate(reseller.contacts):
            assign(addr, "reseller", reseller.name, reader, f"contacts[{index}]")
    for reader, entry in owners:
        for index, addr in enumerate(entry.owners):
            assign(addr, "owner", reseller_of.get(entry.domain, ""), reader, f"owners[{index}]")


def _domain_list(r: Reader, key: str) -> tuple[str, ...]:
    values = r.get(key, ARRAY, []) or []
    good = []
    for index, value in enumerate(values):
        if isinstance(value, str) and valid_domain(value):
            good.append(value.lower())
        else:
            r.problem(f"{key}[{index}]", f"{quote(value) if isinstance(value, str) else describe(value)} "
                                         "is not a valid domain name")
    return tuple(dict.fromkeys(good))


def _lower(values: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(v.lower() for v in values))


def mail_gateway(r: Reader | None) -> MailGateway:
    """[mail_gateway]: intake on or off, apart from the helpdesk itself; parsing in a helper process."""
    if r is None:
        return MailGateway()
    enabled = r.get("enabled", BOOLEAN, True)
    helper = r.get("helper_process", BOOLEAN, True)
    r.finish()
    return MailGateway(enabled=True if enabled is None else enabled, helper_process=True if helper is None else helper)


_AUTHSERV_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]*")


def status_requests(r: Reader | None) -> StatusRequests:
    """[status_requests]: "my tickets" by email (keywords, trusted receiving MTAs, codes)."""
    if r is None:
        return StatusRequests()
    base = StatusRequests()
    values = {
        "enabled": r.get("enabled", BOOLEAN, base.enabled),
        "keywords": _keywords(r, base.keywords),
        "trusted_authserv_ids": _authserv_ids(r),
        "code_ttl_seconds": seconds(r, "code_ttl", base.code_ttl_seconds),
        "max_listed": r.get("max_listed", POSITIVE_INT, base.max_listed),
    }
    ttl = values["code_ttl_seconds"]
    if ttl is not None and not 60 <= ttl <= 7 * 86400:
        r.problem("code_ttl", "must be between 1 minute and 7 days")
    r.finish()
    return StatusRequests(**{k: v for k, v in values.items() if v is not None})


def _keywords(r: Reader, default: tuple[str, ...]) -> tuple[str, ...] | None:
    values = r.get("keywords", ARRAY, list(default))
    if values is None:
        return None
    if not values:
        return r.refuse("keywords", "at least one keyword is needed (or set enabled = false)")
    for index, value in enumerate(values):
        if not isinstance(value, str) or len(value.strip()) < 3 or "\n" in value or "\r" in value:
            r.problem(f"keywords[{index}]", "expected a single-line text of at least 3 characters")
    return tuple(v.strip() for v in values if isinstance(v, str))


def _authserv_ids(r: Reader) -> tuple[str, ...]:
    values = r.get("trusted_authserv_ids", ARRAY, []) or []
    for index, value in enumerate(values):
        if not isinstance(value, str) or not _AUTHSERV_ID.fullmatch(value):
            r.problem(f"trusted_authserv_ids[{index}]", "expected the authserv-id your receiving MTA writes "
                                                        '(a host name like "mx.example.com")')
    return tuple(v.lower() for v in values if isinstance(v, str))
