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
  the validation labels (devkit ILSVRC2012_IDs mapped through meta.mat to sorted-WNID order). The
  classes are the shipped 1000 ILSVRC-2012 classes whenever every WNID met is one of them, so a
  subset of the archives still gets the standard label numbers.
- kaggle: "ImageNet Object Localization": ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/} with
  LOC_val_solution.csv and LOC_synset_mapping.txt (the class list); test/ has no labels and is left out.
- webdataset: tar shards of <key>.jpg + <key>.cls members (timm/imagenet-1k-wds); the split is
  read from the shard names (train / validation / val / test).
- csv: a CSV or TSV list of path,label (optionally a third column split); paths relative to the list.

Samples inside archives are byte ranges (path, offset, size): reading one is a seek and a read,
so any worker can read any sample without unpacking anything. Every input a lister meets is either
a sample or an entry of `Listing.skipped` with the reason, so nothing disappears silently.
"""
from __future__ import annotations

import csv
import os
import re
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
        # hidden entries are not part of a layout (a Hugging Face download leaves a .cache/ folder
        # beside the shards, macOS leaves .DS_Store files)
        names = {p.name for p in src.iterdir() if not p.name.startswith(".")}
        if names & {"ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"}:
            return "ilsvrc"
        if _kaggle_cls_loc(src) is not None:
            return "kaggle"
        if any(n.lower().endswith(".tar") for n in names) and not any((src / n).is_dir() for n in names):
            return "webdataset"
        if any((src / n).is_dir() for n in names):
            return "folder"
    raise UserError(f"cannot tell what {src} holds; name it with --source: "
                    + "; ".join(f"{k}: {h}" for k, h in HINTS.items()))


HINTS = {
    "folder": "ROOT/train/<class>/<image>, ROOT/val/<class>/<image>, or ROOT/<class>/<image>",
    "ilsvrc": "a folder with ILSVRC2012_img_train.tar and/or ILSVRC2012_img_val.tar (the latter with "
              "ILSVRC2012_devkit_t12.tar.gz), or one of those files",
    "kaggle": "ILSVRC/Data/CLS-LOC/train/<wnid>/, ILSVRC/Data/CLS-LOC/val/, LOC_val_solution.csv "
              "and LOC_synset_mapping.txt",
    "webdataset": "a .tar shard or a folder of them holding <key>.jpg (or .png, ...) and <key>.cls "
                  "members; the split is read from the shard names",
    "csv": "a .csv or .tsv file of path,label[,split] rows, paths relative to the file",
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


def label_samples(pending: dict[str, list[tuple]], index: dict[str, int]) -> dict[str, list[Sample]]:
    """(key, class id, path, offset, size) rows -> Samples sorted by key; every id is in `index`."""
    return {split: [Sample(key, index[c], path, offset, size) for key, c, path, offset, size in sorted(rows)]
            for split, rows in sorted(pending.items())}


# ------------------------------------------------------------------------------------ kaggle

def _kaggle_cls_loc(src: Path) -> Path | None:
    """The CLS-LOC folder, whether `src` is the download's root, its ILSVRC/ folder or CLS-LOC itself."""
    for folder in (src / "ILSVRC" / "Data" / "CLS-LOC", src / "Data" / "CLS-LOC", src):
        if folder.name == "CLS-LOC" and folder.is_dir():
            return folder
    return None


