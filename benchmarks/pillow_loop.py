"""The straightforward Pillow loop that `alexnet prepare` is measured against (benchmarks/prepare.py).

    python benchmarks/pillow_loop.py FILES.txt OUT_DIR --workers 2 --quality 90

What a user would write: for each file, Image.open, convert("RGB"), resize the shorter side to 256
with LANCZOS, centre crop 256x256, save as JPEG, in a multiprocessing Pool of --workers processes.
It imports nothing but Pillow, so that its start-up is as small as a user's script's.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
from pathlib import Path

from PIL import Image


def one(job: tuple[str, str, int, int]) -> None:
    src, dst, size, quality = job
    img = Image.open(src).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.LANCZOS)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img.crop((left, top, left + size, top + size)).save(dst, quality=quality)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", help="text file: one image path per line")
    ap.add_argument("out", help="folder for the output JPEGs (<line number>.jpg)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--quality", type=int, default=90)
    args = ap.parse_args()
    files = Path(args.files).read_text().splitlines()
    Path(args.out).mkdir(parents=True, exist_ok=True)
    jobs = [(f, str(Path(args.out) / f"{i:06d}.jpg"), args.size, args.quality) for i, f in enumerate(files)]
    with mp.Pool(args.workers) as pool:
        pool.map(one, jobs, chunksize=4)


if __name__ == "__main__":
    main()
