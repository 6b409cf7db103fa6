"""A helper process for the work around filing that needs no store: parsing mail, composing answers.

Python runs one thread at a time, and these two are about half of what filing a message costs; in a
process of their own they run on another core. The POP3 pipeline hands each batch to
:func:`parse_ahead` as soon as it is retrieved and takes the parsed messages back when it files that
batch; the mail that filing asks for (:class:`~helpdeskd.mailjob.MailJob`) goes to
:func:`compose_ahead` and is queued by the filing thread while the next batch is filed — with syncfs
group commits, the helper also writes it into ``outbox/new`` (each file appears whole, or not at all;
the daemon's next commit makes it durable).

The helper decides nothing and touches nothing but those outbox files, so losing it loses nothing:
when it cannot start, dies or hangs (no answer within ``ANSWER_SECONDS``), the work is done in the
daemon as before (one warning) and the next batch starts a new helper. It is a child of a
``forkserver`` (a clean, single-threaded process started once), never a fork of the daemon's
threads, and it exits as soon as the daemon does, even when the daemon was killed.
"""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import pickle
import select
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures.process import BrokenProcessPool
from contextlib import contextmanager
from dataclasses import dataclass

from .decide import strip_imitations, ticket_ids_for
from .health import pid_alive
from .identity import code_candidates
from .lang import guessed_language
from .loops import no_autoreply_reason
from .logs import get
from .mailjob import MailJob, Queued, Unsendable, compose_job, write_job
from .message import Message
from .parse import parse
from .settings import Config, Helpdesk, Limits
from .store.fsutil import Syncer
from .store.outbox import Outbox
from .templates import Templates

log = get("helper")
ANSWER_SECONDS = 30.0  # a batch is at most 8 MiB of mail: well under a second of work, usually
START_SECONDS = 10.0  # a new helper answers in ~0.2 s; a daemon stopping meanwhile waits for this at most

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def _forget_inherited() -> None:
    """In a process forked from one with a helper: that helper is the parent's, not ours to use or
    to stop (joining it fails); the lock may have been held by a thread the child does not have."""
    global _lock, _pool
    _lock, _pool = threading.Lock(), None


os.register_at_fork(after_in_child=_forget_inherited)


def parse_batch(raws: list[bytes | None], limits: Limits, helpdesk: Helpdesk | None = None) -> list[Message | None]:
    """What the filing thread would compute for each message (None for a missing one, or where
    parsing raised: the filing thread then parses it again itself and quarantines it); given the
    ``[helpdesk]`` settings, also what it would work out from them (kept under keys that name them)."""
    out: list[Message | None] = []
    for raw in raws:
        try:
            message = None if raw is None else strip_imitations(parse(raw, limits))
            if message is not None:  # pure results the filing thread would compute next (kept in memo)
                guessed_language(message)
                code_candidates(message)
                if helpdesk is not None:
                    ticket_ids_for(message, helpdesk)
                    no_autoreply_reason(message, helpdesk.address, helpdesk.message_id_domain)
            out.append(message)
        except Exception:  # noqa: BLE001 - reported where it counts: the filing thread parses it again
            out.append(None)
    return out


def parse_ahead(raws: list[bytes | None], limits: Limits,
                helpdesk: Helpdesk | None = None) -> Future[list[Message | None]] | None:
    """Start parsing ``raws`` in the helper; None when no helper can run (parse them inline)."""
    return _submit(parse_batch, raws, limits, helpdesk)


def parsed(future: Future[list[Message | None]] | None, count: int) -> list[Message | None]:
    """The helper's answer for a batch of ``count``, or ``count`` Nones if it has none."""
    return _answer(future) or [None] * count


# -- composing ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Failed:
    """Composing a mail raised (a template that fails at run time): what the filing thread reports."""

    error: str


@dataclass(frozen=True)
class Unwritten:
    """Writing a composed mail to the outbox failed (disk full, I/O error): the batch must wait."""

    error: str


Composed = bytes | Queued | Unsendable | Failed | Unwritten


def compose_batch(config: Config, templates: Templates, jobs: list[MailJob],
                  outbox: Outbox | None = None) -> list[Composed]:
    """:func:`~helpdeskd.mailout.compose_job` for each job — or, given ``outbox``,
    :func:`~helpdeskd.mailout.write_job`; an exception becomes :class:`Failed` or :class:`Unwritten`."""
    out: list[Composed] = []
    for job in jobs:
        try:
            out.append(compose_job(config, templates, job) if outbox is None else
                       write_job(config, templates, outbox, job))
        except OSError as exc:
            out.append(Unwritten(str(exc)))
        except Exception as exc:  # noqa: BLE001 - one job's failure, reported by the filing thread
            out.append(Failed(f"{type(exc).__name__}: {exc}"))
    return out


_snapshot: tuple[Config, Templates, str, bytes] | None = None  # main side: the last one pickled
_current: tuple[str, Config, Templates, Outbox] | None = None  # helper side: the last snapshot unpickled


def compose_ahead(config: Config, templates: Templates, jobs: list[MailJob],
                  write: bool) -> Future[list[Composed]] | None:
    """Start composing ``jobs`` in the helper; None when no helper can run (compose them inline).
    ``write``: the helper also puts them in the outbox, without fsync (for a caller whose group
    commit is a syncfs, and who tells it of these files: ``Syncer.written_elsewhere``).

    The configuration and templates travel with every batch as one pickled snapshot (~25 KB,
    made once per reload); the helper unpickles it only when it changed."""
    global _snapshot
    with _lock:
        if _snapshot is None or _snapshot[0] is not config or _snapshot[1] is not templates:  # a reload
            blob = pickle.dumps((config, templates), pickle.HIGHEST_PROTOCOL)
            _snapshot = (config, templates, hashlib.sha256(blob).hexdigest(), blob)
        _, _, token, blob = _snapshot
    return _submit(_compose_in_helper, token, blob, jobs, write)


