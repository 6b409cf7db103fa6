"""Do TicketStore lookups stay constant-time as the store grows to a million tickets?

Method
------
A throw-away store is built in a temporary directory and grown in stages of 10^3, 10^4, 10^5 and
10^6 tickets (``--max``; ``--quick`` stops at 10^5). Every ticket gets, in the store's real on-disk
format, its folder ``tickets/<id // 1000>/<id>/`` with ``ticket.toml`` (and whatever empty folders
``save`` makes there), one
claim ``index/keys/<k[:2]>/<k>`` and one Message-ID entry ``index/msgid/<h[:2]>/<h>``.

Populating through ``TicketStore(durable=False).save`` / ``write_claim`` / ``index_message_id``
costs about 1 ms per ticket here (each new folder still fsyncs its parent), too slow for 10^6. So by
default the files are written directly, with the store's own path functions and serialisers, and a
self-check first builds a few tickets both ways and compares the two trees byte for byte. ``--via-api``
populates through the public write API instead. Lookups always go through the real
``TicketStore.get``, ``find_by_message_id`` and ``read_claim``.

After each stage, every lookup kind is timed call by call on ``--samples`` random existing entries
(hits) and as many absent ones (misses); the report gives the median and p99 in µs, and per lookup
the mean CPU time and the bytes read from the block device, which tell a scan (CPU grows) from a cold
cache (disk reads grow).

What the ratio means
--------------------
Absolute times depend on the machine and its load; the claim is about growth. For each lookup kind,
the ratio is its median at a stage divided by its median at the 10^3 stage *of the same run*. A
constant-time lookup keeps that ratio near 1; a lookup that scans a growing directory or file would
show a ratio near 1000 at 10^6. Page-cache and dentry-cache effects on a store of millions of inodes
are allowed for: the run passes when every median ratio at the largest stage is at most
``--max-ratio`` (default 3), and the script exits 1 otherwise.

Usage::

    .venv/bin/python bench/store_lookup.py            # 10^3 … 10^6, several minutes
    .venv/bin/python bench/store_lookup.py --quick    # 10^3 … 10^5
    .venv/bin/python bench/store_lookup.py --max 100000 --json out.json --dir /var/tmp
"""

from __future__ import annotations

import argparse
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
        _create(_bucketed(store._key_path(message_key(n))), json.dumps(make_claim(n), sort_keys=True).encode())
        _create(_bucketed(store._msgid_path(message_id(n))), f"{n}\n".encode())


