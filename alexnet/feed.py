"""`alexnet bench feed`: does the data keep up with the training step? (the resident path)

    alexnet bench feed --data prepared/imagenette144 [--device cuda] [--crop 128] [--json out.json]

Two measurements, side by side in one run, on the same machine:
1. the loader alone (a consumer that only takes each batch): the resident split (alexnet.data.resident:
   decoded once, batches gathered and augmented in memory, no workers) against the streaming
   loader (worker processes decode and augment) with the same batch, crop and augmentation; in
   images/s after warm-up, and CPU seconds per 1,000 images over whole epochs (this process and its
   workers, start-up included; the resident split's one-time load is reported apart);
2. end to end: the `fast` recipe's network and training step (alexnet2012 with batch norm, SGD,
   channels_last, precision auto) fed by the resident loader, against the same step repeated on one
   batch made in advance (the step alone). The share of time spent on data is 1 - end-to-end /
   step alone: what the GPU would wait (target on an H200: under 5%).

`synthetic(n, size)` is an ImageNet-shaped resident set of random pixels made in place on the
device (1,281,167 images at 128 px are 63 GB of uint8): benchmarks/gpu_check.py's resident stage
measures the step at ImageNet's scale with it, without 63 GB of JPEGs on the machine.
"""
from __future__ import annotations

import json
import os
import resource
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from . import config, runtime
from .data.loader import Loader, LoaderSpec
from .data.resident import Resident, gib, load
from .data.store import open_prepared
from .errors import UserError
from .model import build

WARMUP = 3  # batches (or steps) left untimed: thread/worker start-up, cuDNN's algorithm search


def cpu_seconds() -> float:
    """CPU time of this process and its waited-for children (workers joined by Loader.close)."""
    s, c = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return s.ru_utime + s.ru_stime + c.ru_utime + c.ru_stime


def loader_alone(loader: Loader, epochs: int, sync) -> dict:
    """images/s after WARMUP batches (and in-flight ones), and CPU s per 1,000 images over `epochs`
    whole epochs (start-up included). Closes the loader (its workers' CPU time is counted then)."""
    in_flight = 0 if loader.resident is not None else loader.spec.workers * loader.spec.prefetch
    cpu0, n, timed, t = cpu_seconds(), 0, 0, None
    for epoch in range(epochs):
        for batch in loader.epoch(epoch):
            n += len(batch.labels)
            if t is None and n >= (WARMUP + in_flight) * loader.spec.batch_size:
                sync()
                t, timed = time.perf_counter(), 0
            elif t is not None:
                timed += len(batch.labels)
    sync()
    rate = timed / (time.perf_counter() - t) if t and timed else float("nan")
    loader.close()
    return {"images_per_s": rate, "cpu_s_per_1000": 1000 * (cpu_seconds() - cpu0) / max(n, 1), "images": n}


def fast_model(num_classes: int, device: torch.device, sets: tuple = ()):
    """The `fast` preset's network on `device` (channels_last), its SGD and autocast dtype; `sets`:
    config overrides ("model.width=0.25": the smoke test's small network)."""
    cfg = config.resolve("fast", sets=list(sets))
    model = build(cfg.model, num_classes, seed=0).to(device, memory_format=torch.channels_last).train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True, weight_decay=5e-5)
    return model, opt, runtime.amp_dtype("auto", device)


