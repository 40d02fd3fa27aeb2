"""The page's pictures of the network: its conv1 filters (Fig. 3) and the nearest training images
of a photo in fc7 space (Fig. 4, right).

    png = filters_png(net)                              # bytes: the conv1 kernels, tower 1 above tower 2
    gallery = Gallery("train_fc7.npy", net, data=None)  # the file written by `alexnet features`
    gallery.nearest(code, k=6)                          # [{"index", "key", "class", "name", "distance"}]
    gallery.thumbnail(index)                            # JPEG bytes of that training image

The features file (N x 4096 .npy, float32 or float16, with a .json beside it naming the checkpoint,
the data set, its checksum, the split and every image's key and label) must come from the same
checkpoint: codes of another network are not comparable. Thumbnails are read from the data set the
codes were computed on (the prepared set or image folder recorded in the .json, or --data).

Speed: the search is exact and streams the file in chunks (alexnet.features.knn), so memory stays
small whatever N; its time grows with N (about 0.2 s for Imagenette's 9,469 training images on two
cores, minutes for ImageNet's 1.28 million: serve a subset's codes for a responsive page).
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from ..errors import UserError
from ..features import knn, open_features
from ..inference import Network
from ..plots import kernel_grid

CHUNK = 2048  # rows of the features file per step of the search: 2048 x 4096 float64 = 64 MiB
THUMBNAIL = 160  # px, the longer side of a neighbour's picture


def filters_png(net: Network, scale: int = 4) -> bytes:
    """The conv1 kernels as a PNG, each min-max scaled, tower 1 above tower 2 with a gap (Fig. 3)."""
    weight = net.model.conv1_weight()
    towers = getattr(net.model, "towers", 1)
    parts = weight.chunk(towers) if towers > 1 else [weight]
    per = len(parts[0])  # the widest grid up to 16 columns that fills its rows (48 -> 16 x 3, as Fig. 3)
    columns = next((c for c in range(min(16, per), 7, -1) if per % c == 0), min(16, per))
    grids = [kernel_grid(p, columns) for p in parts]
    gap = np.ones((weight.shape[2] // 2, grids[0].shape[1], 3))
    stacked = np.concatenate([g for grid in grids for g in (grid, gap)][:-1])
    img = Image.fromarray((stacked * 255).round().astype(np.uint8), "RGB")
    img = img.resize((img.width * scale, img.height * scale), Image.Resampling.NEAREST)  # crisp pixels
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


class Gallery:
    """The training images behind an fc7 features file: exact nearest neighbours and thumbnails."""

    def __init__(self, features: str | Path, net: Network, data: str | None = None):
        from ..images import Images

        features = Path(features)
        meta_path = features.with_suffix(".json")
        try:
            meta = json.loads(meta_path.read_text())
        except (OSError, ValueError):
            meta = {}
        data, self.images = data or meta.get("data"), None
        if isinstance(meta, dict) and meta.get("split") and meta.get("data_checksum"):  # else open_features says why
            if not data:
                raise UserError(f"{meta_path} does not say which data set the codes came from; name it with "
                                f"--data (the prepared set or image folder given to alexnet features)")
            self.images = Images(data, meta["split"], net.size)
        # the same checks as `alexnet neighbors --features`: file, checkpoint, split, data, completeness
        self.store = open_features(features, net, self.images, meta.get("split"))  # (N, 4096), never read whole
        self.path, self.data, self.split = features, str(data), meta["split"]
        self.keys, self.labels, self.classes = meta["ids"], meta["labels"], meta["classes"]
        # images alexnet features could not read have no code (their rows are NaN): never neighbours
        self.usable = np.ones(len(self.keys), dtype=bool)
        self.usable[[f["index"] for f in meta.get("failed", [])]] = False

    def describe(self) -> dict:
        return {"file": str(self.path), "data": self.data, "split": self.split, "count": len(self.keys),
                "dim": int(self.store.shape[1]), "dtype": str(self.store.dtype)}

    def _chunks(self):
        for i in range(0, len(self.store), CHUNK):
            index = np.arange(i, min(i + CHUNK, len(self.store)))[self.usable[i:i + CHUNK]]
            if len(index):
                yield torch.from_numpy(np.asarray(self.store[index], dtype=np.float32)), torch.from_numpy(index)

    def nearest(self, code: torch.Tensor, k: int) -> list[dict]:
        """(4096,) fc7 code -> the k training images nearest in Euclidean distance (§6.1), nearest first."""
        dist, index = knn(code[None].float(), self._chunks(), k)
        out = []
        for d, i in zip(dist[0].tolist(), index[0].tolist()):
            c = self.classes[self.labels[i]]
            out.append({"index": i, "key": self.keys[i], "class": c["id"], "name": c["name"], "distance": d})
        return out

    def thumbnail(self, index: int) -> bytes:
        """JPEG of training image `index` (its §2 centre crop), at most THUMBNAIL px; KeyError if unreadable."""
        if not 0 <= index < len(self.keys):
            raise KeyError(f"no training image {index} (the features file has {len(self.keys)})")
        pixels, _ = self.images[index]
        if pixels is None:
            raise KeyError(f"training image {index} ({self.keys[index]}) cannot be read")
        img = Image.fromarray(pixels.permute(1, 2, 0).numpy(), "RGB")
        img.thumbnail((THUMBNAIL, THUMBNAIL))
        buf = io.BytesIO()
        img.save(buf, "JPEG", quality=88)
        return buf.getvalue()
