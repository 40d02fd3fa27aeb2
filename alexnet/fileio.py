"""Files that are never half-written, and their checksums: one home for what checkpoints, prepared
data sets and run folders all need.

    fileio.atomic_write(path, b"...")                      # readers see the old file or the new one
    fileio.atomic_write(path, lambda f: torch.save(s, f))  # or let a writer fill the file
    fileio.sha256_file(path)                               # hex digest, read in 4 MiB blocks
    fileio.cache_dir()                                     # $ALEXNET_CACHE, else ~/.cache/alexnet
    with fileio.FolderLock(out, "run folder"): ...         # one writer per folder ("in use by pid N")
    fileio.writable_output(path, "report")                 # parent made, writability checked before the work

The recipe is the usual one (SQLite, git, etcd): write a temporary file beside the target, flush
and fsync it, rename it over the target (atomic on POSIX), then fsync the folder so that the
rename itself survives a power cut.
"""
from __future__ import annotations

import glob
import hashlib
import os
import secrets
import socket
from pathlib import Path
from typing import BinaryIO, Callable

from .errors import UserError
from .process import alive


class FolderBusy(UserError):
    """Another process holds the folder's lock."""


def fsync_dir(folder: str | Path) -> None:
    """Make renames and creations inside `folder` durable (a no-op where folders cannot be opened)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str | Path, data: bytes | Callable[[BinaryIO], None], keep_previous: Path | None = None,
                 durable: bool = True) -> Path:
    """Write `data` (bytes, or a function that writes into the open file) to `path` atomically.

    keep_previous: keep the file being replaced under this name too (checkpoints keep the last
    good one as <name>.prev.pt); `path` names a complete file at every instant, old or new. durable=False skips the fsyncs (for files that are cheap to
    rebuild). Raises what the file system raises (OSError: disk full, read-only, ...); the
    temporary file is removed then and the target is untouched.
    """
    path = Path(path)
    tmp = temporary_path(path)
    replaced, link = False, None
    try:
        with open(tmp, "xb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            # the old file gets its second name through a hard link, so that `path` exists at every
            # instant: a rename to keep_previous left a moment without it, and a kill -9 there left a
            # run folder with no last.pt (seen under load: tests/test_distributed.py's kill -9 test)
            link = temporary_path(keep_previous)
            try:
                os.link(path, link)
            except OSError:  # a file system without hard links: the rename, and its moment
                os.replace(path, keep_previous)
                replaced = True
            else:
                os.replace(link, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        if replaced and not path.exists():  # the previous file is moved already: put it back
            os.replace(keep_previous, path)
        tmp.unlink(missing_ok=True)
        if link is not None:
            link.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


# the machine's name in temporary names: on a file system several machines share (an NFS home
# holding the ceiling cache), a writer only ever removes its own machine's leftovers
_HOST = "".join(c if c.isalnum() else "_" for c in socket.gethostname()) or "host"


def temporary_path(path: str | Path) -> Path:
    """A unique temporary name beside `path` (<name>.<host>.<pid>-<hex>.tmp), after removing what
    killed writers of `path` on this machine left: two processes writing the same path (ranks of an
    ablation, two runs caching a ceiling or a decoded split) never write into, or rename away, each
    other's file, and a writer killed mid-write (kill -9, the OOM killer) leaves no copy for ever."""
    path = Path(path)
    _remove_stale_temporaries(path)
    return path.with_name(f"{path.name}.{_HOST}.{os.getpid()}-{secrets.token_hex(4)}.tmp")


