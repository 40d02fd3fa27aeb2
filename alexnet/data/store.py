"""The prepared data set: WebDataset-compatible tar shards plus a memory-mapped index.

    ds = store.open_prepared("prepared/")        # checks format, version and shard sizes
    train = ds.split("train")
    data, label = train[123]                    # JPEG bytes (or a (S, S, 3) uint8 array if --raw)
    mine = train.share(rank, world_size)        # a disjoint share of the sample indices
    ds.stats["eigval"], ds.mean_image           # §4.1 PCA and §2 mean image, 0-255 scale

Layout:
    OUT/manifest.json               format, version, classes, splits (counts, skipped, shards), stats,
                                    options; written last and atomically: no manifest, no data set
    OUT/stats.npz                   mean_image (3, S, S), mean, std, cov, eigval, eigvec (training split)
    OUT/<split>/<split>-00000.tar   shards: members <key>.jpg (or <key>.npy) and <key>.cls
    OUT/<split>/index.npy           one row per sample: shard, data offset, size, label, height, width
    OUT/<split>/keys.txt            the source path of every sample, one per line (UTF-8; bytes of a
                                    name that are not UTF-8 and control characters as \\xNN, \\n)

Why this format: a tar of <key>.jpg/<key>.cls members is what WebDataset, timm and tar itself read,
so a prepared set is never locked in; a few large shards stream sequentially at disk speed; and the
index of byte offsets gives random access to any sample through a memory map, with no per-sample
files and no database. Each shard is written to a temporary name, fsynced and renamed, and the
manifest records every shard's size and SHA-256, so a half-written or damaged shard never passes
for a complete one.
"""
from __future__ import annotations

import io
import json
import mmap
import os
import tarfile
from pathlib import Path

import numpy as np

from ..errors import UserError
from ..fileio import atomic_write, sha256_file  # noqa: F401 (atomic_write is used through store.atomic_write)

FORMAT = "alexnet-prepared"
FORMAT_VERSION = 1
INDEX_DTYPE = np.dtype([("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i4"),
                        ("height", "<u2"), ("width", "<u2")])
MAX_SIDE = np.iinfo(np.uint16).max  # prepare bounds what it stores well below this (MAX_ASPECT x --size)


def atomic_save_npy(path: Path, array: np.ndarray) -> None:
    buf = io.BytesIO()
    np.save(buf, array)
    atomic_write(path, buf.getvalue())


