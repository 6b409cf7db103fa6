"""The flat-file store: atomic writes, history, locks, outbox, holding folders, fsck."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from helpdeskd.cycle import Services, file_safely
from helpdeskd.errors import StoreLocked
from helpdeskd.message import Inbound
from helpdeskd.parse import parse
from helpdeskd.store.fsck import fsck
from helpdeskd.store.fsutil import Syncer, atomic_write, create_exclusive, ensure_dir
from helpdeskd.store.lock import DAEMON, WRITE, StateLock
from helpdeskd.store.outbox import Outbox
from helpdeskd.store.tickets import TicketStore
from helpdeskd.ticket import Requester, Status, Ticket

from conftest import mail


def sample(tid: int = 1) -> Ticket:
    return Ticket(id=tid, subject="Asunto ñ", status=Status.NEW, queue="general", priority="high", category="dns",
                  requester=Requester("a@b.example", "A B", "es"), created="c", updated="u", token="tok",
                  message_ids=("x@y",), message_keys=("k1",), extra={"future_field": 3})


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    aside = []
    real = fsutil._write_aside
    monkeypatch.setattr(fsutil, "_write_aside", lambda *args: (aside.append(args[0]), real(*args))[1])
    path = tmp_path / "f"
    atomic_write(path, b"one")
    atomic_write(path, b"two")
    assert path.read_bytes() == b"two" and sorted(os.listdir(tmp_path)) == ["f"]
    assert path.stat().st_mode & 0o777 == 0o640 & ~_umask()
    # a new file is linked in whole where unnamed files can be; only a replacement is written aside
    assert aside == ([str(path)] if fsutil._unnamed else [str(path)] * 2)
    # another writer made the file between the check and the link: it is replaced, as any file is
    raced = tmp_path / "raced"
    real_link = fsutil._link_unnamed
    monkeypatch.setattr(fsutil, "_link_unnamed",
                        lambda p, *rest: (raced.write_bytes(b"theirs"), real_link(p, *rest))[1])
    atomic_write(raced, b"ours")
    assert raced.read_bytes() == b"ours" and sorted(os.listdir(tmp_path)) == ["f", "raced"]


@pytest.mark.parametrize("missing", [False, True], ids=["looked up", "said missing"])
def test_ensure_dir_makes_what_is_missing_and_records_each_new_entry(tmp_path, missing):
    sync = Syncer(method="fsync")  # (records the paths to sync)
    deep = tmp_path / "a" / "b" / "c"
    with sync.collect() as touched:
        assert ensure_dir(deep, sync=sync, missing=missing) == deep and deep.is_dir()
        ensure_dir(deep, sync=sync, missing=missing)  # there already: nothing to do, no error
    assert {str(tmp_path), str(tmp_path / "a"), str(tmp_path / "a" / "b")} <= touched.dirs
    touched.close()
    (tmp_path / "file").write_bytes(b"")
    for path in (tmp_path / "file", tmp_path / "file" / "below"):
        with pytest.raises((FileExistsError, NotADirectoryError)):
            ensure_dir(path, missing=missing)


@pytest.mark.parametrize("unnamed", [True, False], ids=["O_TMPFILE", "written aside"])
def test_create_exclusive_never_overwrites(tmp_path, monkeypatch, unnamed):
    from helpdeskd.store import fsutil

    linked = []
    real = fsutil._link_unnamed
    monkeypatch.setattr(fsutil, "_unnamed", unnamed)
    monkeypatch.setattr(fsutil, "_link_unnamed", lambda *a: linked.append(a[0]) or real(*a))
    path = tmp_path / "m.eml"
    assert create_exclusive(path, b"first") and not create_exclusive(path, b"second")
    assert path.read_bytes() == b"first" and sorted(os.listdir(tmp_path)) == ["m.eml"]
    assert oct(path.stat().st_mode & 0o777) == oct(0o640 & ~_umask())
    # no lookup first: the second call's link meets the existing name (or, written aside, a lookup)
    assert linked == [str(path)] * 2
    assert fsutil._unnamed is unnamed  # this machine (Linux, ext4/tmpfs, /proc) links unnamed files


def test_create_exclusive_falls_back_when_proc_is_missing(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    monkeypatch.setattr(fsutil, "_unnamed", True)
    monkeypatch.setattr(fsutil, "_proc_self_fd", lambda: None)  # e.g. no /proc in a container
    assert create_exclusive(tmp_path / "a", b"x") and (tmp_path / "a").read_bytes() == b"x"
    assert sorted(os.listdir(tmp_path)) == ["a"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_ticket_roundtrip_keeps_unknown_fields(tmp_path):
    store = TicketStore(tmp_path)
    store.save(sample(1234))
    assert store.get(1234) == sample(1234) and store.get(1234).extra == {"future_field": 3}
    assert (tmp_path / "tickets" / "1" / "1234" / "ticket.toml").is_file()
    assert store.get(99) is None


def test_ids_are_sequential_and_iterated_in_order(tmp_path):
    store = TicketStore(tmp_path)
    for _ in range(3):
        store.save(sample(store.allocate_id()))
    store.save(sample(1500))
    assert list(store.iter_ids()) == [1, 2, 3, 1500] and store.last_id() == 3


def test_history_times_are_formatted_once_a_second_and_follow_the_clock(monkeypatch):
    from helpdeskd.store import tickets

    now = [1795390202.25]
    monkeypatch.setattr(tickets.time, "time", lambda: now[0])
    assert tickets.utcnow() == "2026-11-22T23:30:02+00:00"
    now[0] += 0.7
    assert tickets.utcnow() == "2026-11-22T23:30:02+00:00"
    now[0] += 0.1  # the next second
    assert tickets.utcnow() == "2026-11-22T23:30:03+00:00"
    now[0] -= 3600  # the clock set back: formatted again, not kept
    assert tickets.utcnow() == "2026-11-22T22:30:03+00:00"


def test_with_changes_is_dataclasses_replace():
    import dataclasses

    ticket = sample(7)
    for changes in ({}, {"updated": "2026-11-22T23:30:03+00:00", "mail_count": 2},
                    {"status": Status.CLOSED, "collaborators": ("b@x",), "extra": {"later": 1}},
                    {"requester": Requester("c@x", "C", "es")}):
        changed = ticket.with_changes(**changes)
        assert type(changed) is Ticket and changed == dataclasses.replace(ticket, **changes)
        assert vars(changed) == vars(dataclasses.replace(ticket, **changes)) and changed is not ticket
    assert ticket == sample(7)  # the original is untouched
    with pytest.raises(TypeError, match="colour"):
        ticket.with_changes(colour="blue")
    with pytest.raises(dataclasses.FrozenInstanceError):
        ticket.with_changes(mail_count=3).mail_count = 4


def test_events_skip_a_torn_last_line(tmp_path):
    store = TicketStore(tmp_path)
    store.save(sample())
    store.append_event(1, {"type": "note", "ref": "a", "text": "uno"})
    with (store.ticket_dir(1) / "events.jsonl").open("ab") as f:
        f.write(b'{"type": "note", "ref": "b", "te')  # a crash in the middle of an append
    assert [e["ref"] for e in store.events(1)] == ["a"]
    assert store.has_event(1, "note", "a") and not store.has_event(1, "note", "b")


def test_message_id_index(tmp_path):
    store = TicketStore(tmp_path)
    store.index_message_id("Abc@Example.org", 5)
    assert store.find_by_message_id("abc@example.org") == 5 and store.find_by_message_id("other@x") is None


def test_message_id_entry_is_a_second_name_of_the_claim(tmp_path):
    store = TicketStore(tmp_path)
    store.write_claim("k" * 32, {"action": "new", "ticket": 7})
    store.index_message_id("<m1@x>", 7, claim_key="k" * 32)
    entry, claim = Path(store._msgid_path("<m1@x>")), Path(store._key_path("k" * 32))
    assert entry.stat().st_ino == claim.stat().st_ino and claim.stat().st_nlink == 2  # no new file
    assert TicketStore(tmp_path).find_by_message_id("<M1@X>") == 7
    # taken by another ticket already, or no claim to link to: the id is written as text
    store.index_message_id("<m1@x>", 8, claim_key="k" * 32)
    store.index_message_id("<m2@x>", 9, claim_key="f" * 32)
    assert entry.read_bytes() == b"8\n" and claim.stat().st_nlink == 1
    assert Path(store._msgid_path("<m2@x>")).read_bytes() == b"9\n"
    fresh = TicketStore(tmp_path)
    assert fresh.find_by_message_id("<m1@x>") == 8 and fresh.find_by_message_id("<m2@x>") == 9
    Path(store._msgid_path("<m3@x>")).parent.mkdir(parents=True, exist_ok=True)
    Path(store._msgid_path("<m3@x>")).write_bytes(b'{"action": "new", "tick')  # cut short by a crash
    assert fresh.find_by_message_id("<m3@x>") is None


def test_write_lock_names_its_holder_without_rewriting_its_own_name(tmp_path):
    lock_file = tmp_path / "write.lock"
    lock_file.write_bytes(b"999999999\n")  # a holder that has gone
    StateLock(tmp_path).acquire().release()
    assert lock_file.read_bytes() == f"{os.getpid()}\n".encode()
    os.utime(lock_file, ns=(0, 0))
    with StateLock(tmp_path):  # taken again by the same process: nothing written (no writeback to wait for)
        assert lock_file.stat().st_mtime_ns == 0 and lock_file.read_bytes() == f"{os.getpid()}\n".encode()
    StateLock(tmp_path / "new" / "dir").acquire().release()  # a state directory not made yet
    assert (tmp_path / "new" / "dir" / "write.lock").exists()


def test_write_lock_is_exclusive_across_processes(tmp_path):
    code = ("import sys, time; from pathlib import Path; from helpdeskd.store.lock import StateLock;"
            f"StateLock(Path({str(tmp_path)!r}), {DAEMON!r}).acquire(); print('held', flush=True); time.sleep(30)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(StoreLocked, match="already running"):
            StateLock(tmp_path, DAEMON).acquire()
        with StateLock(tmp_path, WRITE).acquire():  # the write lock is separate: deliver works beside a daemon
            pass
    finally:
        holder.kill()
        holder.wait()
    StateLock(tmp_path, DAEMON).acquire().release()  # a dead holder leaves no stale lock


def test_outbox_enqueue_is_idempotent_across_states(tmp_path):
    outbox = Outbox(tmp_path)
    assert outbox.enqueue("id1", {"to": ["a@b"]}, b"data")
    assert not outbox.enqueue("id1", {"to": ["a@b"]}, b"data")
    os.rename(outbox.root / "new" / "id1.msg", outbox.root / "cur" / "id1.msg")  # sent
    assert not outbox.enqueue("id1", {"to": ["a@b"]}, b"data") and outbox.state_of("id1") == "cur"
    [entry] = list(outbox.entries())
    assert entry.envelope == {"id": "id1", "to": ["a@b"]} and entry.data == b"data"


def test_fsck_rebuilds_indexes_and_repairs_sequence(svc):
    state = svc.config.helpdesk.state_dir
    for n in range(3):
        file_safely(Inbound("t", str(n), mail(message_id=f"<m{n}@cliente.es>", body=f"texto {n}")), svc)
    shutil.rmtree(state / "index")
    (state / "seq").write_text("1\n")
    report = fsck(state)
    assert report.tickets == 3 and report.problems == [] and report.indexed_message_ids == 3
    assert svc.store.last_id() == 3
    assert svc.store.find_by_message_id("m2@cliente.es") == 3
    # the rebuilt claims make a re-delivery a duplicate, not a new ticket
    outcome = file_safely(Inbound("t", "x", mail(message_id="<m1@cliente.es>", body="texto 1")), svc)
    assert outcome.action == "duplicate" and svc.store.last_id() == 3


def _to_old_layout(state: Path) -> int:
    """Put every index entry two levels down, as stores written before ``index/layout`` had them."""
    moved = 0
    for entry in sorted((state / "index").glob("*/*/*")):
        if entry.is_file():
            (entry.parent / entry.name[2:4]).mkdir(exist_ok=True)
            entry.rename(entry.parent / entry.name[2:4] / entry.name)
            moved += 1
    (state / "index" / "layout").unlink()
    return moved


def test_a_new_store_indexes_in_256_buckets_one_level_down(tmp_path):
    store = TicketStore(tmp_path)
    assert (tmp_path / "index" / "layout").read_text() == "1\n" and not store.legacy_index
    store.write_claim("ab" + "c" * 30, {"action": "new", "ticket": 1})
    store.index_message_id("<m@x>", 1)
    claim, entry = Path(store._key_path("ab" + "c" * 30)), Path(store._msgid_path("<m@x>"))
    assert claim == tmp_path / "index" / "keys" / "ab" / ("ab" + "c" * 30) and claim.is_file()
    assert entry.parent.parent == tmp_path / "index" / "msgid" and entry.parent.name == entry.name[:2]


def test_a_store_in_the_old_layout_is_read_then_upgraded_without_losing_an_entry(svc):
    state = svc.config.helpdesk.state_dir
    for n in range(4):
        file_safely(Inbound("t", str(n), mail(message_id=f"<m{n}@cliente.es>", body=f"texto {n}")), svc)
    assert _to_old_layout(state) == 8  # a claim and a Message-ID entry per message
    old = Services(svc.config, TicketStore(state), svc.outbox, svc.quarantine, svc.refused, svc.templates,
                   clock=svc.clock)
    assert old.store.legacy_index and old.store.find_by_message_id("M2@cliente.es") == 3
    # lookups look in the old place too: a re-delivery stays a duplicate, a reply finds its ticket
    again = file_safely(Inbound("t", "x", mail(message_id="<m1@cliente.es>", body="texto 1")), old)
    reply = file_safely(Inbound("t", "y", mail(message_id="<r@cliente.es>", body="más",
                                                extra="In-Reply-To: <m0@cliente.es>")), old)
    assert (again.action, reply.action, reply.ticket, old.store.last_id()) == ("duplicate", "followup", 1, 4)
    # a crash halfway through the move: one bucket's entries are up already, the rest still down
    bucket = next(p for p in sorted((state / "index" / "keys").iterdir()) if any(p.glob("*/*")))
    up = [entry.rename(bucket / entry.name) for entry in bucket.glob("*/*")]
    assert TicketStore(state).upgrade_index() == 8 - len(up)  # the rest, and none twice
    fresh = TicketStore(state)
    assert not fresh.legacy_index and fresh.upgrade_index() == 0
    assert not [p for p in (state / "index").glob("*/*/*") if p.is_dir()]
    assert [fresh.find_by_message_id(f"m{n}@cliente.es") for n in range(4)] == [1, 2, 3, 4]
    assert fresh.find_by_message_id("r@cliente.es") == 1
    for n in range(4):
        assert fresh.read_claim(parse(mail(message_id=f"<m{n}@cliente.es>", body=f"texto {n}")).key)["ticket"] == n + 1


def test_fsck_moves_an_old_layout_index_and_says_so(svc):
    state = svc.config.helpdesk.state_dir
    file_safely(Inbound("t", "1", mail()), svc)
    _to_old_layout(state)
    report = fsck(state)  # the claim moves; the Message-ID index is rebuilt anyway
    moved = ["claims moved to the current index layout: 1 (Message-IDs are indexed anew)"]
    assert report.problems == [] and report.repaired == moved
    assert not TicketStore(state).legacy_index and fsck(state).repaired == []
    # an old store copied over a new one keeps the new one's mark: fsck looks for old folders anyway
    _to_old_layout(state)
    (state / "index" / "layout").write_text("1\n")
    assert not TicketStore(state).legacy_index
    assert fsck(state).repaired == moved
    assert file_safely(Inbound("t", "2", mail()), svc).action == "duplicate"


def test_an_empty_index_without_its_mark_is_marked_not_taken_for_an_old_one(tmp_path):
    TicketStore(tmp_path)
    (tmp_path / "index" / "layout").unlink()  # a first start stopped right after making the folders
    store = TicketStore(tmp_path)
    assert not store.legacy_index and (tmp_path / "index" / "layout").exists()


def test_moving_up_keeps_an_entry_written_since_and_drops_leftover_temporary_files(tmp_path):
    store = TicketStore(tmp_path)
    key = "abcd" + "0" * 28
    store.write_claim(key, {"action": "new", "ticket": 2})  # written in the new place since
    old = tmp_path / "index" / "keys" / "ab" / "cd"
    old.mkdir()
    (old / key).write_text('{"action": "new", "ticket": 1}')
    (old / f".{key}.123.456.tmp").write_text('{"action": "new", "tick')  # a crash mid-write, long ago
    (old / ("abcd" + "1" * 28)).write_text('{"action": "new", "ticket": 3}')
    assert store.upgrade_index(everywhere=True) == 1 and not old.exists()
    assert sorted(p.name for p in old.parent.iterdir()) == ["abcd" + "0" * 28, "abcd" + "1" * 28]
    assert store.read_claim(key)["ticket"] == 2 and store.read_claim("abcd" + "1" * 28)["ticket"] == 3


def test_an_index_entry_that_cannot_be_read_is_not_taken_for_a_missing_one(svc, monkeypatch):
    """A claim that exists but cannot be read (a disk error) must stop the filing, never pass for
    "no claim": that would be a second ticket. The message stays upstream for a later try."""
    import errno

    from helpdeskd.errors import TransientError

    raw = mail()
    first = file_safely(Inbound("t", "1", raw), svc)
    real = os.open

    def failing(path, *args, **kwargs):
        if "/index/" in os.fspath(path):
            raise OSError(errno.EIO, "Input/output error", os.fspath(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", failing)
    with pytest.raises(TransientError, match="Input/output error"):
        file_safely(Inbound("t", "2", raw), svc)
    monkeypatch.undo()
    assert list(svc.store.iter_ids()) == [first.ticket]
    assert file_safely(Inbound("t", "2", raw), svc).action == "duplicate"


def test_fsck_reports_missing_mail(svc):
    file_safely(Inbound("t", "1", mail()), svc)
    for eml in svc.store.ticket_dir(1).glob("*.eml"):
        eml.unlink()
    report = fsck(svc.config.helpdesk.state_dir)
    assert len(report.problems) == 1 and "missing" in report.problems[0]


def test_fsck_reports_what_a_power_failure_can_leave_behind_saved_metadata(svc):
    for n in range(3):
        file_safely(Inbound("t", str(n), mail(message_id=f"<m{n}@cliente.es>", body=f"texto {n}")), svc)
    state = svc.config.helpdesk.state_dir
    assert fsck(state, rebuild=False, verify_mail=True).problems == []
    [eml] = list(svc.store.ticket_dir(1).glob("*.eml"))
    eml.write_bytes(eml.read_bytes()[:40])  # cut short
    (svc.store.ticket_dir(2) / "events.jsonl").unlink()  # lost whole
    problems = fsck(state, rebuild=False).problems
    assert len(problems) == 2 and all(p.startswith("ticket #2: its history has no") for p in problems)
    problems = fsck(state, rebuild=False, verify_mail=True).problems
    assert problems[0] == f"ticket #1: raw mail {eml.name} does not match its message key (cut short?)"
    assert len(problems) == 3


def test_fsck_verifies_mail_against_the_message_id_it_was_filed_with(tmp_path):
    import dataclasses

    from conftest import make_config
    from helpdeskd.templates import load_templates

    config = make_config(tmp_path)
    config = dataclasses.replace(config, limits=dataclasses.replace(config.limits, max_header_bytes=200))
    svc = Services.open(config, load_templates(config))
    file_safely(Inbound("t", "1", mail(message_id="<" + "a" * 150 + "@" + "b" * 100 + ".example>")), svc)
    state = config.helpdesk.state_dir
    assert fsck(state, rebuild=False, verify_mail=True).problems == []  # (its Message-ID was cut at filing)
    assert fsck(state, rebuild=False, verify_mail=True, limits=config.limits).problems == []
    (svc.store.ticket_dir(1) / "events.jsonl").unlink()  # no recorded Message-ID: parsed with the limits
    assert fsck(state, rebuild=False, verify_mail=True, limits=config.limits).problems == [
        "ticket #1: its history has no 'created' entry (events.jsonl lost?)",
        f"ticket #1: its history has no entry for message key {svc.store.get(1).message_keys[0]}"]


def test_group_commit_defers_fsyncs_to_the_end_of_the_batch(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    syncer = fsutil.Syncer(method="fsync")
    store = TicketStore(tmp_path, sync=syncer)
    synced.clear()
    with syncer.batch():
        store.save(sample(1))
        store.save(sample(1))  # the same file twice: one fsync at commit
        store.append_event(1, {"type": "note", "ref": "x"})
        assert synced == []
    # ticket.toml + events.jsonl, then the ticket folder, its shard, tickets/ — each once
    assert len(synced) == 5


def test_group_commit_by_syncfs_is_one_call_per_file_system(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    if fsutil._SYNCFS is None:
        pytest.skip("no syncfs(2) here: commits fsync file by file (tested above)")
    calls: list[str] = []
    real = fsutil._SYNCFS
    syncer = fsutil.Syncer(root=tmp_path)
    store = TicketStore(tmp_path, sync=syncer)
    monkeypatch.setattr(fsutil, "_SYNCFS", lambda fd: (calls.append(os.readlink(f"/proc/self/fd/{fd}")), real(fd))[1])
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: pytest.fail("a batch must not fsync file by file"))
    with syncer.batch():
        store.save(sample(1))
        store.save(sample(2))
        store.append_event(1, {"type": "note", "ref": "x"})
        assert calls == []
    assert len(calls) == 1 and calls[0].startswith(str(tmp_path))


def test_a_failed_syncfs_is_an_error_not_a_silent_success(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    if fsutil._SYNCFS is None:
        pytest.skip("no syncfs(2) here")
    syncer = fsutil.Syncer(root=tmp_path)
    real = fsutil._SYNCFS
    monkeypatch.setattr(fsutil, "_SYNCFS", lambda fd: -1)
    monkeypatch.setattr(fsutil.ctypes, "get_errno", lambda: 5)
    with pytest.raises(OSError, match="Input/output error"):
        with syncer.batch():
            atomic_write(tmp_path / "f", b"x", sync=syncer)
    monkeypatch.setattr(fsutil, "_SYNCFS", real)  # the disk "works" again, but pages may have been lost:
    with pytest.raises(OSError, match="earlier commit failed"):  # nothing is durable until a restart
        with syncer.batch():
            atomic_write(tmp_path / "g", b"y", sync=syncer)
    with fsutil.Syncer(root=tmp_path).batch() as fresh:  # a restarted process commits again
        atomic_write(tmp_path / "h", b"z", sync=fresh)


def test_syncfs_is_used_only_where_it_reports_writeback_errors():
    from helpdeskd.store.fsutil import _version

    assert _version("6.18.0-1-amd64") == (6, 18) and _version("5.8.0") == (5, 8) and _version("5.10-rc1") == (5, 10)
    assert _version("5.4.0-150-generic") < (5, 8) and _version("4.19.0") < (5, 8) and _version("weird") == (0, 0)


def test_the_syncfs_descriptor_is_opened_before_the_batch_writes(tmp_path, monkeypatch):
    """The kernel reports a writeback error only to descriptors opened before it: opening at commit
    time could miss an error another commit (or process) already collected."""
    from helpdeskd.store import fsutil

    if fsutil._SYNCFS is None:
        pytest.skip("no syncfs(2) here")
    opened: list[str] = []
    real_open = os.open
    monkeypatch.setattr(fsutil.os, "open", lambda path, *a, **k: (opened.append(str(path)), real_open(path, *a, **k))[1])
    syncer = fsutil.Syncer(root=tmp_path)
    with syncer.collect() as touched:
        assert opened == [str(tmp_path)] and touched.fd is not None
        atomic_write(tmp_path / "f", b"x", sync=syncer)
    syncer.commit(touched)
    assert touched.fd is None and not touched  # committed and forgotten


def test_collect_hands_the_commit_to_another_thread(tmp_path, monkeypatch):
    import threading

    from helpdeskd.store import fsutil

    committed: list[str] = []
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: committed.append(threading.current_thread().name))
    syncer = fsutil.Syncer(method="fsync")
    with syncer.collect() as touched:
        with syncer.collect() as inner:  # nested: the outermost block has it all
            atomic_write(tmp_path / "a", b"x", sync=syncer)
        atomic_write(tmp_path / "b", b"y", sync=syncer)
    assert committed == [] and not inner
    assert touched.files == {f"{tmp_path}/a", f"{tmp_path}/b"} and touched.dirs == {str(tmp_path)}
    worker = threading.Thread(target=syncer.commit, args=(touched,), name="committer")
    worker.start()
    worker.join()
    assert committed and set(committed) != {threading.current_thread().name}
    assert len(committed) == 3  # two files, one directory
    with syncer.collect():
        atomic_write(tmp_path / "c", b"z", sync=syncer)  # a new block starts empty
    assert (tmp_path / "c").read_bytes() == b"z"


def test_immediate_mode_fsyncs_before_returning(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    atomic_write(tmp_path / "f", b"x")
    assert len(synced) == 2  # the file, then its directory


def test_maildir_batch_leaves_new_only_after_the_commit(svc, monkeypatch, tmp_path):
    from helpdeskd.intake import poll_maildir
    from helpdeskd.store import fsutil

    inbox = tmp_path / "inbox"
    for sub in ("tmp", "new", "cur"):
        (inbox / sub).mkdir(parents=True, exist_ok=True)
    for n in range(3):
        (inbox / "new" / f"{n}.eml").write_bytes(mail(message_id=f"<b{n}@x>", body=f"cuerpo {n}"))

    def failing_commit(self, touched):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(fsutil.Syncer, "commit", failing_commit)
    result = poll_maildir(svc.config.mailboxes[0], svc)
    assert result.error and "Input/output error" in result.error
    assert len(list((inbox / "new").iterdir())) == 3  # nothing forgotten: the commit did not happen
    monkeypatch.undo()
    result = poll_maildir(svc.config.mailboxes[0], svc)
    assert result.error is None and len(list((inbox / "new").iterdir())) == 0
    assert svc.store.last_id() == 3 and sum(e.envelope["kind"] == "auto-reply" for e in svc.outbox.entries()) == 3


def test_rate_limit_log_is_looked_at_once_a_batch(tmp_path, monkeypatch):
    """Within together() (its thread holds the write lock) the file is looked at once; before and
    after, every answer looks again, and sees what another writer added."""
    from helpdeskd.store import sentlog as sentlog_module
    from helpdeskd.store.sentlog import SentLog

    log, other = SentLog(tmp_path), SentLog(tmp_path)
    other.record("a@x.es", "o0", 90.0, 50)
    looks = []
    real = sentlog_module._identity
    monkeypatch.setattr(sentlog_module, "_identity", lambda path: looks.append(path) or real(path))
    with log.together():
        assert log.count_all(0) == 1 and log.counts(["a@x.es"], 0, 0) == ({"a@x.es": 1}, 1)
        log.record("b@x.es", "o1", 100.0, 50, hold=True)
        assert log.count("b@x.es", 0) == 1 and log.count_all(0) == 2
        assert len(looks) == 1
    other.record("c@x.es", "o2", 101.0, 50)
    assert log.count_all(0) == 3  # looked at again outside: another writer's line counted
    with log.together():
        assert log.count("c@x.es", 0) == 1 and log.count_all(0) == 3


def test_rate_limit_lines_held_for_a_batch_are_appended_together(tmp_path, monkeypatch):
    import threading

    from helpdeskd.store import sentlog as sentlog_module
    from helpdeskd.store.sentlog import SentLog

    log, other = SentLog(tmp_path), SentLog(tmp_path)
    path = tmp_path / "autoreplies" / "all"
    log.record("a@x.es", "o0", 90.0, 50)
    appends = []
    real = sentlog_module.append_line
    monkeypatch.setattr(sentlog_module, "append_line", lambda *a, **k: appends.append(a[1]) or real(*a, **k))
    with log.together():
        log.record("a@x.es", "o1", 100.0, 50, hold=True)
        log.record("b@x.es", "o2", 101.0, 50, hold=True)
        log.record("b@x.es", "o2", 101.0, 50, hold=True)  # the same answer again: not counted twice
        assert log.count_all(0) == 3 and log.count("b@x.es", 0) == 1  # counted at once
        assert appends == [] and len(path.read_bytes().splitlines()) == 1  # not written yet
        log.record("r@x.es", "o9", 101.5, 50)  # not held (mail written at once): appended at once
        from_elsewhere = threading.Thread(target=log.record, args=("c@x.es", "o3", 102.0, 50),
                                          kwargs={"hold": True})
        from_elsewhere.start()
        from_elsewhere.join()  # another thread's line is never held with ours
        assert len(appends) == 2
        log.flush()  # (before the batch's mail is handed to the helper)
        assert len(appends) == 3 and other.count_all(0) == 5
        log.record("d@x.es", "o4", 103.0, 50, hold=True)
    assert len(appends) == 4 and len(path.read_bytes().splitlines()) == 6  # the rest, at the block's end
    assert other.count_all(0) == 6 and log.count_all(0) == 6
    with pytest.raises(RuntimeError):
        with log.together():
            log.record("e@x.es", "o5", 104.0, 50, hold=True)
            raise RuntimeError("a bug before the batch's mail was handed on")
    assert log.count_all(0) == 6  # forgotten, as its mail was never written
    monkeypatch.setattr(sentlog_module, "append_line", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError):
        with log.together():
            log.record("e@x.es", "o5", 104.0, 50, hold=True)
            assert log.count_all(0) == 7
            log.flush()
    assert log.count_all(0) == 6  # not written: not counted, and recorded again next time
    monkeypatch.setattr(sentlog_module, "append_line", real)
    log.record("e@x.es", "o5", 104.0, 50)
    assert other.count_all(0) == 7
    monkeypatch.setattr(sentlog_module, "_PRUNE_BYTES", 1)  # any record may now rewrite the file first
    with log.together():
        log.record("f@x.es", "o6", 500.0, 50, hold=True)  # nothing waits yet: 90-104 pruned away
        log.record("g@x.es", "o7", 900.0, 50, hold=True)  # o6 waits: no rewrite now (it would write o6 twice)
        log.record("h@x.es", "o8", 901.0, 50)  # nor by a line written at once
    lines = path.read_bytes().splitlines()
    assert sorted(line.split()[1] for line in lines) == [b"o6", b"o7", b"o8"] and other.count_all(0) == 3


def test_rate_limit_log_counts_stay_right_across_writers_and_pruning(tmp_path, monkeypatch):
    from helpdeskd.store import sentlog as sentlog_module
    from helpdeskd.store.sentlog import SentLog

    ours, other = SentLog(tmp_path), SentLog(tmp_path)  # another process on the same state directory
    ours.record("a@x.es", "o1", 100.0, 50)
    assert ours.count_all(0) == 1 and ours.count("a@x.es", 0) == 1
    ours.record("b@x.es", "o2", 110.0, 50)
    ours.record("b@x.es", "o2", 110.0, 50)  # the same answer again: not counted twice
    assert ours.count_all(0) == 2 and ours.count_all(105) == 1
    other.record("c@x.es", "o3", 120.0, 50)  # written behind our back: our parsed copy is stale
    assert ours.count_all(0) == 3 and other.count_all(0) == 3
    ours.record("a@x.es", "o4", 130.0, 50)
    assert ours.count_all(0) == 4 and other.count_all(0) == 4 and ours.count("a@x.es", 0) == 2
    monkeypatch.setattr(sentlog_module, "_PRUNE_BYTES", 1)  # every append now rewrites the file first
    ours.record("d@x.es", "o5", 200.0, 50)
    assert ours.count_all(0) == 1 and other.count_all(0) == 1  # 100–130 fell outside 200 - 50
    inode = (tmp_path / "autoreplies" / "all").stat().st_ino
    ours.record("e@x.es", "o6", 201.0, 50)  # everything is inside the horizon: appended, not rewritten
    assert (tmp_path / "autoreplies" / "all").stat().st_ino == inode and ours.count_all(0) == 2


def test_reserved_ticket_ids_cost_one_write_and_unused_ones_are_given_back(tmp_path):
    store = TicketStore(tmp_path)
    seq = tmp_path / "seq"
    assert store.allocate_id() == 1
    with store.ids_reserved(5):
        assert seq.read_text() == "6\n"  # a crash now leaves 2..6 as a gap, never a reuse
        store.ticket_dir(3).mkdir(parents=True)  # a folder that outlived a lost seq write is skipped
        assert [store.allocate_id(), store.allocate_id()] == [2, 4]
        assert seq.read_text() == "6\n"
    assert seq.read_text() == "4\n"  # 5 and 6 were not used
    with store.ids_reserved(2):
        assert [store.allocate_id(), store.allocate_id(), store.allocate_id()] == [5, 6, 7]  # then one by one
    assert seq.read_text() == "7\n" and TicketStore(tmp_path).allocate_id() == 8


def test_a_failed_reservation_reserves_nothing(tmp_path, monkeypatch):
    from helpdeskd.store import tickets as tickets_module

    store = TicketStore(tmp_path)
    assert store.allocate_id() == 1
    real = tickets_module.atomic_write

    def full(path, data, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(tickets_module, "atomic_write", full)
    with pytest.raises(OSError):
        with store.ids_reserved(5):
            pass
    monkeypatch.setattr(tickets_module, "atomic_write", real)
    assert store.allocate_id() == 2 and (tmp_path / "seq").read_text() == "2\n"  # written, not taken from memory


def test_a_unit_appends_a_tickets_events_together_and_before_its_metadata(tmp_path):
    store = TicketStore(tmp_path)
    log = store.ticket_dir(1) / "events.jsonl"
    with store.unit():
        store.append_event(1, {"type": "created", "ref": "created"})
        store.append_event(1, {"type": "message", "ref": "k1"})
        assert not log.exists() and [e["ref"] for e in store.events(1)] == ["created", "k1"]
        store.save(sample(1))
        assert len(log.read_bytes().splitlines()) == 2  # on disk before ticket.toml said "filed"
        store.append_event(1, {"type": "reply_queued", "ref": "o1"})
        assert store.has_event(1, "reply_queued", "o1") and len(log.read_bytes().splitlines()) == 2
    assert [e["ref"] for e in store.events(1)] == ["created", "k1", "o1"]
    try:
        with store.unit():
            store.append_event(1, {"type": "note", "ref": "n1"})
            raise RuntimeError("a bug half-way through a message")
    except RuntimeError:
        pass
    assert store.has_event(1, "note", "n1")  # what was appended before the error is kept
    store.append_event(1, {"type": "note", "ref": "n2"})  # outside a unit: written at once
    assert log.read_bytes().splitlines()[-1].startswith(b'{"at"') and store.has_event(1, "note", "n2")



def test_has_event_reads_the_history_once_per_unit_and_never_misses_an_event(tmp_path, monkeypatch):
    """The quick answer (the ref's bytes are nowhere in the history) must never hide an event: not
    one written earlier in the unit, nor one whose ref needs escaping, nor one written by hand."""
    store = TicketStore(tmp_path)
    store.save(sample(1))
    log = store.ticket_dir(1) / "events.jsonl"
    log.write_bytes(b'{"type":"note","ref":"by-hand","text":"no spaces"}\n'
                    b'{"type": "note", "ref": "ca\\u00f1a", "text": "escaped by another writer"}\n'
                    b'{"type": "message", "ref": "m1", "text": "mentions \\"o9\\" in passing"}\n'
                    b'{"type":"change","ref":"k:assignee:\\u003cana@x\\u003e"}\n')  # as Go's encoder writes <>
    reads = []
    real = store._read_history
    monkeypatch.setattr(store, "_read_history", lambda ticket_id: reads.append(ticket_id) or real(ticket_id))
    with store.unit():
        assert store.has_event(1, "note", "by-hand")
        assert not store.has_event(1, "note", "m1")  # the bytes are there, the type is not
        assert not store.has_event(1, "reply_queued", "o9")  # there only inside a text: decoded, not found
        assert store.has_event(1, "note", "caña") and not store.has_event(1, "note", "cana")
        assert store.has_event(1, "change", "k:assignee:<ana@x>")
    with store.unit():  # (a unit that decodes nothing: every answer is a quick one)
        assert not store.has_event(1, "reply_queued", "o1")
        store.append_event(1, {"type": "reply_queued", "ref": "o1"})
        store.save(sample(1))  # writes the pending line: the history as read must learn of it
        assert not store.has_event(1, "reply_queued", "o2") and store.has_event(1, "reply_queued", "o1")
        store.append_event(1, {"type": "reply_queued", "ref": "o3"})
        assert store.has_event(1, "reply_queued", "o3")  # pending
    assert reads.count(1) < 8  # the quick answers came from one read a unit; only doubtful ones decoded
    assert store.has_event(1, "reply_queued", "o1") and not store.has_event(1, "note", "o1")
    with store.unit():
        assert not store.has_event(2, "created", "created")  # no history at all
        store.append_event(2, {"type": "created", "ref": "created"})
        assert store.has_event(2, "created", "created")

def test_a_new_tickets_history_is_kept_and_read_again_only_once_it_changed(tmp_path, monkeypatch):
    """A ticket made in a unit keeps its history in memory after the unit (the next batch records
    the mail composed for it meanwhile): used while the file is the size it was, read when another
    writer appended to it, never taken for a ticket that has no file any more."""
    store, other = TicketStore(tmp_path), TicketStore(tmp_path)  # other: another process's store
    opened = []  # the files read
    real_open = os.open

    def watch(path, flags, *args, **kwargs):
        if flags & os.O_ACCMODE == os.O_RDONLY:
            opened.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", watch)
    for _ in range(3):
        with store.unit():
            ticket_id = store.allocate_id()
            store.append_event(ticket_id, {"type": "created", "ref": "created"})
            store.save(sample(ticket_id))
    histories = [f"{store.ticket_dir(n)}/events.jsonl" for n in (1, 2, 3)]
    opened.clear()
    with store.unit():
        assert not store.has_event(1, "reply_queued", "o1")
        store.append_event(1, {"type": "reply_queued", "ref": "o1"})
    assert histories[0] not in opened  # as kept: no read
    assert [e["ref"] for e in store.events(1)] == ["created", "o1"]
    other.append_event(2, {"type": "reply_queued", "ref": "o2"})
    with store.unit():
        assert store.has_event(2, "reply_queued", "o2")  # appended meanwhile: read again
        assert store.has_event(1, "reply_queued", "o1")  # appended since it was kept: read
    assert histories[0] in opened and histories[1] in opened
    shutil.rmtree(store.ticket_dir(3))
    assert not store.has_event(3, "created", "created") and store.events(3) == []
    store2 = TicketStore(tmp_path)  # (keeps at most RECENT_HISTORIES)
    monkeypatch.setattr("helpdeskd.store.tickets.RECENT_HISTORIES", 2)
    for _ in range(4):
        with store2.unit():
            store2.append_event(store2.allocate_id(), {"type": "created", "ref": "created"})
    assert sorted(store2._recent) == [6, 7]


def test_rate_limit_log_is_one_file_and_reads_its_older_form(tmp_path):
    from helpdeskd.store.sentlog import SentLog

    folder = tmp_path / "autoreplies"
    folder.mkdir()
    (folder / "all").write_text("100.000 old1\n105.000 old2\n")  # written before recipients were in it
    log = SentLog(tmp_path)
    assert log.count_all(0) == 2 and log.count("a@x.es", 0) == 0  # counted globally only
    log.record("A@X.es ", "n1", 110.0, 3600)
    log.record("b@x.es", "n2", 111.0, 3600)
    log.record("a@x.es", "n3", 112.0, 3600)
    assert log.count("a@x.es", 0) == 2 and log.count("a@x.es", 111.5) == 1 and log.count("b@x.es", 0) == 1
    assert log.count_all(0) == 5 and sorted(p.name for p in folder.iterdir()) == ["all"]  # no file per address
    assert SentLog(tmp_path).count("a@x.es", 0) == 2  # another process reads the same


def test_a_claim_cut_short_by_a_crash_is_decided_again(svc):
    from helpdeskd.parse import parse

    raw = mail(message_id="<cut@cliente.es>")
    key = parse(raw, svc.config.limits).key
    claim = Path(svc.store._key_path(key))
    claim.parent.mkdir(parents=True, exist_ok=True)
    claim.write_bytes(b'{"action": "ne')  # killed while the claim was first being written
    assert svc.store.read_claim(key) is None
    outcome = file_safely(Inbound("t", "1", raw), svc)
    assert outcome.action == "new" and svc.store.read_claim(key)["ticket"] == outcome.ticket
    assert file_safely(Inbound("t", "1", raw), svc).action == "duplicate"


def test_an_append_after_a_torn_line_starts_a_line_of_its_own(tmp_path):
    store = TicketStore(tmp_path)
    store.append_event(1, {"type": "note", "ref": "a"})
    log = store.ticket_dir(1) / "events.jsonl"
    with log.open("ab") as torn:
        torn.write(b'{"type": "note", "ref": "b", "te')  # power lost mid-append
    store.append_event(1, {"type": "note", "ref": "c"})
    assert [e["ref"] for e in store.events(1)] == ["a", "c"]  # the torn one skipped, the next kept


def test_what_lies_on_another_file_system_is_fsynced_file_by_file(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    if fsutil._SYNCFS is None or os.geteuid() != 0:
        pytest.skip("needs syncfs(2) and root (to mount a tmpfs inside the state directory)")
    other = tmp_path / "other"
    other.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(other)], capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        synced = _record_fsyncs(monkeypatch)
        syncer = fsutil.Syncer(root=tmp_path)
        with syncer.batch():
            atomic_write(tmp_path / "here", b"x", sync=syncer)
            atomic_write(other / "there", b"y", sync=syncer)
        assert sorted(synced) == [str(other), str(other / "there")]  # the rest went with the syncfs
    finally:
        subprocess.run(["umount", str(other)], check=True)


def _record_fsyncs(monkeypatch) -> list[str]:
    """The paths fsynced from now on (fsyncs still happen)."""
    from helpdeskd.store import fsutil

    synced: list[str] = []
    real_fsync = os.fsync
    monkeypatch.setattr(fsutil.os, "fsync",
                        lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")), real_fsync(fd))[1])
    return synced


def test_a_folder_symlinked_to_another_file_system_is_fsynced_file_by_file(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    if fsutil._SYNCFS is None or os.stat("/dev/shm").st_dev == os.stat(tmp_path).st_dev:
        pytest.skip("needs syncfs(2) and /dev/shm on a file system of its own")
    elsewhere = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        (tmp_path / "outbox").symlink_to(elsewhere)  # say, the outbox moved to a bigger disk
        synced = _record_fsyncs(monkeypatch)
        syncer = fsutil.Syncer(root=tmp_path)
        with syncer.batch():
            atomic_write(tmp_path / "here", b"x", sync=syncer)
            create_exclusive(tmp_path / "outbox" / "mail", b"y", sync=syncer)
            (elsewhere / "by-the-helper").write_bytes(b"z")  # another process wrote it on our behalf
            syncer.written_elsewhere(tmp_path / "outbox" / "by-the-helper")
        assert sorted(synced) == [str(elsewhere), str(elsewhere / "by-the-helper"), str(elsewhere / "mail")]
    finally:
        shutil.rmtree(elsewhere)


def test_a_batch_where_only_another_process_wrote_is_still_committed(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    if fsutil._SYNCFS is None:
        pytest.skip("needs syncfs(2)")
    calls: list[int] = []
    monkeypatch.setattr(fsutil, "_SYNCFS", lambda fd: calls.append(fd) or 0)
    syncer = fsutil.Syncer(root=tmp_path)
    with syncer.collect() as touched:
        (tmp_path / "queued").write_bytes(b"by the helper")
        syncer.written_elsewhere(tmp_path / "queued")
    assert touched and not touched.files  # nothing else is mounted here: no paths, one syncfs
    syncer.commit(touched)
    assert len(calls) == 1


def test_a_held_message_whose_reason_a_crash_lost_gets_it_when_filed_again(tmp_path):
    from helpdeskd.store.holding import Holding

    held = Holding(tmp_path, "held")
    (held.root / "k1.eml").write_bytes(b"Subject: x\r\n\r\nhola\r\n")  # killed before the .json
    assert held.put("k1", b"Subject: x\r\n\r\nhola\r\n", "unknown sender", "inbox:1") is False
    [item] = list(held.items())
    assert item.reason == "unknown sender" and item.source == "inbox:1"
    assert held.put("k1", b"other", "another reason", "inbox:2") is False  # kept once, reason unchanged
    assert [i.reason for i in held.items()] == ["unknown sender"] and held.raw("k1").endswith(b"hola\r\n")


def test_a_syncfs_commit_is_told_the_paths_where_another_file_system_may_be_below(tmp_path, monkeypatch):
    from helpdeskd.store import fsutil

    if fsutil._SYNCFS is None:
        pytest.skip("needs syncfs(2)")
    syncer = fsutil.Syncer(root=tmp_path)

    def recorded() -> list:
        with syncer.collect() as touched:
            atomic_write(tmp_path / "f", b"x", sync=syncer)
        files = list(touched.files)
        syncer.commit(touched)
        return files

    assert recorded() == []  # one syncfs covers it all
    monkeypatch.setattr(fsutil, "_mounts_below", lambda root: [f"{root}/index"])
    assert recorded() == [str(tmp_path / "f")]  # a file system mounted inside: its files need fsyncs
    monkeypatch.setattr(fsutil, "_mounts_below", lambda root: None)
    assert recorded() == [str(tmp_path / "f")]  # the mount table unreadable: assume there may be one
