"""One POP3 session: take every waiting message exactly once, in the order that cannot lose mail.

For each batch of messages::

    RETR (pipelined) → file each one durably → add their UIDLs to the ledger (one atomic write)
                     → DELE the batch (pipelined)            … and QUIT once at the end

A DELE is only a mark until QUIT succeeds (RFC 1939), and any error mid-session sends RSET then QUIT,
so a message is either filed and then deleted, or still on the server for the next poll. Filing is
idempotent by message key, so a message downloaded again after a crash never becomes a second
ticket; the ledger makes the next session delete (or, when mail is kept, skip) it without RETR.

Network, filing and durability overlap: while one batch is being filed (in a filer thread, under the
daemon's filing lock, without fsync), the session thread already retrieves the next one and a committer
thread makes the previous one durable (one group commit, see ``store/fsutil.py``) and writes its
ledger; only then is that batch DELE'd. At most two batches of mail are in memory (three with the
helper: see below).

With the helper process (``[mail_gateway] helper_process``, see ``helper.py``), it parses each batch
as soon as it is retrieved, and composes the mail that filing a batch asks for while the filer files
the next one; the filer then queues that mail, and the commit after it completes the earlier batch.
So a batch is ledgered and DELE'd one commit later: once its tickets and its outgoing mail are durable.
The filer is what sets the pace; where it would wait for the helper — the session's first batch being
parsed, its last batch's mail being composed — it does a share of that work itself.

Oversized messages (LIST size over the limit) are never downloaded whole: their headers (TOP) become
a ticket with a note, or are kept in ``refused/`` with an answer to the sender (``oversized``).
Servers without UIDL: the ledger holds message keys instead (``key:<key>``), which can only be
known after RETR — such a mailbox is downloaded whole on each poll when mail is kept on the server.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from . import helper, logs
from .cycle import Outcome, Services, file_safely, quarantine
from .errors import PermanentError, TransientError
from .intake import PollResult, log_outcome
from .lang import choose_language
from .logs import get
from .loops import no_autoreply_reason, rate_limit_reason
from .mailjob import MailJob, Occasion
from .mailout import collecting, finish_job, queue_refusal, recent_autoreplies
from .message import Inbound, Message
from .parse import parse
from .settings import LANGUAGES, Mailbox, Pop3
from .sources.pop3 import Listed, Pop3Session, connect
from .store.fsutil import Touched
from .store.ledger import Ledger

log = get("pop3")
T = TypeVar("T")
Locked = Callable[[Callable[[], T]], T]  # runs a filing step under the daemon's filing lock


def run_directly(step: Callable[[], T]) -> T:
    """The lock runner for single-threaded callers (``helpdeskd once``, tests)."""
    return step()


@dataclass
class Pop3Result(PollResult):
    more: bool = False  # a session bound stopped the poll with messages left: poll again soon
    permanent: bool = False  # the error needs an admin (password, certificate), not just time


@dataclass
class _Batch:
    items: list[Listed]
    raws: list[bytes | None]
    parsing: Future[list[Message | None]] | None = None  # the helper process at work on ``raws[inline:]``
    inline: int = 0  # the first messages, which the filer parses itself (see _pipeline)
    last: bool = False  # the session's last batch


@dataclass
class _Filed:
    """Messages filed (with their upstream ids) whose outgoing mail is being composed by the helper;
    they count as filed once that mail is queued and a commit has made it durable."""

    entries: list[tuple[Listed, str]]
    jobs: list[tuple[MailJob, Inbound]]
    composing: Future[list[helper.Composed]] | None = None
    last: bool = False  # the session's last batch: the filer composes part of its mail (``kept``) itself
    kept: int = 0


def poll_pop3(mailbox: Mailbox, svc: Services, locked: Locked = run_directly,
              should_stop: Callable[[], bool] = lambda: False) -> Pop3Result:
    """One bounded session on ``mailbox``. Never raises Transient/PermanentError: they end up in ``error``."""
    result = Pop3Result()
    try:
        session = connect(mailbox.pop3)  # type: ignore[arg-type]
        _session(session, mailbox, svc, locked, should_stop, result)
    except (TransientError, PermanentError) as exc:
        result.error, result.permanent = str(exc), isinstance(exc, PermanentError)
    return result


def poll_pop3_fully(mailbox: Mailbox, svc: Services, should_stop: Callable[[], bool] = lambda: False) -> Pop3Result:
    """Bounded sessions one after another until the mailbox is done or one fails (``helpdeskd once``)."""
    total = Pop3Result(more=True)
    while total.more and total.error is None and not should_stop():
        result = poll_pop3(mailbox, svc, should_stop=should_stop)
        for action, count in result.counts.items():
            total.counts[action] = total.counts.get(action, 0) + count
        total.more, total.error, total.permanent = result.more, result.error, result.permanent
    return total


def _session(session: Pop3Session, mailbox: Mailbox, svc: Services, locked: Locked,
             should_stop: Callable[[], bool], result: Pop3Result) -> None:
    """Work through the mailbox, then QUIT; on any failure RSET+QUIT and re-raise."""
    try:
        _work(session, mailbox, svc, locked, should_stop, result)
    except BaseException:
        session.abort()
        raise
    session.quit()


def _work(session: Pop3Session, mailbox: Mailbox, svc: Services, locked: Locked,
          should_stop: Callable[[], bool], result: Pop3Result) -> None:
    cfg: Pop3 = mailbox.pop3  # type: ignore[assignment]
    listed, has_uidl = session.listing()
    ledger = Ledger(svc.config.helpdesk.state_dir, mailbox.name)
    if has_uidl:
        uids = [m.uid for m in listed if m.uid]
        ledger.prune([*uids, *(f"kept:{uid}" for uid in uids)])
        listed = _forget_known(session, listed, ledger, cfg, result)
    limit = cfg.max_message_bytes or svc.config.limits.max_message_bytes
    small = [m for m in listed if m.size <= limit]
    for item in (m for m in listed if m.size > limit):
        _oversized(session, item, limit, mailbox, svc, ledger, locked, result)
    _pipeline(session, small, limit, mailbox, svc, ledger, locked, should_stop, result)
    if not has_uidl and not result.more and result.error is None:
        ledger.prune(ledger.seen)  # every message was downloaded: keys not seen are gone upstream
    ledger.save()


def _forget_known(session: Pop3Session, listed: list[Listed], ledger: Ledger, cfg: Pop3,
                  result: Pop3Result) -> list[Listed]:
    """Messages already filed are skipped (kept) or deleted without being downloaded again.

    ``kept:<uid>`` marks an oversized message handled but deliberately left on the server.
    """
    listed = [m for m in listed if f"kept:{m.uid}" not in ledger]
    known = [m for m in listed if m.uid in ledger]
    if known and not cfg.keep:
        ledger.save()  # the pruned list first, so the ledger never outgrows the mailbox
        session.delete([m.number for m in known])
        result.counts["deleted_known"] = len(known)
    return [m for m in listed if m.uid not in ledger]


# ----------------------------------------------------------------------------- the batch pipeline


def _pipeline(session: Pop3Session, items: list[Listed], limit: int, mailbox: Mailbox, svc: Services,
              ledger: Ledger, locked: Locked, should_stop: Callable[[], bool], result: Pop3Result) -> None:
    """Three stages in three threads: this one RETRs batch k+1 while the filer files batch k and the
    committer makes batch k-1 durable (then ledgers it); a batch is DELE'd once its commit is done."""
    cfg: Pop3 = mailbox.pop3  # type: ignore[assignment]
    deadline = time.monotonic() + cfg.max_session_seconds
    filer = ThreadPoolExecutor(1, thread_name_prefix=f"file-{mailbox.name}")
    committer = ThreadPoolExecutor(1, thread_name_prefix=f"commit-{mailbox.name}")
    filing: Future[Future[list[int]]] | None = None
    commits: deque[Future[list[int]]] = deque()  # in batch order: the committer is one thread
    pending: list[_Filed] = []  # the filer's: a filed batch whose mail the helper is composing
    file = functools.partial(_file_batch, mailbox=mailbox, svc=svc, ledger=ledger, locked=locked, result=result,
                             committer=committer, pending=pending)
    try:
        batches = _batches(items, cfg, limit, result)
        for number, batch_items in enumerate(batches, start=1):
            if should_stop() or time.monotonic() > deadline:
                result.more = True
                break
            batch = _Batch(batch_items, session.retrieve([m.number for m in batch_items], limit),
                           last=number == len(batches))
            if svc.config.mail_gateway.helper_process:
                # The filer has nothing to do before the first batch is parsed: it parses its first
                # quarter itself meanwhile (and starts filing at once) while the helper does the rest.
                batch.inline = len(batch.raws) // 4 if number == 1 else 0
                batch.parsing = helper.parse_ahead(batch.raws[batch.inline:], svc.config.limits,
                                                   svc.config.helpdesk)
            if filing is not None:
                commits.append(filing.result())
                filing = None
            if should_stop():  # asked while retrieving or filing: this batch stays on the server
                result.more = True
                break
            filing = filer.submit(file, batch)
            while commits and commits[0].done():
                _delete(session, commits.popleft().result(), cfg)
        if filing is not None:
            commits.append(filing.result())
        if pending:  # (the filer is idle now) the last batch's mail, then its commit
            commits.append(filer.submit(file, None).result())
        while commits:
            _delete(session, commits.popleft().result(), cfg)
    finally:  # after an error too: the filing and commits in hand end before the session is aborted
        filer.shutdown(wait=True)  # first: a filing ends by handing its commit to the committer
        committer.shutdown(wait=True)


