"""List the samples of the image collections people really have, with labels in sorted-WNID order.

    listing = sources.list_source("/data/imagenet")          # kind detected
    listing = sources.list_source("/data/ILSVRC", kind="ilsvrc")
    data = sources.read_bytes(listing.splits["train"][0])

Kinds (`KINDS`):
- folder: ImageFolder trees, ROOT/train/<class>/*, ROOT/val/<class>/* (train, val or validation,
  test), or a single split folder ROOT/<class>/*. Every file in a class folder is a sample (links
  followed; system and hidden files ignored: folders.py has the rules): the ones that do not decode
  are skipped and reported later, so every file is accounted for.
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
  A header row is recognised by its names (path, image_path, file, label, class, split, ...) or by
  a label that is not a number among numbers; `csv_columns` names the columns to read instead.
- parquet: Hugging Face's layout (parquet.py): *.parquet shards with an image column (a struct of
  {bytes, path}, or bytes) and an integer label column, read by record batches.

Class order: sorted class ids (sorted-WNID order for ImageNet); class names that are all integers
("0".."999", ImageNetV2's folders) in numeric order. Integer labels in a CSV, WebDataset or
Parquet source are class numbers themselves ("0".."max"), so they must be below MAX_CLASSES: a
larger one (an id or a timestamp in the label column, a damaged .cls) is a UserError naming the
file and line or sample, raised before the table of max+1 classes would be made.

Samples inside archives are byte ranges (path, offset, size): reading one is a seek and a read,
so any worker can read any sample without unpacking anything. Every input a lister meets is either
a sample, an entry of `Listing.skipped` with the reason, or (system and hidden files, folders that
are no split) an entry of `Listing.ignored`, so nothing disappears silently. Keys are printable:
a file name that is not valid UTF-8 keeps its odd bytes as \\xNN escapes (printable()).
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import UserError
from .classes import ClassInfo, describe
from .decode import HEAD, check_head, read_file, sniff
from .layouts import HINTS
from .textfile import bad_byte, csv_rows, not_utf8, text_lines

KINDS = ("folder", "ilsvrc", "kaggle", "webdataset", "csv", "parquet")
SPLITS = ("train", "val", "test")
SPLIT_ALIASES = {"validation": "val", "valid": "val"}
PARQUET_ROW = -2  # Sample.size of a row of a Parquet file (Sample.offset is the row number)
# integer labels are indices into a class table of max+1 entries: 1,000,000 is 5x the largest class
# count of a public image set (Google Landmarks v2, 203,094); beyond it a label is a mistake
MAX_CLASSES = 1_000_000


@dataclass(frozen=True)
class Sample:
    key: str  # stable, human-readable id: a relative path, or archive/member
    label: int  # index into Listing.classes
    path: str  # the file, or the archive that holds it
    offset: int = -1  # byte offset of the member's data inside `path`; -1: the whole file
    size: int = -1  # member size in bytes when offset >= 0; PARQUET_ROW: offset is a Parquet row


@dataclass
class Listing:
    kind: str
    root: str
    classes: list[ClassInfo]
    splits: dict[str, list[Sample]]  # in a deterministic order (sorted keys)
    skipped: dict[str, list[dict]] = field(default_factory=dict)  # split -> [{path, reason}] at listing
    ignored: list[dict] = field(default_factory=list)  # [{path, reason}]: no input of any split
    warnings: list[str] = field(default_factory=list)  # e.g. classes without training images

    def found(self, split: str) -> int:
        return len(self.splits.get(split, [])) + len(self.skipped.get(split, []))


def read_bytes(sample: Sample) -> bytes:
    """The encoded bytes of one sample (a whole file, a byte range of an archive, a Parquet row).
    A file or member is read whole only once its first bytes and its size have passed
    decode.check_head, so a 1.5 GB file of junk costs decode.HEAD bytes (issue 21, item 5).
    Raises BadImage (empty, not an image, over the size limit) or OSError (unreadable, truncated)."""
    if sample.size == PARQUET_ROW:
        from .parquet import read_row
        data = read_row(sample.path, sample.offset)  # already in memory: its record batch holds it
        check_head(data[:HEAD], len(data))
        return data
    return read_file(sample.path, sample.offset, sample.size)


def check_label(label: int | str, where: str) -> int:
    """`label` (an int, or its decimal digits) as an int when it can be a class number (0 <= label
    < MAX_CLASSES); else UserError naming `where` (the file and line, or the sample), before any
    table of label+1 classes is made."""
    text = str(label)
    number = int(text) if len(text.lstrip("0")) <= 18 else MAX_CLASSES  # int() refuses 4300+ digits
    if not 0 <= number < MAX_CLASSES:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text):,} digits)"
        raise UserError(f"{where}: label {shown} is not a class number: integer labels number the classes from 0, "
                        f"and at most {MAX_CLASSES:,} classes are read (alexnet.data.sources.MAX_CLASSES)")
    return number


def split_name(name: str) -> str:
    return SPLIT_ALIASES.get(name.lower(), name.lower())


def class_order(ids) -> list[str]:
    """Sorted class ids; when every id is an integer ("0", "2", "10"), in numeric order."""
    ids = set(ids)
    if ids and all(re.fullmatch(r"[0-9]+", c) for c in ids):
        # as numbers, without int(): a folder named by 5000 digits is past what int() converts
        return sorted(ids, key=lambda c: (len(c.lstrip("0")), c.lstrip("0"), c))
    return sorted(ids)


def printable(name: str) -> str:
    """A file name as one line of valid UTF-8: bytes that are not UTF-8 (which Python holds as
    surrogates) become \\xNN, control characters \\n, \\t, \\xNN, so a key survives JSON, a
    line-per-key index and a terminal whatever the file system allowed."""
    if name.isprintable() and name.isascii():
        return name
    text = name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def list_source(src: str | Path, kind: str = "auto", csv_columns: str | None = None) -> Listing:
    """List every sample of `src`; raise UserError when it is missing, unrecognised or empty.

    csv_columns: "PATH,LABEL[,SPLIT]", the header names of the columns a CSV source is read from."""
    src = Path(src)
    if not src.exists():
        raise UserError(f"source not found: {printable(str(src))}")
    if kind == "auto":
        kind = detect(src)
    if kind not in KINDS:
        raise UserError(f"unknown source kind {kind!r}; choose one of auto, {', '.join(KINDS)}")
    if csv_columns and kind != "csv":
        raise UserError(f"--csv-columns applies to CSV lists; {printable(str(src))} is read as {kind}")
    listing = list_csv(src, csv_columns) if kind == "csv" else LISTERS[kind](src)
    if not any(listing.splits.values()):
        skipped = sum(len(v) for v in listing.skipped.values())
        first = next((v[0] for v in listing.skipped.values() if v), None)
        why = f"; {skipped} file(s) skipped, e.g. {printable(first['path'])}: {first['reason']}" if first else ""
        raise UserError(f"no images found in {printable(str(src))} (read as {kind}): expected {HINTS[kind]}{why}")
    return _checked(listing)


def _checked(listing: Listing) -> Listing:
    """Printable keys and paths everywhere, and a warning for classes without training images."""
    for split, samples in listing.splits.items():
        if not all(s.key.isascii() and s.key.isprintable() for s in samples):
            listing.splits[split] = [Sample(printable(s.key), s.label, s.path, s.offset, s.size) for s in samples]
    for entries in [*listing.skipped.values(), listing.ignored]:
        for e in entries:
            e["path"] = printable(e["path"])
    listing.classes = [ClassInfo(printable(c.id), printable(c.name)) for c in listing.classes]
    train = "train" if "train" in listing.splits else None
    if train is not None:
        counts = [0] * len(listing.classes)
        for s in listing.splits[train]:
            counts[s.label] += 1
        empty = [c.id for c, n in zip(listing.classes, counts) if n == 0]
        if empty:
            listing.warnings.append(
                f"{len(empty)} of {len(listing.classes)} classes have no training images: "
                f"{', '.join(printable(c) for c in empty[:8])}{' ...' if len(empty) > 8 else ''} "
                f"(the network gets outputs it never learns)")
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
        if src.suffix.lower() == ".parquet":
            return "parquet"
    elif src.is_dir():
        from .folders import junk

        # hidden and system entries are not part of a layout (a Hugging Face download leaves a
        # .cache/ folder beside the shards, macOS leaves .DS_Store files and __MACOSX/ folders)
        names = {p.name for p in src.iterdir() if junk(p.name) is None}
        if names & {"ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"}:
            return "ilsvrc"
        if _kaggle_cls_loc(src) is not None:
            return "kaggle"
        if any(n.lower().endswith(".parquet") for n in names) or (
                "data" in names and any(p.suffix.lower() == ".parquet" for p in (src / "data").iterdir())):
            return "parquet"
        if any(n.lower().endswith(".tar") for n in names) and not any((src / n).is_dir() for n in names):
            return "webdataset"
        if any((src / n).is_dir() for n in names):
            return "folder"
        images = sum(_is_image(src / n) for n in sorted(names)[:1000])
        if images:  # photos straight in the folder: say how to give them labels
            where = printable(str(src))
            raise UserError(f"{where} holds {images} image file(s) but no class folders: an image folder's labels are "
                            f"its folder names, so put each class's images in {where}/<class>/ (or ROOT/train/<class>/ "
                            f"and ROOT/val/<class>/), or list them with their labels in a CSV file (path,label) and "
                            f"prepare that; other layouts: alexnet prepare --help")
    raise UserError(f"cannot tell what {printable(str(src))} holds (not an image folder, ILSVRC-2012 tars, Kaggle's "
                    f"layout, WebDataset or Parquet shards, or a CSV list): name its layout with --source; "
                    f"alexnet prepare --help describes each")




def _is_image(path: Path) -> bool:
    """Whether `path` is a file whose first bytes name an image format we decode."""
    try:
        with open(path, "rb") as f:
            return sniff(f.read(HEAD)) is not None
    except OSError:  # a folder, a broken link, no permission
        return False


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
    cls_loc = _kaggle_cls_loc(src)
    if cls_loc is None:
        raise UserError(f"{src} has no ILSVRC/Data/CLS-LOC folder; expected {HINTS['kaggle']}")
    beside = [src] + ([cls_loc.parents[2]] if len(cls_loc.parents) > 2 else [])

    def find(name: str) -> Path | None:
        return next((d / name for d in beside if (d / name).is_file()), None)

    from .folders import junk, subfolders, walk

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


from .archives import list_ilsvrc, list_webdataset  # noqa: E402  (they build on the types above)
from .csvlist import list_csv  # noqa: E402
from .folders import list_folder  # noqa: E402
from .parquet import list_parquet  # noqa: E402

LISTERS = {"folder": list_folder, "ilsvrc": list_ilsvrc, "kaggle": list_kaggle,
           "webdataset": list_webdataset, "csv": list_csv, "parquet": list_parquet}
