"""The helper process that parses retrieved mail beside the filing thread (helpdeskd.helper)."""

from __future__ import annotations

import os
import signal
import time
from dataclasses import replace

import pytest

from helpdeskd import helper
from helpdeskd.decide import strip_imitations
from helpdeskd.gateway import poll_pop3
from helpdeskd.identity import code_candidates
from helpdeskd.lang import guessed_language
from helpdeskd.message import Inbound
from helpdeskd.parse import parse
from helpdeskd.settings import Limits

from conftest import mail
from test_pop3 import Box, answers, many, services, tickets, with_helper

SPANISH = mail(subject="No puedo enviar correo", body="Hola, desde ayer no puedo enviar correo. Mi código es ABCD-EFGH.",
               message_id="<es1@cliente.es>")


@pytest.fixture(autouse=True)
def fresh_helper():
    helper.shutdown()
    yield
    helper.shutdown()


def test_the_helper_computes_what_the_filing_thread_would():
    raws = [SPANISH, None, mail(subject="Hello", body="Hello, my mail account does not work, please help. Thanks")]
    future = helper.parse_ahead(raws, Limits())
    assert future is not None
    got = helper.parsed(future, len(raws))
    assert got[1] is None
    for raw, message in zip((raws[0], raws[2]), (got[0], got[2])):
        assert message == strip_imitations(parse(raw, Limits()))
    # pure results computed there travel with the value, so the filing thread does not redo them
    assert got[0].memo == {"language": "es", "codes": ("ABCD-EFGH",)}
    assert got[2].memo["language"] == "en"
    assert guessed_language(got[0]) == "es" and code_candidates(got[0]) == ("ABCD-EFGH",)


def test_the_helper_works_out_what_the_helpdesk_settings_decide_and_keys_it_by_them(tmp_path):
    from helpdeskd.decide import wanted_ticket_ids
    from helpdeskd.loops import no_autoreply_reason

    from conftest import make_config

    config = make_config(tmp_path)
    hd = config.helpdesk
    reply = mail(subject="Re: [Soporte #12] Mi sitio", extra="Auto-Submitted: auto-replied")
    [got] = helper.parsed(helper.parse_ahead([reply], Limits(), hd), 1)
    fresh = strip_imitations(parse(reply, Limits()))
    assert got.memo[("ticket_ids", hd.message_id_domain, hd.address, hd.subject_tag)] == (12,)
    assert got.memo[("no_autoreply", hd.address, hd.message_id_domain)] == "Auto-Submitted: auto-replied"
    assert wanted_ticket_ids(got, config) == wanted_ticket_ids(fresh, config) == [12]
    assert no_autoreply_reason(got, hd.address, hd.message_id_domain) == \
        no_autoreply_reason(fresh, hd.address, hd.message_id_domain)
    # other settings (a reload in between): worked out again, not taken from the helper's answer
    other = replace(config, helpdesk=replace(hd, subject_tag="[Help #{id}]"))
    assert wanted_ticket_ids(got, other) == []


def test_a_message_the_helper_cannot_parse_is_left_to_the_filing_thread(monkeypatch):
    def broken(raw, limits):
        raise RuntimeError("parser bug")

    monkeypatch.setattr(helper, "parse", broken)  # parse_batch as run inline; the child has the real one
    assert helper.parse_batch([SPANISH], Limits()) == [None]


def test_a_dead_helper_is_replaced_and_its_batch_parsed_inline():
    future = helper.parse_ahead([SPANISH], Limits())
    assert helper.parsed(future, 1)[0] is not None
    [pid] = list(helper._pool._processes)  # the running helper
    os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    late = helper.parse_ahead([SPANISH], Limits())  # submitted to the dead pool, or refused at once
    assert helper.parsed(late, 1) == [None]  # the filing thread parses it
    again = helper.parse_ahead([SPANISH], Limits())  # a new helper
    assert again is not None and helper.parsed(again, 1)[0] is not None
    assert list(helper._pool._processes) != [pid]


