"""`alexnet bench`: our pipeline against the torchvision reference, side by side in one run.

    alexnet bench data --data prepared/imagenette [--device cuda] [--json out.json]

data: images/s of ready-to-train batches. Ours: prepared shards -> decode (libjpeg-turbo on CPU,
nvJPEG on CUDA) -> §4.1 crops, reflections, PCA colour, mean subtraction, as batches. Reference:
what users know from torchvision's classification reference: datasets.ImageFolder + Pillow +
Compose([RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(...)]) in a
DataLoader with the same number of workers, on the source images the data set was prepared from.
Both run the same number of batches after the same warm-up, on the same cores, in alternating
rounds (best round of each side kept). The headline is float32 NCHW batches, the reference's own
output; bf16 channels_last (what the fast recipe feeds the model) is measured too, as are the
decode-only and augmentation-only rates of one process.
"""
from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

from .errors import UserError

WARMUP = 3  # batches not timed: worker start-up


def _rate(iterable, batches: int, sync=None) -> float:
    """images/s over `batches` batches after WARMUP ones."""
    it = iter(iterable)
    for _ in range(WARMUP):
        next(it)
    n, t = 0, time.perf_counter()
    for _ in range(batches):
        b = next(it)
        n += len(b[1]) if isinstance(b, (tuple, list)) else len(b.labels)
    if sync:
        sync()
    return n / (time.perf_counter() - t)


