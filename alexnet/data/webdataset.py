"""WebDataset shards (tar files of <key>.jpg + <key>.cls members, as timm/imagenet-1k-wds), read in place.

    listing = list_webdataset(Path("/data/imagenet-1k-wds"))   # part of alexnet.data.sources

The split is read from each shard's name (train / validation / val / test; listing.shard_split); the
samples are byte ranges of the shards (tars.py).
"""
from __future__ import annotations

import re
import tarfile
from pathlib import Path

from .classes import describe, ilsvrc2012
from .listing import Listing, Sample, check_label, shard_split
from .tars import TRUNCATED, open_tar, tar_members

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "tif", "tiff")  # first present wins
CLS_BYTES = 32  # a .cls member holds a class number as text: a longer one is not read, and is no label


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
        split = shard_split(shard.name)
        rows, skips = pending.setdefault(split, []), skipped.setdefault(split, [])
        end_of_file = shard.stat().st_size
        with open_tar(shard) as tar:
            files, damaged = tar_members(tar, shard.name)
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
