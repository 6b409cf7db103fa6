"""Proving who sent a mail, for "my tickets" by email: pure functions, no I/O.

Anyone can open a ticket by mail, but seeing existing tickets needs proof of identity (the MSP
document in ``shared/seeds``). A From header proves nothing by itself, so a status request is
answered with the list only when

* the receiving MTA's ``Authentication-Results`` (RFC 8601), under an authserv-id the config
  trusts, says DMARC passed — or DKIM/SPF passed for a domain aligned with the From domain; or
* the sender replies with a one-time code we mailed to the From address. Whoever forged the From
  never sees that mail: it goes to the address's real owner.

The codes themselves live in the state directory (:mod:`helpdeskd.store.confirmations`); the cycle
looks up the ones a message quotes and hands them in, so :func:`status_decision` stays pure.
"""

from __future__ import annotations

import functools
import hashlib
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass

from .actions import SENDER, ConfirmIdentity, Decision, Refuse, Send, StatusReport
from .commands import fold
from .message import Message
from .scopes import domain_of, scope_of
from .settings import Config

CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # no 0/O, 1/I: people retype codes
_CODE = re.compile(r"\b([A-HJ-NP-Z2-9]{4})-([A-HJ-NP-Z2-9]{4})\b")
CODE_SEARCH_CHARS = 4000  # where a pasted code is looked for: the subject and the top of the body


@dataclass(frozen=True)
class Confirmation:
    """A code we mailed: to whom, until when (epoch seconds), and the message key that used it ("")."""

    addr: str
    expires: float
    used_by: str = ""


# -- status requests ---------------------------------------------------------------------------------
def fold_words(text: str) -> str:
    """Lower case, accents removed, whitespace collapsed: "Estado de MIS  tíckets" ~ "estado de mis tickets"."""
    return " ".join(fold(text).split())


def is_status_request(subject: str, keywords: tuple[str, ...]) -> bool:
    folded = fold_words(subject)
    return any(k in folded for k in _folded(keywords))


@functools.lru_cache(maxsize=8)
def _folded(keywords: tuple[str, ...]) -> tuple[str, ...]:
    """The configured keywords, folded once (they are compared with every incoming subject)."""
    return tuple(fold_words(k) for k in keywords)


def new_code() -> str:
    """A fresh one-time code, ``XXXX-XXXX`` (40 bits of randomness)."""
    chars = "".join(secrets.choice(CODE_ALPHABET) for _ in range(8))
    return f"{chars[:4]}-{chars[4:]}"


def code_key(code: str) -> str:
    """What the store files a code under: its hash, so a directory listing does not give codes away."""
    return hashlib.sha256(code.upper().encode()).hexdigest()


def code_candidates(message: Message) -> tuple[str, ...]:
    """Code-shaped words in the subject and the top of the body (a reply keeps our subject);
    computed once per message."""
    if "codes" not in message.memo:
        text = f"{message.subject}\n{message.text[:CODE_SEARCH_CHARS]}".upper()
        message.memo["codes"] = tuple(dict.fromkeys(_codes_in(text)))
    return message.memo["codes"]


def _codes_in(text: str) -> list[str]:
    """``_CODE.findall(text)``, joined: tried only where a hyphen is (every code has one in its
    middle), instead of at every character of the text."""
    found, free, hyphen = [], 0, text.find("-", 4)
    while hyphen != -1:
        if hyphen - 4 >= free and (match := _CODE.match(text, hyphen - 4)):
            found.append(f"{match[1]}-{match[2]}")
            free = match.end()
        hyphen = text.find("-", hyphen + 1)
    return found


def status_decision(message: Message, config: Config, confirmations: Mapping[str, Confirmation], now: float,
                    lang: str, quiet: str | None) -> Decision | None:
    """The answer to a status request, or None when the message is not one.

    ``confirmations``: the stored codes this message quotes, by :func:`code_key`. A message is a
    status request when its subject carries a keyword, or when it quotes a code we issued.
    """
    settings = config.status_requests
    if not settings.enabled or message.sender is None:
        return None
    quoted = [c for c in code_candidates(message) if code_key(c) in confirmations]
    if not quoted and not is_status_request(message.subject, settings.keywords):
        return None
    if quiet:  # automatic mail: kept, never answered (an answer could start a loop)
        return Decision(Refuse(f"status request not answered: {quiet}", "automatic"), (), lang)
    addr = message.sender.addr
    scope = str(scope_of(addr, config.access))
    method = proven_by(message, settings.trusted_authserv_ids)
    if method:
        return Decision(StatusReport(addr, scope, method), (Send("status_list", SENDER),), lang)
    code, problem = _usable_code(quoted, addr, confirmations, now)
    if code:
        return Decision(StatusReport(addr, scope, "code", code), (Send("status_list", SENDER),), lang)
    return Decision(ConfirmIdentity(addr, problem), (Send("status_confirm", SENDER),), lang)