def test_a_forked_child_leaves_its_parents_helper_alone():
    """A process forked after the helper started (a test harness, a tool that forks) neither uses nor
    stops the parent's helper: shutting down in the child was an AssertionError ("can only join a
    child process"), and work submitted there would have gone to the parent's pool (there, the work
    is done inline: multiprocessing's forkserver belongs to the parent too)."""
    assert helper.parsed(helper.parse_ahead([SPANISH], Limits()), 1)[0] is not None
    [parent_helper] = list(helper._pool._processes)
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            if helper._pool is None:
                helper.shutdown()
                code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    assert list(helper._pool._processes) == [parent_helper] and _alive(parent_helper)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"
    except (FileNotFoundError, ProcessLookupError):  # (gone between the open and the read: ESRCH)
        return False


pop3 = pytest.mark.skipif(os.geteuid() != 0, reason="starting Dovecot needs root (CI runs as root)")


@pop3
@pytest.mark.parametrize("helper_process", [True, False])
def test_pop3_files_the_same_with_or_without_the_helper(dovecot, tmp_path, helper_process):
    box = Box(dovecot, tmp_path)
    box.put(*many(12), SPANISH)
    svc = services(tmp_path, box.entry(batch=4))
    svc.config = with_helper(svc.config, helper_process)
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 13} and box.left == 0
    assert len(tickets(svc)) == 13 and len(answers(svc)) == 13
    spanish = next(t for t in tickets(svc) if t.subject == "No puedo enviar correo")
    assert spanish.requester.language == "es"
    assert (helper._pool is not None) == helper_process


@pop3
def test_the_filer_parses_part_of_the_first_batch_and_composes_part_of_the_last_batchs_mail(
        dovecot, tmp_path, monkeypatch):
    """At a session's start the filer would wait for the helper to parse the first batch, and at its
    end for the helper to compose the last batch's mail: it does a share of each itself meanwhile."""
    from helpdeskd import gateway

    parse_real, compose_real, parsed, composed, inline = helper.parse_ahead, helper.compose_ahead, [], [], []
    monkeypatch.setattr(gateway.helper, "parse_ahead",
                        lambda raws, *a: parsed.append(len(raws)) or parse_real(raws, *a))
    monkeypatch.setattr(gateway.helper, "compose_ahead",
                        lambda config, templates, jobs, write: composed.append(len(jobs))
                        or compose_real(config, templates, jobs, write))
    real_batch = helper.compose_batch
    monkeypatch.setattr(gateway.helper, "compose_batch",
                        lambda config, templates, jobs, *a: inline.append(len(jobs))
                        or real_batch(config, templates, jobs, *a))
    box = Box(dovecot, tmp_path)
    box.put(*many(11), SPANISH)
    svc = services(tmp_path, box.entry(batch=8))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 12} and box.left == 0
    assert parsed == [6, 4]  # the first batch's first quarter parsed by the filer
    per_message = composed[0] // 8
    assert per_message >= 1 and composed == [8 * per_message, 2 * per_message]  # the last batch: half each
    assert [count for count in inline if count] == [2 * per_message]  # (and no other batch's)
    assert len(tickets(svc)) == 12 and len(answers(svc)) == 12
    assert sorted(event["type"] for t in tickets(svc) for event in svc.store.events(t.id)).count(
        "reply_queued") == 12 * per_message  # every mail queued and recorded once
    spanish = next(t for t in tickets(svc) if t.subject == "No puedo enviar correo")
    assert spanish.requester.language == "es"


@pop3
def test_pop3_files_everything_when_the_helper_dies_mid_session(dovecot, tmp_path, monkeypatch):
    from helpdeskd import gateway

    real, calls = helper.parse_ahead, []

    def parse_ahead(raws, limits, helpdesk=None):
        future = real(raws, limits, helpdesk)
        calls.append(future)
        if len(calls) == 2:  # the second batch's helper is killed while it is at work
            for pid in list(helper._pool._processes):
                os.kill(pid, signal.SIGKILL)
        return future

    monkeypatch.setattr(gateway.helper, "parse_ahead", parse_ahead)
    box = Box(dovecot, tmp_path)
    box.put(*many(20))
    svc = services(tmp_path, box.entry(batch=4))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 20} and box.left == 0
    assert len(tickets(svc)) == 20 and len(answers(svc)) == 20
    assert len(calls) == 5 and helper._pool is not None  # a new helper took over



