"""Durable file primitives: tmp file, fsync, rename, fsync the directory — now, or at a group commit.

A :class:`Syncer` decides when the fsyncs happen. By default each write is durable before it returns.
Inside ``with syncer.batch():`` writes only record what they touched, and leaving the block makes all of
it durable at once: one group commit for many messages. Callers tell a source to forget a message only
after the block has exited. ``collect()`` is the same without the commit: it hands back what was
touched, so the commit can run in another thread while the next batch is being written (the POP3
pipeline), and :meth:`Syncer.commit` makes it durable there.

A commit is one ``syncfs(2)`` on the state directory's file system, where Linux (5.8 or newer, the
first to report writeback errors through it) offers it: the kernel writes back every dirty file and
directory there and waits. That replaces an open+fsync+close per touched file and directory (~15 per
new ticket) and the threads it took to overlap them, whose contention for the GIL cost more CPU than
the fsyncs themselves. The descriptor it is called on is opened when the batch starts, before its
first write: the kernel reports a writeback error to every descriptor opened before it happened, so
a batch whose pages failed to reach the disk always hears of it, even when another commit (or another
process) called syncfs first. Whatever was touched on another file system (a mount inside the state
directory) is fsynced file by file. A syncfs commit may also wait for other processes' writes to the
same file system; it never loses anything. Elsewhere every touched file, then every touched
directory, is fsynced in a few threads — and such a commit must run before anybody writes again
(``commits_may_overlap`` is False), since it syncs files by name, whatever they hold by then.

After a commit fails, every later commit of the same Syncer fails too: the kernel may have dropped
the failed pages' error together with the pages' dirtiness, so files that look filed may not be on
the disk, and nothing may be reported durable until helpdeskd restarts on repaired storage.

A crash (even kill -9) inside a batch loses nothing the page cache holds; a power failure inside one
leaves the sources' copies in place, and filing them again repairs the store.
"""

from __future__ import annotations

import ctypes
import errno
import json
import os
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar, Union

_FLUSH_THREADS = 4
StrPath = Union[str, "os.PathLike[str]"]
P = TypeVar("P", str, Path)


def _load_syncfs():
    """libc's ``syncfs`` when this is Linux 5.8 or newer with a C library that has it, else None."""
    system = os.uname()
    if system.sysname != "Linux" or _version(system.release) < (5, 8):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).syncfs
    except (OSError, AttributeError):
        return None
    function.argtypes, function.restype = [ctypes.c_int], ctypes.c_int
    return function


def _version(release: str) -> tuple[int, int]:
    """(major, minor) of a kernel release string such as ``6.1.0-18-amd64``; (0, 0) if unreadable."""
    parts = release.split(".")
    try:
        return int(parts[0]), int("".join(c for c in parts[1][:3] if c.isdigit()) or 0)
    except (IndexError, ValueError):
        return 0, 0


_SYNCFS = _load_syncfs()


def _syncfs(fd: int, what: Path) -> None:
    """Write back everything dirty on the file system of ``fd`` and wait (raises OSError)."""
    if _SYNCFS(fd) != 0:  # type: ignore[misc]
        err = ctypes.get_errno()
        raise OSError(err, f"syncfs {what}: {os.strerror(err)}")


def settle(folder: Path) -> None:
    """Make everything written so far on ``folder``'s file system durable: syncfs where it reports
    errors, else ``sync()``. For acting outside on what may not be committed yet (the sender: no
    acknowledgment may announce a ticket that a power failure could still undo)."""
    if _SYNCFS is None:
        os.sync()
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _syncfs(fd, folder)
    finally:
        os.close(fd)


