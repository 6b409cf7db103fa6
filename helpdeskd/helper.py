"""A helper process for the pure work around filing: parsing mail, and composing the mail we send.

Python runs one thread at a time, and these two are about two fifths of what filing a message costs;
in a process of their own they run on another core. The POP3 pipeline hands each batch to
:func:`parse_ahead` as soon as it is retrieved and takes the parsed messages back when it files that
batch; the mail that filing asks for (:class:`~helpdeskd.mailout.MailJob`) goes to
:func:`compose_ahead` and is queued, by the filing thread, while the next batch is filed.

The helper only ever computes; it writes nothing and decides nothing, so losing it loses nothing:
when it cannot start or dies, the batch is parsed in the filing thread as before (one warning per
failure) and the next batch tries a new helper. It is a child of a ``forkserver`` (a clean,
single-threaded process started once), never a fork of the daemon's threads, and it exits with the
daemon (its request pipe closes).
"""

from __future__ import annotations

import hashlib
import multiprocessing
import pickle
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

from .decide import strip_imitations
from .identity import code_candidates
from .lang import guessed_language
from .logs import get
from .mailout import MailJob, Queued, Unsendable, compose_job, write_job
from .message import Message
from .parse import parse
from .settings import Config, Limits
from .store.fsutil import Syncer
from .store.outbox import Outbox
from .templates import Templates

log = get("helper")

_lock = threading.Lock()
_pool: ProcessPoolExecutor | None = None


def parse_batch(raws: list[bytes | None], limits: Limits) -> list[Message | None]:
    """What the filing thread would compute for each message (None for a missing one, or where
    parsing raised: the filing thread then parses it again itself and quarantines it)."""
    out: list[Message | None] = []
    for raw in raws:
        try:
            message = None if raw is None else strip_imitations(parse(raw, limits))
            if message is not None:  # pure results the filing thread would compute next (kept in memo)
                guessed_language(message)
                code_candidates(message)
            out.append(message)
        except Exception:  # noqa: BLE001 - reported where it counts: the filing thread parses it again
            out.append(None)
    return out


def parse_ahead(raws: list[bytes | None], limits: Limits) -> Future[list[Message | None]] | None:
    """Start parsing ``raws`` in the helper; None when no helper can run (parse them inline)."""
    return _submit(parse_batch, raws, limits)


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


_snapshots: dict[tuple[int, int], tuple[Config, Templates, str, bytes]] = {}  # main side, by identity
_current: tuple[str, Config, Templates, Outbox] | None = None  # helper side: the last snapshot unpickled


def compose_ahead(config: Config, templates: Templates, jobs: list[MailJob],
                  write: bool) -> Future[list[Composed]] | None:
    """Start composing ``jobs`` in the helper; None when no helper can run (compose them inline).
    ``write``: the helper also puts them in the outbox (without fsync: only for a caller whose next
    commit makes the whole file system durable, a syncfs group commit).

    The configuration and templates travel with every batch as one pickled snapshot (~25 KB,
    made once per reload); the helper unpickles it only when it changed."""
    with _lock:
        key = (id(config), id(templates))
        if key not in _snapshots:
            _snapshots.clear()  # one generation at a time: a reload replaces it
            blob = pickle.dumps((config, templates), pickle.HIGHEST_PROTOCOL)
            _snapshots[key] = (config, templates, hashlib.sha256(blob).hexdigest(), blob)
        _, _, token, blob = _snapshots[key]
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
    with _lock:
        try:
            if _pool is None:
                _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
            future = _pool.submit(function, *args)
        except (BrokenProcessPool, OSError, RuntimeError) as exc:
            _forget(exc, _pool)
            return None
        future.pool = _pool  # type: ignore[attr-defined]  # which helper to drop if this one fails
        return future


def _answer(future: Future | None) -> list | None:
    """A future's result; None when there is no future or the helper failed (killed, OOM, or
    anything else: the caller then does the same work itself, where a real error shows as usual)."""
    if future is None:
        return None
    try:
        return future.result()
    except Exception as exc:  # noqa: BLE001 - see above: the work is redone in this process
        with _lock:
            _forget(exc, future.pool)  # type: ignore[attr-defined]
        return None


def _forget(exc: BaseException, pool: ProcessPoolExecutor | None) -> None:
    """Drop ``pool``, which failed, unless it was replaced already; the next batch starts a new one.
    Caller holds ``_lock``."""
    global _pool
    log.warning("helper_unavailable", error=f"{type(exc).__name__}: {exc}", fallback="the work is done in the daemon")
    if pool is not None and pool is _pool:
        _pool = None
        pool.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop the helper (daemon exit; tests)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
