"""Kaggle's "ImageNet Object Localization Challenge" download, read in place.

    listing = list_kaggle(Path("~/imagenet-object-localization-challenge"))   # part of alexnet.data.sources

Layout: ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/} with LOC_val_solution.csv (the validation labels)
and LOC_synset_mapping.txt (the class list) beside ILSVRC/; test/ has no labels and is left out.
The root may be the download's folder, its ILSVRC/ folder or CLS-LOC itself (find_cls_loc()).
"""
from __future__ import annotations

import os
from pathlib import Path

from ..errors import UserError
from .classes import describe
from .folders import junk, subfolders, walk
from .layouts import HINTS
from .listing import Listing, label_samples, printable
from .textfile import bad_byte, csv_rows, not_utf8, text_lines


def find_cls_loc(src: Path) -> Path | None:
    """The CLS-LOC folder, whether `src` is the download's root, its ILSVRC/ folder or CLS-LOC itself."""
    for folder in (src / "ILSVRC" / "Data" / "CLS-LOC", src / "Data" / "CLS-LOC", src):
        if folder.name == "CLS-LOC" and folder.is_dir():
            return folder
    return None


def _synsets(path: Path) -> set[str]:
    """The WNIDs of LOC_synset_mapping.txt ("n01440764 tench, Tinca tinca" per line); UserError
    naming the file and line when it is not UTF-8 text (textfile.text_lines)."""
    what = printable(str(path))
    ids = set()
    for number, line in text_lines(path, what):
        byte = bad_byte(line)
        if byte is not None:
            raise not_utf8(what, number, byte)
        if line.strip():
            ids.add(line.split()[0])
    return ids


def list_kaggle(src: Path) -> Listing:
    """Kaggle's "ImageNet Object Localization Challenge" download. The class list is
    LOC_synset_mapping.txt sorted (which is sorted-WNID order of the 1000 classes); val labels are
    the first WNID of each PredictionString in LOC_val_solution.csv. The CSVs sit beside ILSVRC/ in
    the download; `src` itself is searched first."""
    cls_loc = find_cls_loc(src)
    if cls_loc is None:
        raise UserError(f"{src} has no ILSVRC/Data/CLS-LOC folder; expected {HINTS['kaggle']}")
    beside = [src] + ([cls_loc.parents[2]] if len(cls_loc.parents) > 2 else [])

    def find(name: str) -> Path | None:
        return next((d / name for d in beside if (d / name).is_file()), None)

    train_dir, val_dir = cls_loc / "train", cls_loc / "val"  # test/ has no labels: not listed
    ignored: list[dict] = []
    class_dirs = subfolders(train_dir, ignored, cls_loc) if train_dir.is_dir() else []
    train_classes = [d.name for d in class_dirs]
    solution: dict[str, str] = {}  # ImageId -> WNID ("" when the row gives none)
    if val_dir.is_dir():
        solution_csv = find("LOC_val_solution.csv")
        if solution_csv is None:
            raise UserError(f"{val_dir} needs LOC_val_solution.csv (the validation labels) in "
                            f"{' or '.join(str(d) for d in beside)}")
        for _, row in csv_rows(solution_csv, printable(str(solution_csv))):
            if row[0] != "ImageId":  # the header
                solution[row[0]] = (row[1].split() or [""])[0] if len(row) > 1 else ""
    mapping = find("LOC_synset_mapping.txt")
    if mapping is not None:
        class_ids = sorted(_synsets(mapping))
    else:  # no class list: the classes the download shows
        class_ids = sorted(set(train_classes) | {w for w in solution.values() if w})
    index = {c: i for i, c in enumerate(class_ids)}  # without the mapping, every WNID met is in it

    pending: dict[str, list[tuple]] = {}
    skipped: dict[str, list[dict]] = {}
    if train_dir.is_dir():
        rows, skips = pending.setdefault("train", []), skipped.setdefault("train", [])
        for d in class_dirs:
            found = walk(d.path, str(cls_loc))
            skips += found.skipped
            ignored += found.ignored
            for path in found.files:
                key = os.path.relpath(path, cls_loc)
                if d.name in index:
                    rows.append((key, d.name, path, -1, -1))
                else:
                    skips.append({"path": key, "reason": f"class {d.name} is not in LOC_synset_mapping.txt"})
        with os.scandir(train_dir) as it:
            skips += [{"path": os.path.relpath(e.path, cls_loc), "reason": "not inside a class folder"}
                      for e in sorted(it, key=lambda e: e.name) if junk(e.name) is None and not e.is_dir()]
    if val_dir.is_dir():
        rows, skips = pending.setdefault("val", []), skipped.setdefault("val", [])
        found = walk(str(val_dir), str(cls_loc))
        skips += found.skipped
        ignored += found.ignored
        for path in found.files:
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
    return Listing("kaggle", str(src), describe(class_ids), label_samples(pending, index), skipped, ignored)
