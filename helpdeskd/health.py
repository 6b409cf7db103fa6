"""The daemon's health: what it records while running, the status file it writes, and how to judge it.

The daemon owns one :class:`Health` and updates it from the loop (poll results, task failures,
reloads); :meth:`Health.write` replaces ``state/status/daemon.json`` atomically, so a reader never
sees half a file. The file is informative — rewritten every few seconds, never fsynced — and
``helpdeskctl status`` reads it with :func:`read_status` and :func:`attention`.

Counts are since the daemon started (the store holds the lasting record of every message).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from .store.fsutil import Syncer, atomic_write, ensure_dir
from .store.outbox import outbox_depth as count_outbox

STATUS_FILE = Path("status") / "daemon.json"
# Actions (see cycle.Outcome) grouped the way an admin asks about them.
FILED = ("new", "followup", "reopened", "staff_answer", "note", "rejected")
DUPLICATES = ("duplicate",)  # a copy of a message filed before: nothing done, by design
IGNORED = ("ignored",)  # loops, bounces, auto-replies: deliberately not filed
NO_SYNC = Syncer(enabled=False)  # informative only: a crash may lose the last rewrite, nothing else
STALE_AFTER = 120.0  # seconds without a rewrite before a reader calls the status stale (daemon hung or gone)


def now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


@dataclass
class MailboxHealth:
    """One mailbox (or, under ``tasks``, one other supervised task) as the supervisor last saw it."""

    protocol: str = ""
    last_poll: str | None = None  # last attempt, whatever its outcome
    last_ok: str | None = None  # last poll that ended without an error
    last_error: str | None = None  # the latest error; cleared by the next good poll
    last_error_at: str | None = None
    failures: int = 0  # in a row; 0 when the last poll worked
    needs_admin: bool = False  # the error will not go away by waiting (password, certificate)
    restarts: int = 0  # times the task crashed and was restarted by the supervisor
    counts: dict[str, int] = field(default_factory=dict)

    def polled(self, counts: dict[str, int], error: str | None, needs_admin: bool = False) -> None:
        """Record one poll: its counts add up, an error (or its absence) replaces the last one."""
        self.last_poll = now_iso()
        for action, n in counts.items():
            self.counts[action] = self.counts.get(action, 0) + n
        if error is None:
            self.last_ok, self.last_error, self.failures, self.needs_admin = self.last_poll, None, 0, False
        else:
            self.failed(error, needs_admin)

    def failed(self, error: str, needs_admin: bool = False) -> None:
        self.last_error, self.last_error_at, self.needs_admin = error, now_iso(), needs_admin
        self.failures += 1


@dataclass
class Health:
    """Everything the status file holds; the daemon is its only writer."""

    config: str
    pid: int = field(default_factory=os.getpid)
    started: str = field(default_factory=now_iso)
    config_loaded: str = field(default_factory=now_iso)
    reload_failed: dict | None = None  # {"at": …, "problems": […]} until a reload succeeds
    state: str = "starting"  # starting | running | reloading | stopping
    mailboxes: dict[str, MailboxHealth] = field(default_factory=dict)
    tasks: dict[str, MailboxHealth] = field(default_factory=dict)  # the sender and other non-mailbox tasks
    outbox: dict[str, int] = field(default_factory=dict)  # {"new": waiting, "failed": dead letters}

    def mailbox(self, name: str, protocol: str = "") -> MailboxHealth:
        entry = self.mailboxes.setdefault(name, MailboxHealth(protocol))
        entry.protocol = protocol or entry.protocol
        return entry

    def task(self, name: str) -> MailboxHealth:
        return self.tasks.setdefault(name, MailboxHealth("task"))

    def keep_only(self, names: set[str]) -> None:
        """Forget mailboxes a reload removed."""
        for name in set(self.mailboxes) - names:
            del self.mailboxes[name]

    def reloaded(self) -> None:
        self.config_loaded, self.reload_failed = now_iso(), None

    def reload_refused(self, problems: list[str]) -> None:
        self.reload_failed = {"at": now_iso(), "problems": list(problems)}

    def to_dict(self) -> dict:
        return asdict(self) | {"updated": now_iso()}

    def write(self, state_dir: Path) -> None:
        """Replace the status file atomically (tmp file + rename); raises OSError."""
        data = json.dumps(self.to_dict(), ensure_ascii=False, indent=1).encode()
        atomic_write(ensure_dir(state_dir / STATUS_FILE.parent) / STATUS_FILE.name, data, sync=NO_SYNC)

    def summary(self) -> str:
        """One line for systemd's STATUS= (``systemctl status``)."""
        failing = sorted(n for n, m in self.mailboxes.items() if m.last_error)
        filed = sum(total(m.counts, FILED) for m in self.mailboxes.values())
        parts = [f"{len(self.mailboxes)} mailboxes", f"{filed} filed",
                 f"outbox {self.outbox.get('new', 0)} waiting, {self.outbox.get('failed', 0)} dead"]
        if failing:
            parts.append(f"failing: {', '.join(failing)} ({self.mailboxes[failing[0]].last_error})")
        if self.reload_failed:
            parts.append("last reload refused")
        return "; ".join(parts)


def total(counts: dict[str, int], actions: tuple[str, ...]) -> int:
    return sum(counts.get(a, 0) for a in actions)


def outbox_depth(state_dir: Path) -> dict[str, int]:
    """Mail waiting to be sent (``outbox/new``) and dead letters (``outbox/failed``); sent mail is not counted."""
    return count_outbox(state_dir, ("new", "failed"))


def read_status(state_dir: Path) -> dict | None:
    """The status file as written, or None when there is none (the daemon never ran here)."""
    try:
        return json.loads((state_dir / STATUS_FILE).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None


def age_seconds(iso: str | None, now: datetime | None = None) -> float | None:
    if not iso:
        return None
    return ((now or datetime.now(timezone.utc)) - datetime.fromisoformat(iso)).total_seconds()


def pid_alive(pid: int) -> bool:
    """True when a process with ``pid`` exists (ours or another user's)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, it is just not ours to signal
    return True


def attention(status: dict | None, outbox: dict[str, int], now: datetime | None = None) -> list[str]:
    """What needs a person, one line each; empty when all is well. ``outbox`` is read live from the store."""
    down = daemon_down(status, now)
    found = [down] if down else []
    status = status or {}
    for name, box in sorted(status.get("mailboxes", {}).items()):
        if box.get("last_error"):
            found.append(f"mailbox {name}: failing ({box.get('failures')} in a row): {box['last_error']}")
    for name, task in sorted(status.get("tasks", {}).items()):
        if task.get("last_error"):
            found.append(f"{name}: {task['last_error']}")
    if status.get("reload_failed"):
        found.append("last reload refused (the previous config is still running): "
                     + "; ".join(status["reload_failed"].get("problems", [])))
    if outbox.get("failed"):
        found.append(f"{outbox['failed']} dead letter(s) in outbox/failed/ (helpdeskctl outbox --state failed)")
    return found


def daemon_down(status: dict | None, now: datetime | None = None) -> str | None:
    """Why the daemon is not running (or seems hung), or None when it is alive."""
    if status is None:
        return "no status file: the daemon has not run on this state directory"
    if status.get("state") == "stopped":
        return f"the daemon is not running (stopped at {status.get('updated')})"
    if not pid_alive(int(status.get("pid", 0))):
        return f"the daemon is not running (pid {status.get('pid')} is gone; last status {status.get('updated')})"
    age = age_seconds(status.get("updated"), now)
    if age is not None and age > STALE_AFTER:
        return f"the status file is {age:.0f} s old: the daemon seems hung"
    return None
