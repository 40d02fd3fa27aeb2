"""Benchmark the input pipeline against torchvision's reference, side by side.

    python benchmarks/data.py                          # prepares Imagenette (JPEG and raw) in a temp dir
    python benchmarks/data.py --data prepared/imagenette --json out.json

The measurement itself is alexnet.bench.bench_data (also `alexnet bench data`): ours (prepared
shards -> decoded, §4.1-augmented, mean-subtracted batches) against ImageFolder + Pillow +
RandomResizedCrop/RandomHorizontalFlip/ToTensor/Normalize in a DataLoader with the same workers, on
the Imagenette source photos. Without --data this script prepares ../shared/data/imagenette twice,
as JPEG (the default) and as raw uint8 (`--raw`, no decoding), and measures both.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alexnet.bench import bench_data, print_data  # noqa: E402
from alexnet.data.prepare import prepare  # noqa: E402

IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="a prepared data set (default: prepare Imagenette here)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--json", help="write all results here")
    args = ap.parse_args()
    tmp = None
    try:
        if args.data:
            cases = {"given": args.data}
        else:
            tmp = Path(tempfile.mkdtemp(prefix="bench-data-"))
            cases = {}
            for name, raw in (("jpeg", False), ("raw", True)):
                prepare(IMAGENETTE, tmp / name, raw=raw, progress=False)
                cases[name] = str(tmp / name)
        results = {}
        for name, path in cases.items():
            print(f"\n== {name}: {path}")
            results[name] = bench_data(path, device=args.device, workers=args.workers, batches=args.batches,
                                       source=str(IMAGENETTE / "train") if not args.data else None)
            print_data(results[name])
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
