"""The run folder of `alexnet train`: which folder a run writes, whether a folder is one, and the
lock that keeps a second run out of it.

    out = runfolder.choose(cfg, resume)    # --out, else --resume's folder, else runs/DATE-TIME-PRESET
    lock = runfolder.claim(out, rt)        # rank 0's lock; UserError on every rank when it is refused
    ...
    lock.release()

A folder is taken only when it is empty or was written by `alexnet train` (is_run_folder), so that
--out pointed at a user's own folder never overwrites anything in it. A folder that holds a
checkpoint (holds_checkpoint) is a run to continue: `alexnet train` resumes it (alexnet.resume).
What the folder holds is alexnet.runlog's to write.
"""
from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

from . import distributed
from .errors import UserError
from .fileio import FolderLock

CHECKPOINTS = ("last.pt", "last.prev.pt")  # what a run resumes from, the newest first


def named(cfg, resume: str | None) -> Path | None:
    """The folder the command line names, if any: train.out (--out), else the folder of the
    checkpoint --resume gives (its run continues there); None for a new run with neither."""
    if cfg.train.out:
        return Path(cfg.train.out)
    return Path(resume).parent if resume not in (None, "auto") else None


def default_out(cfg) -> Path:
    """runs/DATE-TIME-PRESET (or -Nmin for a --minutes run), in the working folder."""
    what = f"{cfg.train.minutes:g}min" if cfg.train.minutes else cfg.preset
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{what}"


def choose(cfg, resume: str | None) -> Path:
    """The run folder: the one the command line names, else a new default_out with rank 0's time
    on every rank (a collective under torchrun: every rank calls it)."""
    return named(cfg, resume) or distributed.broadcast(default_out(cfg))


def holds_checkpoint(out: Path | None) -> bool:
    """Whether `out` holds a checkpoint a run continues from (last.pt or its previous copy)."""
    return out is not None and any((out / n).exists() for n in CHECKPOINTS)


def is_run_folder(out: Path) -> bool:
    """Empty (dot-files aside), or written by `alexnet train`: its env.json, metrics or checkpoints."""
    if not out.exists():
        return True
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    if not names or names & {"last.pt", "last.prev.pt", "best.pt", "metrics.jsonl"}:
        return True
    try:  # a folder `alexnet ablate` made for this run: its log of the command comes first
        if (out / "train.log").read_text(errors="replace").lstrip().startswith("$ alexnet train"):
            return True
    except OSError:
        pass
    try:
        env = json.loads((out / "env.json").read_text())
        return isinstance(env, dict) and "command" in env and "torch" in env
    except (OSError, ValueError):
        return False


def claim(out: Path, rt) -> FolderLock | None:
    """Rank 0 takes the run folder's exclusive lock (a second run with the same --out is refused:
    "in use by pid N") after checking it is a run folder, not a user's own; every rank of `rt`
    (an alexnet.runtime.Runtime) gets the same error. Returns the lock (None on other ranks)."""
    lock, error = None, None
    if rt.main:
        try:
            if out.exists() and not out.is_dir():
                raise UserError(f"--out {out} is a file, not a folder")
            if not is_run_folder(out):
                raise UserError(f"--out {out} is not empty and is not a run folder (no env.json, metrics or "
                                f"checkpoint of alexnet train); choose another folder so that nothing in it is overwritten")
            lock = FolderLock(out, "run folder").acquire()
        except UserError as e:
            error = str(e)
        except OSError as e:  # read-only, no permission, /proc: one line on every rank, not a traceback
            error = f"cannot use --out {out}: {e.strerror or e}"
    error = distributed.broadcast(error)
    if error:
        raise UserError(error)
    return lock