def end_to_end(loader: Loader, steps: int, device: torch.device, num_classes: int, rounds: int = 2,
               sets: tuple = ()) -> dict:
    """images/s of the fast recipe's step fed by `loader` against the same step on one batch made
    in advance: `steps` steps after WARMUP each, in alternating rounds, the best round of each side
    (a small split is cycled through further epochs)."""
    model, opt, amp = fast_model(num_classes, device, sets)
    sync = lambda: runtime.synchronize(device)  # noqa: E731

    def step(x, y):
        with runtime.autocast(device, amp):
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def batches():
        epoch = 0
        while True:
            yield from loader.epoch(epoch)
            epoch += 1

    it = batches()
    first = next(it)
    x, y = first.images.clone(), first.labels.to(device).clone()

    def timed(next_batch) -> tuple[float, float]:
        """(images/s, loader wait in s) of `steps` steps after WARMUP untimed ones."""
        for _ in range(WARMUP):
            step(*next_batch())
        sync()
        t, wait, n = time.perf_counter(), loader.wait_s, 0
        for _ in range(steps):
            xb, yb = next_batch()
            step(xb, yb)
            n += len(yb)
        sync()
        return n / (time.perf_counter() - t), loader.wait_s - wait

    def fed_batch():
        b = next(it)
        return b.images, b.labels.to(device, non_blocking=True)

    # alternating rounds, the best of each side kept: neither profits from going second
    alone, fed, wait = [], [], []
    for _ in range(rounds):
        alone.append(timed(lambda: (x, y))[0])
        rate, w = timed(fed_batch)
        fed.append(rate)
        wait.append(w)
    it.close()
    loader.close()
    alone, fed = max(alone), max(fed)
    return {"step_alone_images_per_s": alone, "end_to_end_images_per_s": fed, "ratio": fed / alone,
            "data_share": max(0.0, 1 - fed / alone), "steps": steps, "batch": len(y), "crop": x.shape[-1],
            "precision": runtime.precision_name(amp), "loader_wait_s": min(wait), "rounds": rounds}


class _SyntheticSplit:
    """What Loader asks of a split, for a set that exists only in memory."""
    raw, name = True, "synthetic"

    def __init__(self, n: int):
        self.n = n

    def __len__(self) -> int:
        return self.n


class _SyntheticSet:
    """What Loader asks of a prepared data set: its options, size and statistics (ImageNet's
    published channel means and PCA, so the augmentation does its real work)."""

    def __init__(self, size: int):
        self.size, self.manifest = size, {"options": {"keep_aspect": False}}
        self.stats = {"mean": np.array([123.7, 116.3, 103.5]), "std": np.array([58.4, 57.1, 57.4]),
                      "mean_image": np.full((3, size, size), 115.0),
                      "eigval": np.array([0.2175, 0.0188, 0.0045]) * 255 ** 2,
                      "eigvec": np.array([[-0.5675, 0.7192, 0.4009], [-0.5808, -0.0045, -0.8140],
                                          [-0.5836, -0.6948, 0.4203]])}


