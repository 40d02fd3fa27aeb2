"""CSV and TSV lists of path,label[,split] rows, with or without a header, any column order.

    listing = list_csv(Path("train.csv"))                          # part of alexnet.data.sources
    listing = list_csv(Path("meta.csv"), columns="file_name,class_id,subset")

Paths are relative to the list (absolute ones stay as they are). The split comes from a split
column, else from the file's name (train.csv, val.tsv, validation.csv), else train. A header row
is recognised by its names (path, image_path, file_name, label, class, split, ...) or as the one
row whose label is not a number among numeric labels (so neither a header is read as a sample
nor a first sample as a header); `columns` names the columns instead. Labels that are all
integers are class numbers ("0".."max", "007" is 7, below listing.MAX_CLASSES); others are class
names in class_order().

What is refused, as one line naming the file and line (UserError): a list that is not UTF-8 text
(UTF-16, binary, NUL bytes: textfile.text_lines), a row that is not CSV, a row without a path and a
label, a row with more columns than the header (without a header: more than path,label,split), a
split that is not train, val (validation, valid) or test, a label or split that is not UTF-8, a
path that is not UTF-8 unless a file has that very name (a Latin-1 name on disk), an integer label
of MAX_CLASSES or more. A path that names no file is a skipped sample, as elsewhere.
"""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import UserError
from .classes import describe
from .layouts import HINTS
from .listing import SPLITS, Listing, check_label, class_order, label_samples, printable, split_name
from .textfile import bad_byte, csv_rows, not_utf8

PATH_NAMES = {"path", "filepath", "file_path", "file", "filename", "file_name", "image", "image_path",
              "image_file", "image_name", "img", "img_path", "image_id", "imageid", "name", "url"}
LABEL_NAMES = {"label", "labels", "class", "class_id", "classid", "class_name", "classname", "target",
               "category", "category_id", "wnid", "synset", "cls", "y"}
SPLIT_NAMES = {"split", "subset", "set", "fold", "partition"}


def _integer(text: str) -> bool:
    return re.fullmatch(r"[0-9]+", text) is not None


def _csv_columns(header: list[str], wanted: str | None, src: Path) -> tuple[int, int, int | None]:
    """(path, label, split) column numbers from a header row: the names in `wanted`, or known names
    (path, image_path, label, class, split, ...), or the first three columns."""
    names = [c.lower() for c in header]
    if wanted:
        parts = [w.strip().lower() for w in wanted.split(",")]
        if len(parts) not in (2, 3) or not all(parts):
            raise UserError(f"--csv-columns takes PATH,LABEL or PATH,LABEL,SPLIT (names in the header row), got {wanted!r}")
        missing = [w for w in parts if w not in names]
        if missing:
            raise UserError(f"{src} has no column {missing[0]!r}; its header row is {','.join(header)!r}")
        path, label, *split = (names.index(w) for w in parts)
        return path, label, (split[0] if split else None)

    def find(group: set[str]) -> int | None:
        return next((i for i, n in enumerate(names) if n in group), None)

    path, label, split = find(PATH_NAMES), find(LABEL_NAMES), find(SPLIT_NAMES)
    if path is None and label is None:  # names nobody uses for these: take the columns in order
        return 0, 1, (2 if len(names) > 2 else None)
    return (0 if path is None else path), (1 if label is None else label), split


def _kind(path: Path) -> str:
    """"file", "other" (exists, not a file) or "missing"; a name the system cannot look up (too
    long, say) counts as missing."""
    try:
        return "file" if path.is_file() else "other" if path.exists() else "missing"
    except (OSError, ValueError):  # ENAMETOOLONG and kin, which pathlib does not swallow
        return "missing"


def _is_header(first: list[str], others: list[list[str]], src: Path) -> bool:
    """A first row is a header when it names columns (path, label, ...), or among integer labels is
    the one row whose label is not a number, or its first cell is neither a file nor has a file
    extension while most rows after it name existing files; never when its first cell is a file."""
    if _kind(src.parent / first[0]) == "file":
        return False
    if {c.lower() for c in first} & (PATH_NAMES | LABEL_NAMES | SPLIT_NAMES):
        return True
    labels = [row[1] for row in others if len(row) > 1]
    if len(first) > 1 and not _integer(first[1]) and bool(labels) and all(_integer(v) for v in labels):
        return True
    # names nobody uses (fname,breed) over text labels: a first cell that is not a file and has no
    # file extension, above rows that mostly name existing files (a row naming a missing
    # img/x.jpg is data, reported as not found, never taken for a header)
    if Path(first[0]).suffix:
        return False
    found = [_kind(src.parent / row[0]) == "file" for row in others if row and row[0]]
    return bool(found) and sum(found) * 2 > len(found)


