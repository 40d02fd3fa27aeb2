"""Parquet shards as Hugging Face publishes image data sets, read in place, streaming by record batch.

    listing = list_parquet(Path("~/imagenet-1k"))       # data/train-00000-of-00294.parquet, ...
    data = read_row(".../train-00000-of-00294.parquet", 17)

Layout (what `datasets` writes, e.g. ILSVRC/imagenet-1k): *.parquet files, in the folder itself,
below it (data/), or one file given directly, each with an `image` column (a struct {bytes: binary,
path: string}, or plain binary) and an integer `label` column. The split comes from the file name
(train / validation / val / test). Classes: the ClassLabel names the files carry in their schema
metadata (the 1000 ILSVRC-2012 classes when 1000 names come in ImageNet-named files: Hugging Face
numbers them in sorted-WNID order too); without names, as for WebDataset: ImageNet-1k's files (a
path naming imagenet-1k, imagenet1k or ilsvrc; not Imagenette, Tiny ImageNet or ImageNetV2, whose
integer labels are not ILSVRC's indices) with labels < 1000 get the ILSVRC-2012 classes, others
"0".."max".

Accounting: listing reads the label column only; a row whose label is null or negative (ImageNet's
test split is labelled -1) is skipped with the reason, a file without the two columns is skipped
whole; a row whose image has no bytes is skipped when prepare reads it. A sample is (file, row):
a worker reads its shard's consecutive rows, so read_row streams the file by record batches of
BATCH rows from the row group that holds the first one, and never holds more than one batch.
"""
from __future__ import annotations

import bisect
import json
import re
import threading
from pathlib import Path

from ..errors import UserError
from .classes import describe, ilsvrc2012
from .folders import junk
from .listing import MAX_CLASSES, PARQUET_ROW, Listing, Sample, check_label, shard_split

BATCH = 64  # rows per record batch read (~7 MB of ImageNet JPEGs)


def _pyarrow():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise UserError("reading Parquet needs pyarrow: pip install pyarrow") from None
    return pyarrow, pyarrow.parquet


def _image_column(schema) -> tuple[str | None, bool]:
    """(name of the image column, whether it is a {bytes, path} struct); the column named image
    first, else the first column that holds bytes or such a struct."""
    pa, _ = _pyarrow()

    def kind(t) -> bool | None:
        if pa.types.is_struct(t) and t.get_field_index("bytes") >= 0:
            return True
        if pa.types.is_binary(t) or pa.types.is_large_binary(t):
            return False
        return None

    names = sorted(schema.names, key=lambda n: n != "image")
    for name in names:
        k = kind(schema.field(name).type)
        if k is not None:
            return name, k
    return None, False


def _class_names(schema, label: str) -> list[str] | None:
    """The ClassLabel names of `label` from the Hugging Face metadata of the schema, if any."""
    try:
        info = json.loads(schema.metadata[b"huggingface"])
        names = info["info"]["features"][label]["names"]
        return [str(n) for n in names] if isinstance(names, list) else None
    except (KeyError, TypeError, ValueError):
        return None


def _files(src: Path) -> list[Path]:
    if src.is_file():
        return [src]
    return sorted(p for p in src.rglob("*.parquet")
                  if p.is_file() and not any(junk(part) for part in p.relative_to(src).parts))