def synthetic(n: int, size: int, classes: int, device: torch.device, seed: int = 0):
    """(split, data set, Resident): n random (size, size, 3) uint8 images with random labels, made on
    the device in chunks (no host copy)."""
    g = torch.Generator(device=device).manual_seed(seed)
    images = torch.empty((n, size, size, 3), dtype=torch.uint8, device=device)
    chunk = max(1, (1 << 30) // (size * size * 3))
    for i in range(0, n, chunk):
        images[i:i + chunk] = torch.randint(0, 256, images[i:i + chunk].shape, generator=g, device=device,
                                            dtype=torch.uint8)
    labels = torch.randint(0, classes, (n,), generator=g, device=device)
    return _SyntheticSplit(n), _SyntheticSet(size), Resident(images, labels, f"{n:,} random images made on {device}")


def train_loader(split, ds, res: Resident | None, device, batch: int, crop: int, workers: int, scale=(0.35, 1.0)):
    """The fast recipe's augmentation: random-resized crops (scale=(1, 1): §4.1's fixed-size crops),
    reflections, PCA colour, channel means, bf16 channels_last where bf16 is native (else float32)."""
    dtype = "bfloat16" if runtime.amp_dtype("auto", torch.device(device)) == torch.bfloat16 else "float32"
    ratio = (1.0, 1.0) if tuple(scale) == (1.0, 1.0) else (3 / 4, 4 / 3)
    spec = LoaderSpec(batch, train=True, crop=crop, workers=workers, device=device, pca_std=0.1, scale=scale,
                      ratio=ratio, mean="channel", dtype=dtype, channels_last=True)
    return Loader(split, ds, spec, resident=res)


def bench_feed(data: str, device: str = "cpu", batch: int = 128, crop: int | None = None, workers: int | None = None,
               epochs: int = 2, steps: int = 20, sets: tuple = (), scale=(0.35, 1.0)) -> dict:
    """Both measurements of the module docstring on a prepared data set's training split (`sets`:
    config overrides of the fast recipe's network, as in fast_model)."""
    dev = torch.device(device)
    ds = open_prepared(data)
    split = ds.split("train")
    if ds.manifest["options"].get("keep_aspect"):
        raise UserError(f"{data} was prepared with --keep-aspect: its images differ in size and always stream")
    crop = min(224, ds.size) if crop is None else crop
    if crop > ds.size:
        raise UserError(f"crop {crop} is larger than {data}'s images ({ds.size} px)")
    if len(split) < batch * (WARMUP + 2):
        raise UserError(f"{data} has {len(split)} training images: too few for {WARMUP + 2} batches of {batch} "
                        f"(lower --batch-size)")
    workers = (os.cpu_count() or 1) if workers is None else workers
    sync = lambda: runtime.synchronize(dev)  # noqa: E731
    t, cpu0 = time.perf_counter(), cpu_seconds()
    res = load(split, ds.size, dev, cache="false", progress=False, say=None)
    loaded = {"seconds": time.perf_counter() - t, "cpu_s": cpu_seconds() - cpu0, "bytes": res.nbytes, "how": res.source}
    rows = {"streamed": loader_alone(train_loader(split, ds, None, dev, batch, crop, workers, scale), epochs, sync),
            "resident": loader_alone(train_loader(split, ds, res, dev, batch, crop, workers, scale), epochs, sync)}
    e2e = end_to_end(train_loader(split, ds, res, dev, batch, crop, 0, scale), steps, dev, len(ds.classes), sets=sets)
    return {"device": str(dev), "gpu": torch.cuda.get_device_name(dev) if dev.type == "cuda" else None,
            "cores": os.cpu_count(), "data": str(Path(data).resolve()), "images": len(split), "size": ds.size,
            "crop": crop, "batch": batch, "workers": workers, "epochs": epochs, "encoding": ds.manifest["options"]["encoding"],
            "scale": list(scale),
            "resident_load": loaded, "loader_alone": rows,
            "ratio": rows["resident"]["images_per_s"] / rows["streamed"]["images_per_s"],
            "cpu_ratio": rows["streamed"]["cpu_s_per_1000"] / rows["resident"]["cpu_s_per_1000"], "end_to_end": e2e}


def print_feed(r: dict) -> None:
    where = r["device"] + (f" ({r['gpu']})" if r.get("gpu") else "")
    ld = r["resident_load"]
    crops = "§4.1 crops" if r["scale"] == [1.0, 1.0] else f"random-resized crops (scale {r['scale']})"
    print(f"loader alone, {where}, {r['images']:,} images of {r['size']} px ({r['encoding']}), {crops} of {r['crop']}, "
          f"batch {r['batch']}, {r['epochs']} epochs; streaming with {r['workers']} workers\n")
    print(f"  resident split: {gib(ld['bytes'])}, {ld['how']} ({ld['cpu_s']:.1f} CPU s)")
    for name, row in r["loader_alone"].items():
        print(f"  {name:<10}{row['images_per_s']:>10.0f} img/s {row['cpu_s_per_1000']:>8.2f} CPU s / 1,000 images")
    print(f"  resident / streamed: {r['ratio']:.2f}x the images/s, {r['cpu_ratio']:.2f}x less CPU per image\n")
    e = r["end_to_end"]
    print(f"end to end, fast recipe's step ({e['precision']}), batch {e['batch']}, crop {e['crop']}, {e['steps']} steps, "
          f"best of {e['rounds']} alternating rounds:")
    print(f"  step alone {e['step_alone_images_per_s']:.0f} img/s, fed by the resident loader "
          f"{e['end_to_end_images_per_s']:.0f} img/s: {e['ratio']:.3f}x, data {100 * e['data_share']:.1f}% of the time")


def main(args) -> int:
    if not args.data:
        raise UserError("bench feed needs --data PREPARED (a folder made by alexnet prepare)")
    device = runtime.setup(args.device, distributed_job=False).device
    r = bench_feed(args.data, device=device, batch=args.batch_size, crop=args.crop, workers=args.workers,
                   steps=args.batches)
    print_feed(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0