def _batches(items: list[Listed], cfg: Pop3, limit: int, result: Pop3Result) -> list[list[Listed]]:
    """Groups of at most ``cfg.batch`` messages and ~max(limit, 8 MiB) bytes, up to the session's count."""
    budget, batches, current, size = max(limit, 8 * 1024 * 1024), [], [], 0
    if len(items) > cfg.max_messages_per_session:
        items, result.more = items[:cfg.max_messages_per_session], True
    for item in items:
        if current and (len(current) >= cfg.batch or size + item.size > budget):
            batches.append(current)
            current, size = [], 0
        current.append(item)
        size += item.size
    return batches + [current] if current else batches


def _delete(session: Pop3Session, numbers: list[int], cfg: Pop3) -> None:
    """Mark a durable, ledgered batch deleted upstream (unless mail is kept on the server)."""
    if numbers and not cfg.keep:
        session.delete(numbers)


def _file_batch(batch: _Batch | None, *, mailbox: Mailbox, svc: Services, ledger: Ledger, locked: Locked,
                result: Pop3Result, committer: ThreadPoolExecutor, pending: list[_Filed]) -> Future[list[int]]:
    """File each retrieved message (none: ``batch`` None ends the session), queue the mail of the
    batch before (``pending``), and hand the commit to the committer; its future gives the numbers
    to DELE once they are durable and in the ledger.

    On a TransientError (or an OSError) the messages filed before it are still completed, committed
    and ledgered, then the error propagates as a TransientError.
    """
    done: list[tuple[Listed, str]] = []
    try:
        with logs.deferred():  # a line per message, written together
            touched, failure = locked(lambda: _file_locked(batch, mailbox, svc, ledger, result, pending, done))
    except OSError as exc:  # taking the write lock (or appending rate-limit lines left at the end: none, usually)
        raise TransientError(f"storage failed: {exc}") from exc
    committing = committer.submit(_commit, done, touched, svc, ledger)
    if failure is not None:
        committing.result()
        raise failure
    return committing


