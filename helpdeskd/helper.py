"""A helper process that parses retrieved mail while the filing thread files the previous batch.

Parsing is pure (raw bytes in, a :class:`Message` out) and about a fifth of what filing a message
costs in Python, which runs one thread at a time: in a process of its own it runs on another core.
The POP3 pipeline hands each batch to :func:`parse_ahead` as soon as it is retrieved and takes the
parsed messages back when it files that batch.

The helper only ever computes; it writes nothing and decides nothing, so losing it loses nothing:
when it cannot start or dies, the batch is parsed in the filing thread as before (one warning per
failure) and the next batch tries a new helper. It is a child of a ``forkserver`` (a clean,
single-threaded process started once), never a fork of the daemon's threads, and it exits with the
daemon (its request pipe closes).
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool

from .decide import strip_imitations
from .identity import code_candidates
from .lang import guessed_language
from .logs import get
from .message import Message
from .parse import parse
from .settings import Limits

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
    global _pool
    with _lock:
        try:
            if _pool is None:
                _pool = ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("forkserver"))
            return _pool.submit(parse_batch, raws, limits)
        except (BrokenProcessPool, OSError, RuntimeError) as exc:
            _forget(exc)
            return None


def parsed(future: Future[list[Message | None]] | None, count: int) -> list[Message | None]:
    """The helper's answer for a batch of ``count``, or ``count`` Nones if it has none."""
    if future is None:
        return [None] * count
    try:
        return future.result()
    except (BrokenProcessPool, OSError, EOFError) as exc:  # killed (OOM, an admin): parse inline
        with _lock:
            _forget(exc)
        return [None] * count


def _forget(exc: BaseException) -> None:
    """Drop a pool that failed; the next batch starts a new one. Caller holds ``_lock``."""
    global _pool
    log.warning("helper_unavailable", error=f"{type(exc).__name__}: {exc}", fallback="parsing in the filing thread")
    pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=False, cancel_futures=True)


def shutdown() -> None:
    """Stop the helper (daemon exit; tests)."""
    global _pool
    with _lock:
        pool, _pool = _pool, None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
