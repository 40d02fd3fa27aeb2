"""The worker side of `alexnet prepare`: one shard of samples read, decoded, resized, stored and summed.

    task = Task("train", 0, 0, samples, "prepared/x", Options(size=256), with_stats=True)
    run_task(task)                              # prepared/x/train/train-00000.tar + its .piece.npz
    run_tasks(tasks, total, workers=8, progress=True)   # a pool of processes, with a progress display

A shard is complete when its tar has been renamed into place and its piece (index rows, keys,
skipped files, statistics sums) written beside it; alexnet.data.prepare plans the shards, resumes
from the complete ones and assembles the pieces into the data set.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import json
import multiprocessing as mp
import os
import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import threadpoolctl

from .. import fileio, process
from . import codecs, store
from .decode import BadImage
from .listing import Sample
from .sources import read_bytes

DEFAULT_QUALITY = 90  # see docs/benchmarks.md: ~40 dB PSNR at about 1/3 of quality-100's bytes


@dataclass(frozen=True)
class Options:
    """How every image is stored: the command's flags, recorded in the manifest and the fingerprint."""
    size: int = 256  # px, S of §2
    keep_aspect: bool = False
    encoding: str = "jpeg"  # jpeg | raw
    quality: int = DEFAULT_QUALITY  # JPEG quality (ignored for raw)
    decoder: str = "pillow"  # JPEG decoding and encoding: pillow | simplejpeg (alexnet.data.codecs)
    resampler: str = "pillow"  # the §2 resize: pillow | torch (alexnet.data.codecs)


@dataclass(frozen=True)
class Task:
    """One shard's work, as a pool worker receives it (pickled)."""
    split: str
    shard: int
    first: int  # index of the shard's first sample in the split listing
    samples: tuple[Sample, ...]
    out: str
    options: Options
    with_stats: bool


class Stats:
    """Running sums for the §2 mean image and the §4.1 RGB covariance (0-255 scale), over the
    central SxS crop of every stored image (the whole image unless --keep-aspect). Exact integer
    sums: uint32 per-pixel sums hold 16 M images of one shard, float64 dot products of 8-bit values
    are exact below 2**53."""

    def __init__(self, size: int):
        self.size = size
        self.images = 0
        self.image_sum = np.zeros((size, size, 3), np.uint32)  # per-pixel sums give the mean too
        self.outer = np.zeros((3, 3), np.float64)  # sum over pixels of x x^T (upper triangle)

    def add(self, arr: np.ndarray) -> None:
        h, w, _ = arr.shape
        top, left = (h - self.size) // 2, (w - self.size) // 2
        crop = arr[top:top + self.size, left:left + self.size]
        np.add(self.image_sum, crop, out=self.image_sum)
        planes = crop.reshape(-1, 3).T.astype(np.float64)  # (3, S*S), each plane contiguous
        for i in range(3):  # six dot products: ~10x faster than one (3, S*S) @ (S*S, 3) matmul here
            for j in range(i, 3):
                self.outer[i, j] += planes[i] @ planes[j]
        self.images += 1

    def arrays(self) -> dict[str, np.ndarray]:
        return {"images": np.array(self.images), "image_sum": self.image_sum, "outer": self.outer}


def finish_stats(parts: list[dict]) -> dict[str, np.ndarray]:
    """Merge per-shard sums (in shard order, so the result is reproducible) into the statistics."""
    images = sum(int(p["images"]) for p in parts)  # > 0: assemble() has said so otherwise
    image_sum = sum(p["image_sum"].astype(np.int64) for p in parts)  # (S, S, 3)
    outer = sum(p["outer"] for p in parts)
    outer = np.triu(outer) + np.triu(outer, 1).T  # the sums filled the upper triangle
    pixels = images * image_sum.shape[0] * image_sum.shape[1]
    mean = image_sum.sum((0, 1)) / pixels
    cov = outer / pixels - np.outer(mean, mean)
    eigval, eigvec = np.linalg.eigh(cov)  # ascending eigenvalues; eigenvectors are the columns
    # greyscale-only data has a rank-1 covariance: its zero eigenvalues come out as -1e-13 or so
    eigval = np.clip(eigval, 0.0, None)
    return {"mean_image": (image_sum / images).transpose(2, 0, 1).astype(np.float32),
            "mean": mean, "std": np.sqrt(np.diag(cov)), "cov": cov, "eigval": eigval, "eigvec": eigvec}


_counter = None  # per-worker handle on the shared progress counter


def _init_worker(counter) -> None:
    """A pool worker's set-up: the shared progress counter, signals left to the parent, one BLAS thread."""
    global _counter
    _counter = counter
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and stops the pool
    # and SIGTERM ends a worker quietly, as the pool's own terminate() expects: the parent's
    # handler (process.sigterm_as_interrupt), inherited through fork, would print a traceback per worker
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    process.die_with_parent()  # a kill -9 of prepare takes its pool along at once
    # One BLAS thread per worker: the workers already fill the cores, and OpenBLAS threads
    # inherited across fork() spin against each other (measured: 2-5x slower with 2 workers).
    threadpoolctl.threadpool_limits(1)
    if "torch" in sys.modules:  # the torch resampler: one intra-op thread, as for BLAS
        sys.modules["torch"].set_num_threads(1)


def _tick() -> None:
    with _counter.get_lock():
        _counter.value += 1


def piece_path(out: str | Path, split: str, shard: int) -> Path:
    """A shard's piece: its index rows, keys, skipped files and statistics sums, until assembly."""
    return Path(out) / split / f"{split}-{shard:05d}.piece.npz"


