"""What the per-sample check costs on the hot path: the checksum (XXH3-64) of each stored
image, compared with its index row on every read, against decoding that image.

    python benchmarks/verify_cost.py --data prepared/imagenette-144 --json out.json
    python benchmarks/verify_cost.py --data prepared/imagenette-144 --n 200 --batches 2   # a quick look

On one core, over the first --n training samples, after one untimed pass (page cache warm), best
of --rounds with the two sides alternating:
    read      split[i] with the check switched off (index row, bytes out of the memory map)
    checked   split[i] as shipped: the same, plus the XXH3-64 of the bytes and the comparison
    xxh3      xxhash.xxh3_64_intdigest of the bytes alone; crc32: zlib.crc32 alone, the alternative
    decode    torchvision.io.decode_jpeg of each image alone (libjpeg-turbo; --raw sets skip this)
and then the training loader itself (Loader.epoch, workers 0, --batch images, random crops of
--crop px, flips, PCA colour, mean image) in images/s, with the check off and on, the median of
--rounds that alternate which side goes first. On a shared machine the loader's rounds can spread
by more than the check costs; the per-sample figures are the ones to read.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alexnet.data.loader import Loader  # noqa: E402
from alexnet.data.store import checksum, decode_jpegs, open_prepared  # noqa: E402


def per_sample_us(fn, n: int) -> float:
    t = time.perf_counter()
    for i in range(n):
        fn(i)
    return (time.perf_counter() - t) / n * 1e6


def loader_rate(split, ds, batch: int, batches: int, crop: int) -> float:
    loader = Loader(split, ds, batch_size=batch, train=True, crop=crop, workers=0)
    it = loader.epoch(0)
    next(it)  # warm-up: buffers, first pages
    t = time.perf_counter()
    for _ in range(batches):
        next(it)
    rate = batches * batch / (time.perf_counter() - t)
    it.close()
    return rate


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a prepared data set (format 2)")
    ap.add_argument("--n", type=int, default=2000, help="samples timed one by one")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--batches", type=int, default=10, help="loader batches timed per round")
    ap.add_argument("--crop", type=int, default=None, help="training crop (default: the stored size - 16)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    ds = open_prepared(args.data)
    split = ds.split("train")
    if not split.checked:
        sys.exit(f"{args.data} is format {ds.manifest['format_version']}: no per-sample checksums to time")
    n = min(args.n, len(split))
    payloads = [split[i][0] for i in range(n)]  # untimed pass: pages in the cache
    nbytes = sum(p.nbytes if isinstance(p, np.ndarray) else len(p) for p in payloads)

    sides = {"read": [], "checked": [], "xxh3": [], "crc32": [], "decode": []}
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads] if not split.raw else []
    if tensors:
        decode_jpegs(tensors[:1])  # untimed: imports torchvision's decoder
    for _ in range(args.rounds):
        split.checked = False
        sides["read"].append(per_sample_us(lambda i: split[i], n))
        split.checked = True
        sides["checked"].append(per_sample_us(lambda i: split[i], n))
        sides["xxh3"].append(per_sample_us(lambda i: checksum(payloads[i]), n))
        sides["crc32"].append(per_sample_us(lambda i: zlib.crc32(payloads[i]), n))
        if tensors:
            sides["decode"].append(per_sample_us(lambda i: decode_jpegs([tensors[i]]), n))
    best = {k: min(v) for k, v in sides.items() if v}
    crop = args.crop or ds.size - 16
    rates = {"off": [], "on": []}
    for r in range(args.rounds):  # alternating which side goes first: neither profits from the order
        for side in ("off", "on") if r % 2 == 0 else ("on", "off"):
            split.checked = side == "on"
            rates[side].append(loader_rate(split, ds, args.batch, args.batches, crop))
    split.checked = True
    result = {"data": str(Path(args.data).resolve()), "samples": n, "mean_bytes": nbytes / n,
              "size": ds.size, "raw": split.raw, "us_per_sample": best,
              "check_us": best["checked"] - best["read"],
              "loader_img_per_s": {k: float(np.median(v)) for k, v in rates.items()},
              "loader_rounds_img_per_s": rates, "crop": crop, "batch": args.batch,
              "torch_threads": torch.get_num_threads()}
    if "decode" in best:
        result["check_share_of_decode"] = result["check_us"] / best["decode"]
    r = result
    print(f"{n} samples of {args.data} ({r['mean_bytes'] / 1e3:.1f} kB mean, {ds.size} px), one core, best of "
          f"{args.rounds}:")
    for k, v in best.items():
        print(f"  {k:<8} {v:8.1f} us per sample")
    print(f"  the check adds {r['check_us']:.1f} us per sample"
          + (f" = {100 * r['check_share_of_decode']:.1f}% of a decode" if "decode" in best else ""))
    off, on = r["loader_img_per_s"]["off"], r["loader_img_per_s"]["on"]
    spread = max(max(v) / min(v) - 1 for v in rates.values())
    print(f"  training loader (workers 0, crop {crop}), median of {args.rounds}: {off:,.0f} img/s unchecked, "
          f"{on:,.0f} img/s checked ({100 * (on / off - 1):+.1f}%; rounds of one side spread up to "
          f"{100 * spread:.0f}%)")
    if args.json:
        Path(args.json).write_text(json.dumps(r, indent=2) + "\n")


if __name__ == "__main__":
    main()
