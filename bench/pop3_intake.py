"""POP3 intake benchmark: helpdeskd filing a Dovecot mailbox, against bare poplib retrieval of the same.

    .venv/bin/python bench/pop3_intake.py [-n 2000] [--tls plain,pop3s] [--one-process]
                                          [--server-dir /dev/shm] [--fresh-fs] [--repeat K] [--against DIR]

For each transport it loads N realistic ~4 KB messages (plain text in Spanish and English, every
fifth with a small attachment) into a fresh Dovecot mailbox and measures, in the same run:

  (a) the floor: stdlib poplib, RETR + DELE of every message, then QUIT — nothing that files mail can
      be faster through the same server; run before and after (b), and taken over both runs;
  (b) helpdeskd: ``poll_pop3_fully`` filing the mailbox into durable tickets with acknowledgments queued
      (default settings: sessions of 5000, batches of 128, the helper process parsing and composing;
      the helper is started before (b), as the daemon starts it, and its start-up time is shown apart).

``--one-process`` also measures (b) with ``[mail_gateway] helper_process = false``, in the same run.
``--server-dir DIR`` runs Dovecot from a folder under DIR (``/dev/shm``: its disk work stays off the
store's file system, as with a remote server); ``--fresh-fs`` gives each (b) a freshly made ext4
with a journal (a loop file, written with direct I/O as a disk is) for its state directory.
Each measurement runs in a child process; its peak RSS (VmHWM) is reported, and the helper's. Needs
root and Dovecot (``scripts/test`` installs it). Prints a table and the ratio b/a. ``--repeat K``
measures everything K times and summarises; ``--against DIR`` also measures (b) with the helpdeskd
of another checkout, interleaved (this, other, other, this...), for comparing two versions on a
machine whose speed drifts (DIR must accept this script's configuration).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import poplib
import random
import resource
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

WORDS = {
    "es": "hola buenos días tengo un problema con mi cuenta de correo desde ayer no puedo enviar mensajes "
          "el servidor me devuelve un error cuando intento conectar por favor ayúdenme gracias".split(),
    "en": "hello good morning I have a problem with my mail account since yesterday I cannot send messages "
          "the server returns an error when I try to connect please help me thanks".split(),
}


def message(i: int, rng: random.Random) -> bytes:
    """A ~4 KB message; every fifth carries a small attachment."""
    lang = "es" if i % 3 else "en"
    text = "\r\n".join(" ".join(rng.choices(WORDS[lang], k=14)) for _ in range(38 if i % 5 else 12))
    head = (f"From: Cliente {i} <cliente{i}@example.net>\r\nTo: support@helpdesk.localhost\r\n"
            f"Subject: Consulta {i}: {' '.join(rng.choices(WORDS[lang], k=5))}\r\n"
            f"Message-ID: <bench.{i}.{rng.getrandbits(40):x}@example.net>\r\n"
            f"Date: Mon, 02 Jun 2025 10:{i % 60:02d}:00 +0200\r\nMIME-Version: 1.0\r\n")
    if i % 5:
        return (head + "Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 8bit\r\n\r\n"
                + text + "\r\n").encode()
    blob = base64.encodebytes(rng.randbytes(2200)).decode().replace("\n", "\r\n")
    return (head + 'Content-Type: multipart/mixed; boundary="b1"\r\n\r\n--b1\r\n'
            "Content-Type: text/plain; charset=utf-8\r\n\r\n" + text + "\r\n--b1\r\n"
            'Content-Type: application/pdf; name="factura.pdf"\r\nContent-Transfer-Encoding: base64\r\n'
            'Content-Disposition: attachment; filename="factura.pdf"\r\n\r\n' + blob + "--b1--\r\n").encode()


# ----------------------------------------------------------------------------- children


def child_floor(host: str, port: int, user: str, password: str, tls: bool, ca: str) -> dict:
    context = ssl.create_default_context(cafile=ca)
    started = time.perf_counter()
    client = poplib.POP3_SSL(host, port, context=context) if tls else poplib.POP3(host, port)
    client.user(user)
    client.pass_(password)
    count, _ = client.stat()
    for number in range(1, count + 1):
        client.retr(number)
        client.dele(number)
    client.quit()
    return {"messages": count, "seconds": time.perf_counter() - started}


def child_helpdeskd(config: str, no_fsync: bool = False, profile: str = "") -> dict:
    if no_fsync:  # a what-if, never a setting: how fast the same path runs when durability costs nothing
        from helpdeskd.store import fsutil

        os.fsync = lambda fd: None
        if fsutil._SYNCFS is not None:
            fsutil._SYNCFS = lambda fd: 0
    from helpdeskd import logs
    from helpdeskd.cycle import Services
    from helpdeskd.gateway import poll_pop3_fully
    from helpdeskd.runtime import load

    runtime = load(Path(config))
    logs.setup(runtime.config.log_level)  # as the daemon: a line per message (stderr: a pipe the parent drains)
    svc = Services.open(runtime.config, runtime.templates)
    helper_start = 0.0
    if runtime.config.mail_gateway.helper_process:  # as the daemon does when it starts: not a per-poll cost
        from helpdeskd import helper

        began = time.perf_counter()
        assert helper.start()
        helper_start = time.perf_counter() - began
    helper_before = _helper_cpu_seconds()  # its start-up's share, not counted below
    profiler = _inline_profiler() if profile else None
    started, cpu = time.perf_counter(), os.times()
    result = poll_pop3_fully(runtime.config.mailboxes[0], svc)
    seconds = time.perf_counter() - started
    now = os.times()
    cpu_seconds = sum(now[:2]) - sum(cpu[:2])  # user + system, all threads of this process
    system_seconds = now[1] - cpu[1]
    if profiler:
        profiler.disable()
        profiler.dump_stats(profile)
    assert result.error is None, result.error
    helper_cpu, helper_system = (after - before for after, before in zip(_helper_cpu_seconds(), helper_before))
    return {"messages": sum(result.counts.values()), "seconds": seconds, "counts": result.counts,
            "cpu_seconds": cpu_seconds, "system_seconds": system_seconds, "helper_cpu_seconds": helper_cpu,
            "helper_system_seconds": helper_system, "helper_rss_mb": _helper_rss_mb(),
            "helper_start_seconds": helper_start}


def _helper_cpu_seconds() -> tuple[float, float]:
    """User + system, and system CPU time of the helper process so far (0 when none runs)."""
    from helpdeskd import helper

    pool, total, system = helper._pool, 0.0, 0.0
    for pid in list(pool._processes) if pool is not None else []:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        system += int(fields[12]) / os.sysconf("SC_CLK_TCK")
    return total, system


def _helper_rss_mb() -> float:
    """Peak RSS of the helper process (it parses and composes beside the filing; 0 if none ran)."""
    from helpdeskd import helper

    pool = helper._pool
    pids = list(pool._processes) if pool is not None else []
    peak = sum(_vm_hwm_mb(f"/proc/{pid}/status") for pid in pids)
    helper.shutdown()
    return peak


def _inline_profiler():
    """A started cProfile that sees the filing too: the filer thread is replaced by inline calls
    (slower than the real pipeline, which overlaps retrieval with filing; for finding hot spots only)."""
    import cProfile
    from concurrent.futures import Future

    from helpdeskd import gateway

    class Inline:
        def __init__(self, *args, **kwargs):
            pass

        def submit(self, fn, *args):
            future = Future()
            try:
                future.set_result(fn(*args))
            except BaseException as exc:  # noqa: BLE001 - handed to the caller through the future
                future.set_exception(exc)
            return future

        def shutdown(self, wait=True):
            pass

    gateway.ThreadPoolExecutor = Inline
    profiler = cProfile.Profile()
    profiler.enable()
    return profiler


def peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; ru_maxrss would include the parent's before exec)."""
    return _vm_hwm_mb("/proc/self/status") or resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _vm_hwm_mb(status: str) -> float:
    try:
        lines = Path(status).read_text().splitlines()
    except OSError:
        return 0.0
    return next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmHWM:")), 0.0)


