"""The input pipeline: a prepared split -> augmented batches on the device, with exact sharding.

    spec = LoaderSpec(batch_size=128, train=True, crop=224, seed=0, rank=rank, world_size=world,
                      device="cuda", workers=8)         # train: LoaderSpec.from_config(cfg, ...)
    loader = Loader(ds.split("train"), ds, spec)         # or Loader(split, ds, batch_size=128, train=True)
    for batch in loader.epoch(epoch, start_step=0):     # batch.images (B, 3, 224, 224), batch.labels
        ...
    loader.wait_s                                       # time the consumer waited for data

Order (§5 trains on random mini-batches): one random permutation of the split per epoch, drawn
from (seed, epoch) and identical on every rank. Global step i takes the next batch_size x world
samples of it and rank r the r-th batch_size of those, so the ranks' batches are disjoint and
together cover the epoch (the last partial global batch is dropped, or with drop_last=False split
as evenly as it goes). Evaluation gives rank r the samples r, r + world, ... in order: every image
exactly once for any world size, no padding duplicates.

Randomness: the batch at (epoch, step) of rank r is augmented with a generator seeded from
(seed, epoch, rank, step), so it is the same in a worker process or not, and a run restarted at
`start_step` yields exactly the batches the uninterrupted run would have.

Resident splits (alexnet.data.resident; `resident=` here, data.resident in training): the split is
already decoded in the device's memory as one (N, S, S, 3) uint8 tensor, so there are no worker
processes: each batch is an index gather from it and then the same make_batch as below, with the
generator seeded from the same key, so its batches are those of the streaming path bit for bit
(tests/test_resident.py). On CUDA they are made one step ahead on a side stream (no per-sample
Python: the gather implementation of alexnet.data.augment); on a CPU by one thread per core
(each on one core, as a worker would be) into the same reused buffers, a few batches ahead.

Where the work happens when streaming: on CPU, worker processes (started at the first epoch and kept for the
next ones; Loader.close() or the interpreter's exit stops them) decode (libjpeg-turbo through
torchvision.io.decode_jpeg) and augment whole batches (alexnet.data.augment) straight into a
small pool of shared-memory batch buffers that the main process owns, and send back only the
slot number. A fresh 77 MB float batch costs more in page faults than the augmentation itself, so
the buffers are reused: a batch's `images` stay valid until `keep` (default 2) further batches
have been requested; clone them to keep them longer. On CUDA, workers only read bytes; the main process decodes the batch with nvJPEG
(`decode_jpeg(..., device="cuda")`) and augments it on the GPU, one batch ahead on a side stream,
from pinned memory. Raw-uint8 data sets skip decoding. --keep-aspect data sets are cropped per
image in the workers (random-resized or fixed crops), then flipped and coloured as a batch.
"""
from __future__ import annotations

import atexit
import itertools
import multiprocessing
import os
import signal
import threading
import time
import warnings
import weakref
from collections import deque
from concurrent.futures import ThreadPoolExecutor
import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torchvision.io  # noqa: F401  (see below)

from ..process import die_with_parent
from . import augment as A
from .resident import Resident
from .store import PreparedDataset, PreparedSplit, decode_jpegs

# torchvision.io is imported here, in the main process, so that the workers forked at each epoch's
# start inherit it: a worker that imports it itself at its first decode (store.decode_jpegs) spent
# 1.7-2.6 s of a 2.6-3.1 s epoch doing so (5,000 built-in images, 2 workers, CPU-2c, 2026-11-30;
# 0.08 s with the import inherited). `alexnet train` imported it earlier by chance (run info).
# torchvision 0.29 deprecates its image codecs in favour of TorchCodec; they remain the batched
# libjpeg-turbo / nvJPEG decoders this loader is built on until TorchCodec's are a drop-in.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision",
                        category=DeprecationWarning)
warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)


@dataclass
class Batch:
    images: torch.Tensor  # (B, 3, C, C), or (B, 10, 3, C, C) for 10-view evaluation
    labels: torch.Tensor  # (B,) int64
    indices: torch.Tensor  # (B,) positions in the split