def _file_locked(batch: _Batch | None, mailbox: Mailbox, svc: Services, ledger: Ledger, result: Pop3Result,
                 pending: list[_Filed], done: list[tuple[Listed, str]]) -> tuple[Touched, TransientError | None]:
    """Under the write lock: file the batch, then queue the mail of the batch before (composed in
    the meantime); ``done`` learns of the messages complete once this is committed.

    Returns what was written, for the commit, and the failure that ended the work early, if any.
    Without fsync here when commits may overlap the next batch's writes (syncfs); otherwise the
    commit happens now, before the lock is released (file-by-file fsyncs sync whatever a file holds).
    """
    sync = svc.store.sync
    current = _Filed([], [], last=batch is not None and batch.last)
    with svc.write_lock():
        with sync.collect() as touched:
            try:
                with svc.sent.together():  # the batch's rate-limit lines in one append
                    failure = _file_and_queue(batch, mailbox, svc, ledger, result, pending, current, done)
            except BaseException:
                touched.close()  # a bug, or the rate-limit log unwritable: nothing of this batch will
                raise            # be committed or deleted
        if not sync.commits_may_overlap:
            try:
                sync.commit(touched)
            except OSError as exc:
                done.clear()  # none of it is durable
                return touched, TransientError(f"storage failed: {exc}")
    return touched, failure