def run_child(*args: str, code: Path = ROOT) -> dict:
    """One measurement in a child process; ``code``: the checkout whose helpdeskd it imports."""
    env = {**os.environ, "PYTHONPATH": str(code)} if code != ROOT else None
    out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True, check=False,
                         env=env)
    if out.returncode != 0:
        raise SystemExit(f"child failed: {out.stderr[-3000:]}")
    return json.loads(out.stdout.splitlines()[-1])


# ----------------------------------------------------------------------------- driver


def write_config(work: Path, state: Path, server, user: str, protocol: str, helper_process: bool = True,
                 code: Path = ROOT) -> Path:
    import tomli_w

    from conftest import default_config_data

    data = default_config_data()
    data["helpdesk"].update({"state_dir": str(state), "templates_dir": str(code / "templates")})
    (work / "password").write_text("secret\n")
    entry = {"name": "bench", "protocol": "pop3s" if protocol == "pop3s" else "pop3", "host": "127.0.0.1",
             "user": user, "password_file": str(work / "password"), "ca_file": str(server.pki.ca),
             "port": server.pop3s_port if protocol == "pop3s" else server.pop3_port}
    if protocol == "plain":
        entry["allow_plaintext"] = True
    data["mailboxes"] = [entry]
    # Every message gets its acknowledgment: the default circuit breaker (300 automatic answers an hour)
    # would stop queueing them after the 300th message and make the run look cheaper than it is.
    data["autoreply"] = {"global_max": 10 * 1000 * 1000}
    data["mail_gateway"] = {"helper_process": helper_process}
    path = work / f"helpdeskd-{protocol}{'' if helper_process else '-one'}.toml"
    path.write_text(tomli_w.dumps(data))
    return path