def list_parquet(src: Path) -> Listing:
    """Every row of every shard: a Sample(key "<file>/<row>", label, file, offset=row, PARQUET_ROW)."""
    pa, pq = _pyarrow()
    files = _files(src)
    base = src.parent if src.is_file() else src
    pending: dict[str, list[Sample]] = {}
    skipped: dict[str, list[dict]] = {}
    names: list[str] | None = None
    for path in files:
        rel = path.relative_to(base).as_posix()
        split = shard_split(path.name)
        rows, skips = pending.setdefault(split, []), skipped.setdefault(split, [])
        try:
            pf = pq.ParquetFile(path)
            schema = pf.schema_arrow
            image, _ = _image_column(schema)
            label = "label" if "label" in schema.names else None
            if image is None or label is None or not pa.types.is_integer(schema.field(label).type):
                skips.append({"path": rel, "reason": f"not an image data set: needs an image column (bytes or "
                                                      f"{{bytes, path}}) and an integer label column; has "
                                                      f"{', '.join(f'{f.name}: {f.type}' for f in schema)}"})
                continue
            labels = pf.read(columns=[label]).column(0).combine_chunks()
        except (OSError, pa.ArrowException) as e:
            skips.append({"path": rel, "reason": f"unreadable Parquet file: {e}"})
            continue
        names = names or _class_names(schema, label)
        values = labels.fill_null(-1).to_numpy(zero_copy_only=False)
        if len(values) and values.max() >= MAX_CLASSES:  # before a table of max+1 classes is made
            row = int(values.argmax())
            check_label(int(values[row]), f"{path}: row {row} (column {label})")
        for row, value in enumerate(values.tolist()):
            key = f"{rel}/{row:09d}"
            if value >= 0:
                rows.append(Sample(key, int(value), str(path), row, PARQUET_ROW))
            else:
                why = "null" if labels[row].as_py() is None else f"{value} (no label, as in ImageNet's test split)"
                skips.append({"path": key, "reason": f"label is {why}"})
    top = max((s.label for rows in pending.values() for s in rows), default=-1)
    # ImageNet-1k's own files (HF's ILSVRC/imagenet-1k), not Imagenette, Tiny ImageNet or ImageNetV2,
    # whose integer labels are not ILSVRC's indices
    imagenet = any(re.search(r"imagenet-?1k|ilsvrc", p.as_posix().lower()) for p in files)
    if names and top < len(names):
        class_ids = [c.id for c in ilsvrc2012()] if imagenet and len(names) == 1000 else names
    elif imagenet and 0 <= top < 1000:
        class_ids = [c.id for c in ilsvrc2012()]
    else:
        class_ids = [str(i) for i in range(top + 1)]
    splits = {split: sorted(rows, key=lambda s: s.key) for split, rows in sorted(pending.items())}
    return Listing("parquet", str(src), describe(class_ids), splits, skipped)


class _Reader:
    """One file's image column, streamed forward by record batches (restarted for an earlier row)."""

    def __init__(self, path: str):
        _, pq = _pyarrow()
        self.file = pq.ParquetFile(path)
        self.column, self.struct = _image_column(self.file.schema_arrow)
        meta = self.file.metadata
        self.starts = [0]  # first row of each row group
        for g in range(meta.num_row_groups):
            self.starts.append(self.starts[-1] + meta.row_group(g).num_rows)
        self.batches, self.first, self.values = None, 0, None

    def get(self, row: int) -> bytes:
        near = self.values is not None and self.first <= row < self.first + len(self.values) + 4 * BATCH
        if not near:  # not in or just after the current batch: seek to the row group that holds it
            group = bisect.bisect_right(self.starts, row) - 1
            if not 0 <= group < len(self.starts) - 1:
                raise OSError(f"row {row} is past the end of the file ({self.starts[-1]} rows)")
            self.batches = self.file.iter_batches(batch_size=BATCH, columns=[self.column],
                                                  row_groups=range(group, len(self.starts) - 1))
            self.first, self.values = self.starts[group], None
        try:
            while self.values is None or row >= self.first + len(self.values):
                if self.values is not None:
                    self.first += len(self.values)
                column = next(self.batches).column(0)
                self.values = column.field("bytes") if self.struct else column
            value = self.values[row - self.first].as_py()
        except Exception as e:  # a damaged page (pyarrow raises ValueError kinds) spoils this row, not the run
            self.values = None  # seek afresh next time
            raise OSError(f"cannot read row {row}: {type(e).__name__}: {e}") from None
        if not value:
            raise OSError("the row holds no image bytes" + (" (only a path: the image lives outside the file)"
                                                            if self.struct and value is None else ""))
        return value


_local = threading.local()  # each thread's open file (one at a time): a reader moves as it reads


def read_row(path: str, row: int) -> bytes:
    """The image bytes of row `row` of a Parquet file (thread-safe: one reader per thread, as the
    server's thumbnail threads need)."""
    readers = _local.__dict__.setdefault("readers", {})
    reader = readers.get(path)
    if reader is None:
        readers.clear()
        try:
            reader = readers[path] = _Reader(path)
        except Exception as e:  # pyarrow's errors: a file replaced or damaged since the listing
            raise OSError(f"cannot read {path}: {e}") from None
    return reader.get(row)
