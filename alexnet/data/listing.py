"""What every source reader returns: a Listing of Samples, with the rules they share for splits,
labels, class order and printable keys. Imports no reader, so every reader can import it.

    Sample("train/n01440764/a.JPEG", 0, "/data/imagenet/train/n01440764/a.JPEG")
    Sample("ILSVRC2012_img_val.tar/ILSVRC2012_val_00000001.JPEG", 65, "/data/ILSVRC2012_img_val.tar", offset, size)

A Sample is a whole file, a byte range (offset, size) of an archive, or a row of a Parquet file
(size PARQUET_ROW, offset the row); alexnet.data.sources.read_bytes reads any of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import UserError
from .classes import ClassInfo

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


def check_label(label: int | str, where: str) -> int:
    """`label` (an int, or its decimal digits) as an int when it can be a class number (0 <= label
    < MAX_CLASSES); else UserError naming `where` (the file and line, or the sample), before any
    table of label+1 classes is made."""
    text = str(label)
    number = int(text) if len(text.lstrip("0")) <= 18 else MAX_CLASSES  # int() refuses 4300+ digits
    if not 0 <= number < MAX_CLASSES:
        shown = text if len(text) <= 24 else f"{text[:20]}... ({len(text):,} digits)"
        raise UserError(f"{where}: label {shown} is not a class number: integer labels number the classes from 0, "
                        f"and at most {MAX_CLASSES:,} classes are read (alexnet.data.listing.MAX_CLASSES)")
    return number


def split_name(name: str) -> str:
    return SPLIT_ALIASES.get(name.lower(), name.lower())


def shard_split(name: str) -> str:
    """The split a shard's file name says it holds (train / validation / val / test; else train),
    as WebDataset and Parquet shards are named."""
    name = name.lower()
    for word, split in (("train", "train"), ("val", "val"), ("test", "test")):  # "val" in "validation"
        if word in name:
            return split
    return "train"


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


def label_samples(pending: dict[str, list[tuple]], index: dict[str, int]) -> dict[str, list[Sample]]:
    """(key, class id, path, offset, size) rows -> Samples sorted by key; every id is in `index`."""
    return {split: [Sample(key, index[c], path, offset, size) for key, c, path, offset, size in sorted(rows)]
            for split, rows in sorted(pending.items())}
