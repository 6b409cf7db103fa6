"""The POP3 filing thread's work per message in CPU instructions (valgrind's callgrind): a measure
that does not drift with the machine's load, for comparing two versions of the daemon's side.

    .venv/bin/python bench/filer_instructions.py [--sizes 200,600] [--against CHECKOUT]

Why: on these shared machines the time a message takes moves by ±15 % between runs minutes apart,
so a change of a few per cent needs tens of interleaved runs of ``pop3_intake.py`` to show. An
instruction count is the same from run to run (to ~0.1 %), so one run tells such a change.

What: the filing thread's loop of ``pop3_intake.py``'s (b) — ``gateway._file_locked`` and the commit
for each batch of 128 — on the same ~4 KB messages, into a fresh state directory on ``/dev/shm``.
What the other threads and the helper process do is not in it: the messages come parsed (by the
helper's own function, before the count starts, and unpickled as the pipeline does), and the mail
they ask for is answered as the helper answers when it has written it (``Queued``). The log line
per message is rendered (level ``info``) and written to ``/dev/null``, a batch's in one go. The count is
taken at two sizes; their difference per message leaves out the start-up (imports, loading the
configuration) that both runs share.

Not counted: the kernel's side of each system call (valgrind sees user space only), so fewer
system calls show only by what the Python side of each costs; ``strace -c`` counts those. Each
run takes ~20-70 s under valgrind (``apt-get install valgrind``).

``--against CHECKOUT`` runs the same with another checkout's helpdeskd and prints this/other.
"""

from __future__ import annotations

import argparse
import os
import pickle
import random
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BATCH = 128


def child(work: str, count: int, parse_only: bool) -> None:
    """In a child (the checkout to measure first on ``sys.path``): parse ``count`` messages into
    ``work``/parsed.pickle, or file them from there (the part valgrind counts)."""
    from concurrent.futures import Future

    sys.path.insert(0, str(ROOT / "tests"))
    sys.path.insert(0, str(ROOT / "bench"))
    from conftest import default_config_data
    from pop3_intake import message

    from helpdeskd import gateway, helper, logs
    from helpdeskd.config import build_config

    base = Path(work)
    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(base / "state"), "templates_dir": str(Path(helper.__file__).parent.parent
                                                                                     / "templates")})
    data["autoreply"] = {"global_max": 10 * 1000 * 1000}  # as pop3_intake: every message answered
    data["mailboxes"] = [{"name": "bench", "protocol": "pop3", "host": "127.0.0.1", "user": "u",
                          "password_file": "/etc/hostname", "allow_plaintext": True}]
    config = build_config(data, base)
    rng = random.Random(7)
    raws = [message(i, rng) for i in range(count)]
    parsed = base / "parsed.pickle"
    if parse_only:
        parsed.write_bytes(pickle.dumps(helper.parse_batch(raws, config.limits, config.helpdesk)))
        return
    from helpdeskd.cycle import Services
    from helpdeskd.mailjob import Queued
    from helpdeskd.sources.pop3 import Listed
    from helpdeskd.store.ledger import Ledger
    from helpdeskd.templates import load_templates

    logs.setup("info", json=True, stream=open(os.devnull, "w"))
    messages = pickle.loads(parsed.read_bytes())
    svc = Services.open(config, load_templates(config))
    mailbox = config.mailboxes[0]
    ledger, result = Ledger(config.helpdesk.state_dir, mailbox.name), gateway.Pop3Result()

    def written_by_the_helper(config, templates, jobs, write):
        answered = Future()
        answered.set_result([Queued(True)] * len(jobs))
        return answered

    helper.compose_ahead = written_by_the_helper
    batches = []
    for start in range(0, count, BATCH):
        items = [Listed(i + 1, len(raws[i]), f"uid{i}") for i in range(start, min(start + BATCH, count))]
        parsing = Future()
        parsing.set_result(messages[start:start + BATCH])
        batches.append(gateway._Batch(items, raws[start:start + BATCH], parsing))
    pending: list = []
    for batch in [*batches, None]:
        done: list = []
        with logs.deferred():  # as gateway._file_batch: the batch's lines in one write
            touched, failure = gateway._file_locked(batch, mailbox, svc, ledger, result, pending, done)
        assert failure is None, failure
        gateway._commit(done, touched, svc, ledger)
    assert result.counts == {"new": count}, result.counts


def instructions(code: Path, count: int) -> int:
    """Instructions of one filing run of ``count`` messages with ``code``'s helpdeskd."""
    work = tempfile.mkdtemp(prefix="hd-filer-", dir="/dev/shm")
    env = {**os.environ, "PYTHONPATH": str(code), "PYTHONHASHSEED": "0"}
    command = [sys.executable, __file__, "--child", work, str(count)]
    try:
        subprocess.run([*command, "--parse-only"], env=env, check=True)
        run = subprocess.run(["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", *command],
                             env=env, capture_output=True, text=True)
        if run.returncode != 0:
            raise SystemExit(f"the filing run failed:\n{run.stderr[-3000:]}")
        return int(re.search(r"Collected : (\d+)", run.stderr).group(1))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def per_message(code: Path, sizes: tuple[int, int]) -> float:
    with ThreadPoolExecutor(2) as pool:  # (two runs at once: these machines have two cores)
        small, large = pool.map(lambda count: instructions(code, count), sizes)
    return (large - small) / (sizes[1] - sizes[0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="200,600", help="the two message counts (their difference is measured)")
    parser.add_argument("--against", default="", metavar="CHECKOUT", help="also measure another checkout")
    args = parser.parse_args()
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind: apt-get install valgrind")
    small, large = (int(size) for size in args.sizes.split(","))
    this = per_message(ROOT, (small, large))
    print(f"this checkout: {this / 1e6:.3f} M instructions a message (filing thread, {small} -> {large} messages)")
    if args.against:
        other = per_message(Path(args.against).resolve(), (small, large))
        print(f"{args.against}: {other / 1e6:.3f} M instructions a message")
        print(f"this/other: {this / other:.3f}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        child(sys.argv[2], int(sys.argv[3]), "--parse-only" in sys.argv)
    else:
        main()
