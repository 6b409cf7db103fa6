"""Frozen configuration values. :mod:`helpdeskd.config` builds them from TOML after validating it whole."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

LANGUAGES = ("es", "en")  # languages every template and display name must exist in


@dataclass(frozen=True)
class Localized:
    """A text per language, with the fallback chain requested → default → English → any."""

    texts: tuple[tuple[str, str], ...]

    def get(self, lang: str, default: str = "en") -> str:
        table = dict(self.texts)
        for candidate in (lang, default, "en"):
            if candidate in table:
                return table[candidate]
        return self.texts[0][1] if self.texts else ""


@dataclass(frozen=True)
class Queue:
    key: str
    name: Localized
    staff: tuple[str, ...] = ()
    escalation: tuple[str, ...] = ()


@dataclass(frozen=True)
class Priority:
    key: str
    name: Localized
    description: Localized
    response_target_minutes: int  # target time to first response
    rank: int  # 0 is the most urgent; the order of [[priorities]] in the file


@dataclass(frozen=True)
class Category:
    key: str
    name: Localized


@dataclass(frozen=True)
class Mailbox:
    """One intake: protocol ``maildir`` (a local Maildir) or ``pop3``/``pop3s`` (see :class:`Pop3`)."""

    name: str
    protocol: str
    path: Path | None
    interval_seconds: float
    queue: str | None = None
    priority: str | None = None
    category: str | None = None
    pop3: "Pop3 | None" = None  # set exactly when protocol is pop3 or pop3s


@dataclass(frozen=True)
class Pop3:
    """How to reach one POP3 mailbox and how much one session may do.

    TLS: ``pop3s`` is implicit TLS; ``pop3`` upgrades with STLS unless ``allow_plaintext`` says it may
    stay in clear text. Certificates are always verified (against ``ca_file`` when given). Exactly one of
    the three password sources is set; the secret itself is read only when connecting.
    """

    host: str
    port: int
    user: str
    implicit_tls: bool = False
    allow_plaintext: bool = False
    password_file: Path | None = None
    password_env: str | None = None
    password_credential: str | None = None  # a file name under $CREDENTIALS_DIRECTORY (systemd)
    ca_file: Path | None = None
    source_address: str | None = None  # local address to connect from (multi-homed hosts)
    connect_timeout: float = 30.0
    read_timeout: float = 60.0
    keep: bool = False  # keep filed mail on the server (the ledger remembers it) instead of deleting it
    max_message_bytes: int | None = None  # None: [limits] max_message_bytes
    oversized: str = "ticket"  # "ticket": headers filed with a note; "reply": headers kept, sender told
    delete_oversized: bool = False  # after the note/answer is durable, delete the oversized original
    max_messages_per_session: int = 5000  # with max_session_seconds: what a cut session costs (README)
    max_session_seconds: float = 300.0
    batch: int = 128  # messages retrieved, filed and deleted together (group commit)
    backoff_max_seconds: float = 900.0


@dataclass(frozen=True)
class Helpdesk:
    enabled: bool
    name: str
    address: str  # the public helpdesk address, From of everything we send
    allow_customer_tickets: bool
    default_queue: str
    default_priority: str
    default_category: str
    subject_tag: str  # e.g. "[Soporte #{id}]"; must contain {id}
    default_language: str
    detect_language: bool  # guess es/en from the text when no header says it
    message_id_domain: str
    state_dir: Path
    templates_dir: Path
    acknowledge_followups: bool = True
    closed_reply: str = "reopen"  # a reply to a closed ticket: reopen | new (linked ticket) | refuse
    cc_collaborators: bool = True  # Cc addresses of a new ticket's first message become collaborators
    max_collaborators: int = 10  # per ticket: a message Cc'd to thousands must not make us mail them all
    notify_staff: bool = True  # tell the queue's staff about new tickets and customer replies
    plus_addressing: bool = False  # answers carry Reply-To: local+<ticket>-<sig>@domain (needs MTA support)


@dataclass(frozen=True)
class Config:
    helpdesk: Helpdesk
    queues: tuple[Queue, ...]
    priorities: tuple[Priority, ...]
    categories: tuple[Category, ...]
    mailboxes: tuple[Mailbox, ...] = ()
    log_level: str = "info"
    source_path: Path | None = None
    limits: "Limits" = field(default_factory=lambda: Limits())
    smtp: "Smtp | None" = None  # None: outgoing mail stays in the outbox (no SMTP configured)
    autoreply: "AutoReply" = field(default_factory=lambda: AutoReply())
    access: "Access" = field(default_factory=lambda: Access())  # roles and who may submit (scopes.py)
    mail_gateway: "MailGateway" = field(default_factory=lambda: MailGateway())
    status_requests: "StatusRequests" = field(default_factory=lambda: StatusRequests())

    def intake_mailboxes(self) -> tuple[Mailbox, ...]:
        """The mailboxes to poll: none while ``[mail_gateway] enabled = false`` (mail stays upstream)."""
        return self.mailboxes if self.mail_gateway.enabled else ()

    def staff_of(self, queue_key: str) -> tuple[str, ...]:
        found = self.queue(queue_key)
        return found.staff if found else ()

    def is_staff(self, addr: str) -> bool:
        """Staff of any queue (assignment accepts any staff member)."""
        return any(addr in q.staff for q in self.queues)

    def queue(self, key: str) -> Queue | None:
        return next((q for q in self.queues if q.key == key), None)

    def priority(self, key: str) -> Priority | None:
        return next((p for p in self.priorities if p.key == key), None)

    def category(self, key: str) -> Category | None:
        return next((c for c in self.categories if c.key == key), None)

    def priority_rank(self, key: str) -> int:
        """Sort position of a priority; retired priorities sort after every configured one."""
        found = self.priority(key)
        return found.rank if found else len(self.priorities)


@dataclass(frozen=True)
class Limits:
    """Bounds on the work one message may cause."""

    max_message_bytes: int = 25 * 1024 * 1024
    max_parts: int = 200
    max_depth: int = 20
    max_header_bytes: int = 64 * 1024


SMTP_SECURITY = ("starttls", "tls", "none")


@dataclass(frozen=True)
class Smtp:
    """How outgoing mail reaches the next hop. Absent from the config: mail stays in the outbox.

    The password is never a value here: only where to read it (a file, an environment variable or a
    systemd credential name), resolved by :mod:`helpdeskd.smtp` when it connects.
    """

    host: str
    port: int
    security: str = "starttls"  # starttls | tls | none (none only with allow_plaintext)
    allow_plaintext: bool = False
    ca_file: Path | None = None  # extra CA bundle; the system's trust store otherwise
    user: str | None = None
    password_file: Path | None = None
    password_env: str | None = None
    password_credential: str | None = None  # name of a file in $CREDENTIALS_DIRECTORY
    timeout_seconds: float = 30.0  # every network operation
    envelope_sender: str = ""  # MAIL FROM of automatic answers; "" is the null sender (RFC 3834)
    helo_name: str | None = None  # EHLO name; the local host name otherwise
    retry_first_seconds: float = 60.0  # first delay after a temporary failure; doubles each time
    retry_max_seconds: float = 3600.0  # delays grow up to this
    give_up_seconds: float = 5 * 86400.0  # a message queued longer than this goes to failed/
    interval_seconds: float = 30.0  # the sender looks at the queue at least this often


@dataclass(frozen=True)
class AutoReply:
    """Rate limits on automatic answers: per recipient, and a global circuit breaker."""

    per_recipient: int = 5  # at most this many automatic messages to one address ...
    per_recipient_window_seconds: float = 3600.0  # ... within this window
    global_max: int = 300  # at most this many automatic messages in all ...
    global_window_seconds: float = 3600.0  # ... within this window (then the breaker is open)


# -- roles, submission, the mail gateway and "my tickets" by email (issue 6) ----------------------

UNKNOWN_SENDER_POLICIES = ("accept", "refuse", "hold")


@dataclass(frozen=True)
class Reseller:
    """A reseller: its contact addresses and the domains of its customers."""

    name: str
    contacts: tuple[str, ...] = ()
    domains: tuple[str, ...] = ()


@dataclass(frozen=True)
class DomainOwner:
    """A customer domain and the addresses of its owner; ``reseller`` is "" for the admin's own customers."""

    domain: str
    owners: tuple[str, ...] = ()
    reseller: str = ""


