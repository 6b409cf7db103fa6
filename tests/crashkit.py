"""Helpers for the crash tests: a throwaway config, a Maildir feeder, the real daemon process, and the checks.

Everything here talks to helpdeskd the way an admin would: through its files (the Maildir, the state
directory) and its commands (``helpdeskd run|once|fsck``, ``helpdeskctl list``). The only in-process
piece is :func:`file_with_kill_at_step`, which runs the real ``helpdeskd once`` in a forked child and
SIGKILLs that child just before its N-th file-system side effect, to visit every window between them.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
import uuid
from collections import Counter
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HELPDESKD = [sys.executable, "-m", "helpdeskd.cli"]
HELPDESKCTL = [sys.executable, "-m", "helpdeskd.ctl"]
TOKEN_RE = re.compile(r"CRASHTOK-\d{4}-[0-9a-f]{8}")


# -- config ------------------------------------------------------------------------------------------------


def toml_str(value: str) -> str:
    return json.dumps(value)  # a JSON string without control characters is a valid TOML basic string


def write_config(root: Path, interval: float = 0.2) -> Path:
    """The shipped config with state, templates and the mailbox moved into ``root``; returns its path."""
    text = (REPO / "config" / "helpdeskd.toml").read_text(encoding="utf-8")
    replacements = {
        r'(?m)^state_dir = .*$': f"state_dir = {toml_str(str(root / 'state'))}",
        r'(?m)^templates_dir = .*$': f"templates_dir = {toml_str(str(REPO / 'templates'))}",
        r'(?m)^path = .*$': f"path = {toml_str(str(root / 'inbox'))}",
        r'(?m)^interval = .*$': f"interval = {interval}",
    }
    for pattern, new in replacements.items():
        text, count = re.subn(pattern, lambda _m, new=new: new, text)
        assert count == 1, f"config/helpdeskd.toml: expected one line matching {pattern}, found {count}"
    root.mkdir(parents=True, exist_ok=True)
    path = root / "helpdeskd.toml"
    path.write_text(text, encoding="utf-8")
    for sub in ("tmp", "new", "cur"):
        (root / "inbox" / sub).mkdir(parents=True, exist_ok=True)
    return path


# -- messages ----------------------------------------------------------------------------------------------

_ES = ("No puedo entrar al panel de control", "El correo no llega desde ayer", "Factura duplicada de marzo",
       "La web tarda mucho en cargar", "Error 500 en mi tienda")
_EN = ("Cannot log in to the control panel", "Mail is not arriving since yesterday", "Duplicate invoice for March",
       "The website is very slow", "Error 500 on my shop")
_ES_BODY = "Hola,\n\nDesde esta mañana no funciona. ¿Podéis revisarlo, por favor?\n\nGracias,\n{name}\n"
_EN_BODY = "Hello,\n\nSince this morning it does not work. Could you please have a look?\n\nThanks,\n{name}\n"


@dataclass(frozen=True)
class Mail:
    index: int
    token: str
    sender: str
    has_message_id: bool
    raw: bytes


def make_mail(index: int, rng, *, with_message_id: bool | None = None) -> Mail:
    """One distinct customer mail whose subject and body carry a unique token."""
    spanish = rng.random() < 0.5
    with_message_id = rng.random() < 0.6 if with_message_id is None else with_message_id
    token = f"CRASHTOK-{index:04d}-{rng.getrandbits(32):08x}"
    name = f"{'Cliente' if spanish else 'Customer'} {index}"
    sender = f"cliente{index}@example.org" if spanish else f"customer{index}@example.net"
    msg = EmailMessage()
    msg["From"] = f"{name} <{sender}>"
    msg["To"] = "support@helpdesk.localhost"
    msg["Subject"] = f"{rng.choice(_ES if spanish else _EN)} [{token}]"
    msg["Date"] = format_datetime(datetime(2024, 5, 1, 9, 0, index % 60, tzinfo=timezone.utc))
    if with_message_id:
        msg["Message-ID"] = make_msgid(f"c{index}", domain="customer.example")
    msg.set_content((_ES_BODY if spanish else _EN_BODY).format(name=name) + f"\nRef: {token}\n")
    return Mail(index, token, sender, with_message_id, msg.as_bytes())


def make_mails(count: int, rng) -> list[Mail]:
    """``count`` distinct mails; the first two cover both Message-ID cases for the duplicate checks."""
    return [make_mail(i, rng, with_message_id=(True if i == 0 else False if i == 1 else None)) for i in range(count)]


def drop(maildir: Path, raw: bytes) -> str:
    """Deliver the Maildir way: write into tmp/, fsync, rename into new/. Returns the file name."""
    name = f"{time.time_ns()}.P{os.getpid()}Q{uuid.uuid4().hex[:12]}.crashtest"
    tmp = maildir / "tmp" / name
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, raw)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, maildir / "new" / name)
    return name


def reset(root: Path, pristine: Path) -> None:
    """Put ``root``'s state directory back to the copy in ``pristine`` and empty its Maildir."""
    shutil.rmtree(root / "state")
    shutil.copytree(pristine, root / "state", symlinks=True)
    for sub in ("tmp", "new", "cur"):
        shutil.rmtree(root / "inbox" / sub)
        (root / "inbox" / sub).mkdir()


