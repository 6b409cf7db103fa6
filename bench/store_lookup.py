"""Do TicketStore lookups stay constant-time as the store grows to a million tickets?

Method
------
A throw-away store is built in a temporary directory and grown in stages of 10^3, 10^4, 10^5 and
10^6 tickets (``--max``; ``--quick`` stops at 10^5). Every ticket gets, in the store's real on-disk
format, its folder ``tickets/<id // 1000>/<id>/`` with ``ticket.toml`` (and whatever empty folders
``save`` makes there), one claim ``index/keys/<k[:2]>/<k>`` and one Message-ID entry
``index/msgid/<h[:2]>/<h>`` (256 buckets per index; two levels, 65,536 buckets, before 2026-11-22).
The paths come from the store's own ``ticket_dir``, ``_key_path`` and ``_msgid_path``, so the bench
follows any layout change.

Populating through ``TicketStore(durable=False).save`` / ``write_claim`` / ``index_message_id``
costs about 1 ms per ticket here (each new folder still fsyncs its parent), too slow for 10^6. So by
default the files are written directly, with the store's own path functions and serialisers, and a
self-check first builds a few tickets both ways and compares the two trees (every path, file content
and mode) and refuses to run unless they are identical. ``--via-api``
populates through the public write API instead. Lookups always go through the real
``TicketStore.get``, ``find_by_message_id`` and ``read_claim``.

After each stage (and an ``os.sync()``), every lookup kind is timed call by call on ``--samples``
random existing entries (hits) and as many absent ones (misses), twice over the same sample: the
*cold* pass finds the caches as the population left them (at large stages, and on a shared machine
whose caches get dropped, partly on disk), and the *warm* pass repeats exactly the same lookups right
after, so their inodes, dentries and blocks are cached. The report gives both tables: median and p99 in
µs, and per lookup the mean CPU time and the bytes read from the block device, which tell a scan (CPU
grows) from a cold cache (disk reads grow). It also lists, per stage and lookup kind, how many entries
the directories on each looked-up path hold (from the store root down to the file's folder): that is
the work a lookup could have to do in a file system without hashed directories, and it is what must
stay bounded for the lookup to be constant-time.

What the ratio means
--------------------
Absolute times depend on the machine and its load; the claim is about growth. For each lookup kind,
the ratio is its median at a stage divided by its median at the 10^3 stage *of the same run*. A
constant-time lookup keeps that ratio near 1; a lookup that scans a growing directory or file would
show a ratio near 1000 at 10^6. The verdict is on the *warm* pass, which measures the lookup rather
than the disk: the run passes when every warm median ratio at the largest stage is at most
``--max-ratio`` (default 3), and the script exits 1 otherwise. The cold table is reported, not judged.

Usage::

    .venv/bin/python bench/store_lookup.py            # 10^3 … 10^6, several minutes
    .venv/bin/python bench/store_lookup.py --quick    # 10^3 … 10^5
    .venv/bin/python bench/store_lookup.py --max 100000 --json out.json --dir /var/tmp

A 10^6 run takes ~11 minutes to populate and measure, ~16 GiB and ~4.15 M inodes, and then some 20
minutes to delete (see :func:`remove_store`); run it in the background.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import multiprocessing
import os
import random
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import tomli_w

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from helpdeskd.store.tickets import TicketStore, ticket_to_dict  # noqa: E402
from helpdeskd.ticket import Requester, Status, Ticket  # noqa: E402

KINDS = ("get", "msgid", "claim")  # TicketStore.get / find_by_message_id / read_claim


# -- synthetic data ------------------------------------------------------------------------------
def message_id(n: int) -> str:
    return f"<{n}.{hashlib.md5(str(n).encode()).hexdigest()[:12]}@customer.example>"


def message_key(n: int) -> str:
    """32 lower-case hex characters, the shape of :func:`helpdeskd.parse.message_key`."""
    return hashlib.sha256(f"bench:{n}".encode()).hexdigest()[:32]


def make_ticket(n: int) -> Ticket:
    stamp = "2024-05-01T12:00:00+00:00"
    return Ticket(
        id=n, subject=f"Cannot reach my mailbox (case {n})", status=Status.NEW, queue="support",
        priority="normal", category="email", requester=Requester(f"user{n}@customer.example", f"User {n}", "es"),
        created=stamp, updated=stamp, token=hashlib.sha256(f"token:{n}".encode()).hexdigest()[:32],
        source="pop3:support", message_ids=(message_id(n),), message_keys=(message_key(n),), mail_count=1,
    )


def make_claim(n: int) -> dict:
    return {"action": "new", "ticket": n, "reply": "ack", "lang": "es", "notes": [], "token": "x" * 32}


# -- populating ----------------------------------------------------------------------------------
def populate_api(store: TicketStore, ids: range) -> None:
    """Through the store's public write API (slow: about 1 ms per ticket here)."""
    for n in ids:
        store.save(make_ticket(n))
        store.write_claim(message_key(n), make_claim(n))
        store.index_message_id(message_id(n), n)
    _write_seq(store, ids)