def reference_loader(root: Path, batch: int, workers: int, crop: int = 224):
    import torchvision
    from torchvision import transforms as T

    tf = T.Compose([T.RandomResizedCrop(crop), T.RandomHorizontalFlip(), T.ToTensor(),
                    T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    ds = torchvision.datasets.ImageFolder(str(root), tf)
    return torch.utils.data.DataLoader(ds, batch_size=batch, shuffle=True, num_workers=workers,
                                       drop_last=True, persistent_workers=False)


def bench_data(data: str, device: str = "cpu", batch: int = 128, batches: int = 30, workers: int | None = None,
               source: str | None = None, crop: int = 224, rounds: int = 2) -> dict:
    from .data.augment import Normalize, sample_params, train_batch
    from .data.loader import Loader
    from .data.store import open_prepared

    ds = open_prepared(data)
    split = ds.split("train")
    workers = os.cpu_count() if workers is None else workers
    if source is None:
        src = ds.manifest["source"]
        if src["kind"] != "folder":
            raise UserError(f"{data} was prepared from a {src['kind']} source; the reference needs an "
                            "ImageFolder of the same images: give it with --source DIR")
        source = str(Path(src["path"]) / "train") if (Path(src["path"]) / "train").is_dir() else src["path"]
    if not Path(source).is_dir():
        raise UserError(f"reference images not found: {source}")
    needed = (WARMUP + batches) * batch
    if len(split) < needed:
        raise UserError(f"{data} has {len(split)} training images; the benchmark needs {needed} "
                        f"(lower --batches)")
    dev = torch.device(device)
    sync = torch.cuda.synchronize if dev.type == "cuda" else None
    result = {"device": str(dev), "batch": batch, "batches": batches, "workers": workers,
              "cores": os.cpu_count(), "crop": crop, "torch_threads": torch.get_num_threads()}
    if dev.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(dev)

    # alternate the two sides (ours, reference, ours, reference) and keep each side's best round,
    # so that neither profits from running second (page cache, frequency) more than the other
    ours = {"float32": [], "bfloat16": []}
    reference = []
    for _ in range(rounds):
        for dtype, cl in (("float32", False), ("bfloat16", True)):
            loader = Loader(split, ds, batch, train=True, crop=crop, workers=workers, device=dev,
                            dtype=dtype, channels_last=cl)
            ours[dtype].append(_rate(loader.epoch(0), batches, sync))
        reference.append(_rate(reference_loader(Path(source), batch, workers, crop), batches))
    ours = {k: max(v) for k, v in ours.items()}
    reference = max(reference)

    # one process, no pipeline: decode only, then augment only
    import torchvision
    from torchvision.io import ImageReadMode
    idx = np.arange(min(len(split), 4 * batch))
    data_bytes = [torch.frombuffer(bytearray(split[int(i)][0]), dtype=torch.uint8) for i in idx]
    t = time.perf_counter()
    if dev.type == "cuda" and not split.raw:
        images = torchvision.io.decode_jpeg(data_bytes, mode=ImageReadMode.RGB, device=dev)
        torch.cuda.synchronize()
    elif split.raw:
        images = [torch.from_numpy(np.array(split[int(i)][0])).permute(2, 0, 1) for i in idx]
    else:
        images = torchvision.io.decode_jpeg(data_bytes, mode=ImageReadMode.RGB)
    decode = len(idx) / (time.perf_counter() - t)
    images = [im.to(dev) for im in images]
    norm = Normalize(mean_image=torch.as_tensor(ds.stats["mean_image"], dtype=torch.float32)).to(dev)
    eig = (torch.as_tensor(ds.stats["eigval"], dtype=torch.float32), torch.as_tensor(ds.stats["eigvec"], dtype=torch.float32))
    g = torch.Generator().manual_seed(0)
    t = time.perf_counter()
    for k in range(0, len(images), batch):
        chunk = images[k:k + batch]
        p = sample_params(len(chunk), ds.size, crop, g, pca_std=0.1)
        train_batch(chunk if dev.type == "cpu" else torch.stack(chunk), p, norm, *eig, dtype=torch.bfloat16,
                    channels_last=True)
    if sync:
        sync()
    augment = len(images) / (time.perf_counter() - t)

    result.update({"images_per_s": ours["float32"], "dtype": "float32", "reference_images_per_s": reference,
                   "ratio": ours["float32"] / reference, "rounds": rounds,
                   "bfloat16_channels_last_images_per_s": ours["bfloat16"],
                   "bfloat16_channels_last_ratio": ours["bfloat16"] / reference,
                   "decode_images_per_s_one_process": decode, "augment_images_per_s_one_process": augment,
                   "data": str(Path(data).resolve()), "reference_source": str(Path(source).resolve()),
                   "encoding": ds.manifest["options"]["encoding"]})
    return result


def print_data(r: dict) -> None:
    where = r["device"] + (f" ({r['gpu']})" if "gpu" in r else "")
    print(f"input pipeline, {where}, {r['workers']} workers on {r['cores']} cores, batch {r['batch']}, "
          f"{r['batches']} batches after {WARMUP} warm-up, best of {r['rounds']} alternating rounds\n")
    rows = [("torchvision reference (ImageFolder + PIL + RandomResizedCrop, float32)", r["reference_images_per_s"], 1.0),
            ("ours, float32 NCHW", r["images_per_s"], r["ratio"]),
            ("ours, bfloat16 channels_last", r["bfloat16_channels_last_images_per_s"],
             r["bfloat16_channels_last_ratio"])]
    for name, rate, ratio in rows:
        print(f"  {name:<72}{rate:>9.0f} img/s {ratio:>6.2f}x")
    print(f"\n  one process: decode {r['decode_images_per_s_one_process']:.0f} img/s, "
          f"augment {r['augment_images_per_s_one_process']:.0f} img/s ({r['encoding']} data)")


def main(args) -> int:
    if args.what != "data":
        print(f"alexnet bench {args.what}: not implemented yet (it arrives with issue "
              f"#{5 if args.what == 'train' else 7})", file=sys.stderr)
        return 1
    if not args.data:
        raise UserError("bench data needs --data PREPARED (a folder made by alexnet prepare)")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError("--device cuda: no CUDA device is available here")
    device = "cuda" if args.device == "auto" and torch.cuda.is_available() else \
        ("cpu" if args.device == "auto" else args.device)
    r = bench_data(args.data, device=device, batch=args.batch_size, batches=args.batches,
                   workers=args.workers, source=args.source)
    print_data(r)
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")
    return 0