@contextlib.contextmanager
def memory_dir(fallback: Path):
    """A scratch directory on tmpfs when there is one, else ``fallback``.

    A kill -9 is not a power cut: what a killed process wrote is in the page cache and the next process
    sees it, fsynced or not. So the process-crash sweep loses nothing by running where fsync is free,
    and it runs many times faster. (Power-cut durability is a different test.)
    """
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        path = Path(tempfile.mkdtemp(prefix="helpdeskd-crash-", dir=shm))
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)
    else:
        yield fallback


def pending(maildir: Path) -> list[str]:
    return [n for n in os.listdir(maildir / "new") if not n.startswith(".")]


# -- processes ---------------------------------------------------------------------------------------------


def wait_for(predicate, timeout: float, what: str, interval: float = 0.02):
    """Poll ``predicate`` until it returns something truthy; fail with ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Daemon:
    """One ``helpdeskd run`` process; stderr (its JSON log) goes to a file for the post-mortem."""

    config: Path
    log_dir: Path
    runs: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None
    exits: list[int] = field(default_factory=list)

    def start(self) -> "Daemon":
        assert self.proc is None or self.proc.poll() is not None, "daemon already running"
        self.runs += 1
        self.log_path = self.log_dir / f"daemon-{self.runs:03d}.log"
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([*HELPDESKD, "run", "-c", str(self.config)], cwd=REPO,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        return self

    def log(self) -> str:
        return self.log_path.read_text(encoding="utf-8", errors="replace") if self.log_path else ""

    def wait_started(self, timeout: float = 30.0) -> None:
        def started() -> bool:
            if self.proc.poll() is not None:
                raise AssertionError(f"daemon exited with {self.proc.returncode} while starting:\n{self.log()}")
            return '"event": "started"' in self.log()
        wait_for(started, timeout, f"the daemon to log 'started' ({self.log_path})")

    def kill9(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        self.exits.append(self.proc.wait(timeout=30))

    def terminate(self, timeout: float = 60.0) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=timeout)
        self.exits.append(code)
        return code

    def ensure_dead(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)


def run_cli(*args: str, ctl: bool = False, timeout: float = 120.0) -> subprocess.CompletedProcess:
    return subprocess.run([*(HELPDESKCTL if ctl else HELPDESKD), *args], cwd=REPO, capture_output=True,
                          text=True, timeout=timeout, stdin=subprocess.DEVNULL)


# -- deterministic kill points ------------------------------------------------------------------------------

# The file-system calls helpdeskd's store makes; each is one side effect a crash can fall before or after.
_STEP_CALLS = ("write", "fsync", "replace", "rename", "link", "unlink", "mkdir", "open")


def file_with_kill_at_step(config: Path, step: int | None, log_path: Path) -> tuple[bool, list[str]]:
    """Run the real ``helpdeskd once -c config`` in a forked child, SIGKILLed just before side effect ``step``.

    Counted side effects are the ``os`` calls in :data:`_STEP_CALLS` made after the config is loaded.
    ``step=None`` runs to the end. Returns (killed, the side effects the child reached, e.g.
    ``"fsync state/seq"``); when it was killed, the last one is the call it was killed in front of.
    """
    runtime = _runtime(config)  # loaded (templates compiled) once, in the parent: children start fast
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 70
        try:
            os.close(read_fd)
            fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.dup2(fd, 1)
            os.dup2(fd, 2)
            sys.stdout = open(1, "w", closefd=False)
            sys.stderr = open(2, "w", closefd=False)
            code = _child_once(config, runtime, step, write_fd)
        except BaseException:  # shown in the assertion below (the log is this child's stderr)
            import traceback
            traceback.print_exc()
            sys.stderr.flush()
        finally:
            os._exit(code)
    os.close(write_fd)
    with os.fdopen(read_fd, "rb") as pipe:
        trace = pipe.read().decode(errors="replace").splitlines()
    _, status = os.waitpid(pid, 0)
    killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    if not killed:
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, (
            f"helpdeskd once (kill step {step}) failed with status {status}:\n{log_path.read_text(errors='replace')}")
    return killed, trace


_RUNTIMES: dict[Path, object] = {}


def _runtime(config: Path):
    from helpdeskd.runtime import load

    importlib.import_module("helpdeskd.cli")  # imported before forking, so no child pays for it

    if config not in _RUNTIMES:
        _RUNTIMES[config] = load(config)
    return _RUNTIMES[config]


def _child_once(config: Path, runtime, step: int | None, report_fd: int) -> int:
    from helpdeskd import cli

    state = str(runtime.config.helpdesk.state_dir)
    counter = [0]
    lock = threading.Lock()
    real = {name: getattr(os, name) for name in _STEP_CALLS}
    paths: dict[int, str] = {}  # fd -> the path it was opened with, to name fsyncs and writes

    def describe(name: str, args: tuple) -> str:
        what = args[0] if name not in ("write", "fsync") else paths.get(args[0], f"fd {args[0]}")
        if name == "write":
            what = f"{what} ({len(args[1])} bytes)"
        text = str(what).replace(state + "/", "state/")
        if name in ("replace", "rename", "link") and len(args) > 1:
            text += " -> " + str(args[1]).replace(state + "/", "state/")
        return f"{name} {text}"

    def counted(name: str):
        original = real[name]

        def call(*args, **kwargs):
            if name == "open" and not _opens_for_writing(args, kwargs):
                fd = original(*args, **kwargs)
                paths[fd] = str(args[0])
                return fd
            if name == "write" and args and args[0] == report_fd:
                return original(*args, **kwargs)
            with lock:  # group commits fsync from several threads: count each call exactly once
                counter[0] += 1
                real["write"](report_fd, f"{describe(name, args)}\n".encode(errors="replace"))
                if step is not None and counter[0] == step:
                    os.kill(os.getpid(), signal.SIGKILL)
            result = original(*args, **kwargs)
            if name == "open":
                paths[result] = str(args[0])
            return result
        return call

    for name in _STEP_CALLS:
        setattr(os, name, counted(name))
    # run the real command, with the already-loaded runtime (what cli.main does after loading)
    args = cli._parser().parse_args(["once", "-c", str(config)])
    cli.logs.setup("info")
    return cli.cmd_once(args, config, runtime)


def _opens_for_writing(args: tuple, kwargs: dict) -> bool:
    flags = args[1] if len(args) > 1 else kwargs.get("flags", 0)
    return bool(flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT))


# -- reading the outcome -----------------------------------------------------------------------------------


@dataclass
class Outcome:
    tickets: list[dict]
    acks: list[dict]  # outbox envelopes (first line of each .msg), with "_state" and "_file" added
    seq: int
    leftovers: dict[str, list[str]]

    def tickets_by_token(self) -> dict[str, list[dict]]:
        found: dict[str, list[dict]] = {}
        for t in self.tickets:
            for token in set(TOKEN_RE.findall(t.get("subject", ""))):
                found.setdefault(token, []).append(t)
        return found

    def acks_per_ticket(self) -> Counter:
        """Acknowledgments (answers to the customer) per ticket; staff notices are counted apart."""
        return Counter(a.get("ticket") for a in self.acks if a.get("kind") == "auto-reply")

    def notices_per_ticket(self) -> Counter:
        return Counter(a.get("ticket") for a in self.acks if a.get("kind") == "notification")


def read_outcome(config: Path, state: Path, inbox: Path, *, via_cli: bool = True) -> Outcome:
    """What helpdeskd made of the mail: tickets (from ``helpdeskctl list --json --all``, or with
    ``via_cli=False`` straight from the ticket.toml files, which is faster), outbox envelopes, seq, leftovers."""
    if via_cli:
        listed = run_cli("-c", str(config), "list", "--json", "--all", ctl=True)
        assert listed.returncode == 0, f"helpdeskctl list failed: {listed.stderr}"
        tickets = json.loads(listed.stdout)
    else:
        tickets = [tomllib.loads(p.read_text(encoding="utf-8")) for p in (state / "tickets").glob("*/*/ticket.toml")]
    acks = []
    for sub in ("new", "cur", "failed"):
        for path in sorted((state / "outbox" / sub).glob("*.msg")):
            head = path.read_bytes().partition(b"\n")[0]
            acks.append(json.loads(head) | {"_state": sub, "_file": path.name})
    seq_file = state / "seq"
    seq = int(seq_file.read_text().strip() or 0) if seq_file.exists() else 0
    leftovers = {
        "inbox/new": pending(inbox),
        "quarantine": sorted(p.name for p in (state / "quarantine").glob("*")) if (state / "quarantine").is_dir() else [],
        "refused": sorted(p.name for p in (state / "refused").glob("*")) if (state / "refused").is_dir() else [],
    }
    return Outcome(tickets, acks, seq, leftovers)


def events_of(state: Path, ticket_id: int) -> list[dict]:
    path = state / "tickets" / str(ticket_id // 1000) / str(ticket_id) / "events.jsonl"
    out = []
    for line in path.read_bytes().splitlines() if path.exists() else []:
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"type": "<torn line>", "ref": line[:60].decode(errors="replace")})
    return out


def problems(outcome: Outcome, mails: list[Mail], duplicates: int = 0) -> list[str]:
    """Every way the outcome differs from "each distinct mail became exactly one ticket and one ack"."""
    found: list[str] = []
    by_token = outcome.tickets_by_token()
    ids = [t["id"] for t in outcome.tickets]
    tokens = {m.token for m in mails}
    for mail in mails:
        got = by_token.get(mail.token, [])
        if len(got) != 1:
            found.append(f"mail #{mail.index} ({mail.token}, Message-ID: {mail.has_message_id}) became "
                         f"{len(got)} tickets {[t['id'] for t in got]}")
    for t in outcome.tickets:
        if not set(TOKEN_RE.findall(t.get("subject", ""))) & tokens:
            found.append(f"ticket #{t['id']} matches no sent mail: {t.get('subject')!r}")
        if t.get("mail_count") != 1 or len(t.get("message_keys", [])) != 1:
            found.append(f"ticket #{t['id']} holds {t.get('mail_count')} mails / keys {t.get('message_keys')}"
                         f" (expected exactly one: a reused id or a re-filed duplicate)")
    repeated = [i for i, n in Counter(ids).items() if n > 1]
    if repeated:
        found.append(f"ticket ids listed more than once: {repeated}")
    if ids and max(ids) > outcome.seq:
        found.append(f"seq is {outcome.seq} but ticket #{max(ids)} exists: the next ticket would reuse an id")
    per_ticket = outcome.acks_per_ticket()
    for t in outcome.tickets:
        if per_ticket.get(t["id"], 0) != 1:
            found.append(f"ticket #{t['id']} has {per_ticket.get(t['id'], 0)} acknowledgments in the outbox")
    for ticket_id in set(per_ticket) - set(ids):
        found.append(f"{per_ticket[ticket_id]} acknowledgment(s) for ticket {ticket_id!r}, which does not exist")
    notices = outcome.notices_per_ticket()
    for t in outcome.tickets:  # the shipped config's general queue has one staff member
        if notices.get(t["id"], 0) != 1:
            found.append(f"ticket #{t['id']} has {notices.get(t['id'], 0)} staff notices in the outbox")
    for ack in outcome.acks:
        if ack.get("template") not in ("ack_new", "staff_new"):
            found.append(f"outbox {ack['_file']}: unexpected template {ack.get('template')!r}")
    for where, names in outcome.leftovers.items():
        if names:
            found.append(f"{where} is not empty: {names[:10]}")
    if len(outcome.tickets) != len(mails):
        found.append(f"{len(outcome.tickets)} tickets for {len(mails)} distinct mails (+{duplicates} duplicate drops)")
    return found


def history_problems(state: Path, tickets: list[dict]) -> list[str]:
    """Each ticket's history: one 'created', one 'message', one 'reply_queued' entry per mail sent
    (the acknowledgment and the staff notice), none twice."""
    found = []
    for t in tickets:
        events = events_of(state, t["id"])
        counts = Counter(e.get("type") for e in events)
        counts["reply_queued"] = min(Counter(e.get("template") for e in events if e.get("type") == "reply_queued")
                                     [name] for name in ("ack_new", "staff_new"))
        for kind in ("created", "message", "reply_queued"):
            if counts.get(kind, 0) != 1:
                found.append(f"ticket #{t['id']}: {counts.get(kind, 0)} '{kind}' events in events.jsonl "
                             f"(expected 1; history: {[e.get('type') for e in events]})")
        again = [k for k, n in Counter((e.get("type"), e.get("ref")) for e in events).items() if n > 1]
        if again:
            found.append(f"ticket #{t['id']}: history entries recorded twice: {again}")
    return found


def fsck_check(config: Path) -> tuple[int, str]:
    """``helpdeskd fsck --check-only``: its exit code and output."""
    done = run_cli("fsck", "-c", str(config), "--check-only")
    return done.returncode, done.stdout + done.stderr


def fsck_problems(state: Path) -> list[str]:
    """The same check in-process (no rebuild), for loops where a process per check would be slow."""
    from helpdeskd.store.fsck import fsck

    return fsck(state, rebuild=False).problems