def populate_direct(store: TicketStore, ids: range, subdirs: tuple[str, ...] = ()) -> None:
    """The same files as :func:`populate_api`, written without tmp+rename and without fsyncs.

    ``subdirs`` are the folders ``save`` creates inside a ticket folder (see :func:`ticket_subdirs`).
    """
    _write_tickets(store, ids, subdirs)
    _write_seq(store, ids)


def _write_tickets(store: TicketStore, ids: range, subdirs: tuple[str, ...]) -> None:
    for n in ids:
        folder = store.ticket_dir(n)
        folder.mkdir(parents=True)
        for sub in subdirs:
            (folder / sub).mkdir()
        _create(folder / "ticket.toml", tomli_w.dumps(ticket_to_dict(make_ticket(n))).encode())
        _create_in_bucket(Path(store._key_path(message_key(n))), json.dumps(make_claim(n), sort_keys=True).encode())
        _create_in_bucket(Path(store._msgid_path(message_id(n))), f"{n}\n".encode())


def populate_parallel(store: TicketStore, ids: range, jobs: int, subdirs: tuple[str, ...]) -> None:
    """:func:`populate_direct` in ``jobs`` processes, one ticket shard (1000 ids) per task.

    File creation here is bound by I/O latency, not CPU, so more writers than cores still help.
    Index bucket folders are made on first use, as the store does (``mkdir`` races are harmless).
    """
    bounds = sorted({ids.start, ids.stop, *range((ids.start // 1000 + 1) * 1000, ids.stop, 1000)})
    chunks = [(str(store.root), a, b, subdirs) for a, b in zip(bounds, bounds[1:])]
    with multiprocessing.Pool(jobs) as pool:
        pool.starmap(_populate_chunk, chunks)
    _write_seq(store, ids)


def _populate_chunk(root: str, start: int, stop: int, subdirs: tuple[str, ...]) -> None:
    _write_tickets(TicketStore(Path(root), durable=False), range(start, stop), subdirs)


def _create_in_bucket(path: Path, data: bytes) -> None:
    """Create an index entry, making its bucket folders (however many levels) the first time."""
    try:
        _create(path, data)
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        _create(path, data)


def _create(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_seq(store: TicketStore, ids: range) -> None:
    if len(ids):
        (store.root / "seq").write_text(f"{ids[-1]}\n")


def ticket_subdirs(workdir: Path, count: int = 1200) -> tuple[str, ...]:
    """Learn the ticket-folder shape from the real API, then check the direct writer reproduces the
    API's whole tree byte for byte; refuse to run if it does not.

    1,200 tickets span two ticket shards, and their index entries fill most of the 256 buckets, some
    of them several times, so both the "new bucket" and the "existing bucket" paths are compared.
    """
    api = TicketStore(workdir / "api", durable=False)
    populate_api(api, range(1, count + 1))
    subdirs = tuple(sorted(p.name for p in api.ticket_dir(1).iterdir() if p.is_dir()))
    direct = TicketStore(workdir / "direct", durable=False)
    populate_direct(direct, range(1, count + 1), subdirs)
    same = _snapshot(api.root) == _snapshot(direct.root)
    shutil.rmtree(api.root)
    shutil.rmtree(direct.root)
    if not same:
        raise SystemExit("bench: direct population does not match TicketStore's format; use --via-api")
    return subdirs


def _snapshot(root: Path) -> dict[str, tuple[int, bytes | None]]:
    """Every path under ``root`` with its mode and, for files, its bytes."""
    return {str(p.relative_to(root)): (p.stat().st_mode, p.read_bytes() if p.is_file() else None)
            for p in root.rglob("*")}


# -- measuring -----------------------------------------------------------------------------------
@dataclass
class Row:
    stage: int
    cache: str  # "cold": first pass over the sample; "warm": the same sample again, right after
    kind: str
    outcome: str  # "hit" or "miss"
    median_us: float
    p99_us: float
    cpu_us: float  # mean CPU time (user + system) per lookup: a scan would show here
    disk_kib: float  # mean bytes read from the block device per lookup: cache misses show here
    ratio: float = 1.0  # median / median of the same cache pass, kind and outcome at the first stage


def lookups(store: TicketStore) -> dict[str, Callable[[int], object]]:
    """Each kind of lookup as a call on a ticket number; numbers past the store's last id miss."""
    return {
        "get": store.get,
        "msgid": lambda n: store.find_by_message_id(message_id(n)),
        "claim": lambda n: store.read_claim(message_key(n)),
    }


def lookup_path(store: TicketStore, kind: str, n: int) -> Path:
    """The file a lookup of ``kind`` for ticket number ``n`` opens (the store's own path functions)."""
    if kind == "get":
        return store.ticket_dir(n) / "ticket.toml"
    if kind == "msgid":
        return Path(store._msgid_path(message_id(n)))
    return Path(store._key_path(message_key(n)))


def time_calls(call: Callable[[int], object], numbers: Iterable[int], expect_hit: bool) -> list[float]:
    """Per-call wall time in µs; also asserts each answer, so a broken lookup cannot look fast."""
    out = []
    for n in numbers:
        start = time.perf_counter_ns()
        found = call(n)
        out.append((time.perf_counter_ns() - start) / 1000)
        if (found is not None) != expect_hit:
            raise SystemExit(f"bench: lookup of {n} gave {found!r}, expected a {'hit' if expect_hit else 'miss'}")
    return out


def timed_pass(call: Callable[[int], object], numbers: list[int], expect_hit: bool) -> tuple[list[float], float, float]:
    """(per-call µs, mean CPU µs per call, mean KiB read from storage per call)."""
    cpu, disk = time.process_time_ns(), disk_read_bytes()
    times = time_calls(call, numbers, expect_hit)
    return (times, (time.process_time_ns() - cpu) / 1000 / len(numbers),
            (disk_read_bytes() - disk) / 1024 / len(numbers))


def sample(size: int, samples: int, rng: random.Random) -> dict[str, dict[str, list[int]]]:
    """Per lookup kind, random existing ticket numbers (hits) and absent ones (misses)."""
    return {kind: {"hit": [rng.randint(1, size) for _ in range(samples)],
                   "miss": [rng.randint(size + 1, 10**12) for _ in range(samples)]} for kind in KINDS}


def measure(store: TicketStore, size: int, numbers: dict[str, dict[str, list[int]]],
            rng: random.Random) -> list[Row]:
    """Each kind and outcome: a cold pass over its sample, then a warm pass over the very same numbers."""
    rows = []
    for kind, call in lookups(store).items():
        # warm the interpreter's code paths on other numbers, so the sample's own data stays cold
        time_calls(call, [rng.randint(1, size) for _ in range(200)], True)
        for outcome, sample_numbers in numbers[kind].items():
            for cache in ("cold", "warm"):
                times, cpu_us, disk_kib = timed_pass(call, sample_numbers, outcome == "hit")
                rows.append(Row(size, cache, kind, outcome, statistics.median(times), percentile(times, 99),
                                cpu_us, disk_kib))
    return rows


def disk_read_bytes() -> int:
    """Bytes this process has caused to be read from storage (Linux ``/proc/self/io``; 0 elsewhere)."""
    try:
        text = Path("/proc/self/io").read_text()
    except OSError:
        return 0
    return next((int(line.split()[1]) for line in text.splitlines() if line.startswith("read_bytes:")), 0)


def percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


def add_ratios(rows: list[Row]) -> None:
    base = {(r.cache, r.kind, r.outcome): r.median_us for r in rows if r.stage == rows[0].stage}
    for r in rows:
        r.ratio = r.median_us / base[(r.cache, r.kind, r.outcome)]


# -- layout facts --------------------------------------------------------------------------------
def path_dirs(store: TicketStore, numbers: dict[str, dict[str, list[int]]]) -> dict[str, dict]:
    """Per lookup kind, the entry counts of the directories on the sampled hits' paths, level by level.

    Level 0 is the store root; the last level is the folder holding the file the lookup opens. For
    each level: the largest and the mean entry count over the sample; and the largest sum over one
    path (the most directory entries a single lookup has to resolve through).
    """
    counts: dict[Path, int] = {}

    def entries(folder: Path) -> int:
        if folder not in counts:
            counts[folder] = _count(folder)
        return counts[folder]

    out = {}
    for kind in KINDS:
        per_path = []
        for n in numbers[kind]["hit"]:
            rel = lookup_path(store, kind, n).parent.relative_to(store.root)
            folders = [store.root] + [store.root.joinpath(*rel.parts[:i + 1]) for i in range(len(rel.parts))]
            per_path.append([entries(f) for f in folders])
        levels = list(zip(*per_path))
        names = ["<root>"] + _level_names(lookup_path(store, kind, 1).parent.relative_to(store.root))
        out[kind] = {"levels": names,
                     "max": [max(level) for level in levels],
                     "mean": [round(statistics.fmean(level), 1) for level in levels],
                     "max_path_total": max(sum(p) for p in per_path)}
    return out


def _level_names(rel: Path) -> list[str]:
    """``tickets/0/1`` → ["tickets/", "<shard>/", "<id>/"];
    ``index/keys/ab`` → ["index/", "keys/", "<k[:2]>/"] (and "<k[2:4]>/" for a two-level store's ``ab/cd``)."""
    generic = {"tickets": ["tickets/", "<shard>/", "<id>/"],
               "index": ["index/", "{}/", "<h[:2]>/", "<h[2:4]>/"]}[rel.parts[0]]
    letter = "k" if rel.parts[1:2] == ("keys",) else "h"
    return [name.format(rel.parts[1]).replace("h[", f"{letter}[") for name in generic][:len(rel.parts)]


def _count(path: Path) -> int:
    with os.scandir(path) as entries:
        return sum(1 for _ in entries)


def disk_used(path: Path) -> tuple[int, int]:
    """(bytes, inodes) in use on the file system holding ``path``, for a before/after difference."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree


def cache_state() -> dict[str, int]:
    """Page-cache size and the kernel's cache-drop counters (Linux), to see what the cold pass met."""
    state = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith(("Cached:", "MemFree:")):
                state[line.split(":")[0].lower() + "_mib"] = int(line.split()[1]) // 1024
        for line in Path("/proc/vmstat").read_text().splitlines():
            if line.startswith(("drop_pagecache ", "drop_slab ")):
                state[line.split()[0]] = int(line.split()[1])
    except OSError:
        pass
    return state


# -- reporting -----------------------------------------------------------------------------------
def print_table(rows: list[Row], dirs: dict[int, dict[str, dict]], caches: dict[int, dict[str, int]]) -> None:
    for cache, title in (("cold", "COLD pass: first lookups of the sample, caches as the population left them"),
                         ("warm", "WARM pass: the same sample again (judged)")):
        print(title)
        print(f"{'tickets':>9} {'lookup':<6} {'':<4} {'median µs':>10} {'p99 µs':>9} {'ratio':>6}"
              f" {'cpu µs':>7} {'disk KiB':>8}")
        for r in rows:
            if r.cache == cache:
                print(f"{r.stage:>9,} {r.kind:<6} {r.outcome:<4} {r.median_us:>10.1f} {r.p99_us:>9.1f}"
                      f" {r.ratio:>6.2f} {r.cpu_us:>7.1f} {r.disk_kib:>8.2f}")
        print()
    print("Entries in the directories on a looked-up path (sampled hits), per level: max (mean)")
    for stage, kinds in dirs.items():
        for kind, d in kinds.items():
            levels = "  ".join(f"{name} {mx:,} ({mean:,.1f})"
                               for name, mx, mean in zip(d["levels"], d["max"], d["mean"]))
            print(f"{stage:>9,} {kind:<6} {levels}  | largest path total {d['max_path_total']:,}")
    print()
    print("Page cache before each cold pass:")
    for stage, state in caches.items():
        print(f"{stage:>9,} " + ", ".join(f"{k}={v:,}" for k, v in state.items()))


def verdict(rows: list[Row], max_ratio: float) -> list[str]:
    last = rows[-1].stage
    return [f"warm {r.kind} {r.outcome}: ratio {r.ratio:.2f} at {last:,} > {max_ratio}"
            for r in rows if r.stage == last and r.cache == "warm" and r.ratio > max_ratio]


# -- driver --------------------------------------------------------------------------------------
def stages(maximum: int) -> list[int]:
    out = [10**e for e in range(3, 8) if 10**e <= maximum]
    return out if out and out[-1] == maximum else out + [maximum]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--dir", help="parent of the temporary store (default: the system temp dir)")
    p.add_argument("--max", type=int, default=10**6, help="largest stage (default 10^6)")
    p.add_argument("--quick", action="store_true", help="stop at 10^5 tickets")
    p.add_argument("--samples", type=int, default=2000, help="lookups per kind and outcome per stage")
    p.add_argument("--max-ratio", type=float, default=3.0, help="fail above this median ratio at the last stage")
    p.add_argument("--via-api", action="store_true", help="populate through TicketStore's write API (slow)")
    p.add_argument("--jobs", type=int, default=8, help="writer processes when populating (default 8)")
    p.add_argument("--rm-jobs", type=int, default=32, help="processes deleting the store (default 32)")
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="leave the store on disk")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.max = min(args.max, 10**5)
    return args


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], dict, dict, dict]:
    if args.via_api:
        fill = populate_api
    else:
        fill = functools.partial(populate_parallel, jobs=args.jobs, subdirs=ticket_subdirs(workdir))
    store = TicketStore(workdir / "state", durable=False)
    rng = random.Random(args.seed)
    rows: list[Row] = []
    dirs: dict[int, dict[str, dict]] = {}
    caches: dict[int, dict[str, int]] = {}
    before, done, started = disk_used(workdir), 0, time.monotonic()
    for size in stages(args.max):
        fill(store, range(done + 1, size + 1))
        done = size
        after = disk_used(workdir)
        log(started, f"{size:,} tickets written; syncing")
        os.sync()  # so the lookups do not compete with write-back of what was just written
        log(started, "measuring")
        if not rows:  # the first pass over a fresh process runs slow; let it warm up, keep the second
            measure(store, size, sample(size, args.samples, rng), rng)
        numbers = sample(size, args.samples, rng)
        caches[size] = cache_state()
        rows += measure(store, size, numbers, rng)
        dirs[size] = path_dirs(store, numbers)
    usage = {"tickets": done, "bytes": after[0] - before[0], "inodes": after[1] - before[1],
             "populate_and_measure_seconds": round(time.monotonic() - started), "cache_at_end": cache_state()}
    return rows, dirs, caches, usage


def log(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.0f} s] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="helpdeskd-bench-", dir=args.dir))
    try:
        rows, dirs, caches, usage = run(args, workdir)
        return report(rows, dirs, caches, usage, args)
    finally:
        if args.keep:
            print(f"store kept in {workdir}", file=sys.stderr)
        else:
            print("removing the store…", file=sys.stderr, flush=True)
            remove_store(workdir, args.rm_jobs)


