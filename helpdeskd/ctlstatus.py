"""``helpdeskctl status``: the running daemon's health, for a person or for a monitoring check.

It reads what the daemon writes (``state/status/daemon.json``, see :mod:`helpdeskd.health`) and
counts the outbox itself. Exit status, in the monitoring-plugin convention: 0 all is well, 1 something
needs attention (a failing mailbox, a refused reload, a crashed task, dead letters, a broken config),
2 the daemon is not running or seems hung.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from .config import load_config, state_dir_of
from .errors import ConfigError
from .health import (DUPLICATES, FILED, IGNORED, age_seconds, attention, daemon_down, outbox_depth, pid_alive,
                     read_status, total)
from .runtime import config_path
from .settings import Config
from .store.fsutil import count_entries
from .store.sentlog import SentLog
from .store.tickets import old_index_layout

EXIT_OK, EXIT_ATTENTION, EXIT_DOWN = 0, 1, 2


def add_parser(sub: argparse._SubParsersAction) -> None:
    status = sub.add_parser("status", help="the daemon's health; exit 1 when something needs attention, "
                            "2 when it is not running")
    status.add_argument("--json", action="store_true")
    status.add_argument("--state-dir", type=Path, help="read the status from this state directory (works "
                        "even when the config file is broken)")
    status.set_defaults(func=None, command_main=main)


def main(args: argparse.Namespace) -> int:
    """Runs before (and without needing) a valid config: a broken config is one more thing to report."""
    state_dir, config, config_problems = _locate(args)
    if state_dir is None:  # the config is broken: worth attention, but the daemon may well be running
        for line in config_problems:
            print(f"helpdeskctl: {line}", file=sys.stderr)
        return EXIT_ATTENTION
    status, outbox = read_status(state_dir), outbox_depth(state_dir)
    problems = config_problems + attention(status, outbox) + _store_notes(state_dir, config)
    code = EXIT_DOWN if daemon_down(status) else EXIT_ATTENTION if problems else EXIT_OK
    if args.json:
        json.dump({"status": status, "outbox": outbox, "attention": problems, "exit": code}, sys.stdout,
                  ensure_ascii=False, indent=1)
        print()
    else:
        _show(status or {}, outbox, _count_eml(state_dir / "quarantine"), problems)
    return code


def _locate(args: argparse.Namespace) -> tuple[Path | None, Config | None, list[str]]:
    """The state directory (from --state-dir, else the config), the config, and its problems if it is broken.

    With --state-dir and no -c, the config checked is the one the daemon there runs on (from its status)."""
    if args.state_dir is not None and args.config is None:
        running = (read_status(args.state_dir) or {}).get("config")
        return (args.state_dir, *_load(Path(running))) if running else (args.state_dir, None, [])
    path = config_path(args.config)
    config, problems = _load(path)
    if config is None:  # the daemon may well run on the config it had: its status is worth showing
        state_dir = args.state_dir or state_dir_of(path)
        return state_dir, None, problems if state_dir else problems + ["give --state-dir to see the status"]
    return args.state_dir or config.helpdesk.state_dir, config, []


def _load(path: Path) -> tuple[Config | None, list[str]]:
    try:
        return load_config(path), []
    except ConfigError as exc:
        return None, _describe(exc)


def _store_notes(state_dir: Path, config: Config | None) -> list[str]:
    """What the store itself says needs a person: automatic answers paused by the circuit breaker, an
    index still in its old layout."""
    found = []
    try:
        if config is not None and (state_dir / "autoreplies" / "all").exists():  # (reading makes no folder then)
            limits = config.autoreply
            recent = SentLog(state_dir).count_all(time.time() - limits.global_window_seconds)
            if recent >= limits.global_max:
                found.append(f"automatic answers are paused: {recent} queued in the last "
                             f"{limits.global_window_seconds:.0f} s (autoreply global_max {limits.global_max}); "
                             "customers get no acknowledgment until fewer were")
        if old_index_layout(state_dir):
            found.append("the ticket index is in its old layout (lookups are slower): run helpdeskd fsck")
    except OSError as exc:  # a monitoring user who may not read the state directory
        found.append(f"could not read the state directory: {exc}")
    return found


def _count_eml(folder: Path) -> int:
    """Messages kept in a holding folder (quarantine/), counted without making or reading anything."""
    try:
        return count_entries(folder, ".eml")
    except OSError:
        return 0


def _describe(exc: ConfigError) -> list[str]:
    return [f"configuration {exc.source} is invalid: {'; '.join(exc.problems)}"]


def _show(status: dict, outbox: dict[str, int], quarantined: int, problems: list[str]) -> None:
    age, state = age_seconds(status.get("updated")), status.get("state", "unknown")
    if status.get("pid") and state != "stopped" and not pid_alive(int(status["pid"])):  # killed, or a reboot
        state = f"not running (its last status said {state})"
    print(f"daemon: {state}, pid {status.get('pid')}, started {status.get('started')}"
          + (f" (status written {age:.0f} s ago)" if age is not None else ""))
    print(f"config: {status.get('config')}, loaded {status.get('config_loaded')}")
    if status.get("reload_failed"):
        print(f"last reload refused at {status['reload_failed'].get('at')}:")
        for line in status["reload_failed"].get("problems", []):
            print(f"  {line}")
    for name, box in sorted(status.get("mailboxes", {}).items()):
        _show_mailbox(name, box)
    for name, task in sorted(status.get("tasks", {}).items()):
        if task.get("counts") or task.get("last_error") or task.get("restarts"):
            _show_task(name, task)
    print(f"outbox: {outbox.get('new', 0)} waiting, {outbox.get('failed', 0)} dead letter(s);"
          f" quarantine: {quarantined} message(s)")
    print("attention:" if problems else "all well")
    for line in problems:
        print(f"  - {line}")


def _show_mailbox(name: str, box: dict) -> None:
    counts = box.get("counts", {})
    print(f"mailbox {name} ({box.get('protocol')}): last poll {box.get('last_poll') or 'never'}, "
          f"last good poll {box.get('last_ok') or 'never'}")
    print(f"  filed {total(counts, FILED)}, duplicates {total(counts, DUPLICATES)}, ignored {total(counts, IGNORED)}, "
          f"quarantined {counts.get('quarantined', 0)}, refused {counts.get('refused', 0)} (since start)"
          + (f", task restarts {box['restarts']}" if box.get("restarts") else ""))
    if box.get("last_error"):
        print(f"  FAILING ({box.get('failures')} in a row, last at {box.get('last_error_at')}): {box['last_error']}")


def _show_task(name: str, task: dict) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(task.get("counts", {}).items()))
    print(f"{name}: {counts or 'idle'}" + (f", restarts {task['restarts']}" if task.get("restarts") else "")
          + (f"; last error: {task['last_error']}" if task.get("last_error") else ""))