def _file_and_queue(batch: _Batch | None, mailbox: Mailbox, svc: Services, ledger: Ledger, result: Pop3Result,
                    pending: list[_Filed], current: _Filed, done: list[tuple[Listed, str]]) -> TransientError | None:
    """:func:`_file_locked`'s work: the failure that ended it early, if any."""
    failure = None
    try:
        if batch is not None:
            earlier = frozenset(job.out_id for filed in pending for job, _ in filed.jobs)
            _file_each(batch, mailbox, svc, ledger, result, current, earlier)
    except TransientError as exc:
        failure = exc
    except OSError as exc:
        failure = TransientError(f"storage failed: {exc}")
    return _queue_mail(pending, current, batch is None or failure is not None, svc, done) or failure


def _file_each(batch: _Batch, mailbox: Mailbox, svc: Services, ledger: Ledger, result: Pop3Result,
               current: _Filed, earlier: frozenset[str]) -> None:
    """File each message; with the helper, the mail each asks for is collected in ``current.jobs``
    (not what the batch before asked for already: ``earlier``, its jobs' outbox ids)."""
    messages = _parsed(batch)
    jobs: list[MailJob] = []  # the whole batch's: a second copy of a message asks for nothing more
    collect = collecting(jobs, earlier) if svc.config.mail_gateway.helper_process else contextlib.nullcontext()
    with svc.store.ids_reserved(len(batch.items)), collect:
        for item, raw, message in zip(batch.items, batch.raws, messages):
            if raw is None:
                log.warning("pop3_retr_refused", mailbox=mailbox.name, uid=item.uid, number=item.number)
                continue
            upstream_id = item.uid or f"key:{(message or parse(raw, svc.config.limits)).key}"
            if upstream_id not in ledger:  # only without UIDL can a filed message come back here
                inbound, asked = Inbound(mailbox.name, upstream_id, raw), len(jobs)
                try:
                    _file_one(inbound, mailbox, svc, result, message)
                finally:  # what it asked for before an error is queued all the same, as it would be inline
                    current.jobs.extend((job, inbound) for job in jobs[asked:])
            current.entries.append((item, upstream_id))


def _parsed(batch: _Batch) -> Iterator[Message | None]:
    """What the helper parsed for each message (None: the filer parses it), waited for only once
    the messages the filer parses itself are filed."""
    yield from [None] * batch.inline
    yield from helper.parsed(batch.parsing, len(batch.raws) - batch.inline)