def remove_store(workdir: Path, jobs: int) -> None:
    """Delete the store in ``jobs`` processes, one ticket shard or index bucket per task.

    Deleting is bound by I/O latency, not CPU: on a cold cache every unlink reads inode-table blocks,
    and with the ``discard`` mount option of this machine's root file system (no journal) every freed
    block waits for a synchronous discard. Measured at 10^6 tickets: a serial ``rmtree`` ~2.5-15 k
    inodes/s at best, 8 processes over 1,513 folders ~600 inodes/s under load, 32 processes over
    132,009 folders with children removed in inode order ~3,000 inodes/s.
    """
    state = workdir / "state"
    parts = [p for p in (state / "tickets").iterdir()] if (state / "tickets").is_dir() else []
    for index in ("index/keys", "index/msgid"):
        if (state / index).is_dir():
            parts += list((state / index).iterdir())  # the buckets (a second level, in stores before it went)
    with multiprocessing.Pool(jobs) as pool:
        for _ in pool.imap_unordered(_rmtree_inode_order, parts, chunksize=4):
            pass
    shutil.rmtree(workdir, ignore_errors=True)


def _rmtree_inode_order(path: Path) -> None:
    """``rmtree``, each folder's children in inode order, so cold inode tables are read sequentially."""
    try:
        with os.scandir(path) as it:
            entries = sorted(it, key=lambda e: e.inode())
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.is_dir(follow_symlinks=False):
            _rmtree_inode_order(Path(entry.path))
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(entry.path)
    with contextlib.suppress(FileNotFoundError):
        os.rmdir(path)


def report(rows: list[Row], dirs: dict, caches: dict, usage: dict, args: argparse.Namespace) -> int:
    """Print the tables and the verdict (and write JSON); the exit status is 1 on failure."""
    add_ratios(rows)
    print_table(rows, dirs, caches)
    print(f"\ndisk used at {usage['tickets']:,} tickets: {usage['bytes'] / 2**30:.2f} GiB, "
          f"{usage['inodes']:,} inodes (file-system delta; other writers add noise); "
          f"populate + measure {usage['populate_and_measure_seconds']} s")
    failures = verdict(rows, args.max_ratio)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [asdict(r) for r in rows], "path_dirs": dirs,
                                               "cache_before_cold_pass": caches, "usage": usage,
                                               "failures": failures}, indent=2))
    for line in failures:
        print("FAIL", line)
    if not failures:
        print(f"PASS: every warm median ratio at {rows[-1].stage:,} tickets is <= {args.max_ratio}")
    sys.stdout.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