def shard_path(out: str | Path, split: str, shard: int) -> Path:
    """A shard's tar of stored images (alexnet.data.store's format)."""
    return Path(out) / split / f"{split}-{shard:05d}.tar"


def run_task(task: Task) -> int:
    """Process one shard: returns the number of images written (the piece file holds the rest)."""
    opt = task.options
    writer = store.ShardWriter(shard_path(task.out, task.split, task.shard))
    stats = Stats(opt.size) if task.with_stats else None
    pixels = codecs.Pixels(opt.size, opt.keep_aspect, opt.decoder, opt.resampler)
    keys, skipped = [], []
    try:
        for i, sample in enumerate(task.samples):
            try:
                arr = pixels.load(read_bytes(sample))  # (H, W, 3) uint8
            except (BadImage, OSError) as e:  # unreadable input: recorded, never fatal
                skipped.append({"path": sample.key, "reason": str(e) or type(e).__name__})
                _tick()
                continue
            try:  # in memory: an encoder error is this image's, never the disk's
                payload = arr if opt.encoding == "raw" else pixels.encode(arr, opt.quality)
            except (OSError, ValueError) as e:
                skipped.append({"path": sample.key, "reason": f"cannot be stored as JPEG: {e}"})
                _tick()
                continue
            if stats is not None:
                stats.add(arr)
            writer.add(f"{task.first + i:09d}", sample.label, payload, arr.shape[0], arr.shape[1])
            keys.append(sample.key)
            _tick()
        nbytes, sha = writer.close()
    except BaseException:
        writer.abort()
        raise
    rows = np.zeros(len(writer.rows), store.INDEX_DTYPE)
    rows["shard"] = task.shard
    for name, column in zip(("offset", "size", "label", "height", "width", "xxh3"), zip(*writer.rows)):
        rows[name] = np.array(column, dtype=rows.dtype[name])  # xxh3 needs all 64 bits: no int64 detour
    buf = io.BytesIO()
    meta = json.dumps({"keys": keys, "skipped": skipped, "bytes": nbytes, "sha256": sha})
    np.savez(buf, rows=rows, meta=np.array(meta), **(stats.arrays() if stats else {}))
    fileio.atomic_write(piece_path(task.out, task.split, task.shard), buf.getvalue())
    return len(keys)


class _LocalCounter:
    """The shared counter's interface, for in-process runs (workers 0 or 1): every image moves the
    progress display at once (a shard of thousands of images may take minutes)."""

    def __init__(self, bar=None):
        self._value, self.bar = 0, bar

    @property
    def value(self) -> int:
        return self._value

    @value.setter
    def value(self, value: int) -> None:
        if self.bar is not None:
            self.bar.update(value - self._value)
        self._value = value

    def get_lock(self):
        return contextlib.nullcontext()


def run_tasks(tasks: list[Task], total: int, workers: int | None, progress: bool) -> None:
    """Run `tasks` on `workers` processes (None: one per core; 0 or 1: in this process), showing
    progress over `total` images. A worker's error is raised here; Ctrl-C stops the pool."""
    if workers is None:
        workers = os.cpu_count() or 1
    if tasks and tasks[0].options.resampler == "torch":
        importlib.import_module("torch")  # here, once: the forked workers share the import (~1.7 s), not each pay it
    bar = _progress_bar(total, progress)
    try:
        # 0 or 1 worker: in this process. A pool of one would add a process start, pickling and a
        # main process that only waits (the straightforward loop's Pool(1) pays that too).
        if workers <= 1 or not tasks:
            _init_worker_local(bar)
            with threadpoolctl.threadpool_limits(1):  # as in a worker: BLAS threads only slow Stats down
                for task in tasks:
                    run_task(task)
            return
        counter = mp.get_context().Value("q", 0)
        with mp.get_context().Pool(min(workers, len(tasks)), _init_worker, (counter,)) as pool:
            done = pool.imap_unordered(run_task, tasks)
            while True:
                try:
                    done.next(timeout=0.2)  # re-raises a worker's error here
                except mp.TimeoutError:
                    pass
                except StopIteration:
                    break
                bar.update(counter.value - bar.n)
            bar.update(counter.value - bar.n)
    finally:
        bar.close()


def _progress_bar(total: int, progress: bool):
    """tqdm on a terminal; elsewhere (a log file, a pipe, a scheduler's output) a line every 30 s,
    without tqdm's import (75 ms here: a sixth of a 300-photo command's fixed cost)."""
    if progress and sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(total=total, unit="img", desc="prepare", smoothing=0.1, mininterval=0.5)
    return _LogProgress(total, progress)


class _LogProgress:
    """What run_tasks uses of tqdm (n, update, close) for output that is not a terminal."""

    def __init__(self, total: int, enabled: bool, every_s: float = 30.0):
        self.total, self.enabled, self.every_s, self.n = total, enabled, every_s, 0
        self.started = self.last = time.monotonic()

    def update(self, k: int) -> None:
        self.n += k
        now = time.monotonic()
        if self.enabled and k and now - self.last >= self.every_s:
            self.last = now
            print(f"prepare: {self.n:,}/{self.total:,} images, {self.n / (now - self.started):.0f} img/s",
                  file=sys.stderr, flush=True)

    def close(self) -> None:
        pass


def _init_worker_local(bar=None) -> None:
    """In-process runs (0 or 1 worker): count progress on `bar` directly."""
    global _counter
    _counter = _LocalCounter(bar)