@pop3
def test_a_batchs_rate_limit_lines_are_on_disk_before_the_helper_writes_its_mail(dovecot, tmp_path, monkeypatch):
    """The lines are held for one append per batch, but never past the moment its mail is handed to
    the helper: a crash after that must not leave answers in the outbox the rate limits never saw."""
    from helpdeskd import gateway

    real, checked = helper.compose_ahead, []

    def compose_ahead(config, templates, jobs, write):
        logged = (tmp_path / "state" / "autoreplies" / "all").read_text()
        checked.extend(job.out_id in logged for job in jobs if job.send.kind == "auto-reply")
        return real(config, templates, jobs, write)

    monkeypatch.setattr(gateway.helper, "compose_ahead", compose_ahead)
    box = Box(dovecot, tmp_path)
    box.put(*many(12))
    svc = services(tmp_path, box.entry(batch=4))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 12}
    assert len(checked) >= 8 and all(checked)  # the last batch's mail is composed in the daemon
    assert svc.sent.count_all(0) == 12


# ----------------------------------------------------------------------------- composing


def _jobs(svc) -> list:
    """The mail filing one new ticket asks for (acknowledgment and staff notice), collected."""
    from helpdeskd.cycle import file_safely
    from helpdeskd.mailout import collecting

    jobs: list = []
    with collecting(jobs):
        outcome = file_safely(Inbound("t", "1", SPANISH), svc)
    assert outcome.action == "new" and svc.outbox.state_of(jobs[0].out_id) is None  # not queued yet
    return jobs


def test_the_helper_composes_the_same_bytes_as_the_daemon(svc):
    from helpdeskd.mailjob import compose_job

    jobs = _jobs(svc)
    assert [job.send.template for job in jobs] == ["ack_new", "staff_new"]
    future = helper.compose_ahead(svc.config, svc.templates, jobs, write=False)
    assert future is not None
    assert helper.composed(future, svc.config, svc.templates, jobs) == [
        compose_job(svc.config, svc.templates, job) for job in jobs]


def test_the_helper_can_also_put_the_mail_in_the_outbox(svc):
    from helpdeskd.mailjob import Queued, compose_job
    from helpdeskd.mailout import finish_job

    jobs = _jobs(svc)
    expected = [compose_job(svc.config, svc.templates, job) for job in jobs]
    answers = helper.composed(helper.compose_ahead(svc.config, svc.templates, jobs, write=True),
                              svc.config, svc.templates, jobs)
    assert answers == [Queued(True), Queued(True)]
    assert [svc.outbox.state_of(job.out_id) for job in jobs] == ["new", "new"]
    entries = {e.id: e for e in svc.outbox.entries()}
    assert [entries[job.out_id].data for job in jobs] == expected
    assert entries[jobs[0].out_id].envelope["template"] == "ack_new"
    for job, answer in zip(jobs, answers):  # the daemon records them
        assert finish_job(svc, job, answer, counted=True) == 1
    assert len(list(svc.outbox.entries())) == 2
    assert len([e for e in svc.store.events(jobs[0].ticket.id) if e["type"] == "reply_queued"]) == 2


def test_collected_mail_is_queued_and_recorded_once_finished(svc):
    from helpdeskd.mailout import finish_job

    jobs = _jobs(svc)
    for job, answer in zip(jobs, helper.composed(None, svc.config, svc.templates, jobs)):
        assert finish_job(svc, job, answer) == 1
    assert sorted(e.envelope["template"] for e in svc.outbox.entries()) == ["ack_new", "staff_new"]
    events = [e for e in svc.store.events(jobs[0].ticket.id) if e["type"] == "reply_queued"]
    assert [e["ref"] for e in events] == [job.out_id for job in jobs]


def test_a_mail_that_cannot_be_written_is_noted_on_the_ticket(svc):
    from dataclasses import replace

    from helpdeskd.mailjob import Unsendable
    from helpdeskd.mailout import finish_job

    [ack, staff] = _jobs(svc)
    bad = replace(ack, person=replace(ack.person, addr="ana@cliente.es\r\nBcc: x@evil.example"))
    [answer] = helper.compose_batch(svc.config, svc.templates, [bad])
    assert isinstance(answer, Unsendable)
    assert finish_job(svc, bad, answer) == 0 and list(svc.outbox.entries()) == []
    [note] = [e for e in svc.store.events(ack.ticket.id) if e["type"] == "note"]
    assert "ack_new not sent to" in note["text"]


