"""A prepared split held decoded in memory, on the training device: the data path no CPU can throttle.

    res = resident.load(ds.split("train"), ds.size, device)   # decodes once (or maps the cache)
    res.images    # (N, S, S, 3) uint8 on the device (GPU memory under CUDA, host memory on a CPU)
    res.labels    # (N,) int64 on the device
    loader = Loader(split, ds, LoaderSpec(256, train=True, crop=224, device=device), resident=res)

Why (docs/benchmarks.md, "On a GPU"): on an H200 the bf16 step trains 35,686 images/s, but a
streaming loader fed it 1.9-2.5k: the GPU waited for data 83-88% of the time. airbench keeps
CIFAR-10 decoded on the GPU and augments whole batches there; ImageNet's 1,281,167 training images
at 128 px are 63 GB of uint8 (144 px: 80 GB), and one H200 holds 141 GB. Decoded once, every
batch is an index gather plus the same §4.1 augmentation functions as the streaming path
(alexnet.data.loader; alexnet.data.augment): no worker processes, no decoding in the loop.

Layout (N, S, S, 3), each image HWC: it is what both decoders return in memory (torchvision's
decode_jpeg gives a (3, H, W) view of HWC pixels), what a raw prepared set stores, what the CPU
augmentation loop reads (augment._fill works on HWC views, so a resident batch is bit for bit the
streaming one), and the cache file below maps it byte for byte. The GPU gather makes its (B, 3, S, S)
copy per batch; channels_last batches are HWC again.

Decoding: libjpeg-turbo on every core (threads: torchvision's decoder releases the GIL; 2 threads
decode 1.9x one on CPU-2c), or batched nvJPEG on a CUDA device (the same decoder as the streaming
GPU path, so the same pixels); raw-uint8 sets are copied, not decoded. Every sample's XXH3-64 is
checked against its index row before it is decoded (store.PreparedSplit), so a damaged sample is
the same one-line error as in the streaming path.

The cache (decoding on the CPU, `data.resident_cache=auto`, or always with `true`): the decoded
split is written beside the prepared set as <split>/decoded-<decoder>.npy (a plain .npy: N x S x S
x 3 bytes, i.e. exactly the resident size: 589 MB for Imagenette's training split at 144 px, 63 GB
for ImageNet's at 128 px) with decoded-<decoder>.json (the split's SHA-256, the decoder, the
XXH3-64 of every 4,096 images, each shard's size and modification time). The next run maps it
instead of decoding and checks those checksums as it reads; a cache that does not match, or whose
shards have changed since, is decoded again (which finds and reports any damaged sample) and
rewritten. Under torchrun
local rank 0 writes it and the node's other ranks map the same pages. Not written when the folder
is read-only or the disk lacks the room (said in one line); never needed for raw sets.

When (`data.resident`, decided by `decide`): auto makes the splits resident when they fit
SHARE of the device's free memory (CUDA: what the allocator reports free; CPU: MemAvailable,
divided among the node's ranks, each of which holds its own copy), leaving the rest to the model,
its activations and the optimizer; else they stream as before. Images of differing sizes
(--keep-aspect sets) always stream. Every rank holds the whole split: the loader's plan (the same
permutation on every rank, rank r's slice of each global batch) is unchanged, so every image is
seen once per epoch and evaluation counts each once.
"""
from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import xxhash

from ..errors import UserError
from ..fileio import atomic_write, temporary_path
from ..process import sigterm_as_interrupt
from .store import PreparedDataset, PreparedSplit, decode_jpegs

MODES = ("auto", "true", "false")
SHARE = {"cuda": 0.75, "cpu": 0.5}  # of free memory the resident splits may take (data.resident=auto)
CHUNK = 4096  # images per checksum of the cache file (and per progress update)
DECODE_BATCH = 256  # images per decode call (nvJPEG batch; one task of a CPU thread)


@dataclass
class Resident:
    """One split decoded: images (N, S, S, 3) uint8 and labels (N,) int64, both on `device`."""

    images: torch.Tensor
    labels: torch.Tensor
    source: str  # how it got there: "decoded by libjpeg-turbo (2 threads) in 1.6 s", "mapped from ..."

    @property
    def nbytes(self) -> int:
        return self.images.numel()

    @property
    def device(self) -> torch.device:
        return self.images.device


def split_bytes(split: PreparedSplit, size: int) -> int:
    """Bytes of a split held resident: N x S x S x 3."""
    return len(split) * size * size * 3