def _usable_code(quoted: list[str], addr: str, confirmations: Mapping[str, Confirmation],
                 now: float) -> tuple[str, str]:
    """The first quoted code issued to ``addr`` that is unused and unexpired, else ("", why not).

    A code issued to another address proves nothing about this one and is passed over in silence.
    """
    problem = ""
    for code in quoted:
        found = confirmations[code_key(code)]
        if found.addr != addr:
            continue
        if found.used_by:
            problem = "used"
        elif found.expires <= now:
            problem = problem or "expired"
        else:
            return code, ""
    return "", problem


# -- Authentication-Results (RFC 8601) ---------------------------------------------------------------
_PAIR = re.compile(r'([A-Za-z0-9_.-]+(?:/[0-9]+)?)\s*=\s*("(?:[^"\\]|\\.)*"|[^\s;]+)')


@dataclass(frozen=True)
class AuthResult:
    method: str  # dmarc, dkim, spf, ...
    result: str  # pass, fail, none, ...
    props: Mapping[str, str]  # "header.from" -> "example.com", "smtp.mailfrom" -> ..., lower-cased


def parse_auth_results(value: str) -> tuple[str, tuple[AuthResult, ...]]:
    """The authserv-id and the results of one header value; ("", ()) when it cannot be read."""
    parts = _split_semicolons(_strip_comments(value))
    head = parts[0].split() if parts else []
    if not head:
        return "", ()
    results = []
    for part in parts[1:]:
        pairs = [(k.lower(), v.strip('"').lower()) for k, v in _PAIR.findall(part)]
        if pairs:
            method, result = pairs[0]
            results.append(AuthResult(method.split("/")[0], result, dict(pairs[1:])))
    return head[0].lower(), tuple(results)


def trusted_results(message: Message, trusted_ids: tuple[str, ...]) -> tuple[AuthResult, ...]:
    """The results of the topmost Authentication-Results header written under a trusted authserv-id.

    Why only that one: anybody can put an Authentication-Results header in the mail they send, so
    headers under other authserv-ids are opinions we cannot check and are ignored. Our receiving MTA
    adds its own header above what it received (headers are prepended on the way), and RFC 8601 §5
    requires it to remove inbound ones that claim its authserv-id — so the topmost header with a
    trusted id is the MTA's verdict; any lower one with that id is at best stale, at worst forged.
    """
    if not trusted_ids:
        return ()
    for value in message.header_all("authentication-results"):
        serv_id, results = parse_auth_results(value)
        if serv_id in trusted_ids:
            return results
    return ()


def proven_by(message: Message, trusted_ids: tuple[str, ...]) -> str | None:
    """"dmarc", "dkim" or "spf" when the trusted verdict proves the From domain, else None.

    DMARC must pass for the From domain (when the result names it); without a DMARC result, DKIM or
    SPF must pass for a domain aligned with the From domain (relaxed alignment: the same domain or a
    parent of it). A DMARC result other than pass settles it: not proven.
    """
    sender = message.sender.addr if message.sender else ""
    from_domain = domain_of(sender)
    results = trusted_results(message, trusted_ids)
    if not from_domain or not results:
        return None
    dmarc = [r for r in results if r.method == "dmarc"]
    if dmarc:
        ok = any(r.result == "pass" and r.props.get("header.from", from_domain) == from_domain for r in dmarc)
        return "dmarc" if ok else None
    for method, prop in (("dkim", "header.d"), ("spf", "smtp.mailfrom")):
        for r in results:
            if r.method == method and r.result == "pass" and _aligned(r.props.get(prop, ""), from_domain):
                return method
    return None


def _aligned(domain: str, from_domain: str) -> bool:
    """Relaxed alignment without a public-suffix list: equal, or ``from_domain`` under ``domain``,
    where ``domain`` has at least two labels (so "com" never aligns with everything)."""
    domain = domain.rpartition("@")[2].strip(".")
    return bool(domain) and "." in domain and (from_domain == domain or from_domain.endswith("." + domain))


def _strip_comments(value: str) -> str:
    """Remove (comments), which may nest, outside quoted strings."""
    out, depth, quoted = [], 0, False
    for ch in value:
        if ch == '"' and depth == 0:
            quoted = not quoted
        if not quoted and ch == "(":
            depth += 1
        elif not quoted and ch == ")" and depth:
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def _split_semicolons(value: str) -> list[str]:
    parts, current, quoted = [], [], False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        if ch == ";" and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts]