@dataclass(frozen=True)
class LoaderSpec:
    """What a Loader makes: the batches (size, crops, views), their §4.1 augmentation, this rank's
    share of the epoch, and where and how they are made. Plain and picklable: the worker processes
    read it. A Loader holds the spec it resolved (loader.spec: gpu_decode decided, mean "channel"
    for --keep-aspect data sets)."""
    batch_size: int  # images per batch of this rank (training: per device x accumulation)
    train: bool  # §4.1 random crops, flips, colour, in a new order each epoch; False: evaluation views, in order
    crop: int = 224  # px, side of the crops (at most the prepared size: ValueError)
    views: int = 1  # evaluation: 1 the centre crop, 2 with its reflection, 10 the §4.1 ten views
    # §4.1 augmentation (training only)
    flip: bool = True  # horizontal reflections, p = 0.5
    pca_std: float = 0.1  # std of the PCA colour coefficients alpha_i; 0 turns it off
    pca_scale: str = "authors"  # see alexnet.data.augment
    mean: str = "pixel"  # §2 the mean image, or "channel" means and stds
    scale: tuple[float, float] = (1.0, 1.0)  # area fraction of random-resized crops; (1, 1): §4.1 crops
    ratio: tuple[float, float] = (1.0, 1.0)  # aspect-ratio range of random-resized crops
    # this rank's share
    seed: int = 0  # the epoch's permutation and every batch's augmentation derive from it
    rank: int = 0
    world_size: int = 1
    drop_last: bool | None = None  # None: in training (a partial last global batch is dropped), not in evaluation
    # where and how
    device: str | torch.device = "cpu"  # where the batches are wanted (CUDA: decoded and augmented there)
    workers: int = 2  # loader processes (streaming on a CPU: they decode and augment)
    prefetch: int = 2  # batches each worker makes ahead
    keep: int = 2  # batches the consumer may still hold when it asks for the next (CPU buffers are reused)
    pool_bytes: int = 2 << 30  # bytes of reused CPU batch buffers at most; above it, fresh tensors per batch
    dtype: str = "float32"  # of the images, a torch dtype's name
    channels_last: bool = False  # memory format of the images
    gpu_decode: bool | None = None  # nvJPEG on the device; None: on CUDA for JPEG, centre-cropped data

    def __post_init__(self):
        object.__setattr__(self, "scale", tuple(self.scale))  # a config's list, or a tuple
        object.__setattr__(self, "ratio", tuple(self.ratio))

    @classmethod
    def from_config(cls, cfg, *, train: bool, batch_size: int, crop: int, rank: int = 0, world_size: int = 1,
                    device: str | torch.device = "cpu", workers: int = 2) -> "LoaderSpec":
        """The spec of a training run's loader (train) or its validation's, from its config
        (alexnet.config.Config): §4.1 augmentation and the mean of data.*, the seed and memory
        format of train.*, the views of eval.*; where it runs (rank, world_size, device, workers)
        as given, since that is the runtime's to decide."""
        d = cfg.data
        return cls(batch_size, train, crop=crop, views=1 if train else cfg.eval.views, flip=d.flip,
                   pca_std=d.pca_std, mean=d.mean, scale=d.scale, ratio=d.ratio, seed=cfg.train.seed, rank=rank,
                   world_size=world_size, device=device, workers=workers, dtype="float32",
                   channels_last=cfg.train.channels_last)


def step_seed(seed: int, epoch: int, rank: int, step: int) -> int:
    """A well-mixed 63-bit seed for one batch (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([seed, epoch, rank, step]).generate_state(1, np.uint64)[0] >> 1)


def epoch_permutation(n: int, seed: int, epoch: int) -> np.ndarray:
    g = torch.Generator().manual_seed(step_seed(seed, epoch, 0, 2**31 - 1))
    return torch.randperm(n, generator=g).numpy()


def train_plan(n: int, batch_size: int, world_size: int, rank: int, seed: int, epoch: int,
               drop_last: bool = True) -> list[np.ndarray]:
    """Rank `rank`'s batches (sample indices) for one training epoch."""
    perm = epoch_permutation(n, seed, epoch)
    block = batch_size * world_size
    steps = n // block if drop_last else -(-n // block)
    plan = []
    for i in range(steps):
        chunk = perm[i * block:(i + 1) * block]
        if len(chunk) == block:
            plan.append(chunk[rank * batch_size:(rank + 1) * batch_size])
        else:  # the last, partial global batch: as even a split as it goes
            plan.append(np.array_split(chunk, world_size)[rank])
    return plan