def test_a_template_failing_at_run_time_becomes_a_failure_to_report(svc, monkeypatch):
    from helpdeskd.errors import ConfigError

    jobs = _jobs(svc)

    def render(name, lang, queue, context):
        raise ConfigError(["template 'ack_new' (es): boom"])

    monkeypatch.setattr(svc.templates, "render", render)
    answers = helper.compose_batch(svc.config, svc.templates, jobs)
    assert all(isinstance(a, helper.Failed) and "boom" in a.error for a in answers)


@pop3
def test_pop3_quarantines_a_message_whose_mail_failed_and_queues_the_rest(dovecot, tmp_path, monkeypatch):
    from helpdeskd import gateway

    real, real_ahead = helper.composed, helper.compose_ahead

    def compose_ahead(config, templates, jobs, write):  # bytes back, so one can be made to fail here
        return real_ahead(config, templates, jobs, write=False)

    def composed(future, config, templates, jobs):
        answers = real(future, config, templates, jobs)
        return [helper.Failed("ConfigError: boom") if job.ticket.subject == "Consulta 2" and job.send.template == "ack_new"
                else answer for job, answer in zip(jobs, answers)]

    monkeypatch.setattr(gateway.helper, "composed", composed)
    monkeypatch.setattr(gateway.helper, "compose_ahead", compose_ahead)
    box = Box(dovecot, tmp_path)
    box.put(*many(6))
    svc = services(tmp_path, box.entry(batch=4))
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 6} and box.left == 0
    assert len(tickets(svc)) == 6 and len(answers(svc)) == 5  # the staff notice of "Consulta 2" went out
    [held] = list(svc.quarantine.items())
    assert "composing ack_new for ticket #3: ConfigError: boom" in held.reason


@pop3
def test_pop3_keeps_a_batch_upstream_when_its_mail_could_not_be_written(dovecot, tmp_path, monkeypatch):
    from helpdeskd import gateway

    real, failing = helper.composed, [True]

    def composed(future, config, templates, jobs):
        answers = real(future, config, templates, jobs)
        if failing[0]:  # the first batch's first outbox write met a full disk
            failing[0] = False
            (tmp_path / "state" / "outbox" / "new" / f"{jobs[0].out_id}.msg").unlink()
            return [helper.Unwritten("[Errno 28] No space left on device")] + answers[1:]
        return answers

    monkeypatch.setattr(gateway.helper, "composed", composed)
    box = Box(dovecot, tmp_path)
    box.put(*many(6))
    svc = services(tmp_path, box.entry(batch=3))
    failed = poll_pop3(svc.config.mailboxes[0], svc)
    assert failed.error and "No space left on device" in failed.error and box.left == 6
    again = poll_pop3(svc.config.mailboxes[0], svc)  # filed again: the missing mail is queued now
    assert again.error is None and box.left == 0
    assert len(tickets(svc)) == 6 and len(answers(svc)) == 6


# ----------------------------------------------------------------------------- review fixes


