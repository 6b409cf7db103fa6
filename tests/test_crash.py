"""Crash tests: kill -9 the real ``helpdeskd`` at random moments (and before every single side effect of
filing) while mail arrives, restart it, and check that every distinct message became exactly one ticket
and exactly one acknowledgment -- DESIGN.md's "no loss" and "no duplicates".

Randomness is seeded: set HELPDESKD_CRASH_SEED to replay a failure (the seed is in every assertion).
Nothing here asserts on time; waits are polling loops with generous deadlines.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from crashkit import (
    Daemon,
    drop,
    file_with_kill_at_step,
    fsck_check,
    fsck_problems,
    history_problems,
    make_mail,
    make_mails,
    memory_dir,
    pending,
    problems,
    read_outcome,
    reset,
    run_cli,
    wait_for,
    write_config,
)

SEED = int(os.environ.get("HELPDESKD_CRASH_SEED", "20240611"))


@pytest.fixture
def setup(tmp_path: Path):
    config = write_config(tmp_path, interval=0.2)
    daemon = Daemon(config, tmp_path)
    yield config, tmp_path / "state", tmp_path / "inbox", daemon
    daemon.ensure_dead()


def _finish(daemon: Daemon, config: Path, inbox: Path, *, check_second_daemon: bool = False) -> None:
    """Start a clean daemon, let it empty new/, stop it with SIGTERM (which must exit 0)."""
    daemon.start()
    daemon.wait_started()
    if check_second_daemon:
        _assert_second_daemon_refused(config)
    wait_for(lambda: not pending(inbox), 180, "the daemon to empty the Maildir's new/", interval=0.05)
    code = daemon.terminate()
    assert code == 0, f"SIGTERM: daemon exited with {code}, expected 0\n{daemon.log()[-3000:]}"
    assert '"event": "stopped"' in daemon.log(), "the daemon did not log its orderly stop"


def _assert_second_daemon_refused(config: Path) -> None:
    try:
        second = run_cli("run", "-c", str(config), timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a second `helpdeskd run` on the same state directory kept running instead of being refused")
    assert second.returncode != 0, "a second daemon on the same state directory was not refused"
    assert "already running" in second.stderr and "state directory" in second.stderr, (
        f"the refusal should say a daemon is already running on the state directory; it said: {second.stderr!r}")


def _assert_clean(config: Path, state: Path, inbox: Path, mails, duplicates: int, context: str,
                  history: bool = False) -> None:
    outcome = read_outcome(config, state, inbox)
    found = problems(outcome, mails, duplicates)
    if history:
        found += history_problems(state, outcome.tickets)
    assert not found, f"{context} (seed {SEED}):\n  " + "\n  ".join(found)
    code, report = fsck_check(config)
    assert code == 0 and ", 0 problems" in report, f"{context}: fsck --check-only: exit {code}\n{report}"


def test_kill9_at_random_moments_while_mail_arrives(setup) -> None:
    """A feeder drops ~90 mails over a few seconds; the daemon is SIGKILLed and restarted 7 times meanwhile."""
    config, state, inbox, daemon = setup
    rng = random.Random(SEED)
    mails = make_mails(90, rng)
    # mails[0] has a Message-ID, mails[1] has none: the same bytes again under another file name must be
    # recognised in both cases (the second one only by the bytes).
    drops = [m.raw for m in mails] + [mails[0].raw, mails[1].raw]
    rng.shuffle(drops)
    feeder_rng = random.Random(SEED + 1)
    errors: list[BaseException] = []

    def feed() -> None:
        try:
            for raw in drops:
                drop(inbox, raw)
                time.sleep(feeder_rng.uniform(0, 0.09))
        except BaseException as exc:  # noqa: BLE001 - reported by the test thread
            errors.append(exc)

    feeder = threading.Thread(target=feed, name="feeder")
    feeder.start()
    try:
        for round_ in range(7):
            daemon.start()
            if round_ % 2:  # sometimes while it is still starting up, sometimes while it works
                daemon.wait_started()
            time.sleep(rng.uniform(0.02, 0.6))
            daemon.kill9()
    finally:
        feeder.join(timeout=120)
    assert not errors, f"feeder failed: {errors}"
    assert not feeder.is_alive()
    assert all(code == -9 for code in daemon.exits), f"every round should have ended by SIGKILL: {daemon.exits}"

    _finish(daemon, config, inbox, check_second_daemon=True)
    _assert_clean(config, state, inbox, mails, 2, "after 7 kill -9 rounds while mail arrived")


def test_kill9_shortly_after_each_message_lands(setup) -> None:
    """Many rounds: start the daemon, drop one mail, SIGKILL it a random few milliseconds later.

    The poll interval is small here, so the kill falls anywhere from "not picked up yet" through
    claim, ticket, history, outbox, to "moved to cur/".
    """
    _, state, inbox, daemon = setup
    config = write_config(inbox.parent, interval=0.02)
    daemon.config = config
    rng = random.Random(SEED + 2)
    mails = [make_mail(i, rng) for i in range(24)]
    for mail in mails:
        daemon.start()
        daemon.wait_started()
        drop(inbox, mail.raw)
        if mail.index % 6 == 5:  # and now and then the same bytes again, while the original may be half-filed
            drop(inbox, mails[mail.index - 1].raw)
        time.sleep(rng.uniform(0.0, 0.12))
        daemon.kill9()

    _finish(daemon, config, inbox)
    _assert_clean(config, state, inbox, mails, len(mails) // 6, "after kill -9 shortly after each message landed")


@dataclass
class Sweep:
    with_message_id: bool
    kill_points: int = 0
    broken: list[str] = field(default_factory=list)  # a mail lost, a second ticket or ack, fsck problems
    history: list[str] = field(default_factory=list)  # events.jsonl missing or repeating an entry

    def report(self, what: list[str], rule: str) -> str:
        return (f"{len(what)} of {self.kill_points} kill points break {rule} "
                f"(mail {'with' if self.with_message_id else 'without'} Message-ID, seed {SEED}):\n  "
                + "\n  ".join(what))


@pytest.fixture(scope="module", params=[True, False], ids=["with-message-id", "without-message-id"])
def sweep(request, tmp_path_factory) -> Sweep:
    """Deterministic: file one new mail with the real ``helpdeskd once`` and SIGKILL it just before its
    1st, 2nd, ... N-th file-system call (open for writing, write, fsync, rename/replace, link, unlink, mkdir),
    each time from the same fresh state; drop the same bytes once more (a re-delivery) and restart.
    Repeat until a run finishes before reaching the kill point: every crash window has been visited.
    Then, on the finished store, kill the re-filing of the same bytes before each of its steps.
    """
    result = Sweep(request.param)
    rng = random.Random(SEED + 3)
    with memory_dir(tmp_path_factory.mktemp("sweep")) as root:
        config = write_config(root)
        state, inbox, log = root / "state", root / "inbox", root / "once.log"
        file_with_kill_at_step(config, None, log)  # create the state directory: the counted runs only file
        pristine = root / "pristine-state"
        shutil.copytree(state, pristine, symlinks=True)
        step = 0
        while True:
            step += 1
            assert step < 400, "filing one message never finished: the kill-point count does not converge"
            reset(root, pristine)
            mail = make_mail(step, rng, with_message_id=result.with_message_id)
            drop(inbox, mail.raw)
            killed, trace = file_with_kill_at_step(config, step, log)
            if not killed:
                break
            drop(inbox, mail.raw)  # the MTA delivers the very same bytes again while the first copy is half-filed
            file_with_kill_at_step(config, None, log)  # the restart (crash-free) must finish the job
            _judge(result, f"killed before side effect {step} [{trace[-1]}]", config, root, mail, 1, fsck=True)
        result.kill_points = step - 1
        assert result.kill_points > 10, (
            f"filing one mail made only {result.kill_points} file-system calls: the step counter is not working")
        # The last round completed without a kill: check it through the commands, once.
        _assert_clean(config, state, inbox, [mail], 0, "a crash-free filing")
        for dup_step in range(1, step + 1):
            drop(inbox, mail.raw)
            killed, trace = file_with_kill_at_step(config, dup_step, log)
            file_with_kill_at_step(config, None, log)
            _judge(result, f"re-filing the same bytes, killed before side effect {dup_step} [{trace[-1]}]",
                   config, root, mail, dup_step, fsck=False)
            if not killed:
                break
    return result


def _judge(result: Sweep, label: str, config: Path, root: Path, mail, duplicates: int, fsck: bool) -> None:
    state, inbox = root / "state", root / "inbox"
    outcome = read_outcome(config, state, inbox, via_cli=False)
    broken = problems(outcome, [mail], duplicates)
    if fsck:
        broken += [f"fsck: {p}" for p in fsck_problems(state)]
    history = history_problems(state, outcome.tickets)
    for found, into in ((broken, result.broken), (history, result.history)):
        if found:
            into.append(f"{label}:\n      " + "\n      ".join(found))


def test_kill9_before_every_side_effect_loses_and_duplicates_nothing(sweep: Sweep) -> None:
    if sweep.broken:
        pytest.fail(sweep.report(sweep.broken, "'one mail, one ticket, one ack'"), pytrace=False)


def test_kill9_before_every_side_effect_keeps_history_complete(sweep: Sweep) -> None:
    """The claim holds all it takes to finish the work, so a restart must also finish the ticket's history:
    one 'created', one 'message', one 'reply_queued' entry (cycle.py's promise; DESIGN.md's events.jsonl)."""
    if sweep.history:
        pytest.fail(sweep.report(sweep.history, "the ticket's history"), pytrace=False)