def eval_plan(n: int, batch_size: int, world_size: int, rank: int) -> list[np.ndarray]:
    share = np.arange(rank, n, world_size)
    return [share[i:i + batch_size] for i in range(0, len(share), batch_size)]


class BatchSource(torch.utils.data.Dataset):
    """Item (epoch, step, sample indices, pool slot) is one whole batch: what a DataLoader worker
    builds. The key carries everything that changes between epochs, so the same workers serve
    every epoch (they are started once; see Loader.epoch)."""

    def __init__(self, split: PreparedSplit, loader: "Loader"):
        self.split = split
        self.spec, self.size, self.keep_aspect = loader.spec, loader.size, loader.keep_aspect  # plain, picklable
        self.gpu_augment = loader.device.type == "cuda"  # uint8 to the GPU, augmented there
        self.norm_cpu, self.eig = loader.norm_cpu, loader.eig_cpu
        self.pool = loader.pool  # shared-memory output buffers, or None

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, key):
        epoch, step, idx, slot = key
        labels, indices = torch.from_numpy(self.split.labels_at(idx)), torch.from_numpy(idx)
        spec = self.spec
        g = torch.Generator().manual_seed(step_seed(spec.seed, epoch, spec.rank, step))
        if spec.gpu_decode:  # bytes only: the main process decodes them on the GPU
            return self.split.payloads(idx), labels, indices, g.get_state()
        images = self._per_image_crops(idx, g) if self.keep_aspect else self.decode(idx)
        if self.gpu_augment:  # uint8 to the GPU; the augmentation runs there
            return torch.stack(images), labels, indices, g.get_state()
        if self.pool is None:
            return make_batch(images, labels, indices, g, spec, self.norm_cpu, self.eig, self.keep_aspect)
        out = self.pool[slot][:len(idx) * (1 if spec.train else spec.views)]
        make_batch(images, labels, indices, g, spec, self.norm_cpu, self.eig, self.keep_aspect, out=out)
        return slot, labels, indices  # the main process owns the buffer: only its number travels

    def decode(self, idx) -> list[torch.Tensor]:
        """[(3, S, S) uint8] for the samples `idx` (raw: the pixels as read, no further copy)."""
        return self.split.images(idx)

    def _per_image_crops(self, idx, g) -> list[torch.Tensor]:
        """--keep-aspect images differ in size: crop each to C x C here (random-resized in training,
        centre or 10 views are taken later from a shorter-side-C resize in evaluation)."""
        from torchvision.transforms.v2 import functional as TF
        spec, out = self.spec, []
        for i in idx:
            img = self._one(int(i))
            _, h, w = img.shape
            if spec.train:
                p = A.sample_params(1, (h, w), spec.crop, g, flip=False, scale=spec.scale, ratio=spec.ratio)
                img = TF.resized_crop(img, int(p.top), int(p.left), int(p.height), int(p.width),
                                      [spec.crop, spec.crop], antialias=True)
            else:  # the shorter side is already S: the centre S x S, as fixed-size data sets store
                img = TF.center_crop(img, [self.size, self.size])
            out.append(img)
        return out

    def _one(self, i: int) -> torch.Tensor:
        return self.split.images([i])[0]


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM}


class _Keys(torch.utils.data.Sampler):
    """The sampler: the keys (epoch, step, sample indices, pool slot) of the epoch being read, set
    by Loader.epoch before each pass and read in the main process, so that persistent workers
    need nothing else to change between epochs."""

    def __init__(self):
        self.keys: list = []

    def __iter__(self):
        return iter(self.keys)

    def __len__(self) -> int:
        return len(self.keys)


_LIVE: "weakref.WeakSet[Loader]" = weakref.WeakSet()  # loaders whose workers are running
_AT_EXIT = []


def _stop_all_at_exit() -> None:
    """Stop every loader's workers at exit, before multiprocessing joins its children: atexit runs
    hooks last-registered first, and this one is registered after workers exist (so after
    multiprocessing's own hook)."""
    if not _AT_EXIT:
        _AT_EXIT.append(True)
        atexit.register(lambda: [loader.close() for loader in list(_LIVE)])