def load_mailbox(server, maildir: Path, n: int) -> int:
    rng = random.Random(7)
    sizes = 0
    for i in range(n):
        raw = message(i, rng)
        sizes += len(raw)
        server.deliver(maildir, raw)
    return sizes // n


def measure(server, work: Path, n: int, protocol: str, no_fsync: bool, profile: str = "",
            one_process: bool = False, fresh_fs: bool = False, cached_loop: bool = False,
            code: Path = ROOT) -> dict:
    from dovecot import PASSWORD

    user = f"bench{protocol}"
    maildir = server.add_user(user)
    tls, port = protocol == "pop3s", server.pop3s_port if protocol == "pop3s" else server.pop3_port
    avg = load_mailbox(server, maildir, n)

    def floor() -> dict:
        run = run_child("floor", "127.0.0.1", str(port), user, PASSWORD, str(int(tls)), str(server.pki.ca))
        assert run["messages"] == n, run
        return run

    row = {"protocol": protocol, "side": "this" if code == ROOT else str(code), "n": n, "avg_bytes": avg,
           "floor": floor()}
    runs = [("helpdeskd", True, [f"--profile={profile}-{protocol}.pstats"] if profile else [])]
    runs += [("what_if_no_fsync", True, ["--no-fsync"])] if no_fsync else []
    runs += [("one_process", False, [])] if one_process else []
    for name, helper, extra in runs:
        load_mailbox(server, maildir, n)
        with state_place(work, fresh_fs, cached_loop) as place:
            config = write_config(work, place / f"state-{protocol}", server, user, protocol, helper, code)
            row[name] = run_child("helpdeskd", str(config), *extra, code=code)
        assert row[name]["messages"] == n, row[name]
        if name == "helpdeskd":  # the floor on both sides of (b): the machine's load drifts within minutes
            load_mailbox(server, maildir, n)
            row["floor_after"] = floor()
    return row


def floor_rate(row: dict) -> float:
    """The floor's messages/s over its two runs, before and after (b)."""
    runs = [row["floor"], row["floor_after"]]
    return sum(r["messages"] for r in runs) / sum(r["seconds"] for r in runs)


