"""The prepared data set: WebDataset-compatible tar shards plus an index of byte offsets.

    ds = store.open_prepared("prepared/")        # checks format, version and shard sizes
    train = ds.split("train")                   # checks the index against the manifest (SHA-256)
    data, label = train[123]                    # JPEG bytes (or a (S, S, 3) uint8 array if --raw), checksum-checked
    mine = train.share(rank, world_size)        # a disjoint share of the sample indices
    ds.stats["eigval"], ds.mean_image           # §4.1 PCA and §2 mean image, 0-255 scale (SHA-256-checked)

Layout:
    OUT/manifest.json               format, version, classes, splits (counts, skipped, shards with their
                                    bytes and SHA-256, the index's checksum), stats (with the SHA-256 of
                                    stats.npz), options; written last and atomically: no manifest, no data set
    OUT/stats.npz                   mean_image (3, S, S), mean, std, cov, eigval, eigvec (training split)
    OUT/<split>/<split>-00000.tar   shards: members <key>.jpg (or <key>.npy) and <key>.cls
    OUT/<split>/index.npy           one row per sample: shard, data offset, size, label, height, width,
                                    xxh3 (XXH3-64 of the stored payload: the JPEG bytes, or the raw pixels)
    OUT/<split>/keys.txt            the source path of every sample, one per line (UTF-8; bytes of a
                                    name that are not UTF-8 and control characters as \\xNN, \\n)

Why this format: a tar of <key>.jpg/<key>.cls members is what WebDataset, timm and tar itself read,
so a prepared set is never locked in; a few large shards stream sequentially at disk speed; and the
index of byte offsets gives random access to any sample with one pread, with no per-sample
files and no database. Each shard is written to a temporary name, fsynced and renamed, and the
manifest records every shard's size and SHA-256, so a half-written or damaged shard never passes
for a complete one.

What is checked, and when (damage is a UserError naming the file, and the sample, and saying what
to do; `alexnet prepare --verify OUT` lists all of it, `alexnet prepare SRC OUT` rebuilds it):
    on open       every shard's presence and size; a split's index, its SHA-256 against the manifest
                  (a split's "sha256" covers index.npy and its shards' SHA-256s); the statistics when
                  first used, their SHA-256 (format 1: their numbers against the manifest's)
    on each read  the sample's XXH3-64 against its index row, before it is decoded: damaged bytes
                  never become pixels or a libjpeg traceback (about 1 us for an 8.5 kB JPEG next to a
                  200-300 us decode, 8-10 us for 62 kB of raw pixels; docs/benchmarks.md)
    by prepare    keys.txt's SHA-256 (format 2; it names samples in reports, training never reads it),
                  and with --verify every shard's SHA-256 (alexnet.data.verify; PreparedDataset.verify)

Format versions: 2 added the index's xxh3 column and the SHA-256s of the statistics and keys.txt.
A version 1 data set (prepared by alexnet before them) is read as it is, its index and statistics
checked as above, but its samples are not verifiable one by one; prepare it again into a new
folder to get the checks.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import numpy as np
import xxhash

from ..errors import UserError
from ..fileio import atomic_write, sha256_file

FORMAT = "alexnet-prepared"
FORMAT_VERSION = 2
INDEX_DTYPES = {  # format version -> index row; 2 added the payload's XXH3-64
    1: np.dtype([("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i4"), ("height", "<u2"),
                 ("width", "<u2")]),
    2: np.dtype([("shard", "<u4"), ("offset", "<u8"), ("size", "<u4"), ("label", "<i4"), ("height", "<u2"),
                 ("width", "<u2"), ("xxh3", "<u8")]),
}
INDEX_DTYPE = INDEX_DTYPES[FORMAT_VERSION]

# A sample's checksum: XXH3-64 (non-cryptographic: it is for damage; the manifest's SHA-256s are
# the strong check), as it runs on every read: 3x faster than zlib's CRC32 on stored images.
checksum = xxhash.xxh3_64_intdigest
MAX_SIDE = np.iinfo(np.uint16).max  # prepare bounds what it stores well below this (MAX_ASPECT x --size)


class DamagedSample(UserError):
    """A stored sample whose bytes do not match the checksum prepare recorded (its index row's xxh3).

    Raised where the sample is read, often inside a DataLoader worker; torch re-creates a worker's
    exception in the main process from "Caught ... Original Traceback ...: <message>", so the
    constructor takes the one-line message back out of that text."""

    def __init__(self, message: str):
        if message.startswith("Caught ") and "Original Traceback" in message:
            message = message.rstrip().splitlines()[-1].split(": ", 1)[-1]
        super().__init__(message)


def split_checksum(index_bytes: bytes, shard_sha256: list[str]) -> str:
    """A split's "sha256" in the manifest: SHA-256 of index.npy's bytes, then its shards' hex SHA-256s."""
    h = hashlib.sha256(index_bytes)
    for sha in shard_sha256:
        h.update(sha.encode())
    return h.hexdigest()


def repair_hint(root: Path, manifest: dict) -> str:
    src = manifest.get("source", {}).get("path", "SRC")
    return f"`alexnet prepare --verify {root}` lists the damage, `alexnet prepare {src} {root}` rebuilds it"


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
        self.rows: list[tuple[int, ...]] = []  # offset, size, label, height, width, xxh3

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
            size, digest = image.nbytes, checksum(memoryview(payload)[len(payload) - image.nbytes:])
        else:
            start, size, digest = self._add(f"{key}.jpg", image), len(image), checksum(image)
        self._add(f"{key}.cls", str(label).encode())
        self.rows.append((start, size, label, height, width, digest))

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
        if hint:
            raise UserError(f"{root} is not a prepared data set: it has no manifest.json{hint}")
        # never advise writing into a folder that is not ours (it may be the user's photos)
        raise UserError(f"{root} is not a prepared data set: it has no manifest.json; if it holds images, "
                        f"prepare them into a new folder with `alexnet prepare {root} {_beside(root)}` and use that")
    try:
        manifest = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is damaged (not JSON: {e}); re-run alexnet prepare") from None
    if manifest.get("format") != FORMAT:
        raise UserError(f"{path} is not an alexnet prepared data set (format {manifest.get('format')!r})")
    if manifest.get("format_version") not in INDEX_DTYPES:
        raise UserError(f"{root} has format version {manifest.get('format_version')}, this alexnet reads "
                        f"versions {', '.join(map(str, INDEX_DTYPES))}: re-run alexnet prepare, or use the matching alexnet")
    return manifest


def _beside(root: Path) -> str:
    """A new folder next to `root` for its prepared copy: <root>-prepared."""
    return str(root.parent / f"{root.resolve().name or 'data'}-prepared")


def shard_problem(file: Path, shard: dict) -> str | None:
    """What is wrong with a shard file that a look at it shows (missing, another size), or None."""
    if not file.is_file():
        return "missing"
    if file.stat().st_size != shard["bytes"]:
        return f"{file.stat().st_size} bytes, the manifest says {shard['bytes']}"
    return None


def index_problem(path: Path, info: dict, version: int) -> str | None:
    """What is wrong with a split's index.npy (its SHA-256, dtype, rows against the manifest), or None."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if split_checksum(data, [s["sha256"] for s in info["shards"]]) != info["sha256"]:
        return "SHA-256 differs from the manifest"
    try:
        index = np.load(io.BytesIO(data))
    except (OSError, ValueError) as e:
        return f"not an index ({e})"
    if index.dtype != INDEX_DTYPES[version] or len(index) != info["count"]:
        return f"holds {len(index)} rows of {index.dtype}, the manifest says {info['count']} of format {version}"
    return None


def stats_problem(path: Path, stats: dict) -> str | None:
    """What is wrong with stats.npz against the manifest (its SHA-256; format 1: its numbers), or None."""
    try:
        data = path.read_bytes()
    except OSError as e:
        return f"cannot be read ({e.strerror})"
    if "sha256" in stats:
        return None if hashlib.sha256(data).hexdigest() == stats["sha256"] else "SHA-256 differs from the manifest"
    try:  # format 1: the manifest holds every number but the mean image, as JSON of the same float64s
        with np.load(io.BytesIO(data)) as z:
            same = all(np.array_equal(z[k], np.asarray(stats[k])) for k in ("mean", "std", "cov", "eigval", "eigvec"))
    except (OSError, ValueError, KeyError) as e:
        return f"not the statistics ({e})"
    return None if same else "its numbers differ from the manifest's"


class PreparedSplit:
    """One split: len(), [i] -> (JPEG bytes | (H, W, 3) uint8 array, label), labels, share()."""

    def __init__(self, root: Path, name: str, info: dict, raw: bool, version: int = FORMAT_VERSION,
                 hint: str = "re-run alexnet prepare"):
        self.root, self.name, self.raw, self.hint = root, name, raw, hint
        self.shard_files = [root / s["file"] for s in info["shards"]]
        for shard, file in zip(info["shards"], self.shard_files):  # truncated or swapped shards
            problem = shard_problem(file, shard)
            if problem == "missing":
                raise UserError(f"shard missing: {file}; {hint}")
            if problem:
                raise UserError(f"shard damaged: {file} has {problem}; {hint}")
        index_path = root / name / "index.npy"
        problem = index_problem(index_path, info, version)  # ~0.1 s for ImageNet's 1.28 M rows
        if problem:
            raise UserError(f"index damaged: {index_path}: {problem}; {hint}")
        self.index = np.load(index_path, mmap_mode="r")
        self.checked = "xxh3" in self.index.dtype.names  # format 1 has no per-sample checksum
        if raw:  # sets prepared before the size bound could store a 6000x20 strip's width modulo 65536
            bad = np.flatnonzero(self.index["height"].astype(np.int64) * self.index["width"] * 3 != self.index["size"])
            if len(bad):
                raise UserError(f"{root / name} holds {len(bad)} image(s) whose stored size does not match their "
                                f"height x width (the first: index row {bad[0]}), as earlier versions of alexnet "
                                f"prepare wrote very elongated images with --raw; re-run alexnet prepare into a "
                                f"new folder")
        self._files: dict[int, int] = {}  # shard -> an open file descriptor, read with pread
        self._labels: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.index)

    @property
    def labels(self) -> np.ndarray:
        """(N,) int64, every sample's label: converted once per process (8 bytes x N, 10 MB for
        ImageNet), not once per batch. A batch needs only `labels_at`."""
        if self._labels is None:
            self._labels = np.asarray(self.index["label"], dtype=np.int64)
        return self._labels

    def labels_at(self, idx) -> np.ndarray:
        """(B,) int64 labels of samples `idx`, read from their index rows only: a batch's cost does
        not grow with the split (converting the whole column per batch was 4.3 ms at 1.28 M rows,
        quadratic in the epoch)."""
        return np.asarray(self.index["label"][np.asarray(idx, dtype=np.int64)], dtype=np.int64)

    def keys(self) -> list[str]:
        return (self.root / self.name / "keys.txt").read_text(encoding="utf-8").splitlines()

    def _fd(self, shard: int) -> int:
        fd = self._files.get(shard)
        if fd is None:  # threads (the resident load) may race here: the first descriptor stored wins
            mine = os.open(self.shard_files[shard], os.O_RDONLY | getattr(os, "O_CLOEXEC", 0))
            fd = self._files.setdefault(shard, mine)
            if fd != mine:
                os.close(mine)
        return fd

    def read(self, shard: int, start: int, size: int) -> bytearray:
        """`size` bytes of shard file `shard` from byte `start`, with pread into a new buffer.

        Why not a memory map: a process that reads through a map keeps every page it touched in
        its resident set, so each persistent loader worker ended an epoch with the whole split in
        its RSS (page cache, reclaimable, but counted by `top` and container memory accounting:
        20-30 GB per worker at ImageNet's size). pread copies what a sample needs and
        leaves the page cache to the kernel; the copy is one the decoder and the pickling to the
        main process wanted anyway. The descriptor is shared by forked workers safely: pread has
        no file position."""
        buf = bytearray(size)
        got = os.preadv(self._fd(shard), [buf], start) if size else 0
        if got != size:
            raise DamagedSample(f"{self.shard_files[shard]} ends before byte {start + size:,} (it holds "
                                f"{start + got:,} from there); {self.hint}")
        return buf

    def __getitem__(self, i: int):
        row = self.index[i]
        data = self.read(int(row["shard"]), int(row["offset"]), int(row["size"]))
        if self.checked and checksum(data) != int(row["xxh3"]):  # before a decoder sees the bytes
            raise self.damaged(i)
        if self.raw:
            return np.frombuffer(data, np.uint8).reshape(int(row["height"]), int(row["width"]), 3), int(row["label"])
        return data, int(row["label"])

    def damaged(self, i: int) -> DamagedSample:
        try:
            key = self.keys()[i]
        except (OSError, IndexError, UnicodeDecodeError):
            key = "its key unknown: keys.txt is unreadable"
        shard = self.shard_files[int(self.index[i]["shard"])].relative_to(self.root)
        return DamagedSample(f"sample {i} of {self.name} ({key}) in {self.root / shard} is damaged: its bytes "
                             f"differ from the checksum alexnet prepare recorded; {self.hint}")

    def payloads(self, idx) -> list:
        """The stored JPEG bytes of samples `idx` as 1-D uint8 tensors (their own buffers, which
        decode_jpeg and pickling to the main process both want)."""
        import torch
        return [torch.frombuffer(self[int(i)][0], dtype=torch.uint8) for i in idx]

    def images(self, idx, device=None) -> list:
        """[(3, H, W) uint8 RGB] of samples `idx`: JPEGs decoded by libjpeg-turbo (nvJPEG when
        `device` is CUDA), raw pixels as (H, W, 3) buffers read from the shard, permuted (a view)."""
        import torch
        if self.raw:
            return [torch.from_numpy(self[int(i)][0]).permute(2, 0, 1) for i in idx]
        return decode_jpegs(self.payloads(idx), device)

    def share(self, rank: int, world_size: int) -> np.ndarray:
        """Indices rank, rank + world_size, ...: disjoint across ranks, together every sample once."""
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        return np.arange(rank, len(self), world_size)

    def __getstate__(self):  # descriptors do not cross process boundaries, nor need the labels: reopen lazily
        state = self.__dict__.copy()
        state["_files"], state["_labels"] = {}, None
        return state

    def close(self) -> None:
        for fd in self._files.values():
            os.close(fd)
        self._files.clear()

    def __del__(self):
        try:
            self.close()
        except (OSError, AttributeError, TypeError):  # at interpreter exit, or half-built
            pass


def decode_jpegs(payloads: list, device=None) -> list:
    """[1-D uint8 tensor of JPEG bytes] -> [(3, H, W) uint8 RGB], greyscale and CMYK converted:
    one batched call, on the CPU (libjpeg-turbo) or a CUDA device (nvJPEG). torchvision's decoder,
    whose deprecation in favour of TorchCodec alexnet.data.loader explains.

    On CUDA the current stream is drained first: nvJPEG's hardware decoder (Hopper, A100) writes
    its outputs before work already queued on the stream has run, and the caching allocator hands
    it blocks freed on that stream that queued kernels may still read, so without the wait it can
    overwrite live memory (pytorch/vision PR 9606, meta-pytorch/torchcodec PR 1634). The loader
    decodes on a side stream, so the wait is for that stream's work only, never the training step's.
    benchmarks/gpu_check.py decodes the same batches twice behind queued work and compares them."""
    import torchvision
    from torchvision.io import ImageReadMode
    if device is not None and str(device).startswith("cuda"):
        import torch
        torch.cuda.current_stream(torch.device(device)).synchronize()
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
            self._splits[name] = PreparedSplit(self.root, name, self.manifest["splits"][name], self.raw,
                                               self.manifest["format_version"], repair_hint(self.root, self.manifest))
        return self._splits[name]

    @property
    def stats(self) -> dict[str, np.ndarray]:
        """mean_image (3, S, S), mean (3,), std (3,), cov (3, 3), eigval (3,), eigvec (3, 3) columns."""
        if self._stats is None:
            path = self.root / "stats.npz"
            problem = stats_problem(path, self.manifest["stats"])
            if problem:
                raise UserError(f"statistics damaged: {path}: {problem}; {repair_hint(self.root, self.manifest)}")
            with np.load(path) as z:
                self._stats = {k: z[k] for k in z.files}
        return self._stats

    def verify(self) -> list[str]:
        """Recompute every shard's SHA-256; returns the damaged files (empty when all is well).
        alexnet.data.verify says more: which samples, and the index and statistics too."""
        bad = []
        for info in self.manifest["splits"].values():
            for shard in info["shards"]:
                file = self.root / shard["file"]
                if not file.is_file() or sha256_file(file) != shard["sha256"]:
                    bad.append(shard["file"])
        return bad


def open_prepared(root: str | Path) -> PreparedDataset:
    return PreparedDataset(root)