def kill_workers(processes: list) -> None:
    """SIGKILL and reap these worker processes. SIGCHLD is ignored meanwhile (main thread only):
    torch's handler would report each as a worker "killed by signal"; once reaped, torch's later
    checks pass over them (waitid finds no child)."""
    alive = [p for p in processes if p.is_alive()]
    if not alive:
        return
    main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGCHLD, signal.SIG_DFL) if main else None
    try:
        for p in alive:
            p.kill()
        for p in alive:
            p.join(timeout=30)
    finally:
        if main:
            signal.signal(signal.SIGCHLD, previous)


def _worker_init(_: int) -> None:
    """Ctrl-C, and the SIGTERM that SLURM's scancel, Kubernetes and systemd send to the whole
    process group, reach the workers too: they leave both to the main process, which stops
    cleanly (finishes the step, saves) instead of seeing its workers die. Workers still end when
    the main process does: the DataLoader's shutdown sentinel, or, when it is killed outright, the
    kernel (PR_SET_PDEATHSIG) at once rather than torch's watchdog some seconds later."""
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)  # blocked by start_workers until now
    die_with_parent()  # a kill -9 of the job takes its workers along at once


def start_workers(dl: torch.utils.data.DataLoader, started: list | None = None):
    """iter(dl) with SIGINT/SIGTERM blocked while the worker processes are forked, so that a signal
    in the instant between a fork and _worker_init cannot kill a worker; the main process gets a
    signal that arrived meanwhile as soon as they are unblocked. `started` receives the worker
    processes (multiprocessing.Process) that this call forked, even when iter(dl) raises: a worker's
    death reported from torch's SIGCHLD handler inside iter(dl) loses the new iterator, and with it
    torch's own record of the other workers."""
    before = set(multiprocessing.active_children()) if started is not None else set()
    try:
        if not dl.num_workers or threading.current_thread() is not threading.main_thread():
            return iter(dl)
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
        try:
            return iter(dl)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)
    finally:
        if started is not None and dl.num_workers:
            started += [p for p in multiprocessing.active_children() if p not in before]


def make_batch(images, labels, indices, g, spec: LoaderSpec, norm: A.Normalize, eig, cropped: bool,
               out=None) -> Batch:
    """uint8 images on any device -> the Batch the model eats (the same code on CPU and GPU).
    cropped: the images are already C x C training crops (--keep-aspect data sets, cropped per image)."""
    dtype = getattr(torch, spec.dtype)
    if spec.train:
        b, (h, w) = len(images), images[0].shape[-2:]
        # already cropped to C x C: only flips and colour remain
        p = A.sample_params(b, (h, w), spec.crop, g, flip=spec.flip, pca_std=spec.pca_std,
                            scale=(1.0, 1.0) if cropped else spec.scale,
                            ratio=(1.0, 1.0) if cropped else spec.ratio)
        x = A.train_batch(images, p, norm, *(eig or (None, None)), pca_scale=spec.pca_scale,
                          dtype=dtype, channels_last=spec.channels_last, out=out)
    else:
        x = A.eval_views(images, spec.crop, spec.views, norm, dtype=dtype, channels_last=spec.channels_last,
                         out=out)
    return Batch(x, labels, indices)