def populate_parallel(store: TicketStore, ids: range, jobs: int, subdirs: tuple[str, ...]) -> None:
    """:func:`populate_direct` in ``jobs`` processes, one ticket shard (1000 ids) per task.

    File creation here is bound by I/O latency, not CPU, so more writers than cores still help.
    """
    for bucket in range(256):
        for index in ("keys", "msgid"):
            (store.root / "index" / index / f"{bucket:02x}").mkdir(exist_ok=True)
    bounds = sorted({ids.start, ids.stop, *range((ids.start // 1000 + 1) * 1000, ids.stop, 1000)})
    chunks = [(str(store.root), a, b, subdirs) for a, b in zip(bounds, bounds[1:])]
    with multiprocessing.Pool(jobs) as pool:
        pool.starmap(_populate_chunk, chunks)
    _write_seq(store, ids)


def _populate_chunk(root: str, start: int, stop: int, subdirs: tuple[str, ...]) -> None:
    _write_tickets(TicketStore(Path(root), durable=False), range(start, stop), subdirs)


def _bucketed(path: Path) -> Path:
    path.parent.mkdir(exist_ok=True)  # 256 buckets, created once
    return path


def _create(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


def _write_seq(store: TicketStore, ids: range) -> None:
    if len(ids):
        (store.root / "seq").write_text(f"{ids[-1]}\n")


def ticket_subdirs(workdir: Path, count: int = 30) -> tuple[str, ...]:
    """Learn the ticket-folder shape from the real API, then check the direct writer reproduces the
    API's whole tree byte for byte; refuse to run if it does not."""
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


def _snapshot(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() else None) for p in root.rglob("*")}


# -- measuring -----------------------------------------------------------------------------------
@dataclass
class Row:
    stage: int
    kind: str
    outcome: str  # "hit" or "miss"
    median_us: float
    p99_us: float
    cpu_us: float  # mean CPU time (user + system) per lookup: a scan would show here
    disk_kib: float  # mean bytes read from the block device per lookup: cache misses show here
    ratio: float = 1.0  # median / median of the same kind and outcome at the first stage


def lookups(store: TicketStore) -> dict[str, Callable[[int], object]]:
    """Each kind of lookup as a call on a ticket number; numbers past the store's last id miss."""
    return {
        "get": store.get,
        "msgid": lambda n: store.find_by_message_id(message_id(n)),
        "claim": lambda n: store.read_claim(message_key(n)),
    }


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


def measure(store: TicketStore, size: int, samples: int, rng: random.Random) -> list[Row]:
    rows = []
    for kind, call in lookups(store).items():
        hits = [rng.randint(1, size) for _ in range(samples)]
        misses = [rng.randint(size + 1, 10**12) for _ in range(samples)]
        time_calls(call, hits[:200], True)  # warm the interpreter's code paths, not the data
        for outcome, numbers in (("hit", hits), ("miss", misses)):
            cpu, disk = time.process_time_ns(), disk_read_bytes()
            times = time_calls(call, numbers, outcome == "hit")
            cpu_us = (time.process_time_ns() - cpu) / 1000 / samples
            disk_kib = (disk_read_bytes() - disk) / 1024 / samples
            rows.append(Row(size, kind, outcome, statistics.median(times), percentile(times, 99), cpu_us, disk_kib))
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
    base = {(r.kind, r.outcome): r.median_us for r in rows if r.stage == rows[0].stage}
    for r in rows:
        r.ratio = r.median_us / base[(r.kind, r.outcome)]


# -- layout facts --------------------------------------------------------------------------------
def layout(store: TicketStore) -> dict[str, int]:
    """Entry counts of the directories a lookup resolves through (the ones that grow with the store)."""
    root = store.root
    return {
        "ticket_shards": _count(root / "tickets"),
        "max_tickets_per_shard": max(_count(p) for p in (root / "tickets").iterdir()),
        "msgid_bucket_entries": _count(root / "index" / "msgid" / "00"),
        "key_bucket_entries": _count(root / "index" / "keys" / "00"),
        "msgid_bucket_dir_bytes": (root / "index" / "msgid" / "00").stat().st_size,
    }


def _count(path: Path) -> int:
    with os.scandir(path) as entries:
        return sum(1 for _ in entries)


def disk_used(path: Path) -> tuple[int, int]:
    """(bytes, inodes) in use on the file system holding ``path``, for a before/after difference."""
    st = os.statvfs(path)
    return (st.f_blocks - st.f_bfree) * st.f_frsize, st.f_files - st.f_ffree


# -- reporting -----------------------------------------------------------------------------------
def print_table(rows: list[Row], layouts: dict[int, dict[str, int]]) -> None:
    print(f"{'tickets':>9} {'lookup':<6} {'':<4} {'median µs':>10} {'p99 µs':>9} {'ratio':>6}"
          f" {'cpu µs':>7} {'disk KiB':>8}")
    for r in rows:
        print(f"{r.stage:>9,} {r.kind:<6} {r.outcome:<4} {r.median_us:>10.1f} {r.p99_us:>9.1f} {r.ratio:>6.2f}"
              f" {r.cpu_us:>7.1f} {r.disk_kib:>8.2f}")
    print()
    for stage, facts in layouts.items():
        print(f"{stage:>9,} " + ", ".join(f"{k}={v:,}" for k, v in facts.items()))


def verdict(rows: list[Row], max_ratio: float) -> list[str]:
    last = rows[-1].stage
    return [f"{r.kind} {r.outcome}: ratio {r.ratio:.2f} at {last:,} > {max_ratio}"
            for r in rows if r.stage == last and r.ratio > max_ratio]


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
    p.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    p.add_argument("--keep", action="store_true", help="leave the store on disk")
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args(argv)
    if args.quick:
        args.max = min(args.max, 10**5)
    return args


def run(args: argparse.Namespace, workdir: Path) -> tuple[list[Row], dict[int, dict[str, int]], dict]:
    if args.via_api:
        fill = populate_api
    else:
        fill = functools.partial(populate_parallel, jobs=args.jobs, subdirs=ticket_subdirs(workdir))
    store = TicketStore(workdir / "state", durable=False)
    rng = random.Random(args.seed)
    rows: list[Row] = []
    layouts: dict[int, dict[str, int]] = {}
    before, done, started = disk_used(workdir), 0, time.monotonic()
    for size in stages(args.max):
        fill(store, range(done + 1, size + 1))
        done = size
        after = disk_used(workdir)
        log(started, f"{size:,} tickets written; syncing")
        os.sync()  # so the lookups do not compete with write-back of what was just written
        log(started, "measuring")
        if not rows:  # the first pass over a fresh process runs slow; let it warm up, keep the second
            measure(store, size, args.samples, rng)
        rows += measure(store, size, args.samples, rng)
        layouts[size] = layout(store)
    usage = {"tickets": done, "bytes": after[0] - before[0], "inodes": after[1] - before[1],
             "populate_and_measure_seconds": round(time.monotonic() - started)}
    return rows, layouts, usage


def log(started: float, text: str) -> None:
    print(f"[{time.monotonic() - started:6.0f} s] {text}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="helpdeskd-bench-", dir=args.dir))
    try:
        rows, layouts, usage = run(args, workdir)
        return report(rows, layouts, usage, args)
    finally:
        if args.keep:
            print(f"store kept in {workdir}", file=sys.stderr)
        else:
            print("removing the store…", file=sys.stderr, flush=True)
            remove_store(workdir, args.jobs)


def remove_store(workdir: Path, jobs: int) -> None:
    """Delete the store, one shard or bucket per task: a serial rmtree of 10^6 tickets takes tens of minutes here."""
    state = workdir / "state"
    parts = [p for sub in ("tickets", "index/keys", "index/msgid") if (state / sub).is_dir()
             for p in (state / sub).iterdir()]
    with multiprocessing.Pool(jobs) as pool:
        pool.map(_rmtree_quietly, parts, chunksize=8)
    _rmtree_quietly(workdir)


def _rmtree_quietly(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)


def report(rows: list[Row], layouts: dict[int, dict[str, int]], usage: dict, args: argparse.Namespace) -> int:
    """Print the table and the verdict (and write JSON); the exit status is 1 on failure."""
    add_ratios(rows)
    print_table(rows, layouts)
    print(f"\ndisk used at {usage['tickets']:,} tickets: {usage['bytes'] / 2**30:.2f} GiB, "
          f"{usage['inodes']:,} inodes (file-system delta; other writers add noise)")
    failures = verdict(rows, args.max_ratio)
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": [asdict(r) for r in rows], "layout": layouts,
                                               "usage": usage, "failures": failures}, indent=2))
    for line in failures:
        print("FAIL", line)
    if not failures:
        print(f"PASS: every median ratio at {rows[-1].stage:,} tickets is <= {args.max_ratio}")
    sys.stdout.flush()
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
