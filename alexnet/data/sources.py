"""List the samples of the image collections people really have, with labels in sorted-WNID order:
the kinds, how a kind is told from the layout, and the one reader of every kind of sample.

    listing = sources.list_source("/data/imagenet")          # kind detected
    listing = sources.list_source("/data/ILSVRC", kind="ilsvrc")
    data = sources.read_bytes(listing.splits["train"][0])

Kinds (`KINDS`, each read by its own module, which returns a listing.Listing of listing.Sample):
- folder (folders.py): ImageFolder trees, ROOT/train/<class>/*, ROOT/val/<class>/* (train, val or validation,
  test), or a single split folder ROOT/<class>/*. Every file in a class folder is a sample (links
  followed; system and hidden files ignored: folders.py has the rules): the ones that do not decode
  are skipped and reported later, so every file is accounted for.
- ilsvrc (ilsvrc.py): the official ILSVRC-2012 archives, read in place (never extracted): ILSVRC2012_img_train.tar
  (1000 inner per-class tars), ILSVRC2012_img_val.tar (flat) with ILSVRC2012_devkit_t12.tar.gz for
  the validation labels (devkit ILSVRC2012_IDs mapped through meta.mat to sorted-WNID order). The
  classes are the shipped 1000 ILSVRC-2012 classes whenever every WNID met is one of them, so a
  subset of the archives still gets the standard label numbers.
- kaggle (kaggle.py): "ImageNet Object Localization": ILSVRC/Data/CLS-LOC/{train/<wnid>/, val/} with
  LOC_val_solution.csv and LOC_synset_mapping.txt (the class list); test/ has no labels and is left out.
- webdataset (webdataset.py): tar shards of <key>.jpg + <key>.cls members (timm/imagenet-1k-wds); the split is
  read from the shard names (train / validation / val / test).
- csv (csvlist.py): a CSV or TSV list of path,label (optionally a third column split); paths relative to the list.
  A header row is recognised by its names (path, image_path, file, label, class, split, ...) or by
  a label that is not a number among numbers; `csv_columns` names the columns to read instead.
- parquet (parquet.py): Hugging Face's layout: *.parquet shards with an image column (a struct of
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
a file name that is not valid UTF-8 keeps its odd bytes as \\xNN escapes (listing.printable()).
"""
from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from .classes import ClassInfo
from .csvlist import list_csv
from .decode import HEAD, check_head, read_file, sniff
from .folders import junk, list_folder
from .ilsvrc import list_ilsvrc
from .kaggle import find_cls_loc, list_kaggle
from .layouts import HINTS
from .listing import PARQUET_ROW, Listing, Sample, printable
from .parquet import list_parquet, read_row
from .webdataset import list_webdataset

KINDS = ("folder", "ilsvrc", "kaggle", "webdataset", "csv", "parquet")
LISTERS = {"folder": list_folder, "ilsvrc": list_ilsvrc, "kaggle": list_kaggle,
           "webdataset": list_webdataset, "csv": list_csv, "parquet": list_parquet}


def read_bytes(sample: Sample) -> bytes:
    """The encoded bytes of one sample (a whole file, a byte range of an archive, a Parquet row).
    A file or member is read whole only once its first bytes and its size have passed
    decode.check_head, so a 1.5 GB file of junk costs decode.HEAD bytes.
    Raises BadImage (empty, not an image, over the size limit) or OSError (unreadable, truncated)."""
    if sample.size == PARQUET_ROW:
        data = read_row(sample.path, sample.offset)  # already in memory: its record batch holds it
        check_head(data[:HEAD], len(data))
        return data
    return read_file(sample.path, sample.offset, sample.size)


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
        # hidden and system entries are not part of a layout (a Hugging Face download leaves a
        # .cache/ folder beside the shards, macOS leaves .DS_Store files and __MACOSX/ folders)
        names = {p.name for p in src.iterdir() if junk(p.name) is None}
        if names & {"ILSVRC2012_img_train.tar", "ILSVRC2012_img_val.tar"}:
            return "ilsvrc"
        if find_cls_loc(src) is not None:
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