def list_csv(src: Path, columns: str | None = None) -> Listing:
    """A list of path,label[,split] rows (any columns with a header, see _csv_columns). Integer
    labels are class numbers ("0".."max"); any other labels are class names, numbered in sorted
    order (sorted-WNID order when they are WNIDs). Raises UserError, naming the file and line,
    for what the module docstring lists as refused."""
    if not src.is_file():
        raise UserError(f"{src} is not a file; expected {HINTS['csv']}")
    what = printable(str(src))
    default_split = split_name(src.stem)  # train.csv, val.tsv, validation.csv name their split
    if default_split not in SPLITS:
        default_split = "train"
    delimiter = "\t" if src.suffix.lower() == ".tsv" else ","
    rows = list(csv_rows(src, what, delimiter, strict=False))  # paths may be file names in Latin-1: judged below
    if not rows:
        raise UserError(f"{what} is empty; expected {HINTS['csv']}")
    header = columns is not None or _is_header(rows[0][1], [r for _, r in rows[1:50]], src)
    path_col, label_col, split_col = _csv_columns(rows[0][1], columns, src) if header else (0, 1, 2)
    width = len(rows[0][1]) if header else 3  # the most columns a row may have
    entries = []  # (path as written, label text, split, line number)
    for number, row in rows[1:] if header else rows:
        if max(path_col, label_col) >= len(row) or not row[path_col] or not row[label_col]:
            raise UserError(f"{what} line {number}: expected a path and a label (columns {path_col + 1} and "
                            f"{label_col + 1}), got {printable(delimiter.join(row))[:200]!r}")
        if len(row) > width:
            raise UserError(f"{what} line {number}: {len(row)} columns, but " + (
                f"the header row has {width}" if header else "a list without a header row has path,label[,split]"))
        split = row[split_col] if split_col is not None and split_col < len(row) and row[split_col] else ""
        for cell in (row[label_col], split):
            if bad_byte(cell) is not None:
                raise not_utf8(what, number, bad_byte(cell))
        if bad_byte(row[path_col]) is not None and _kind(src.parent / row[path_col]) == "missing":
            raise UserError(f"{what} line {number}: the path holds byte 0x{bad_byte(row[path_col]):02x}, which is not "
                            f"UTF-8, and no file has that name: save the list as UTF-8")
        if split and split_name(split) not in SPLITS:
            raise UserError(f"{what} line {number}: split {printable(split)[:40]!r} is none of train, val (validation, "
                            f"valid), test")
        entries.append((row[path_col], row[label_col], split_name(split) if split else default_split, number))
    labels = {label for _, label, _, _ in entries}  # every row's label counts, even a missing file's
    if all(_integer(label) for label in labels):
        for _, label, _, number in entries:  # before a table of max+1 classes is made
            check_label(label, f"{what} line {number}")
        class_ids = [str(i) for i in range(max((int(label) for label in labels), default=-1) + 1)]
        class_of = {label: str(int(label)) for label in labels}  # "007" is class 7
    else:
        class_ids = class_order(labels)
        class_of = {label: label for label in labels}
    index = {c: i for i, c in enumerate(class_ids)}
    pending: dict[str, list[tuple]] = {}
    skipped: dict[str, list[dict]] = {}
    for written, label, split, _ in entries:
        path = src.parent / written  # an absolute path stays as it is
        rows_, skips = pending.setdefault(split, []), skipped.setdefault(split, [])
        kind = _kind(path)
        if kind == "file":
            rows_.append((written, class_of[label], str(path), -1, -1))
        else:
            skips.append({"path": written, "reason": "file not found" if kind == "missing" else "not a file"})
    return Listing("csv", str(src), describe(class_ids), label_samples(pending, index), skipped)