def _queue_mail(pending: list[_Filed], current: _Filed, now: bool, svc: Services,
                done: list[tuple[Listed, str]]) -> TransientError | None:
    """Queue the mail of the batch filed before (the helper composed it meanwhile), then hand this
    batch's to the helper — or, ``now`` (last batch, or an error), compose and queue it here too.
    ``done`` gets the messages whose mail is queued; returns the failure that stopped it, if any."""
    try:
        if pending:  # (one batch at most)
            _finish(pending[0], svc)
            done.extend(pending.pop().entries)
        svc.sent.flush()  # this batch's rate-limit lines, before any of its mail is written
        if current.jobs and not now:
            jobs = [job for job, _ in current.jobs]
            # After the last batch the filer would only wait for its mail: it composes half itself then.
            current.kept = len(jobs) // 2 if current.last else 0
            current.composing = helper.compose_ahead(svc.config, svc.templates, jobs[:len(jobs) - current.kept],
                                                     write=svc.store.sync.commits_may_overlap)
            pending.append(current)
        else:
            _finish(current, svc)
            done.extend(current.entries)
    except TransientError as exc:
        return exc
    except OSError as exc:
        return TransientError(f"storage failed: {exc}")
    return None


def _finish(filed: _Filed, svc: Services) -> None:
    """Queue (or record as queued) what the helper composed for ``filed`` (composed here if it could not),
    and what it left to the filer (``filed.kept``: composed first, while the helper finishes)."""
    jobs = [job for job, _ in filed.jobs]
    share = len(jobs) - filed.kept
    kept = helper.compose_batch(svc.config, svc.templates, jobs[share:]) if filed.kept else []
    answers = helper.composed(filed.composing, svc.config, svc.templates, jobs[:share]) + kept
    unwritten = None
    with svc.store.unit():
        for (job, inbound), answer in zip(filed.jobs, answers):
            if isinstance(answer, helper.Failed):  # as inline, where it would have quarantined the message
                log.error("mail_not_composed", ticket=job.ticket.id, template=job.send.template, error=answer.error)
                quarantine(inbound, svc, f"composing {job.send.template} for ticket #{job.ticket.id}: {answer.error}")
            elif isinstance(answer, helper.Unwritten):
                unwritten = answer.error
            else:
                finish_job(svc, job, answer, counted=True)
    if unwritten is not None:  # the batch stays upstream; filed again, its mail is queued then
        raise TransientError(f"storage failed: {unwritten}")


def _commit(filed: list[tuple[Listed, str]], touched: Touched, svc: Services, ledger: Ledger) -> list[int]:
    """Make a filed batch durable, then record it in the ledger; returns the numbers that may go.

    If the commit fails, nothing of the batch is ledgered or deleted, and no later commit succeeds
    until helpdeskd restarts (see ``store/fsutil.py``); then it is filed again (idempotently)."""
    try:
        svc.store.sync.commit(touched)
        ledger.add(upstream_id for _, upstream_id in filed)
        ledger.save()
    except OSError as exc:
        raise TransientError(f"storage failed: {exc}") from exc
    return [item.number for item, _ in filed]


def _file_one(inbound: Inbound, mailbox: Mailbox, svc: Services, result: Pop3Result,
              message: Message | None = None) -> Outcome:
    started = time.monotonic()
    outcome = file_safely(inbound, svc, mailbox, parsed=message)
    result.add(outcome)
    log_outcome(outcome, mailbox.name, time.monotonic() - started)
    return outcome


# ----------------------------------------------------------------------------- oversized mail


def _oversized(session: Pop3Session, item: Listed, limit: int, mailbox: Mailbox, svc: Services,
               ledger: Ledger, locked: Locked, result: Pop3Result) -> None:
    """Headers only (TOP): a ticket with a note, or kept in ``refused/`` and the sender told; never lost."""
    cfg: Pop3 = mailbox.pop3  # type: ignore[assignment]
    headers = session.headers(item.number, svc.config.limits.max_header_bytes)
    if headers is None:
        log.warning("pop3_top_refused", mailbox=mailbox.name, uid=item.uid, size=item.size)
        return
    deleting = cfg.delete_oversized and not cfg.keep
    upstream_id = item.uid or f"key:oversized:{hashlib.sha256(headers).hexdigest()[:32]}"
    if upstream_id in ledger:  # only without UIDL: handled in an earlier session
        ledger.add([upstream_id])  # seen again, so it is not pruned
        return
    note = _too_large_note(item.size, limit, deleting)
    handle = _oversized_ticket if cfg.oversized == "ticket" else _oversized_reply
    locked(lambda: handle(headers, note, upstream_id, mailbox, svc, result))
    ledger.add([upstream_id if deleting or not item.uid else f"kept:{upstream_id}"])
    ledger.save()
    if deleting:
        session.delete([item.number])


