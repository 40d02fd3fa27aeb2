"""Checkpoints: the whole training state, written atomically, loaded with a clear error.

    checkpoint.save(run / "last.pt", state)    # tmp file, fsync, the old one kept as last.prev.pt
    checkpoint.save(run / "best.pt", state, keep_previous=False)  # no best.prev.pt
    state, path = checkpoint.load_latest(run)  # last.pt, or last.prev.pt if last.pt is damaged

A checkpoint is a dict of plain types and tensors, loaded with torch.load(weights_only=True) so
that opening one never runs code: the model's state dict (unwrapped from DDP and torch.compile),
the optimizer's, the schedule's and the GradScaler's, epoch and step (the loader position), the
RNG states, the resolved config, the classes and the input normalisation, and the metrics so far.
Everything `predict`, `evaluate` and `export` need travels with it. best.pt holds all of it but the
optimizer's state ("optimizer": None): SGD's momentum is one more copy of the weights, which no
reader of best.pt needs; a resume from it restarts the momentum.
"""
from __future__ import annotations

import argparse
import errno
import os
import random
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import torch

from . import weightsfile
from .errors import UserError
from .fileio import atomic_write

VERSION = 1


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated, damaged or not ours."""


def save(path: str | Path, state: dict, keep_previous: bool = True) -> int:
    """Write atomically (alexnet.fileio); returns the bytes written. keep_previous: the checkpoint
    it replaces is kept as <name>.prev.pt (last.pt's, what load_latest falls back to); without it
    the old file is replaced, and a <name>.prev.pt an older alexnet left beside it is removed (a
    full copy of the model that nothing reads). A full disk is a CheckpointError: the write went
    to a temporary file, now removed, so every checkpoint already there is as it was."""
    path = Path(path)
    try:
        atomic_write(path, lambda f: torch.save({"format": "alexnet-checkpoint", "version": VERSION, **state}, f),
                     keep_previous=previous(path) if keep_previous else None)
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise CheckpointError(f"disk full while saving {path}: it was not written, and the checkpoints already in "
                              f"{path.parent} are intact; free some space and run the same command again to "
                              f"resume from the last one") from None
    if not keep_previous:
        previous(path).unlink(missing_ok=True)
    return path.stat().st_size


def previous(path: Path) -> Path:
    return path.with_name(path.stem + ".prev" + path.suffix)


def load(path: str | Path) -> dict:
    """One of our checkpoints (the whole training state, to resume from), read by `read_file`.
    Raises CheckpointError for a missing or damaged file, another version, or a file that is not
    ours (saying what it is: torchvision's reference checkpoints and state dicts are read by
    alexnet.weights.read, for --init, --weights and every command's CKPT)."""
    path = Path(path)
    return ours(read_file(path), path)


def read_file(path: str | Path, what: str = "checkpoint", error: type[UserError] = CheckpointError) -> object:
    """The one reader of a file named as a checkpoint or as weights, for every command: a
    safetensors file (named .safetensors, or starting as one) through safetensors' own reader, as
    an alexnet.weightsfile.WeightsFile; anything else through torch.load, weights_only, so that
    opening a file runs no code, with argparse.Namespace allowed (torchvision's reference scripts
    store their arguments as "args"). Raises `error`, one line naming the file as `what`, for a
    missing file, a folder, a file that pickles other Python objects (named), and a damaged or
    truncated one (with the first sentence of torch's or safetensors' reason, and the size)."""
    path = Path(path)
    if not path.exists():
        raise error(f"{what} not found: {path}")
    if not path.is_file():
        raise error(f"{what} {path} is not a file (a folder of alexnet train holds best.pt and last.pt)")
    if weightsfile.is_safetensors(path):
        return weightsfile.read(path, what, error)
    program = exported_program(path)
    if program:  # what `alexnet export` writes besides safetensors: a program, whose weights are not ours to read
        raise error(f"{what} {path} is {program} program, not weights: give the checkpoint it was exported from "
                    f"(or export that with --format safetensors)")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # truncated zip, an empty file, bad pickle, not a torch file at all
        text = str(e)
        unsafe = re.search(r"Unsupported global: GLOBAL ([\w.]+)", text)
        if unsafe:  # a file that would run code (or import it) to open: refused, not damaged
            raise error(f"{what} {path} pickles Python objects ({unsafe.group(1)}), which are not loaded so that "
                        f"opening a file runs no code: re-save its weights with torch.save(model.state_dict(), "
                        f"PATH), or save the object's fields as plain types") from None
        why = re.search(r"WeightsUnpickler error: (.*)", text)  # torch's own reason, after its advice
        detail = why.group(1) if why else (text.strip().splitlines() or [""])[0]
        detail = re.split(r"(?<=\.)\s", detail.strip())[0][:200].rstrip(".")  # its first sentence: the rest is advice
        raise error(f"{what} {path} is damaged or truncated ({type(e).__name__}{': ' + detail if detail else ''}, "
                    f"{path.stat().st_size:,} bytes)") from None


def exported_program(path: Path) -> str | None:
    """"an ONNX", "a TorchScript" or "a torch.export (.pt2)" when `path` holds such a program (by
    its extension, or the members of its zip archive), else None; for messages."""
    if path.suffix.lower() == ".onnx":
        return "an ONNX"
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile):
        return None
    if any(n.endswith("/archive_format") for n in names):
        return "a torch.export (.pt2)"
    if any(n.endswith("/constants.pkl") or "/code/__torch__/" in n for n in names):
        return "a TorchScript"
    return None


def ours(state: object, path: str | Path) -> dict:
    """`state` (a loaded file) if it is one of our checkpoints of this version; else CheckpointError
    saying what the file holds instead."""
    if not isinstance(state, dict) or state.get("format") != "alexnet-checkpoint":
        raise CheckpointError(f"{path} is not an alexnet checkpoint but {describe(state)}: start a new run from "
                              f"its weights with --init {path}")
    if state.get("version") != VERSION:
        raise CheckpointError(f"{path} is checkpoint version {state.get('version')}; this alexnet reads {VERSION}")
    return state


def describe(obj: object) -> str:
    """What a loaded file that is not our checkpoint holds, in a few words, for messages."""
    if isinstance(obj, weightsfile.WeightsFile):
        return f"{'alexnet weights' if obj.ours else 'a state dict'} in safetensors ({len(obj.tensors)} tensors)"
    if not isinstance(obj, dict):
        return f"a {type(obj).__name__}"
    if isinstance(obj.get("model"), dict) and isinstance(obj.get("args"), argparse.Namespace):
        return f"a checkpoint of torchvision's reference scripts (model {getattr(obj['args'], 'model', '?')})"
    if isinstance(obj.get("model"), dict):
        return "a checkpoint with weights under 'model'"
    if isinstance(obj.get("state_dict"), dict):
        return "a checkpoint with weights under 'state_dict'"
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return f"a state dict of {len(obj)} tensors"
    return f"a dict of {', '.join(map(str, list(obj)[:6]))}{' ...' if len(obj) > 6 else ''}"


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