class ShardWriter:
    """Write one shard: <key>.jpg|.npy and <key>.cls members, recording where each payload starts.

    USTAR headers only (keys are short), so every member's data starts 512 bytes after its header,
    and mtime/uid/gid are fixed so that the same samples always give the same bytes.
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.tmp = self.path.with_name(self.path.name + ".tmp")
        self.file = open(self.tmp, "wb")
        self.tar = tarfile.open(fileobj=self.file, mode="w", format=tarfile.USTAR_FORMAT)
        self.rows: list[tuple[int, int, int, int, int]] = []  # offset, size, label, height, width

    def _add(self, name: str, payload: bytes) -> int:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = len(payload), 0, 0o644
        start = self.file.tell() + tarfile.BLOCKSIZE  # the payload follows the 512-byte header
        self.tar.addfile(info, io.BytesIO(payload))
        return start

    def add(self, key: str, label: int, image: bytes | np.ndarray, height: int, width: int) -> None:
        """image: JPEG bytes, or a (H, W, 3) uint8 array stored as .npy (the index points past its header).
        Raises ValueError for what the index cannot hold (a side over 65535 px, a payload of 4 GiB):
        numpy would store it modulo 2**16 and a reader would reshape garbage."""
        nbytes = image.nbytes if isinstance(image, np.ndarray) else len(image)
        if not (0 < height <= MAX_SIDE and 0 < width <= MAX_SIDE and nbytes < 2 ** 32):
            raise ValueError(f"{key}: a {width}x{height} image of {nbytes} bytes does not fit the index")
        if isinstance(image, np.ndarray):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(image), allow_pickle=False)
            payload = buf.getvalue()
            start = self._add(f"{key}.npy", payload) + len(payload) - image.nbytes
            size = image.nbytes
        else:
            start, size = self._add(f"{key}.jpg", image), len(image)
        self._add(f"{key}.cls", str(label).encode())
        self.rows.append((start, size, label, height, width))

    def close(self) -> tuple[int, str]:
        """Finish, fsync and rename into place; returns (bytes, sha256)."""
        self.tar.close()
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        return self.path.stat().st_size, sha256_file(self.path)

    def abort(self) -> None:
        self.file.close()
        self.tmp.unlink(missing_ok=True)


def _check_manifest(root: Path) -> dict:
    path = root / "manifest.json"
    if not root.is_dir():
        raise UserError(f"prepared data set not found: {root}")
    if not path.is_file():
        hint = (" (an interrupted `alexnet prepare`: re-run it to finish)"
                if any(root.glob("*/*.tar*")) else "")
        raise UserError(f"{root} is not a prepared data set: it has no manifest.json{hint}; "
                        f"create one with `alexnet prepare SRC {root}`")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged (not JSON: {e}); re-run alexnet prepare") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexnet prepared data set (format {manifest.get('format')!r})")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise UserError(f"{root} has format version {manifest.get('format_version')}, this alexnet reads "
                        f"version {FORMAT_VERSION}: re-run alexnet prepare, or use the matching alexnet")
    return manifest


class PreparedSplit:
    """One split: len(), [i] -> (JPEG bytes | (H, W, 3) uint8 array, label), labels, share()."""

    def __init__(self, root: Path, name: str, info: dict, raw: bool):
        self.root, self.name, self.raw = root, name, raw
        self.shard_files = [root / s["file"] for s in info["shards"]]
        for shard, file in zip(info["shards"], self.shard_files):  # truncated or swapped shards
            if not file.is_file():
                raise UserError(f"shard missing: {file}; re-run alexnet prepare")
            if file.stat().st_size != shard["bytes"]:
                raise UserError(f"shard damaged: {file} has {file.stat().st_size} bytes, the manifest "
                                f"says {shard['bytes']}; re-run alexnet prepare")
        index_path = root / name / "index.npy"
        try:
            self.index = np.load(index_path, mmap_mode="r")
        except (OSError, ValueError) as e:
            raise UserError(f"index damaged: {index_path} ({e}); re-run alexnet prepare") from None
        if self.index.dtype != INDEX_DTYPE or len(self.index) != info["count"]:
            raise UserError(f"index damaged: {index_path} holds {len(self.index)} rows of {self.index.dtype}, "
                            f"the manifest says {info['count']}; re-run alexnet prepare")
        if raw:  # sets prepared before the size bound could store a 6000x20 strip's width modulo 65536
            bad = np.flatnonzero(self.index["height"].astype(np.int64) * self.index["width"] * 3 != self.index["size"])
            if len(bad):
                raise UserError(f"{root / name} holds {len(bad)} image(s) whose stored size does not match their "
                                f"height x width (the first: index row {bad[0]}), as earlier versions of alexnet "
                                f"prepare wrote very elongated images with --raw; re-run alexnet prepare into a "
                                f"new folder")
        self._maps: dict[int, mmap.mmap] = {}

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        return np.asarray(self.index["label"], dtype=np.int64)

    def keys(self) -> list[str]:
        return (self.root / self.name / "keys.txt").read_text(encoding="utf-8").splitlines()

    def _map(self, shard: int) -> mmap.mmap:
        m = self._maps.get(shard)
        if m is None:
            with open(self.shard_files[shard], "rb") as f:
                m = self._maps[shard] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        return m

    def __getitem__(self, i: int):
        row = self.index[i]
        m = self._map(int(row["shard"]))
        start, size = int(row["offset"]), int(row["size"])
        if self.raw:
            h, w = int(row["height"]), int(row["width"])
            return np.frombuffer(m, np.uint8, count=size, offset=start).reshape(h, w, 3), int(row["label"])
        return m[start:start + size], int(row["label"])

    def payloads(self, idx) -> list:
        """The stored JPEG bytes of samples `idx` as 1-D uint8 tensors (copies, which decode_jpeg
        and pickling to the main process both want)."""
        import torch
        return [torch.frombuffer(bytearray(self[int(i)][0]), dtype=torch.uint8) for i in idx]

    def images(self, idx, device=None) -> list:
        """[(3, H, W) uint8 RGB] of samples `idx`: JPEGs decoded by libjpeg-turbo (nvJPEG when
        `device` is CUDA), raw pixels as views of the memory map (no copy)."""
        import torch
        if self.raw:
            return [torch.from_numpy(self[int(i)][0]).permute(2, 0, 1) for i in idx]
        return decode_jpegs(self.payloads(idx), device)

    def share(self, rank: int, world_size: int) -> np.ndarray:
        """Indices rank, rank + world_size, ...: disjoint across ranks, together every sample once."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return np.arange(rank, len(self), world_size)

    def __getstate__(self):  # memory maps do not cross process boundaries; reopen lazily
        state = self.__dict__.copy()
        state["_maps"] = {}
        return state