def fsync_dir(path: StrPath) -> None:
    """Make a rename or create inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_path(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return  # moved or removed later in the batch; its new place was recorded by that move
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Touched:
    """What a batch wrote: files and the directories whose entries changed, not yet durable; with
    syncfs, also the descriptor (opened when the batch began) that the commit syncs through.

    With syncfs and no other file system mounted below the state directory, one syncfs covers
    everything, so paths are not recorded at all: ``dirty`` only says that something was written."""

    def __init__(self) -> None:
        self.files: set[str] = set()
        self.dirs: set[str] = set()
        self.dirty = False
        self.fd: int | None = None
        self.device: int | None = None

    def __bool__(self) -> bool:
        return bool(self.dirty or self.files or self.dirs)

    def close(self) -> None:
        """Forget it all (after the commit, or when the batch is abandoned)."""
        if self.fd is not None:
            os.close(self.fd)
        self.fd, self.files, self.dirs, self.dirty = None, set(), set(), False


class _BatchState:
    def __init__(self) -> None:
        self.depth = 0
        self.record = True  # paths are needed by the commit (see Touched)
        self.touched = Touched()


class Syncer:
    """See the module docstring. ``enabled=False`` never fsyncs (bulk tools that can redo their work).

    ``method``: ``"syncfs"`` (the default where available; needs ``root``, the directory whose file
    system holds what is written) or ``"fsync"`` (file by file).
    """

    def __init__(self, enabled: bool = True, method: str = "syncfs", root: Path | None = None) -> None:
        if method not in ("syncfs", "fsync"):
            raise ValueError(f"unknown commit method {method!r}")
        self.enabled = enabled
        self.root = root
        self.method = "syncfs" if method == "syncfs" and _SYNCFS is not None and root is not None else "fsync"
        self.failed = ""  # why a commit failed: from then on, none succeeds (see the module docstring)
        self._local = threading.local()  # a batch belongs to the thread that opened it

    @property
    def commits_may_overlap(self) -> bool:
        """Whether a batch may be committed while the next one is being written (syncfs: yes)."""
        return self.method == "syncfs"

    def _needs_paths(self, device: int | None) -> bool:
        """Whether a syncfs commit on ``root`` (on ``device``) must still be told what was written:
        something is mounted below ``root``, or a top-level folder leads to another file system."""
        root = os.fspath(self.root)  # type: ignore[arg-type]
        return _mounts_below(root) != [] or _elsewhere_at_top(root, device)

    @property
    def _state(self) -> "_BatchState":
        state = getattr(self._local, "state", None)
        if state is None:
            state = self._local.state = _BatchState()
        return state

    def file(self, path: StrPath, fd: int) -> None:
        """``fd`` (open on ``path``) was written: fsync it now, or remember it for the group commit."""
        if self.enabled and not self._remember(path, None):
            os.fsync(fd)

    def written_elsewhere(self, path: StrPath) -> None:
        """``path`` was created (whole, under its name) by another process on our behalf: make it
        durable now, or with the group commit."""
        folder = os.path.dirname(os.fspath(path))
        if self.enabled and not self._remember(path, folder):
            _fsync_path(os.fspath(path))
            fsync_dir(folder)

    def directory(self, path: StrPath) -> None:
        """An entry in ``path`` was created or renamed."""
        if self.enabled and not self._remember(None, path):
            fsync_dir(path)

    def _remember(self, file: StrPath | None, folder: StrPath | None) -> bool:
        """Inside a batch, note what the group commit must cover (the paths, or only that something
        was written: see :class:`Touched`) and return True; outside one, return False (sync now)."""
        state = self._state
        if not state.depth:
            return False
        if not state.record:
            state.touched.dirty = True
            return True
        if file is not None:
            state.touched.files.add(os.fspath(file))
        if folder is not None:
            state.touched.dirs.add(os.fspath(folder))
        return True

    @contextmanager
    def batch(self) -> Iterator["Syncer"]:
        """Group commit: everything written inside is durable when the outermost block exits."""
        outermost = self._state.depth == 0
        touched = Touched()
        try:
            with self.collect() as touched:
                yield self
        finally:  # also after an error: what was filed before it must be durable too,
            if outermost:  # since callers record it as done (a POP3 ledger) on their way out
                self.commit(touched)

    @contextmanager
    def collect(self) -> Iterator[Touched]:
        """Record writes like :meth:`batch` but commit nothing: when the outermost block exits, the
        :class:`Touched` it yielded holds everything written inside, for :meth:`commit` in any thread.
        A nested block's stays empty (the outermost one has it all)."""
        state = self._state
        outermost = state.depth == 0
        touched = Touched()
        if outermost and self.enabled and self.method == "syncfs":
            touched.fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY)  # type: ignore[arg-type]
            touched.device = os.fstat(touched.fd).st_dev
            state.record = self._needs_paths(touched.device)
        state.depth += 1
        try:
            yield touched
        finally:
            state.depth -= 1
            if outermost:
                done, state.touched, state.record = state.touched, Touched(), True
                touched.files, touched.dirs, touched.dirty = done.files, done.dirs, done.dirty

    def commit(self, touched: Touched) -> None:
        """Make ``touched`` durable (then forget it): one syncfs, or fsyncs file by file."""
        try:
            if self.failed:
                raise OSError(errno.EIO, f"an earlier commit failed ({self.failed}); "
                                         "nothing counts as durable until helpdeskd is restarted")
            if touched:
                try:
                    self._commit(touched)
                except OSError as exc:
                    self.failed = str(exc)
                    raise
        finally:
            touched.close()

    def _commit(self, touched: Touched) -> None:
        files, dirs = touched.files, touched.dirs
        if touched.fd is not None:
            _syncfs(touched.fd, self.root)  # type: ignore[arg-type]
            parents = {d: os.path.dirname(d) for d in files}
            elsewhere = {d for d in {*dirs, *parents.values()} if _device(d) not in (None, touched.device)}
            files = {f for f in files if parents[f] in elsewhere}
            dirs = {d for d in dirs if d in elsewhere}
        dirs = {d for d in dirs if os.path.isdir(d)}  # moved away later in the batch: its new place was recorded
        if files or dirs:
            with ThreadPoolExecutor(_FLUSH_THREADS) as pool:
                list(pool.map(_fsync_path, sorted(files)))  # contents first: a durable entry names durable data
                list(pool.map(fsync_dir, sorted(dirs)))