def free_bytes(device: torch.device) -> int:
    """Memory free for new tensors: CUDA's free device memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def gib(n: float) -> str:
    return f"{n / 2 ** 30:.2f} GiB" if n >= 2 ** 30 else f"{n / 2 ** 20:.0f} MiB"


def decide(ds: PreparedDataset, splits: list[PreparedSplit], mode: str, device: torch.device,
           ranks_on_node: int = 1, free: int | None = None) -> tuple[bool, str]:
    """(make `splits` resident?, why: one line for the start-up log). Raises UserError when
    mode is "true" and they cannot be (images of differing sizes, or more than the free memory)."""
    if mode not in MODES:
        raise UserError(f"data.resident {mode!r} is not one of {', '.join(MODES)}")
    if mode == "false":
        return False, "data.resident=false"
    if ds.manifest["options"].get("keep_aspect"):
        why = "its images differ in size (prepared with --keep-aspect), so batches are cropped per image"
        if mode == "true":
            raise UserError(f"data.resident=true: {ds.root} cannot be held resident: {why}; "
                            f"use data.resident=auto or false")
        return False, why
    need = sum(split_bytes(s, ds.size) for s in splits)
    copies = ranks_on_node if device.type == "cpu" else 1  # one GPU per rank; on a CPU each rank its copy
    free = free_bytes(device) if free is None else free
    allowed = int(free * SHARE[device.type] / copies)
    what = f"{' + '.join(s.name for s in splits)}: {gib(need)} of uint8"
    where = f"{gib(free)} free on {device}" + (f", shared by {copies} ranks" if copies > 1 else "")
    if need <= allowed:
        return True, f"{what}, within {SHARE[device.type]:.0%} of the {where}"
    if mode == "true":
        raise UserError(f"data.resident=true: {what} do not fit in {SHARE[device.type]:.0%} of the {where}; "
                        f"use data.resident=auto (streams when it does not fit) or prepare smaller images (--size)")
    return False, f"{what} exceed {SHARE[device.type]:.0%} of the {where}: streamed by worker processes"


def decoder_name(split: PreparedSplit, device: torch.device) -> str:
    return "raw" if split.raw else ("nvjpeg" if device.type == "cuda" else "libjpeg-turbo")


def cache_paths(split: PreparedSplit, decoder: str) -> tuple[Path, Path]:
    base = split.root / split.name / f"decoded-{decoder}"
    return base.with_suffix(".npy"), base.with_suffix(".json")


def _identity(split: PreparedSplit, size: int, decoder: str) -> dict:
    """What the cache was made from: the split's SHA-256 (its index and shards as prepared), and
    each shard's size and modification time, so that shards changed since (damaged, or copied over)
    are decoded again, and their damage reported, rather than read from an older cache."""
    info = json.loads((split.root / "manifest.json").read_text())["splits"][split.name]
    files = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in split.shard_files]
    return {"format": "alexnet-decoded", "split": split.name, "split_sha256": info["sha256"], "count": len(split),
            "size": size, "decoder": decoder, "chunk": CHUNK, "shards": [list(f) for f in files]}


def _chunk_digests(array, n: int, bar=None) -> list[int]:
    """XXH3-64 of every CHUNK images of `array` (N, S, S, 3) uint8 (numpy or a CPU tensor)."""
    out = []
    for start in range(0, n, CHUNK):
        part = array[start:start + CHUNK]
        part = part.numpy() if isinstance(part, torch.Tensor) else part
        out.append(xxhash.xxh3_64_intdigest(memoryview(np.ascontiguousarray(part)).cast("B")))
        if bar is not None:
            bar.update(len(part))
    return out


def _progress(total: int, desc: str, show: bool):
    """A progress bar on a terminal only: in a log, the one line `load`'s caller prints says it all."""
    from tqdm import tqdm
    return tqdm(total=total, desc=desc, unit="img", disable=not (show and sys.stderr.isatty()), dynamic_ncols=True,
                leave=False)


def _decode_into(out: torch.Tensor, split: PreparedSplit, size: int, device: torch.device, bar) -> int:
    """Fill out (N, S, S, 3) uint8 with every sample of `split`, checksums checked first. Returns
    the number of CPU threads used."""
    n = len(split)
    batches = [range(i, min(i + DECODE_BATCH, n)) for i in range(0, n, DECODE_BATCH)]

    def check(images, idx):
        for img, i in zip(images, idx):
            if tuple(img.shape) != (3, size, size):
                raise UserError(f"sample {i} of {split.name} in {split.root} is {tuple(img.shape[1:])}, not the "
                                f"{size}x{size} the manifest states; re-run alexnet prepare into a new folder")

    if split.raw or device.type == "cpu":
        def work(idx):
            images = split.images(idx)  # raw: the pixels as read; JPEG: libjpeg-turbo; checksums first
            check(images, idx)
            for img, i in zip(images, idx):
                out[i].copy_(img.permute(1, 2, 0))
            return len(idx)
        threads = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
        with ThreadPoolExecutor(threads) as pool:
            for done in pool.map(work, batches):
                bar.update(done)
        return threads
    # nvJPEG in batches; the bytes of the next batch are read (and checked) by a thread meanwhile
    with ThreadPoolExecutor(1) as pool:
        for idx, payloads in zip(batches, pool.map(split.payloads, batches)):
            images = decode_jpegs(payloads, device)  # waits for the stream first (store.decode_jpegs)
            check(images, idx)
            out[idx.start:idx.stop] = torch.stack(images).permute(0, 2, 3, 1)
            bar.update(len(idx))
    return 1


