"""The images of a split, read one by one: a prepared split or an image folder, for the commands
that score or encode every image once (evaluate, features, neighbors, serve's gallery).

    images = Images("prepared/imagenet", "val", 256)     # or an image folder, decoded on the fly
    image, i = images[0]                                 # (3, 256, 256) uint8, or None and (i, why)
    loader = DataLoader(images, batch_sampler=..., collate_fn=collate)
    for batch, indices, failures in loader:              # (B, 3, S, S) uint8 | None, (B,), [(i, why)]
        ...

Unlike alexnet.data.loader (augmented training batches), an unreadable file here is reported and
left out of the count, never a stop: evaluation counts every image it can read exactly once.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch

from .errors import UserError


class Images(torch.utils.data.Dataset):
    """(3, S, S) uint8 images of a prepared split or an image folder (decoded, §2-resized, on the
    fly); an image that cannot be read comes back as None and is reported, not counted."""

    def __init__(self, data: str, split: str, size: int):
        from .data.store import open_prepared

        self.size, self.prepared = size, (Path(data) / "manifest.json").is_file()
        self.listed_skipped: list[dict] = []  # files of the split found but not readable as samples
        if self.prepared:
            ds = open_prepared(data)
            self.split = ds.split(split)  # UserError naming the splits there are
            self.classes = ds.classes
            self.labels = self.split.labels
            self.keys = self.split.keys()
            self.checksum = ds.manifest["splits"][split]["sha256"]
            if ds.manifest["options"]["keep_aspect"]:
                raise UserError(f"{data} keeps aspect ratios; evaluate a centre-cropped prepared set or a folder")
            self.stored = ds.size
            skipped = ds.manifest["splits"][split]["skipped"]
        else:
            from .data.sources import list_source
            listing = list_source(data)
            if split not in listing.splits:
                single = listing.kind == "folder" and len(listing.splits) == 1 and listing.root == str(Path(data))
                raise UserError(f"{data} has no split {split!r}; it has {', '.join(sorted(listing.splits))}"
                                + (" (a folder of class folders is one split, named after the folder when that is"
                                   " train, val or test, else train)" if single else "")
                                + ": choose one with --split")
            self.samples = listing.splits[split]
            self.listed_skipped = skipped = listing.skipped.get(split, [])
            self.classes = [c.to_json() for c in listing.classes]
            self.labels = np.array([s.label for s in self.samples], dtype=np.int64)
            self.keys = [s.key for s in self.samples]
            h = hashlib.sha256()
            for s in self.samples:
                nbytes = Path(s.path).stat().st_size if s.offset < 0 else s.size
                h.update(f"{s.key}\t{s.label}\t{nbytes}\n".encode("utf-8", "surrogateescape"))
            self.checksum = h.hexdigest()
            self.stored = size
        if len(self.labels) == 0:
            why = f": {len(skipped)} file(s) skipped, e.g. {skipped[0]['path']}: {skipped[0]['reason']}" if skipped else ""
            raise UserError(f"split {split!r} of {data} holds no images{why}")

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int):
        from .data.decode import BadImage, open_rgb, resize_crop
        from .data.sources import read_bytes

        if self.prepared:
            return self.split.images([i])[0].contiguous(), i  # contiguous: raw pixels come as a permuted view
        try:
            arr = resize_crop(open_rgb(read_bytes(self.samples[i]), self.size), self.size)
        except (BadImage, OSError) as e:
            return None, (i, str(e))
        return torch.from_numpy(np.array(arr)).permute(2, 0, 1), i  # writable copy of PIL's buffer


def collate(items: list) -> tuple[torch.Tensor | None, torch.Tensor, list]:
    """Images' items [(image | None, i | (i, why))] -> (the readable images stacked, (B, 3, S, S)
    uint8, or None when none was; their indices, (B,) int64; [(i, why)] of those that failed)."""
    good = [(x, i) for x, i in items if x is not None]
    bad = [i for x, i in items if x is None]
    images = torch.stack([x for x, _ in good]) if good else None
    return images, torch.tensor([i for _, i in good], dtype=torch.long), bad