def _remove_stale_temporaries(path: Path) -> None:
    """Remove what killed writers of `path` on this machine left (<name>.<host>.<pid>-<hex>.tmp
    whose process is gone), so that a kill -9 during a checkpoint save leaves no copy for ever."""
    prefix = f"{path.name}.{_HOST}."
    for leftover in path.parent.glob(f"{glob.escape(prefix)}*-*.tmp"):
        pid = leftover.name[len(prefix):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not alive(int(pid)):
            leftover.unlink(missing_ok=True)


def sha256_file(path: str | Path, chunk: int = 1 << 22) -> str:
    """SHA-256 of a file's bytes, as 64 hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """Where generated data and measurements are kept between runs: $ALEXNET_CACHE, else
    $XDG_CACHE_HOME/alexnet, else ~/.cache/alexnet (not created here)."""
    base = os.environ.get("ALEXNET_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "alexnet")
    return Path(base)


class FolderLock:
    """An exclusive lock on a folder that one job writes (a run folder, a prepare's output): a POSIX
    record lock (`fcntl.lockf`) on FOLDER/.lock, which holds the owner's pid. The kernel drops the
    lock when the process ends, however it ends (kill -9 included), so a stale lock never blocks a
    rerun; and unlike flock(), a record lock is not inherited by forked children (loader workers,
    prepare's pool), so a job killed with kill -9 frees its folder at once even while its workers
    are still exiting (tests/test_reliability.py). A record lock belongs to the process: a second
    FolderLock on the same folder in the same process does not exclude the first, and must not be
    taken (closing any descriptor of the file would drop the lock).

        with FolderLock(out, "run folder"):   # raises FolderBusy: "... in use by pid N"
            ...

    shared=True: a reader's lock (`prepare --verify`), which only keeps writers out while it is held:
    it writes nothing, and a folder that no locking job ever wrote to needs none.
    """

    def __init__(self, folder: str | Path, what: str = "folder", shared: bool = False):
        self.folder, self.what, self.file, self.created = Path(folder), what, None, False
        self.shared = shared

    def acquire(self) -> "FolderLock":
        import fcntl

        if self.shared:
            try:
                f = open(self.folder / ".lock")
            except FileNotFoundError:
                return self
            try:
                fcntl.lockf(f, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                self._busy(f)
            self.file = f
            return self
        self.created = not self.folder.exists()
        self.folder.mkdir(parents=True, exist_ok=True)
        f = open(self.folder / ".lock", "a+")
        try:
            fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._busy(f)
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self.file = f
        return self

    def _busy(self, f) -> None:
        """Name the holder: the kernel's answer (F_GETLK) where it gives one, else the pid the
        holder wrote; never a process that is no longer alive."""
        f.seek(0)
        written = f.read().strip()
        owner = self._holder(f) or (int(written) if written.isdigit() and alive(int(written)) else None)
        f.close()
        who = f"pid {owner}" if owner else "another process"
        raise FolderBusy(f"{self.what} {self.folder} is in use by {who} (another alexnet job); "
                         f"wait for it to finish, or use another folder") from None

    @staticmethod
    def _holder(f) -> int | None:
        """The pid holding a conflicting lock on `f`, from fcntl(F_GETLK) (Linux's struct flock)."""
        import fcntl
        import struct
        try:
            fmt = "hhqqi"  # l_type, l_whence, l_start, l_len, l_pid (x86-64 and aarch64 Linux)
            probe = struct.pack(fmt, fcntl.F_WRLCK, 0, 0, 0, 0)
            l_type, _, _, _, pid = struct.unpack(fmt, fcntl.fcntl(f, fcntl.F_GETLK, probe))
            return pid if l_type != fcntl.F_UNLCK and pid > 0 else None
        except (OSError, struct.error):
            return None

    def release(self) -> None:
        """Drop the lock; a folder this lock created and nothing else wrote to is removed again
        (a job that failed before its first write leaves nothing behind)."""
        if self.file is None:
            return
        if self.created and {p.name for p in self.folder.iterdir()} == {".lock"}:
            (self.folder / ".lock").unlink()
            self.folder.rmdir()
        self.file.close()  # closing drops the lock
        self.file = None

    def __enter__(self) -> "FolderLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def writable_output(path: str | Path, what: str = "output") -> Path:
    """Check, before any work, that a file can be written at `path`: its folder is created when
    missing; a folder that cannot be created or written is a UserError naming it."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder; give a file name")
    folder = path.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the folder {folder} for the {what} {path}: {e.strerror}") from None
    try:  # a real write tells what os.access cannot (read-only file systems, root, ACLs)
        import tempfile
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".write-test-"):
            pass
        if path.exists() and not os.access(path, os.W_OK):
            raise PermissionError(13, "permission denied")
    except OSError as e:
        raise UserError(f"cannot write the {what} {path}: {e.strerror or e}; choose another location") from None
    return path
