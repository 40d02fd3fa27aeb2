"""List the samples of the image collections people really have, with labels in sorted-WNID order.

    listing = sources.list_source("/data/imagenet")          # kind detected
    listing = sources.list_source("/data/ILSVRC", kind="ilsvrc")
    data = sources.read_bytes(listing.splits["train"][0])

Kinds (`KINDS`):
- folder: ImageFolder trees, ROOT/train/<class>/*, ROOT/val/<class>/* (any split folder names), or
  a single split folder ROOT/<class>/*. Every non-hidden file in a class folder is a sample: the
  ones that do not decode are skipped and reported later, so every file is accounted for.
- ilsvrc: the official ILSVRC-2012 archives, read in place (never extracted): ILSVRC2012_img_train.tar
  (1000 inner per-class tars), ILSVRC2012_img_val.tar (flat) with ILSVRC2012_devkit_t12.tar.gz for
  the validation labels (devkit ILSVRC2012_IDs mapped through meta.mat to sorted-WNID order).
- kaggle: "ImageNet Object Localization": ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/} with
  LOC_val_solution.csv and LOC_synset_mapping.txt.
- webdataset: tar shards of <key>.jpg + <key>.cls members (timm/imagenet-1k-wds); the split is
  read from the shard names (train / validation / val / test).
- csv: a CSV or TSV list of path,label (optionally a third column split); paths relative to the list.

Samples inside archives are byte ranges (path, offset, size): reading one is a seek and a read,
so any worker can read any sample without unpacking anything.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .classes import ClassInfo, describe

KINDS = ("folder", "ilsvrc", "kaggle", "webdataset", "csv")
SPLIT_ALIASES = {"validation": "val", "valid": "val"}


@dataclass(frozen=True)
class Sample:
    key: str  # stable, human-readable id: a relative path, or archive/member
    label: int  # index into Listing.classes
    path: str  # the file, or the archive that holds it
    offset: int = -1  # byte offset of the member's data inside `path`; -1: the whole file
    size: int = -1  # member size in bytes when offset >= 0


@dataclass
class Listing:
    kind: str
    root: str
    classes: list[ClassInfo]
    splits: dict[str, list[Sample]]  # in a deterministic order (sorted keys)
    skipped: dict[str, list[dict]] = field(default_factory=dict)  # split -> [{path, reason}] at listing

    def found(self, split: str) -> int:
        return len(self.splits.get(split, [])) + len(self.skipped.get(split, []))


def read_bytes(sample: Sample) -> bytes:
    """The encoded bytes of one sample (a whole file, or a byte range of an archive)."""
    with open(sample.path, "rb") as f:
        if sample.offset < 0:
            return f.read()
        f.seek(sample.offset)
        data = f.read(sample.size)
    if len(data) != sample.size:
        raise OSError(f"{sample.path} ends before member {sample.key} does (truncated archive?)")
    return data


def split_name(name: str) -> str:
    return SPLIT_ALIASES.get(name.lower(), name.lower())


def list_source(src: str | Path, kind: str = "auto") -> Listing:
    """List every sample of `src`; raise UserError when it is missing, unrecognised or empty."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"source not found: {src}")
    if kind == "auto":
        kind = detect(src)
    if kind not in KINDS:
        raise UserError(f"unknown source kind {kind!r}; choose one of auto, {', '.join(KINDS)}")
    listing = LISTERS[kind](src)
    if not any(listing.splits.values()):
        raise UserError(f"no images found in {src} (read as {kind}): expected {HINTS[kind]}")
    return listing


def detect(src: Path) -> str:
    """Guess the kind of a source from its layout; UserError with the expected layouts if none fits."""
    if src.is_file():
        if src.suffix.lower() in (".csv", ".tsv"):
            return "csv"
        if src.name.startswith("ILSVRC2012_"):
            return "ilsvrc"
        if src.suffix.lower() == ".tar":
            return "webdataset"
    elif src.is_dir():
        names = {p.name for p in src.iterdir()}
        if names & {"ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"}:
            return "ilsvrc"
        if (src / "ILSVRC" / "Data" / "CLS-LOC").is_dir():
            return "kaggle"
        if any(n.endswith(".tar") for n in names) and not any((src / n).is_dir() for n in names):
            return "webdataset"
        if any((src / n).is_dir() for n in names if not n.startswith(".")):
            return "folder"
    raise UserError(f"cannot tell what {src} holds; name it with --source: "
                    + "; ".join(f"{k}: {h}" for k, h in HINTS.items()))


HINTS = {
    "folder": "ROOT/train/<class>/<image>, ROOT/val/<class>/<image>, or ROOT/<class>/<image>",
    "ilsvrc": "ILSVRC2012_img_train.tar, ILSVRC2012_img_val.tar and ILSVRC2012_devkit_t12.tar.gz",
    "kaggle": "ILSVRC/Data/CLS-LOC/train/<wnid>/, ILSVRC/Data/CLS-LOC/val/, LOC_val_solution.csv",
    "webdataset": "tar shards of <key>.jpg and <key>.cls members",
    "csv": "a .csv or .tsv file of path,label rows",
}


# ------------------------------------------------------------------------------------ folder

def _visible(entries) -> list[os.DirEntry]:
    return sorted((e for e in entries if not e.name.startswith(".")), key=lambda e: e.name)


def _class_dirs(folder: Path) -> list[os.DirEntry]:
    with os.scandir(folder) as it:
        return [e for e in _visible(it) if e.is_dir()]


def _files_under(folder: str) -> list[str]:
    """Every non-hidden file below `folder`, recursively, sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames) if not f.startswith("."))
    return out


def list_folder(root: Path) -> Listing:
    """ImageFolder: split folders of class folders, or one split folder of class folders."""
    subdirs = _class_dirs(root)
    split_dirs = {split_name(d.name): Path(d.path) for d in subdirs
                  if _class_dirs(Path(d.path)) and split_name(d.name) in ("train", "val", "test")}
    if not split_dirs:  # ROOT/<class>/*: a single split, named after ROOT when that is a split name
        name = split_name(root.name)
        split_dirs = {name if name in ("train", "val", "test") else "train": root}
    class_ids = sorted({d.name for folder in split_dirs.values() for d in _class_dirs(folder)})
    index = {c: i for i, c in enumerate(class_ids)}
    splits, skipped = {}, {}
    for name, folder in sorted(split_dirs.items()):
        samples = []
        for d in _class_dirs(folder):
            for path in _files_under(d.path):
                samples.append(Sample(os.path.relpath(path, root), index[d.name], path))
        splits[name] = samples
        with os.scandir(folder) as it:  # loose files beside the class folders have no label
            loose = [e for e in _visible(it) if e.is_file()]
        skipped[name] = [{"path": os.path.relpath(e.path, root), "reason": "not inside a class folder"}
                         for e in loose]
    return Listing("folder", str(root), describe(class_ids), splits, skipped)


LISTERS = {"folder": list_folder}