def test_the_helper_exits_when_the_daemon_is_killed(tmp_path):
    import subprocess
    import sys

    script = ("import sys, time; from helpdeskd import helper; from helpdeskd.settings import Limits;"
              "f = helper.parse_ahead([b'Subject: x\\r\\n\\r\\nhola\\r\\n'], Limits()); f.result();"
              "print(*helper._pool._processes, flush=True); time.sleep(60)")
    with open(tmp_path / "stderr", "wb") as stderr:
        daemon = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, text=True,
                                  start_new_session=True)
    try:
        [pid] = [int(p) for p in _line(daemon).split()]
        assert _alive(pid)
        daemon.kill()  # kill -9: no shutdown, its pipes' other copies live on in the forkserver
        daemon.wait()
        deadline = time.monotonic() + 10
        while (_alive(pid) or _group(daemon.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid) and not _group(daemon.pid)  # the forkserver and resource tracker too
        # nothing but log lines on the daemon's stderr (the journal): not the tracker's plain-text
        # warning about the pool's semaphores, which it cleans up all the same
        assert b"leaked" not in (tmp_path / "stderr").read_bytes()
    finally:
        _kill_group(daemon)


def _group(pgid: int) -> list[int]:
    """Live processes of the process group ``pgid``."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as stat:
                    fields = stat.read().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry))
    return found


def _line(process, seconds: float = 30) -> str:
    """The child's next line of output, or a failure after ``seconds`` (never a hung test)."""
    import select

    ready, _, _ = select.select([process.stdout], [], [], seconds)
    assert ready, "no answer from the child process"
    return process.stdout.readline()


def _kill_group(process) -> None:
    """The child and whatever it started (helper, forkserver, tracker): nothing left behind."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait()


def test_a_hung_helper_is_killed_and_the_work_done_here(monkeypatch):
    monkeypatch.setattr(helper, "ANSWER_SECONDS", 0.5)
    future = helper._submit(time.sleep, 30)  # stands for a helper that never answers
    [pid] = list(helper._pool._processes)
    started = time.monotonic()
    assert helper._answer(future) is None and time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(pid) and helper._pool is None
    monkeypatch.undo()  # a new helper's start must not race a half-second deadline
    assert helper.parsed(helper.parse_ahead([SPANISH], Limits()), 1)[0] is not None  # a new helper


def test_mail_the_helper_queued_and_the_sender_sent_is_not_queued_again(svc):
    """The helper wrote the mail, the sender sent it (moved to cur/), then the helper died before
    answering: the daemon composes it again and must find it queued already."""
    import shutil

    from helpdeskd.mailjob import write_job
    from helpdeskd.mailout import finish_job

    jobs = _jobs(svc)
    for job in jobs:
        write_job(svc.config, svc.templates, svc.outbox, job)
        shutil.move(svc.outbox.path(job.out_id, "new"), svc.outbox.path(job.out_id, "cur"))
    redone = helper.composed(None, svc.config, svc.templates, jobs)  # no helper answer: composed here
    assert [finish_job(svc, job, answer, counted=True) for job, answer in zip(jobs, redone)] == [0, 0]
    assert sorted(e.state for e in svc.outbox.entries()) == ["cur", "cur"]
    assert [write_job(svc.config, svc.templates, svc.outbox, job).created for job in jobs] == [False, False]


def test_mail_kept_when_a_power_failure_lost_its_decision_is_not_queued_again(svc, monkeypatch):
    """A power failure before the commit may keep queued mail and lose the ticket and the decision
    written before it (and a store restored from an older backup may have lost them after the mail
    was sent). Filed again, the decision is made afresh and the filing thread does not look in the
    outbox; the helper does, in every state, before it writes."""
    import shutil

    from helpdeskd.cycle import file_safely
    from helpdeskd.mailjob import write_job
    from helpdeskd.mailout import collecting, finish_job

    jobs = _jobs(svc)
    for job in jobs:
        finish_job(svc, job, write_job(svc.config, svc.templates, svc.outbox, job), counted=True)
    shutil.move(svc.outbox.path(jobs[0].out_id, "new"), svc.outbox.path(jobs[0].out_id, "cur"))  # sent
    shutil.rmtree(svc.config.helpdesk.state_dir / "tickets")
    shutil.rmtree(svc.config.helpdesk.state_dir / "index")
    svc.store = type(svc.store)(svc.config.helpdesk.state_dir, sync=svc.store.sync)
    again: list = []
    with collecting(again):
        assert file_safely(Inbound("t", "1", SPANISH), svc).action == "new"
    assert [job.out_id for job in again] == [job.out_id for job in jobs]  # collected without a lookup
    def composing(*args):  # found queued, the mail is not composed again (a failure then must not matter)
        raise AssertionError("composed again")

    monkeypatch.setattr("helpdeskd.mailjob.compose_job", composing)
    written = [write_job(svc.config, svc.templates, svc.outbox, job) for job in again]
    assert [answer.created for answer in written] == [False, False]
    assert sorted(e.state for e in svc.outbox.entries()) == ["cur", "new"]


def test_a_copy_in_the_next_batch_is_a_duplicate_while_the_first_ones_mail_is_composed(svc):
    from helpdeskd.cycle import file_safely
    from helpdeskd.mailout import collecting

    earlier: list = []
    with collecting(earlier):
        first = file_safely(Inbound("t", "1", SPANISH), svc)
    later: list = []  # the next batch, while the helper composes the first one's mail
    with collecting(later, frozenset(job.out_id for job in earlier)):
        second = file_safely(Inbound("t", "2", SPANISH), svc)
    assert (first.action, second.action) == ("new", "duplicate") and later == []


@pop3
def test_pop3_counts_a_copy_in_the_next_batch_as_a_duplicate(dovecot, tmp_path):
    box = Box(dovecot, tmp_path)
    first, *others = many(7)
    box.put(first, *others[:3], first, *others[3:])  # the copy opens the second batch of four
    svc = services(tmp_path, box.entry(batch=4))
    svc.config = with_helper(svc.config, True)
    result = poll_pop3(svc.config.mailboxes[0], svc)
    assert result.error is None and result.counts == {"new": 7, "duplicate": 1} and box.left == 0
    assert len(tickets(svc)) == 7 and len(answers(svc)) == 7


def test_an_identical_copy_in_the_same_batch_asks_for_its_mail_once(svc):
    from helpdeskd.cycle import file_safely
    from helpdeskd.mailout import collecting

    jobs: list = []
    with collecting(jobs):
        first = file_safely(Inbound("t", "1", SPANISH), svc)
        second = file_safely(Inbound("t", "2", SPANISH), svc)
    assert (first.action, second.action) == ("new", "duplicate")
    assert [job.send.template for job in jobs] == ["ack_new", "staff_new"]


def test_a_hangup_or_ctrl_c_sent_to_the_process_group_leaves_the_helper_alone():
    """A daemon reloads on SIGHUP; its helper (and the forkserver behind it) must not die of one
    sent to the whole process group, nor print tracebacks on a Ctrl-C."""
    import subprocess
    import sys

    script = ("import signal, sys; signal.signal(signal.SIGHUP, lambda *a: None);"
              "signal.signal(signal.SIGINT, lambda *a: None);"
              "from helpdeskd import helper; from helpdeskd.settings import Limits;"
              "raw = [b'Subject: x\\r\\n\\r\\nhola\\r\\n'];"
              "assert helper.parsed(helper.parse_ahead(raw, Limits()), 1)[0] is not None;"
              "print(*helper._pool._processes, flush=True); sys.stdin.readline();"
              "print('ok' if helper.parsed(helper.parse_ahead(raw, Limits()), 1)[0] is not None else 'inline',"
              "      *helper._pool._processes, flush=True)")
    daemon = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        [pid] = _line(daemon).split()
        for sig in (signal.SIGHUP, signal.SIGINT):
            os.killpg(daemon.pid, sig)
        time.sleep(0.5)
        daemon.stdin.write("\n")
        daemon.stdin.flush()
        assert _line(daemon).split() == ["ok", pid]  # the same helper answered
        daemon.stdin.close()
        assert daemon.wait(timeout=30) == 0
        assert "Traceback" not in daemon.stderr.read()
    finally:
        _kill_group(daemon)


def test_mail_found_queued_by_someone_else_is_covered_by_the_commit(svc):
    """Filed again after a crash, everything is found done, including mail a helper had written: the
    commit must still happen (and cover that mail) before the batch is deleted upstream."""
    from helpdeskd.cycle import file_safely
    from helpdeskd.mailjob import write_job
    from helpdeskd.mailout import finish_job

    for job in _jobs(svc):  # the helper wrote them, the daemon recorded them; then a crash
        finish_job(svc, job, write_job(svc.config, svc.templates, svc.outbox, job), counted=True)
    with svc.store.sync.collect() as touched:
        assert file_safely(Inbound("t", "1", SPANISH), svc).action == "duplicate"
    assert touched  # without the outbox files found in new/, nothing would have been written
    touched.close()


def test_start_brings_the_helper_up_before_any_batch():
    helper.shutdown()
    assert helper._pool is None
    assert helper.start()  # a process, its imports, one answer
    [pid] = list(helper._pool._processes)
    assert helper.start() and list(helper._pool._processes) == [pid]  # started once
    assert helper.parsed(helper.parse_ahead([SPANISH], Limits()), 1)[0] is not None
    assert list(helper._pool._processes) == [pid]  # the batch went to the helper already running
