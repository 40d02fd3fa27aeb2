"""The official ILSVRC-2012 archives, read in place (never extracted).

    listing = list_ilsvrc(Path("/data/ILSVRC2012"))     # part of alexnet.data.sources

ILSVRC2012_img_train.tar holds 1000 inner per-class tars; ILSVRC2012_img_val.tar is flat, its labels
in ILSVRC2012_devkit_t12.tar.gz (the devkit's ILSVRC2012_IDs mapped through meta.mat to sorted-WNID
order). Every image is a byte range of the outer file (tars.py), so reading one is a seek and a read.
"""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path, PurePosixPath

from ..errors import UserError
from .classes import describe, ilsvrc2012
from .layouts import HINTS
from .listing import Listing, label_samples
from .tars import TRUNCATED, open_tar, tar_members

ILSVRC_TRAIN = "ILSVRC2012_img_train.tar"
ILSVRC_VAL = "ILSVRC2012_img_val.tar"
ILSVRC_DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")


def _ilsvrc_train(path: Path, pending: list[tuple], skipped: list[dict]) -> None:
    """The train tar holds one uncompressed tar per class, named <wnid>.tar: an image's bytes lie at
    (inner tar's data offset) + (image's data offset inside the inner tar) in the outer file."""
    end_of_file = path.stat().st_size
    with open_tar(path) as outer:
        inners, damaged = tar_members(outer, path.name)
        skipped += damaged
        for inner in inners:
            prefix = f"{path.name}/{inner.name}"
            name = PurePosixPath(inner.name).name
            if not name.endswith(".tar"):
                skipped.append({"path": prefix, "reason": "not a per-class <wnid>.tar"})
                continue
            wnid = name[:-len(".tar")]
            try:
                with outer.extractfile(inner) as f, tarfile.open(fileobj=f, mode="r:") as tar:
                    images, damaged = tar_members(tar, prefix)
            except (tarfile.TarError, OSError) as e:
                skipped.append({"path": prefix, "reason": f"unreadable per-class tar: {e}"})
                continue
            skipped += damaged
            for m in images:
                offset = inner.offset_data + m.offset_data
                if offset + m.size > min(end_of_file, inner.offset_data + inner.size):
                    skipped.append({"path": f"{prefix}/{m.name}", "reason": TRUNCATED})
                else:
                    pending.append((f"{prefix}/{m.name}", wnid, str(path), offset, m.size))


def _ilsvrc_devkit(path: Path) -> tuple[dict[int, str], list[str]]:
    """(leaf ILSVRC2012_ID -> WNID from meta.mat, the ground-truth lines). Members are found by how
    their paths end, as re-packed devkits do not always keep the ILSVRC2012_devkit_t12/ prefix."""
    import numpy as np
    import scipy.io

    wanted = {"data/meta.mat": None, "data/ILSVRC2012_validation_ground_truth.txt": None}
    try:
        with tarfile.open(path, mode="r:*") as tar:  # the devkit is small and gzipped: read it whole
            for m in tar.getmembers():
                for end in wanted:
                    if m.isfile() and ("/" + m.name).endswith("/" + end):
                        wanted[end] = tar.extractfile(m).read()
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"cannot read the devkit {path} ({e}); fetch {ILSVRC_DEVKIT} again") from e
    missing = [end for end, data in wanted.items() if data is None]
    if missing:
        raise UserError(f"{path} lacks {' and '.join(missing)}; is it the ILSVRC-2012 devkit?")
    try:
        synsets = np.atleast_1d(scipy.io.loadmat(io.BytesIO(wanted["data/meta.mat"]), squeeze_me=True)["synsets"])
        # the classes are the leaves of the devkit's synset tree (ILSVRC2012_ID 1..1000); the inner
        # nodes (ID > 1000) are WordNet ancestors that no image is labelled with
        leaves = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except MemoryError:
        raise
    except Exception as e:  # scipy's .mat reader raises any kind of error on damaged bytes
        raise UserError(f"{path}: its data/meta.mat is not the devkit's class table ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:120]}); fetch {ILSVRC_DEVKIT} again") from None
    raw = wanted["data/ILSVRC2012_validation_ground_truth.txt"]
    try:
        if b"\x00" in raw:
            raise ValueError("it holds NUL bytes")
        truth = raw.decode("utf-8").splitlines()
    except ValueError as e:  # UnicodeDecodeError is one
        raise UserError(f"{path}: its data/ILSVRC2012_validation_ground_truth.txt is not a text file of class "
                        f"numbers ({e}); fetch {ILSVRC_DEVKIT} again") from None
    return leaves, truth