class Loader:
    """Batches of one split for one rank; see the module docstring."""

    def __init__(self, split: PreparedSplit, dataset: PreparedDataset, spec: LoaderSpec | None = None, *,
                 norm: A.Normalize | None = None, resident: Resident | None = None, **fields):
        """split of dataset, batched as `spec` says; `fields` are LoaderSpec's, as a shorthand
        (Loader(split, ds, batch_size=128, train=True)) or overriding spec's.
        norm: the normalisation of the weights a fine-tuning run starts from (None: the data set's).
        resident: the split already decoded in the device's memory (alexnet.data.resident).
        Raises ValueError for a crop larger than the prepared images, or a resident split that is
        not this one or not on spec.device; TypeError for an unknown field."""
        if spec is None:
            spec = LoaderSpec(**fields)
        elif fields:
            spec = dataclasses.replace(spec, **fields)
        self.split, self.resident = split, resident
        self.device = torch.device(spec.device)
        self.size = dataset.size  # px, the side of the prepared images
        self.keep_aspect = keep_aspect = bool(dataset.manifest["options"]["keep_aspect"])
        cuda = self.device.type == "cuda"
        gpu_decode = spec.gpu_decode
        if gpu_decode is None:
            gpu_decode = cuda and not split.raw and not keep_aspect
        if spec.crop > dataset.size:
            raise ValueError(f"crop {spec.crop} is larger than the prepared images ({dataset.size} px)")
        if resident is not None:
            if keep_aspect or tuple(resident.images.shape) != (len(split), dataset.size, dataset.size, 3):
                raise ValueError(f"the resident images {tuple(resident.images.shape)} are not this split's "
                                 f"({len(split)}, {dataset.size}, {dataset.size}, 3)")
            if resident.device.type != self.device.type:
                raise ValueError(f"the resident split is on {resident.device}, the batches are wanted on {self.device}")
            gpu_decode = False
        mean = spec.mean
        if mean == "pixel" and keep_aspect:
            mean = "channel"  # the mean image is of the centre SxS; whole images use channel means
        self.spec = spec = dataclasses.replace(spec, gpu_decode=gpu_decode, mean=mean,
                                               drop_last=spec.train if spec.drop_last is None else spec.drop_last)
        stats = dataset.stats
        f32 = lambda a: torch.as_tensor(np.asarray(a), dtype=torch.float32)  # noqa: E731
        if norm is not None:  # the normalisation of the weights a fine-tuning run starts from
            norm = norm.to("cpu")
            if keep_aspect and norm.mean_image is not None:  # whole images: the mean image's channel means
                norm = A.Normalize(mean=norm.mean_image.mean((1, 2)), std=torch.ones(3))
            self.norm_cpu = norm.for_size(dataset.size)
        else:
            self.norm_cpu = (A.Normalize(mean_image=f32(stats["mean_image"])) if mean == "pixel"
                             else A.Normalize(mean=f32(stats["mean"]), std=f32(stats["std"])))
        self.eig_cpu = (f32(stats["eigval"]), f32(stats["eigvec"])) if spec.pca_std > 0 else None
        self.wait_s = 0.0  # time the consumer spent waiting for batches (since the last reset)
        self.batches = 0
        # resident on a CPU: threads (one per core) make the next batches, one each and one more ready
        # (more ahead would only hold buffers: a 16-core host would otherwise need 35 of them)
        self.threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        in_flight = self.threads + 1 if resident is not None else spec.workers * spec.prefetch
        self.pool = None if cuda else self._make_pool(in_flight, shared=resident is None)
        self._keys = _Keys()  # the current epoch's batch keys, read by the DataLoader in this process
        self._dl: torch.utils.data.DataLoader | None = None  # started at the first epoch, then kept
        self._workers: list = []  # the worker processes started (multiprocessing.Process), for close()
        self._slots = 0  # pool slots handed out so far
        self._reading: int | None = None  # the epoch being read, while its iterator is open

    def _make_pool(self, in_flight: int, shared: bool = True) -> list[torch.Tensor] | None:
        """Reused output buffers (CPU path): enough that none is rewritten while one of the
        `in_flight` batches is being made (in a worker or the resident path's threads) or among the
        spec.keep batches the consumer may still hold; in shared memory when worker processes write
        them. None above spec.pool_bytes."""
        spec = self.spec
        rows = spec.batch_size * (1 if spec.train else spec.views)
        shape = (rows, 3, spec.crop, spec.crop)
        dtype = getattr(torch, spec.dtype)
        slots = in_flight + spec.keep + 1
        if slots * rows * 3 * spec.crop ** 2 * torch.empty(0, dtype=dtype).element_size() > spec.pool_bytes:
            return None
        fmt = torch.channels_last if spec.channels_last else torch.contiguous_format
        pool = [torch.empty(shape, dtype=dtype, memory_format=fmt) for _ in range(slots)]
        return [t.share_memory_() for t in pool] if shared else pool

    def plan(self, epoch: int) -> list[np.ndarray]:
        spec = self.spec
        if spec.train:
            return train_plan(len(self.split), spec.batch_size, spec.world_size, spec.rank, spec.seed, epoch,
                              spec.drop_last)
        return eval_plan(len(self.split), spec.batch_size, spec.world_size, spec.rank)

    def steps(self, epoch: int = 0) -> int:
        return len(self.plan(epoch))

    def epoch(self, epoch: int, start_step: int = 0):
        """Iterate the batches of `epoch` from `start_step` on.

        The worker processes are started at the first epoch and kept for the next ones: on an
        H200 host, starting 8-16 workers and stopping them again cost about a second per epoch,
        as long as a whole epoch of 4,000 photos (docs/benchmarks.md, "On a GPU"). An epoch left
        unfinished (a break, an error, a stop signal) stops them (close()); the next epoch starts
        new ones. One epoch at a time per Loader (the workers serve one): starting another while
        one is still open (not exhausted, not closed) raises RuntimeError instead of mixing them."""
        if self._reading is not None:
            raise RuntimeError(f"epoch {self._reading} of this Loader is still being read: exhaust it or close() "
                               f"its iterator before starting epoch {epoch} (one epoch at a time per Loader)")
        self._reading = epoch
        try:
            yield from self._epoch(epoch, start_step)
        finally:
            self._reading = None

    def _epoch(self, epoch: int, start_step: int):
        plan = self.plan(epoch)
        keys = []
        for step in range(start_step, len(plan)):
            # pool slots in turn across epochs, so that a new epoch's first batches never land in
            # the buffers of the `keep` last batches of the previous one
            keys.append((epoch, step, plan[step], self._slots % len(self.pool) if self.pool else 0))
            self._slots += 1
        cuda = self.device.type == "cuda"
        if self.resident is not None:  # no workers: batches gathered from memory, made one step ahead
            make = self._resident_batch
            yield from self._timed(_cuda_ahead(keys, self, make) if cuda else
                                   _threads_ahead(keys, make, self.threads + 1, self.threads))
            return
        self._keys.keys = keys
        it = start_workers(self._dataloader(), self._workers)
        finished = False
        try:
            if cuda:
                yield from self._timed(_cuda_ahead(it, self, self._streamed_batch))
            elif self.pool is not None:
                yield from self._timed(self._from_pool(it))
            else:
                yield from self._timed(it)
            finished = True
        finally:
            if not finished:
                self.close()

    def _dataloader(self) -> torch.utils.data.DataLoader:
        if self._dl is None:
            # its own generator: creating the iterator must not draw from torch's global RNG, which the
            # training step's dropout uses and checkpoints restore (an exact mid-epoch resume needs that)
            workers = self.spec.workers
            self._dl = torch.utils.data.DataLoader(
                BatchSource(self.split, self), batch_size=None, sampler=self._keys, num_workers=workers,
                pin_memory=self.device.type == "cuda", prefetch_factor=self.spec.prefetch if workers else None,
                worker_init_fn=_worker_init, generator=torch.Generator().manual_seed(0),
                persistent_workers=workers > 0)
            _LIVE.add(self)
            _stop_all_at_exit()
        return self._dl

    def close(self) -> None:
        """Stop the worker processes now (also done at the interpreter's exit). They ignore SIGTERM
        (_worker_init), so workers left to the garbage collector would hang the exit, where
        multiprocessing joins its children. The loader stays usable: the next epoch starts new ones."""
        dl, self._dl = self._dl, None
        _LIVE.discard(self)
        if dl is None:
            return
        shutdown = getattr(getattr(dl, "_iterator", None), "_shutdown_workers", None)  # torch's own clean-up
        if shutdown is not None:
            shutdown()
        # What torch's clean-up cannot stop: workers it gave 5 s that are still busy (its terminate()
        # is the SIGTERM they ignore), and workers it does not know of any more: a worker's death
        # raised from the SIGCHLD handler inside DataLoader.__iter__ loses the new iterator, and the
        # exit then waited for its siblings for ever (seen in CI)
        kill_workers(self._workers)
        self._workers = []

    def _streamed_batch(self, item, norm: A.Normalize, eig) -> Batch:
        """A worker's batch on CUDA (uint8 pixels or JPEG bytes and the batch's generator state) ->
        the Batch, decoded with nvJPEG when asked and augmented on the current (side) stream."""
        data, labels, idx, state = item
        dev, spec = self.device, self.spec
        g = torch.Generator()
        g.set_state(state)
        images = torch.stack(decode_jpegs(data, dev)) if spec.gpu_decode else data.to(dev, non_blocking=True)
        return make_batch(images, labels.to(dev, non_blocking=True), idx, g, spec, norm, eig, self.keep_aspect)

    def _resident_batch(self, key, norm: A.Normalize | None, eig) -> Batch:
        """The batch at key (epoch, step, sample indices, pool slot) from the resident split: one
        index gather, then make_batch, with the generator a worker would have seeded for the same
        key (BatchSource), so the batches are those of the streaming path."""
        epoch, step, idx, slot = key
        spec, res = self.spec, self.resident
        g = torch.Generator().manual_seed(step_seed(spec.seed, epoch, spec.rank, step))
        index = torch.from_numpy(idx)
        if self.device.type == "cuda":
            index = index.pin_memory().to(self.device, non_blocking=True)
        images = res.images.index_select(0, index).permute(0, 3, 1, 2)  # (B, 3, S, S), HWC in memory
        labels = res.labels.index_select(0, index)
        if norm is None:  # the CPU path: into the pool's buffers, like a worker
            norm, eig = self.norm_cpu, self.eig_cpu
            if self.pool is not None:
                out = self.pool[slot][:len(idx) * (1 if spec.train else spec.views)]
                return make_batch(images, labels, torch.from_numpy(idx), g, spec, norm, eig, False, out=out)
        return make_batch(images, labels, torch.from_numpy(idx), g, spec, norm, eig, False)  # never --keep-aspect

    def _from_pool(self, it):
        for slot, labels, indices in it:
            views = 1 if self.spec.train else self.spec.views
            images = self.pool[slot][:len(indices) * views]
            if views > 1:
                images = images.view(len(indices), views, *images.shape[1:])
            yield Batch(images, labels, indices)

    def _timed(self, it):
        while True:
            t = time.perf_counter()
            try:
                batch = next(it)
            except StopIteration:
                return
            self.wait_s += time.perf_counter() - t
            self.batches += 1
            yield batch

    def reset_timing(self) -> None:
        self.wait_s, self.batches = 0.0, 0