def _device(folder: str) -> int | None:
    try:
        return os.stat(folder).st_dev
    except FileNotFoundError:
        return None


def _elsewhere_at_top(root: StrPath, device: int | None) -> bool:
    """Whether a folder directly in ``root`` (a symlink, say ``outbox -> /srv/big/outbox``) is on
    another file system than ``root``. Deeper symlinks to other file systems are not supported."""
    try:
        with os.scandir(root) as entries:
            return any(entry.is_dir() and entry.stat().st_dev != device for entry in entries)
    except OSError:
        return True  # cannot tell: record paths


def _mounts_below(root: str) -> list[str] | None:
    """Mount points inside ``root`` (None when the mount table cannot be read: assume there may be)."""
    try:
        with open("/proc/self/mountinfo", "rb") as table:
            points = [line.split(b" ", 5)[4] for line in table]
    except OSError:
        return None
    prefix = os.path.realpath(root).rstrip("/") + "/"
    below = []
    for point in points:  # spaces and other odd characters come octal-escaped (\040)
        name = point.decode("unicode_escape").encode("latin-1").decode("utf-8", "replace")
        if name.startswith(prefix):
            below.append(name)
    return below


IMMEDIATE = Syncer()  # the default: every write durable before it returns; never used for batches


def exists(path: str) -> bool:
    """``os.path.exists`` for the store's own paths (built from numbers and hex digests), on the hot
    paths: symlinks followed, and no exception raised and caught for each missing file, which is
    most of what a miss costs in Python. Unlike ``os.path.exists`` it looks with the real user and
    group ids, which are the effective ones for the daemon and its tools."""
    try:
        return os.access(path, os.F_OK)
    except ValueError:  # a NUL in the name
        return False


def read_json(path: StrPath):
    """The JSON value in ``path``, or None when it is missing or unreadable (cut short by a crash while
    first written, or edited by hand): every record read this way may be absent."""
    data = read_small(path)
    try:
        return None if data is None else json.loads(data)
    except ValueError:
        return None


def read_small(path: StrPath) -> bytes | None:
    """The bytes in ``path``, or None when it or a folder on its way does not exist; any other
    failure to read it raises (an index entry that cannot be read must not pass for a missing one)."""
    try:
        return read_bytes(path)
    except NotADirectoryError:
        return None