def _csv_rows(path: Path, delimiter: str = ","):
    """(line number, stripped cells) of the non-blank rows. utf-8-sig: lists saved by spreadsheet
    programs start with a byte-order mark."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f, delimiter=delimiter)
        for row in reader:
            row = [cell.strip() for cell in row]
            if any(row):
                yield reader.line_num, row


def list_kaggle(src: Path) -> Listing:
    """Kaggle's "ImageNet Object Localization Challenge" download. The class list is
    LOC_synset_mapping.txt sorted (which is sorted-WNID order of the 1000 classes); val labels are
    the first WNID of each PredictionString in LOC_val_solution.csv. The CSVs sit beside ILSVRC/ in
    the download; `src` itself is searched first."""
    cls_loc = _kaggle_cls_loc(src)
    if cls_loc is None:
        raise UserError(f"{src} has no ILSVRC/Data/CLS-LOC folder; expected {HINTS['kaggle']}")
    beside = [src] + ([cls_loc.parents[2]] if len(cls_loc.parents) > 2 else [])

    def find(name: str) -> Path | None:
        return next((d / name for d in beside if (d / name).is_file()), None)

    train_dir, val_dir = cls_loc / "train", cls_loc / "val"  # test/ has no labels: not listed
    train_classes = [d.name for d in _class_dirs(train_dir)] if train_dir.is_dir() else []
    solution: dict[str, str] = {}  # ImageId -> WNID ("" when the row gives none)
    if val_dir.is_dir():
        solution_csv = find("LOC_val_solution.csv")
        if solution_csv is None:
            raise UserError(f"{val_dir} needs LOC_val_solution.csv (the validation labels) in "
                            f"{' or '.join(str(d) for d in beside)}")
        for _, row in _csv_rows(solution_csv):
            if row[0] != "ImageId":  # the header
                solution[row[0]] = (row[1].split() or [""])[0] if len(row) > 1 else ""
    mapping = find("LOC_synset_mapping.txt")
    if mapping is not None:
        class_ids = sorted({line.split()[0] for line in mapping.read_text().splitlines() if line.strip()})
    else:  # no class list: the classes the download shows
        class_ids = sorted(set(train_classes) | {w for w in solution.values() if w})
    index = {c: i for i, c in enumerate(class_ids)}  # without the mapping, every WNID met is in it

    pending: dict[str, list[tuple]] = {}
    skipped: dict[str, list[dict]] = {}
    if train_dir.is_dir():
        rows, skips = pending.setdefault("train", []), skipped.setdefault("train", [])
        for d in _class_dirs(train_dir):
            for path in _files_under(d.path):
                key = os.path.relpath(path, cls_loc)
                if d.name in index:
                    rows.append((key, d.name, path, -1, -1))
                else:
                    skips.append({"path": key, "reason": f"class {d.name} is not in LOC_synset_mapping.txt"})
        with os.scandir(train_dir) as it:
            skips += [{"path": os.path.relpath(e.path, cls_loc), "reason": "not inside a class folder"}
                      for e in _visible(it) if e.is_file()]
    if val_dir.is_dir():
        rows, skips = pending.setdefault("val", []), skipped.setdefault("val", [])
        for path in _files_under(str(val_dir)):
            key = os.path.relpath(path, cls_loc)
            image_id = os.path.basename(path).split(".")[0]
            wnid = solution.get(image_id)
            if wnid is None:
                reason = f"no row for {image_id} in LOC_val_solution.csv"
            elif not wnid:
                reason = f"empty PredictionString for {image_id} in LOC_val_solution.csv"
            elif wnid not in index:
                reason = f"class {wnid} is not in LOC_synset_mapping.txt"
            else:
                rows.append((key, wnid, path, -1, -1))
                continue
            skips.append({"path": key, "reason": reason})
    return Listing("kaggle", str(src), describe(class_ids), label_samples(pending, index), skipped)


# --------------------------------------------------------------------------------------- csv

def list_csv(src: Path) -> Listing:
    """A list of path,label[,split] rows. Integer labels are class numbers ("0".."max"); any other
    labels are class names, numbered in sorted order (sorted-WNID order when they are WNIDs)."""
    if not src.is_file():
        raise UserError(f"{src} is not a file; expected {HINTS['csv']}")
    default_split = split_name(src.stem)  # train.csv, val.tsv, validation.csv name their split
    if default_split not in ("train", "val", "test"):
        default_split = "train"
    delimiter = "\t" if src.suffix.lower() == ".tsv" else ","
    entries = []  # (path as written, label text, split)
    for number, row in _csv_rows(src, delimiter):
        if not entries and row[0].lower() == "path":  # a header row
            continue
        if len(row) < 2 or not row[0] or not row[1]:
            raise UserError(f"{src} line {number}: expected path{delimiter}label[{delimiter}split], "
                            f"got {delimiter.join(row)!r}")
        split = split_name(row[2]) if len(row) > 2 and row[2] else default_split
        entries.append((row[0], row[1], split))
    labels = {label for _, label, _ in entries}  # every row's label counts, even a missing file's
    if all(re.fullmatch(r"[0-9]+", label) for label in labels):
        class_ids = [str(i) for i in range(max((int(label) for label in labels), default=-1) + 1)]
        class_of = {label: str(int(label)) for label in labels}  # "007" is class 7
    else:
        class_ids = sorted(labels)
        class_of = {label: label for label in labels}
    index = {c: i for i, c in enumerate(class_ids)}
    pending: dict[str, list[tuple]] = {}
    skipped: dict[str, list[dict]] = {}
    for written, label, split in entries:
        path = src.parent / written  # an absolute path stays as it is
        rows, skips = pending.setdefault(split, []), skipped.setdefault(split, [])
        if path.is_file():
            rows.append((written, class_of[label], str(path), -1, -1))
        else:
            skips.append({"path": written, "reason": "file not found"})
    return Listing("csv", str(src), describe(class_ids), label_samples(pending, index), skipped)


from .archives import list_ilsvrc, list_webdataset  # noqa: E402  (they build on the types above)

LISTERS = {"folder": list_folder, "ilsvrc": list_ilsvrc, "kaggle": list_kaggle,
           "webdataset": list_webdataset, "csv": list_csv}