def _compose_in_helper(token: str, blob: bytes, jobs: list[MailJob], write: bool) -> list[Composed]:
    global _current
    if _current is None or _current[0] != token:
        config, templates = pickle.loads(blob)
        _current = (token, config, templates, Outbox(config.helpdesk.state_dir, Syncer(enabled=False)))
    _, config, templates, outbox = _current
    return compose_batch(config, templates, jobs, outbox if write else None)


def composed(future: Future[list[Composed]] | None, config: Config, templates: Templates,
             jobs: list[MailJob]) -> list[Composed]:
    """The helper's answer for ``jobs``, or the same computed here when it has none."""
    return _answer(future) or compose_batch(config, templates, jobs)


# -- the pool -------------------------------------------------------------------------------------
def _submit(function, *args) -> Future | None:
    global _pool
    # Processes started now (the forkserver, its resource tracker, the helper) inherit this thread's
    # signal mask: a hangup sent to the whole process group leaves them alone (they end with the
    # daemon, not with its terminal). They ignore SIGINT themselves (the helper: see _exit_with).
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGHUP})
    try:
        with _lock:
            try:
                with _quiet_resource_tracker():  # started now: with the pool's first semaphore, or its first helper
                    if _pool is None:
                        _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"),
                                                    initializer=_exit_with, initargs=(os.getpid(),))
                    future = _pool.submit(function, *args)
            except (BrokenProcessPool, OSError, RuntimeError) as exc:
                _forget(exc, _pool)
                return None
            future.pool = _pool  # type: ignore[attr-defined]  # which helper to drop if this one fails
            return future
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)


_TRACKER_WARNINGS = "ignore:resource_tracker:UserWarning"


@contextmanager
def _quiet_resource_tracker() -> Iterator[None]:
    """multiprocessing's resource tracker (a process started with the pool, sharing the daemon's
    stderr) warns in plain text, when the daemon was killed, that it cleans up the pool's leaked
    semaphores; the daemon's stderr is the journal, JSON lines only. It is started with the daemon's
    ``-W`` options (``sys.warnoptions``): ignoring those warnings there is the one way in. Only for
    processes started inside the block: the list is left as it was."""
    added = _TRACKER_WARNINGS not in sys.warnoptions
    if added:
        sys.warnoptions.append(_TRACKER_WARNINGS)
    try:
        yield
    finally:
        if added:
            sys.warnoptions.remove(_TRACKER_WARNINGS)


def _answer(future: Future | None, seconds: float | None = None) -> list | None:
    """A future's result; None when there is no future or the helper failed (killed, OOM, hung, or
    anything else that kept it from answering: arguments it could not be sent, say): the caller then
    does the same work itself, where a real error shows as it would have without the helper."""
    if future is None:
        return None
    seconds = ANSWER_SECONDS if seconds is None else seconds
    try:
        return future.result(timeout=seconds)
    except FutureTimeout:
        failure: BaseException = TimeoutError(f"no answer within {seconds:.0f} s")
    except Exception as exc:  # noqa: BLE001 - see above: the work is redone in the daemon
        failure = exc
    with _lock:
        _forget(failure, future.pool)  # type: ignore[attr-defined]
    return None


def _exit_with(daemon: int) -> None:
    """In the helper: exit as soon as the daemon process ``daemon`` has (even killed with -9, which
    leaves the helper's pipes open: their other copies live in the forkserver), and only then — a
    Ctrl-C or hangup sent to the daemon's process group is the daemon's to handle."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    try:
        watched: int | None = os.pidfd_open(daemon)  # readable once the process has exited (Linux 5.3)
    except (AttributeError, OSError):
        watched = None

    def watch() -> None:
        if watched is not None:
            select.select([watched], [], [])
        else:
            while pid_alive(daemon):
                time.sleep(1)
        os._exit(0)

    threading.Thread(target=watch, name="exit-with-daemon", daemon=True).start()


def _forget(exc: BaseException, pool: ProcessPoolExecutor | None) -> None:
    """Drop ``pool``, which failed, unless it was replaced already; the next batch starts a new one.
    Caller holds ``_lock``."""
    global _pool
    if pool is not _pool:
        return  # dropped already (its other unanswered work failed with it)
    log.warning("helper_unavailable", error=f"{type(exc).__name__}: {exc}".rstrip(": "),
                fallback="the work is done in the daemon")
    if pool is not None:
        _pool = None
        for process in list((pool._processes or {}).values()):  # a hung helper would never take the hint
            process.kill()
        pool.shutdown(wait=False, cancel_futures=True)


def start() -> bool:
    """Start the helper now, not with the first batch, and wait until it answers (a new process
    and its imports: ~0.2 s here). The daemon does this at start when a POP3 mailbox may use it.
    False when no helper can run (the work is then done in the daemon, as always)."""
    return _answer(_submit(_ready), START_SECONDS) is not None


def _ready() -> list:
    return []


def shutdown(grace: float = 5.0) -> None:
    """Stop the helper (daemon exit; tests): let it end on its own for ``grace`` seconds, then kill it
    (a hung helper must not keep the daemon from exiting)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is None:
        return
    processes = list((pool._processes or {}).values())
    pool.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + grace
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))
        if process.is_alive():
            process.kill()