def read_bytes(path: StrPath) -> bytes | None:
    """The bytes in ``path``, or None when it does not exist. Without a file object: where most
    lookups miss (the filing path's index entries), that is half of what a miss costs, and a third
    of what reading a small file costs."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def atomic_write(path: StrPath, data: bytes, *, sync: Syncer = IMMEDIATE, new: bool = False) -> None:
    """Replace ``path`` with ``data`` so a reader or a crash sees the old or the new file, never half.
    ``new``: the caller knows of no such file yet (a hint: no lookup first; wrong, it costs a write)."""
    path = os.fspath(path)
    if (new or not exists(path)) and _link_unnamed(path, data, sync):
        return  # a new file, linked in whole: no temporary name to make, then rename
    os.replace(_write_aside(path, data, sync), path)
    sync.directory(os.path.dirname(path))


def write_new(path: StrPath, data: bytes, *, sync: Syncer = IMMEDIATE) -> None:
    """Write a file that most likely does not exist yet straight under its name (one create instead of
    a temporary file and a rename); replace it atomically if it does exist. For records whose readers
    take an empty or cut-short file for a missing one (JSON claims, index entries): a crash mid-write
    leaves nothing a reader would trust."""
    path = os.fspath(path)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
    except FileExistsError:
        atomic_write(path, data, sync=sync)
        return
    try:
        _write_all(fd, data)
        sync.file(path, fd)
    finally:
        os.close(fd)
    sync.directory(os.path.dirname(path))


def create_exclusive(path: StrPath, data: bytes, *, sync: Syncer = IMMEDIATE) -> bool:
    """Create ``path`` with ``data`` unless it exists. Returns False when it already did.

    The file appears under its final name only when complete (written as an unnamed file, or aside
    under a temporary name, then hard-linked), so a crash never leaves a half-written file behind
    that later looks valid.
    """
    path = os.fspath(path)
    created = _link_unnamed(path, data, sync)  # (no lookup first: the link finds an existing file)
    if created is not None:
        return created
    if exists(path):
        return False
    tmp = _write_aside(path, data, sync)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        os.unlink(tmp)
    sync.directory(os.path.dirname(path))
    return True


_proc_fd: tuple[int, int] | None = None  # (pid, descriptor of /proc/self/fd), for linking unnamed files
_unnamed = hasattr(os, "O_TMPFILE")  # False once this system showed it cannot link them
_proc_lock = threading.Lock()


def _link_unnamed(path: str, data: bytes, sync: Syncer) -> bool | None:
    """Create ``path`` from an unnamed file (``O_TMPFILE``) linked in once written: one directory
    change instead of three (temporary name, link, unlink) — on ext4 these are what costs. True:
    created; False: ``path`` existed; None: not possible here (no O_TMPFILE or no /proc)."""
    global _unnamed
    folder = os.path.dirname(path)
    proc = _proc_self_fd() if _unnamed else None
    if proc is None:
        return None
    try:
        fd = os.open(folder, os.O_TMPFILE | os.O_WRONLY, 0o640)
    except OSError as exc:
        if exc.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
        _unnamed = False  # a file system without it: write aside from now on, everywhere (only slower)
        return None
    try:
        _write_all(fd, data)
        sync.file(path, fd)  # fsynced before it gets its name, or recorded under that name
        try:
            os.link(str(fd), path, src_dir_fd=proc)  # linkat(AT_SYMLINK_FOLLOW) of /proc/self/fd/N
        except FileExistsError:
            return False
        except OSError as exc:
            if exc.errno not in (errno.EXDEV, errno.ENOENT, errno.EPERM, errno.EACCES) or not os.path.isdir(folder):
                raise
            _unnamed = False  # /proc does not link unnamed files here: write aside from now on
            return None
    finally:
        os.close(fd)
    sync.directory(folder)
    return True


def _proc_self_fd() -> int | None:
    """A descriptor of this process's /proc/self/fd (opened again after a fork), or None."""
    global _proc_fd, _unnamed
    pid = os.getpid()
    with _proc_lock:
        if _proc_fd is None or _proc_fd[0] != pid:
            try:
                _proc_fd = (pid, os.open("/proc/self/fd", os.O_RDONLY | os.O_DIRECTORY))
            except OSError:
                _unnamed = False
                return None
        return _proc_fd[1]


def append_line(path: StrPath, line: bytes, *, sync: Syncer = IMMEDIATE) -> None:
    """Append one line (or several). A crash may leave a torn last line: readers skip it, and the
    next append starts a line of its own instead of finishing that one (which would lose both)."""
    path = os.fspath(path)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
    try:
        size = os.fstat(fd).st_size
        if size and os.pread(fd, 1, size - 1) != b"\n":
            line = b"\n" + line
        _write_all(fd, line)
        sync.file(path, fd)
    finally:
        os.close(fd)
    sync.directory(os.path.dirname(path))  # the first append creates the file


def count_entries(folder: StrPath, suffix: str = "") -> int:
    """Entries of ``folder`` whose names end in ``suffix``; 0 when it does not exist. Reads no file
    and makes nothing (status tools run it as any user, on folders the daemon owns)."""
    try:
        with os.scandir(folder) as entries:
            return sum(1 for entry in entries if entry.name.endswith(suffix))
    except FileNotFoundError:
        return 0


def ensure_dir(path: P, *, sync: Syncer = IMMEDIATE, missing: bool = False) -> P:
    """Create ``path`` (and parents) if missing, durably: each new entry's directory is synced.
    ``missing``: the caller has just found it missing, or knows it to be (no lookup first; a hint
    only). Returns ``path`` as given."""
    name = os.fspath(path)
    if not missing and os.path.isdir(name):
        return path
    todo = [name]  # the last one is made first; a missing parent joins the list
    while todo:
        folder = todo[-1]
        try:
            os.mkdir(folder)
        except FileNotFoundError:
            parent = os.path.dirname(folder)
            if parent == folder:
                raise
            todo.append(parent)
            continue
        except FileExistsError:
            if not os.path.isdir(folder):
                raise
        sync.directory(os.path.dirname(folder))
        todo.pop()
    return path


def _write_aside(path: str, data: bytes, sync: Syncer) -> str:
    """``data`` in a temporary file beside ``path`` (synced, or recorded for the group commit under
    ``path``, the name it will have); returns the temporary file's path."""
    folder, name = os.path.split(path)
    tmp = f"{folder}/.{name}.{os.getpid()}.{threading.get_ident()}.tmp"  # unique per writer thread
    _write_file(tmp, data, sync, path)
    return tmp


def _write_file(target: str, data: bytes, sync: Syncer, synced_as: str) -> None:
    """Write ``data`` to ``target`` (created or truncated) and hand it to ``sync`` under the name
    ``synced_as`` (the final name of a temporary file)."""
    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o640)
    try:
        _write_all(fd, data)
        sync.file(synced_as, fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