@contextlib.contextmanager
def state_place(work: Path, fresh_fs: bool, cached_loop: bool = False):
    """Where one measurement's state directory goes: ``work`` (removed afterwards), or a freshly made
    ext4 with a journal, in a loop file, mounted for this measurement only. The loop device reads and
    writes its file with direct I/O, as a disk would be written (``cached_loop``: through the page
    cache of the file system holding the file, which copies every block once more and writes it back
    with the host's threads: CPU a store on a real disk does not cost)."""
    if not fresh_fs:
        try:
            yield work
        finally:
            for state in work.glob("state-*"):
                shutil.rmtree(state)
        return
    image, mount = work / "state.img", work / "state-fs"
    mount.mkdir()
    with open(image, "wb") as file:
        file.truncate(2 << 30)  # sparse: blocks are allocated as the store grows
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    device = subprocess.run(["losetup", "--find", "--show", f"--direct-io={'off' if cached_loop else 'on'}",
                             str(image)], check=True, capture_output=True, text=True).stdout.strip()
    try:
        dio = Path(f"/sys/block/{Path(device).name}/loop/dio").read_text().strip()
        if dio != ("0" if cached_loop else "1"):  # losetup may only warn
            raise SystemExit(f"{device}: direct I/O is {'on' if dio == '1' else 'off'}, not as asked")
        subprocess.run(["mount", device, str(mount)], check=True)
        try:
            yield mount
        finally:
            subprocess.run(["umount", str(mount)], check=True)
    finally:
        subprocess.run(["losetup", "-d", device], check=False)  # (a failure above is the one to see)
        image.unlink()
        mount.rmdir()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=2000)
    parser.add_argument("--tls", default="plain,pop3s", help="comma-separated: plain, pop3s")
    parser.add_argument("--what-if-no-fsync", action="store_true",
                        help="also run (b) with os.fsync disabled: the CPU ceiling a group commit could approach")
    parser.add_argument("--profile", default="", metavar="PREFIX",
                        help="also write a cProfile of (b) to PREFIX-<transport>.pstats (filing inline, not overlapped)")
    parser.add_argument("--one-process", action="store_true",
                        help="also run (b) without the helper process ([mail_gateway] helper_process = false)")
    parser.add_argument("--server-dir", default="", metavar="DIR",
                        help="put Dovecot (its config and mailboxes) in a new folder under DIR instead of beside "
                             "helpdeskd's state directory")
    parser.add_argument("--fresh-fs", action="store_true",
                        help="put each measurement's state directory on a freshly made ext4 with a journal "
                             "(a loop file in the work folder, read and written with direct I/O; needs root)")
    parser.add_argument("--cached-loop", action="store_true",
                        help="with --fresh-fs: the loop file through the host's page cache, as before the "
                             "eighth session (every block copied once more and written back by host threads)")
    parser.add_argument("--repeat", type=int, default=1, metavar="K",
                        help="measure each transport K times (each with its floor before and after) and "
                             "summarise: single runs move by ±15 %% on a shared machine")
    parser.add_argument("--against", default="", metavar="CHECKOUT",
                        help="also measure (b) with the helpdeskd of another checkout (a git worktree of an "
                             "earlier commit), interleaved with this one, A B B A...: a change's effect "
                             "beside the machine's drift")
    args = parser.parse_args()
    from dovecot import Dovecot, make_pki

    sides = [ROOT] + ([Path(args.against).resolve()] if args.against else [])

    base = Path(tempfile.mkdtemp(prefix="hd-bench-"))
    base.chmod(0o755)
    server_base = Path(tempfile.mkdtemp(prefix="hd-bench-server-", dir=args.server_dir)) if args.server_dir else base
    server_base.chmod(0o755)
    server = Dovecot(server_base, make_pki(server_base)).start()
    try:
        rows = [measure(server, base, args.n, protocol, args.what_if_no_fsync, args.profile, args.one_process,
                        args.fresh_fs, args.cached_loop, code)
                for round_ in range(args.repeat) for protocol in args.tls.split(",")
                for code in (sides if round_ % 2 == 0 else sides[::-1])]
    finally:
        server.stop()
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(server_base, ignore_errors=True)
    print(f"N={args.n}  (peak RSS of the measuring child process, and of helpdeskd's helper process)")
    if args.against:
        print(f"(b) from this checkout ({ROOT}) and from {sides[1]}: rows marked 'this' and 'other'")
    print(f"{'transport':10} {'floor msg/s':>12} {'helpdeskd msg/s':>16} {'b/a':>6} {'floor RSS':>10} {'ours RSS':>10}"
          f" {'helper RSS':>11} {'CPU ms/msg ours+helper':>23} {'of it system':>13}")
    for r in rows:
        fa, fb = r["floor"], r["helpdeskd"]
        a, b = floor_rate(r), fb["messages"] / fb["seconds"]
        per = {k: 1000 * fb[k] / fb["messages"]
               for k in ("cpu_seconds", "helper_cpu_seconds", "system_seconds", "helper_system_seconds")}
        cpu = f"{per['cpu_seconds']:.2f} + {per['helper_cpu_seconds']:.2f}"
        system = f"{per['system_seconds']:.2f} + {per['helper_system_seconds']:.2f}"
        label = r["protocol"] + ("" if not args.against else " this" if r["side"] == "this" else " other")
        print(f"{label:10} {a:12.0f} {b:16.1f} {b / a:6.3f} {fa['rss_mb']:8.1f}MB {fb['rss_mb']:8.1f}MB"
              f" {fb['helper_rss_mb']:9.1f}MB {cpu:>23} {system:>13}")
        before, after = (f["messages"] / f["seconds"] for f in (fa, r["floor_after"]))
        print(f"{'':10} (the floor: {before:.0f} msg/s before (b), {after:.0f} after)")
        if fb.get("helper_start_seconds"):
            print(f"{'':10} (the helper process started in {fb['helper_start_seconds']:.2f} s, before (b))")
        if "what_if_no_fsync" in r:
            w = r["what_if_no_fsync"]
            c = w["messages"] / w["seconds"]
            print(f"{'  no fsync':10} {'':12} {c:16.1f} {c / a:6.3f} {'':10} {w['rss_mb']:8.1f}MB")
        if "one_process" in r:
            w = r["one_process"]
            c = w["messages"] / w["seconds"]
            print(f"{'  1 process':10} {'':12} {c:16.1f} {c / a:6.3f} {'':10} {w['rss_mb']:8.1f}MB")
    if args.repeat > 1 or args.against:
        summarise(rows)
    print(json.dumps(rows))