def _too_large_note(size: int, limit: int, deleting: bool) -> str:
    where = "deleted from the mail server" if deleting else "left on the mail server"
    donde = "se ha borrado del servidor de correo" if deleting else "sigue en el servidor de correo"
    return (f"This message ({size} bytes) is larger than the limit of {limit} bytes and was not downloaded; "
            f"it was {where}. Only its headers were kept.\n"
            f"Este mensaje ({size} bytes) supera el límite de {limit} bytes y no se ha descargado; "
            f"{donde}. Solo se han conservado sus cabeceras.\n")


def _oversized_ticket(headers: bytes, note: str, upstream_id: str, mailbox: Mailbox, svc: Services,
                      result: Pop3Result) -> None:
    """File the original headers with the note as a plain-text body: a ticket staff can act on."""
    kept = [line for line in _header_lines(headers) if not line.lower().startswith((b"content-", b"mime-version"))]
    body = note.replace("\n", "\r\n").encode("utf-8")
    raw = b"".join(kept) + (b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
                            b"Content-Transfer-Encoding: 8bit\r\n\r\n") + body
    with svc.write_lock(), svc.batch():
        _file_one(Inbound(mailbox.name, upstream_id, raw), mailbox, svc, result)


def _header_lines(headers: bytes) -> list[bytes]:
    """Header fields with their continuation lines folded into them, each ending in CRLF."""
    fields: list[bytes] = []
    for line in headers.replace(b"\r\n", b"\n").split(b"\n"):
        if not line.strip():
            continue
        if line[:1] in (b" ", b"\t") and fields:
            fields[-1] += line + b"\r\n"
        else:
            fields.append(line + b"\r\n")
    return fields


def _oversized_reply(headers: bytes, note: str, upstream_id: str, mailbox: Mailbox, svc: Services,
                     result: Pop3Result) -> None:
    """Keep the headers in ``refused/`` and answer with the ``refused`` template, unless loops forbid it."""
    message = parse(headers, svc.config.limits)
    with svc.write_lock(), svc.batch():
        svc.refused.put(message.key, headers, note.splitlines()[0], f"{mailbox.name}:{upstream_id}")
        queued = _answer_too_large(message, note.splitlines()[0], svc)
    result.counts["oversized"] = result.counts.get("oversized", 0) + 1
    log.info("message", source=mailbox.name, message_id=message.message_id, action="oversized",
             reply="refused" if queued else None, detail=note.splitlines()[0])


def _answer_too_large(message, reason: str, svc: Services) -> bool:
    """The ``refused`` answer for mail too large to file, unless loop rules or rate limits forbid it."""
    hd = svc.config.helpdesk
    sender = message.sender
    if sender is None or no_autoreply_reason(message, hd.address, hd.message_id_domain):
        return False
    per, in_all = recent_autoreplies([sender.addr], svc)
    if rate_limit_reason(per.get(sender.addr, 0), in_all, svc.config.autoreply):
        return False
    lang = choose_language(message, LANGUAGES, hd.default_language, hd.detect_language)
    occasion = Occasion(key=f"{message.key}:too_large", sender=sender.addr, sender_name=sender.name, language=lang,
                        in_reply_to=message.message_id, references=message.references)
    return queue_refusal(svc, "refused", occasion, message.subject, reason, "too_large")