def _map_cache(split: PreparedSplit, size: int, decoder: str, say, progress: bool) -> np.ndarray | None:
    """The cache's array (a read-only memory map), its checksums checked, or None when absent or stale."""
    path, meta_path = cache_paths(split, decoder)
    if not path.is_file():
        return None
    if not meta_path.is_file():
        say(f"data: {path} has no {meta_path.name} beside it (its identity and checksums): decoding again")
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as e:
        meta = f"{type(e).__name__}: {e}"
    if not isinstance(meta, dict):
        say(f"data: {meta_path} is not what alexnet writes ({str(meta)[:80]}): decoding again")
        return None
    try:
        identity = _identity(split, size, decoder)
        if {k: meta.get(k) for k in identity} != identity:
            what = "its shards changed since it was made" if meta.get("split_sha256") == identity["split_sha256"] \
                else "it is of another version of the split"
            say(f"data: not using {path}: {what}; decoding again")
            return None
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError, UnicodeDecodeError) as e:
        say(f"data: {path} cannot be read ({e}): decoding again")
        return None
    if array.shape != (len(split), size, size, 3) or array.dtype != np.uint8:
        say(f"data: {path} holds {array.shape} {array.dtype}, not ({len(split)}, {size}, {size}, 3) uint8: decoding again")
        return None
    with _progress(len(split), f"checking {path.name}", progress) as bar:
        digests = _chunk_digests(array, len(split), bar)
    if digests != meta.get("xxh3"):
        say(f"data: {path} is damaged (its checksums differ from {meta_path.name}): decoding again")
        return None
    return array


def _cache_room(path: Path, nbytes: int) -> str | None:
    """Why the cache cannot be written there, or None."""
    folder = path.parent
    if not os.access(folder, os.W_OK):
        return f"{folder} is not writable"
    free = shutil.disk_usage(folder).free
    if free < nbytes + (1 << 30):
        return f"{folder} has {gib(free)} free, the cache needs {gib(nbytes)} and 1 GiB to spare"
    return None


def load(split: PreparedSplit, size: int, device: str | torch.device = "cpu", cache: str = "auto",
         progress: bool = True, say=print) -> Resident:
    """Decode every image of a fixed-size prepared split into one (N, S, S, 3) uint8 tensor on
    `device`, with its labels; see the module docstring for the decoders and the cache.

    cache: "auto" (write and use it when decoding on the CPU), "true", "false".
    Raises DamagedSample (a UserError) naming a damaged sample, UserError for an image whose size is
    not the manifest's."""
    device = torch.device(device)
    say = say or (lambda *a, **k: None)
    decoder = decoder_name(split, device)
    n, t0 = len(split), time.perf_counter()
    labels = torch.from_numpy(np.asarray(split.index["label"], dtype=np.int64)).to(device)
    use_cache = not split.raw and (cache == "true" or (cache == "auto" and decoder == "libjpeg-turbo"))
    path, meta_path = cache_paths(split, decoder)
    if use_cache:
        array = _map_cache(split, size, decoder, say, progress)
        if array is not None:
            with warnings.catch_warnings():  # a read-only map: the loader only reads it
                warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
                images = torch.from_numpy(array)
            if device.type != "cpu":
                images = images.to(device)
            return Resident(images, labels, f"mapped from {path} in {time.perf_counter() - t0:.1f} s")
        why_not = _cache_room(path, split_bytes(split, size))
        if why_not:
            say(f"data: not caching the decoded {split.name} split: {why_not}")
            use_cache = False
    shape = (n, size, size, 3)
    with sigterm_as_interrupt(), _progress(n, f"decoding {split.name} ({decoder})", progress) as bar:
        if use_cache and device.type == "cpu":  # decode straight into the cache file: no second copy
            tmp = temporary_path(path)  # and what a killed decoder left (N x S x S x 3 bytes) goes
            try:
                array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=shape)
                images = torch.from_numpy(array)
                threads = _decode_into(images, split, size, device, bar)
                array.flush()
                digests = _chunk_digests(array, n)
                os.replace(tmp, path)
            finally:
                tmp.unlink(missing_ok=True)
            atomic_write(meta_path, json.dumps({**_identity(split, size, decoder), "xxh3": digests}).encode())
            return Resident(images, labels, f"decoded by {decoder} ({threads} threads) in "
                            f"{time.perf_counter() - t0:.1f} s, cached in {path}")
        images = torch.empty(shape, dtype=torch.uint8, device=device)
        threads = _decode_into(images, split, size, device, bar)
    if use_cache:  # decoded on the GPU: copied back to the host for the next run
        host = images.cpu()
        tmp = temporary_path(path)
        try:
            with tmp.open("wb") as f:
                np.save(f, host.numpy())
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
        atomic_write(meta_path, json.dumps({**_identity(split, size, decoder), "xxh3": _chunk_digests(host, n)}).encode())
    how = "copied (raw pixels)" if split.raw else f"decoded by {decoder}" + (f" ({threads} threads)" if threads > 1 else "")
    return Resident(images, labels, f"{how} in {time.perf_counter() - t0:.1f} s" + (f", cached in {path}" if use_cache else ""))