def decode_jpegs(payloads: list, device=None) -> list:
    """[1-D uint8 tensor of JPEG bytes] -> [(3, H, W) uint8 RGB], greyscale and CMYK converted:
    one batched call, on the CPU (libjpeg-turbo) or a CUDA device (nvJPEG). torchvision's decoder,
    whose deprecation in favour of TorchCodec alexnet.data.loader explains."""
    import torchvision
    from torchvision.io import ImageReadMode
    if device is not None and str(device).startswith("cuda"):
        return torchvision.io.decode_jpeg(payloads, mode=ImageReadMode.RGB, device=device)
    return torchvision.io.decode_jpeg(payloads, mode=ImageReadMode.RGB)


class PreparedDataset:
    """A prepared data set folder: manifest, classes, statistics and splits."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        self.manifest = _check_manifest(self.root)
        self.classes = self.manifest["classes"]  # [{"id": ..., "name": ...}]
        self.raw = self.manifest["options"]["encoding"] == "raw"
        self.size = self.manifest["options"]["size"]
        self._splits: dict[str, PreparedSplit] = {}
        self._stats = None

    @property
    def split_names(self) -> list[str]:
        return list(self.manifest["splits"])

    def split(self, name: str) -> PreparedSplit:
        if name not in self.manifest["splits"]:
            raise UserError(f"{self.root} has no split {name!r}; it has {', '.join(self.split_names)}")
        if name not in self._splits:
            self._splits[name] = PreparedSplit(self.root, name, self.manifest["splits"][name], self.raw)
        return self._splits[name]

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """mean_image (3, S, S), mean (3,), std (3,), cov (3, 3), eigval (3,), eigvec (3, 3) columns."""
        if self._stats is None:
            path = self.root / "stats.npz"
            try:
                with np.load(path) as z:
                    self._stats = {k: z[k] for k in z.files}
            except (OSError, ValueError) as e:
                raise UserError(f"statistics damaged: {path} ({e}); re-run alexnet prepare") from None
        return self._stats

    def verify(self) -> list[str]:
        """Recompute every shard's SHA-256; returns the damaged files (empty when all is well)."""
        bad = []
        for info in self.manifest["splits"].values():
            for shard in info["shards"]:
                if sha256_file(self.root / shard["file"]) != shard["sha256"]:
                    bad.append(shard["file"])
        return bad


def open_prepared(root: str | Path) -> PreparedDataset:
    return PreparedDataset(root)