def _ilsvrc_val(path: Path, leaves: dict[int, str], truth: list[str],
                pending: list[tuple], skipped: list[dict]) -> None:
    """Line i of the ground truth is the 1-based ILSVRC2012_ID of ILSVRC2012_val_{i:08d}.JPEG."""
    end_of_file = path.stat().st_size
    with open_tar(path) as tar:
        images, damaged = tar_members(tar, path.name)
    skipped += damaged
    for m in images:
        key = f"{path.name}/{m.name}"
        match = VAL_NAME.fullmatch(PurePosixPath(m.name).name)
        if not match:
            skipped.append({"path": key, "reason": "not an ILSVRC2012_val_<8 digits>.JPEG name"})
            continue
        number = int(match.group(1))
        line = truth[number - 1].strip() if 0 < number <= len(truth) else ""
        if not line:
            reason = f"no line {number} in ILSVRC2012_validation_ground_truth.txt"
        elif not line.isdigit() or int(line) not in leaves:
            reason = f"ground-truth ILSVRC2012_ID {line!r} is not a class (leaf synset) of meta.mat"
        elif m.offset_data + m.size > end_of_file:
            reason = TRUNCATED
        else:
            pending.append((key, leaves[int(line)], str(path), m.offset_data, m.size))
            continue
        skipped.append({"path": key, "reason": reason})


def list_ilsvrc(src: Path) -> Listing:
    """The official archives in place: `src` is their folder or one of them (the others beside it).

    Class list: the shipped 1000 ILSVRC-2012 classes when every WNID met (train tar names, meta.mat
    leaves) is one of them, so train alone, val alone or a subset all get the standard sorted-WNID
    numbers; archives holding foreign WNIDs get the sorted union of what they hold instead, so no
    image is dropped for its class."""
    if src.is_file() and src.name not in (ILSVRC_TRAIN, ILSVRC_VAL, ILSVRC_DEVKIT):
        raise UserError(f"{src} is not one of the ILSVRC-2012 archives read here: {HINTS['ilsvrc']}")
    folder = src.parent if src.is_file() else src
    train, val, devkit = (folder / ILSVRC_TRAIN, folder / ILSVRC_VAL, folder / ILSVRC_DEVKIT)
    if val.is_file() and not devkit.is_file():  # before the long walk through the train tar
        raise UserError(f"{val} needs {ILSVRC_DEVKIT} beside it for the validation labels "
                        f"(not found in {folder}); it comes with the ILSVRC-2012 downloads")
    leaves: dict[int, str] = {}
    truth: list[str] = []
    if devkit.is_file():  # read even without the val tar: its leaves belong in the class list
        leaves, truth = _ilsvrc_devkit(devkit)
    pending: dict[str, list[tuple]] = {}
    skipped: dict[str, list[dict]] = {}
    if train.is_file():
        _ilsvrc_train(train, pending.setdefault("train", []), skipped.setdefault("train", []))
    if val.is_file():
        _ilsvrc_val(val, leaves, truth, pending.setdefault("val", []), skipped.setdefault("val", []))
    met = {c for rows in pending.values() for _, c, *_ in rows} | set(leaves.values())
    standard = [c.id for c in ilsvrc2012()]
    class_ids = standard if met <= set(standard) else sorted(met)
    index = {c: i for i, c in enumerate(class_ids)}
    return Listing("ilsvrc", str(folder), describe(class_ids), label_samples(pending, index), skipped)
