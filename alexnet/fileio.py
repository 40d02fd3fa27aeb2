"""Files that are never half-written, and their checksums: one home for what checkpoints, prepared
data sets and run folders all need.

    fileio.atomic_write(path, b"...")                      # readers see the old file or the new one
    fileio.atomic_write(path, lambda f: torch.save(s, f))  # or let a writer fill the file
    fileio.sha256_file(path)                               # hex digest, read in 4 MiB blocks
    fileio.cache_dir()                                     # $ALEXNET_CACHE, else ~/.cache/alexnet

The recipe is the usual one (SQLite, git, etcd): write a temporary file beside the target, flush
and fsync it, rename it over the target (atomic on POSIX), then fsync the folder so that the
rename itself survives a power cut.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import BinaryIO, Callable


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

    keep_previous: rename the file being replaced to this path first (checkpoints keep the last
    good one as <name>.prev.pt). durable=False skips the fsyncs (for files that are cheap to
    rebuild). Raises what the file system raises (OSError: disk full, read-only, ...); the
    temporary file is removed then and the target is untouched.
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            if callable(data):
                data(f)
            else:
                f.write(data)
            f.flush()
            if durable:
                os.fsync(f.fileno())
        if keep_previous is not None and path.exists():
            os.replace(path, keep_previous)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)
    return path


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