@dataclass(frozen=True)
class Access:
    """Who is who (the hosting panel's roles) and who may open tickets by mail.

    Addresses and domains are lower-case. A mail user is any address at a known domain (a
    ``[[domains]]`` entry or a reseller's domain). Validation guarantees that every address has at
    most one role and every domain at most one reseller, so classifying an address is unambiguous.
    """

    admins: tuple[str, ...] = ()
    resellers: tuple[Reseller, ...] = ()
    domains: tuple[DomainOwner, ...] = ()  # every known domain, with its reseller and owners
    allow_domains: tuple[str, ...] = ()  # when not empty: only these domains (and configured roles) may submit
    deny_domains: tuple[str, ...] = ()  # never open tickets from these domains
    unknown_senders: str = "accept"  # a sender with no role: accept | refuse | hold


@dataclass(frozen=True)
class MailGateway:
    """The panel's separate Activate/Deactivate for mail intake: off, no mailbox is polled and
    ``helpdeskd deliver`` answers EX_TEMPFAIL, so mail waits upstream; everything else runs."""

    enabled: bool = True
    helper_process: bool = True  # parse retrieved POP3 mail in a helper process (see helpdeskd.helper)


@dataclass(frozen=True)
class StatusRequests:
    """"My tickets" by email: a subject keyword asks for the list of tickets the sender may see,
    sent only to a proven sender (trusted Authentication-Results, or a one-time code)."""

    enabled: bool = True
    keywords: tuple[str, ...] = ("estado de mis tickets", "mis tickets", "my tickets", "ticket status")
    trusted_authserv_ids: tuple[str, ...] = ()  # authserv-ids of OUR receiving MTA; empty: codes only
    code_ttl_seconds: float = 3600.0  # a confirmation code is valid this long, and once
    max_listed: int = 50  # tickets shown in one answer (the total is always given)