def _cuda_ahead(items, loader: Loader, make):
    """Make batch k+1 on a side stream while the consumer uses batch k: make(item, norm, eig) ->
    Batch is called with the side stream current (the streaming path: nvJPEG decode and
    augmentation; the resident path: gather and augmentation)."""
    dev = loader.device
    stream = torch.cuda.Stream(dev)
    norm = loader.norm_cpu.to(dev)
    eig = None if loader.eig_cpu is None else tuple(t.to(dev) for t in loader.eig_cpu)
    # what the side stream reads was written on the current stream: these copies, and the resident
    # split's last decoded batch (resident.load), possibly still queued
    stream.wait_stream(torch.cuda.current_stream(dev))

    def stage(item):
        with torch.cuda.stream(stream):
            return make(item, norm, eig)

    def hand_over(batch: Batch) -> Batch:
        consumer = torch.cuda.current_stream(dev)
        consumer.wait_stream(stream)
        for t in (batch.images, batch.labels):  # made on the side stream, used on the consumer's
            t.record_stream(consumer)
        return batch

    it = iter(items)
    try:
        ahead = stage(next(it))
    except StopIteration:
        return
    for item in it:
        current = hand_over(ahead)
        ahead = stage(item)
        yield current
    yield hand_over(ahead)


def _threads_ahead(keys: list, make, depth: int, threads: int):
    """Batches make(key, None, None) in key order, made by `threads` threads up to `depth` batches
    ahead of the consumer (the resident path on a CPU: the main thread trains on batch k while the
    threads augment the next ones; torch's ops release the GIL). Each thread runs torch ops on one
    core, as a DataLoader worker does: intra-op parallelism on such small per-image ops cost more CPU
    than it saved (CPU-2c). Each batch depends only on its key, so thread timing changes nothing.
    An epoch left early (break, error, signal) cancels what is queued and waits for what runs."""
    pool = ThreadPoolExecutor(max(1, threads), thread_name_prefix="alexnet-resident",
                              initializer=torch.set_num_threads, initargs=(1,))
    pending: deque = deque()
    keys = iter(keys)
    try:
        for key in itertools.islice(keys, max(1, depth)):
            pending.append(pool.submit(make, key, None, None))
        while pending:
            batch = pending.popleft().result()
            for key in itertools.islice(keys, 1):
                pending.append(pool.submit(make, key, None, None))
            yield batch
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
