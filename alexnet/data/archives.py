"""The sources that come as tar archives, read in place: the ILSVRC-2012 tars and WebDataset shards.

Part of alexnet.data.sources (see its docstring for the layouts). Tars are opened uncompressed and
seekable, so a member's data offset is a byte offset in the file itself: each image becomes a
Sample(path, offset, size) that any worker can read with one seek, and nothing is ever extracted.
"""
from __future__ import annotations

import io
import re
import tarfile
from pathlib import Path, PurePosixPath

from ..errors import UserError
from .classes import describe, ilsvrc2012
from .sources import HINTS, Listing, Sample, check_label, label_samples


# ---------------------------------------------------------------------------- tar helpers

def _open_tar(path: Path) -> tarfile.TarFile:
    # plain "r:" (seekable, uncompressed): member offsets are then byte offsets in the file itself
    try:
        return tarfile.open(path, mode="r:")
    except (tarfile.TarError, OSError) as e:
        raise UserError(f"cannot read {path} as an uncompressed tar archive ({e}); "
                        "a compressed or damaged download has to be fetched again") from e


def _tar_members(tar: tarfile.TarFile, prefix: str) -> tuple[list[tarfile.TarInfo], list[dict]]:
    """(regular files sorted by name, skipped entries). Folders are structure, not inputs; links and
    devices have no bytes of their own. A truncated archive keeps the members before the cut (the
    cut one is caught by its extent) and is itself reported, as the members after it are lost."""
    files, skipped = [], []
    try:
        for m in tar:
            if m.isfile():
                files.append(m)
            elif not m.isdir():
                skipped.append({"path": f"{prefix}/{m.name}", "reason": "not a regular file (a link?)"})
    except tarfile.TarError as e:
        skipped.append({"path": prefix, "reason": f"the archive ends early or is damaged ({e}); "
                                                  "the members after the last one listed are lost"})
    return sorted(files, key=lambda m: m.name), sorted(skipped, key=lambda e: e["path"])


TRUNCATED = "member data runs past the end of the archive (truncated download)"


# ------------------------------------------------------------------------------------ ilsvrc

ILSVRC_TRAIN = "ILSVRC2012_img_train.tar"
ILSVRC_VAL = "ILSVRC2012_img_val.tar"
ILSVRC_DEVKIT = "ILSVRC2012_devkit_t12.tar.gz"
VAL_NAME = re.compile(r"ILSVRC2012_val_(\d{8})\.JPEG")


def _ilsvrc_train(path: Path, pending: list[tuple], skipped: list[dict]) -> None:
    """The train tar holds one uncompressed tar per class, named <wnid>.tar: an image's bytes lie at
    (inner tar's data offset) + (image's data offset inside the inner tar) in the outer file."""
    end_of_file = path.stat().st_size
    with _open_tar(path) as outer:
        inners, damaged = _tar_members(outer, path.name)
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
                    images, damaged = _tar_members(tar, prefix)
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
    with _open_tar(path) as tar:
        images, damaged = _tar_members(tar, path.name)
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


# -------------------------------------------------------------------------------- webdataset

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")  # first present wins
CLS_BYTES = 32  # a .cls member holds a class number as text: a longer one is not read, and is no label


def _shard_split(name: str) -> str:
    name = name.lower()
    for word, split in (("train", "train"), ("val", "val"), ("test", "test")):  # "val" in "validation"
        if word in name:
            return split
    return "train"


def list_webdataset(src: Path) -> Listing:
    """WebDataset shards: members grouped by key (the member path up to the first "." of its name);
    the sample is the key's image member, its label the integer text of the key's .cls member.

    Class list: the 1000 ILSVRC-2012 classes when the shards are named as ImageNet ones and every
    label fits (timm/imagenet-1k-wds numbers them in sorted-WNID order); otherwise "0".."max"."""
    if src.is_file():
        shards = [src]
    else:
        shards = sorted(p for p in src.iterdir()
                        if p.suffix.lower() == ".tar" and p.is_file() and not p.name.startswith("."))
    pending: dict[str, list[tuple]] = {}
    skipped: dict[str, list[dict]] = {}
    for shard in shards:
        split = _shard_split(shard.name)
        rows, skips = pending.setdefault(split, []), skipped.setdefault(split, [])
        end_of_file = shard.stat().st_size
        with _open_tar(shard) as tar:
            files, damaged = _tar_members(tar, shard.name)
            skips += damaged
            groups: dict[str, dict[str, tarfile.TarInfo]] = {}
            for m in files:
                folder, _, name = m.name.rpartition("/")
                stem, _, extension = name.partition(".")
                groups.setdefault(f"{folder}/{stem}" if folder else stem, {})[extension.lower()] = m
            for key, parts in sorted(groups.items()):
                image = next((parts[e] for e in IMAGE_EXTENSIONS if e in parts), None)
                cls = parts.get("cls")
                intact = all(m.offset_data + m.size <= end_of_file for m in (image, cls) if m is not None)
                text = ""
                if cls is not None and intact and cls.size <= CLS_BYTES:  # reading a cut member would raise
                    text = tar.extractfile(cls).read().decode("utf-8", "replace").strip()
                if image is None:
                    reason = f"no image member (has {', '.join('.' + e for e in sorted(parts))})"
                elif not intact:
                    reason = TRUNCATED
                elif cls is None:
                    reason = "no .cls member (the label)"
                elif cls.size > CLS_BYTES:
                    reason = f".cls is {cls.size:,} bytes long, not a class number (not read)"
                elif not re.fullmatch(r"[0-9]+", text):
                    reason = f".cls holds {text[:20]!r}, not a class number"
                else:  # a label beyond MAX_CLASSES stops the listing before a table of that size is made
                    label = check_label(text, f"{shard}: sample {key} ({cls.name})")
                    rows.append((f"{shard.name}/{key}", label, str(shard), image.offset_data, image.size))
                    continue
                skips.append({"path": f"{shard.name}/{key}", "reason": reason})
    labels = {label for rows in pending.values() for _, label, *_ in rows}
    imagenet = any("imagenet" in shard.name.lower() for shard in shards)
    if labels and imagenet and max(labels) < 1000:
        class_ids = [c.id for c in ilsvrc2012()]
    else:
        class_ids = [str(i) for i in range(max(labels, default=-1) + 1)]
    splits = {split: [Sample(*row) for row in sorted(rows)] for split, rows in sorted(pending.items())}
    return Listing("webdataset", str(src), describe(class_ids), splits, skipped)