TARGET = {"plain": 0.25, "pop3s": 0.40}  # the b/a at N = 2,000


def summarise(rows: list[dict]) -> None:
    """Per transport (and side): the spread of b/a, its median, and how many runs met the target."""
    print("summary (b/a over the runs; CPU ms a message, helpdeskd + its helper, averaged)")
    for key in dict.fromkeys((r["protocol"], r["side"]) for r in rows):
        mine = [r for r in rows if (r["protocol"], r["side"]) == key]
        ratios = sorted(r["helpdeskd"]["messages"] / r["helpdeskd"]["seconds"] / floor_rate(r) for r in mine)
        rates = [r["helpdeskd"]["messages"] / r["helpdeskd"]["seconds"] for r in mine]
        cpu = sum((r["helpdeskd"]["cpu_seconds"] + r["helpdeskd"]["helper_cpu_seconds"]) * 1000
                  / r["helpdeskd"]["messages"] for r in mine) / len(mine)
        target = TARGET.get(key[0], 0.0)
        label = key[0] + ("" if len({r["side"] for r in rows}) == 1 else " this" if key[1] == "this" else " other")
        print(f"{label:12} n={len(mine):<3} b/a median {statistics.median(ratios):.3f}"
              f" ({ratios[0]:.3f}-{ratios[-1]:.3f}), {statistics.mean(rates):.0f} msg/s, CPU {cpu:.2f} ms;"
              f" target {target:.2f} met in {sum(x >= target for x in ratios)} of {len(ratios)}")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        kind, rest = sys.argv[2], sys.argv[3:]
        if kind == "floor":
            host, port, user, password, tls, ca = rest
            report = child_floor(host, int(port), user, password, tls == "1", ca)
        else:
            profile = next((a.split("=", 1)[1] for a in rest if a.startswith("--profile=")), "")
            report = child_helpdeskd(rest[0], no_fsync="--no-fsync" in rest, profile=profile)
        report["rss_mb"] = peak_rss_mb()
        print(json.dumps(report))
    else:
        main()
