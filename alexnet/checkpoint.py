"""Checkpoints: the whole training state, written atomically, loaded with a clear error.

    checkpoint.save(run / "last.pt", state)    # tmp file, fsync, the old one kept as last.prev.pt
    state, path = checkpoint.load_latest(run)  # last.pt, or last.prev.pt if last.pt is damaged

A checkpoint is a dict of plain types and tensors, loaded with torch.load(weights_only=True) so
that opening one never runs code: the model's state dict (unwrapped from DDP and torch.compile),
the optimizer's, the schedule's and the GradScaler's, epoch and step (the loader position), the
RNG states, the resolved config, the classes and the input normalisation, and the metrics so far.
Everything `predict`, `evaluate` and `export` need travels with it.
"""
from __future__ import annotations

import errno
import os
import random
import time
from pathlib import Path

import numpy as np
import torch

from .errors import UserError
from .fileio import atomic_write

VERSION = 1


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated, damaged or not ours."""


def save(path: str | Path, state: dict) -> None:
    """Write atomically (alexnet.fileio); the checkpoint it replaces is kept as <name>.prev.pt.
    A full disk is a CheckpointError: the write went to a temporary file, now removed, so every
    checkpoint already there is as it was."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save({"format": "alexnet-checkpoint", "version": VERSION, **state}, f),
                     keep_previous=previous(path))
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CheckpointError(f"disk full while saving {path}: it was not written, and the checkpoints already in "
                              f"{path.parent} are intact; free some space and run the same command again to "
                              f"resume from the last one") from None


def previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def load(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, an empty file, bad pickle, not a torch file at all
        detail = (str(e).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(f"checkpoint {path} is damaged or truncated ({type(e).__name__}"
                              f"{': ' + detail if detail else ''}, {path.stat().st_size:,} bytes)") from None
    if not isinstance(state, dict) or state.get("format") != "alexnet-checkpoint":
        raise CheckpointError(f"{path} is not an alexnet checkpoint")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} is checkpoint version {state.get('version')}; this alexnet reads {VERSION}")
    return state


def load_latest(run_dir: str | Path, name: str = "last.pt", warn=print,
                set_aside: bool = True) -> tuple[dict, Path] | tuple[None, None]:
    """The newest readable checkpoint of a run folder: last.pt, else last.prev.pt (with a warning).

    A damaged last.pt is renamed to last.pt.damaged-<time> (set_aside; the main rank does it), so
    that the next save cannot rotate it over the good last.prev.pt. Raises CheckpointError when
    neither is readable."""
    path, prev = Path(run_dir) / name, previous(Path(run_dir) / name)
    if not path.exists() and not prev.exists():
        return None, None
    try:
        return load(path), path
    except CheckpointError as e:
        if not prev.is_file():
            raise
        state = load(prev)  # raises too when the previous one is damaged as well
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        if set_aside and path.exists():
            os.replace(path, aside)
        warn(f"warning: {e}; resuming from the previous checkpoint {prev}"
             + (f" (the damaged file is kept as {aside.name})" if set_aside else ""))
        return state, prev


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DDP and torch.compile wrappers (no `module.` / `_orig_mod.` keys)."""
    while True:
        if hasattr(model, "_orig_mod"):
            model = model._orig_mod
        elif isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        else:
            return model


def rng_state() -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
            "python_pos": random.getstate()[2],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((3, tuple(state["python"]), state["python_pos"]))
    np.random.set_state(("MT19937", state["numpy"]["keys"].numpy().astype(np.uint32), state["numpy"]["pos"], 0, 0.0))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
