"""Benchmark `alexnet prepare` against the straightforward Pillow loop, side by side, same cores.

    python benchmarks/prepare.py                       # generated full-resolution photos + Imagenette
    python benchmarks/prepare.py --images 200 --workers 2 --json out.json

Inputs:
- "large": full-resolution, natural-looking JPEGs generated here (no camera photos ship with the
  project): real Imagenette photographs upscaled to camera sizes (1600x1200 .. 3264x2448, several
  aspect ratios) with 1/f (pink) noise texture added, so they have the fine detail that makes
  downscaling non-trivial, saved at quality 92.
- "imagenette": the real photographs in ../shared/data/imagenette (224x224, so both methods upscale).

Reference (what a user would write): for each file, Image.open, convert("RGB"), resize the shorter
side to 256 with LANCZOS, centre crop 256x256, save as JPEG (same quality as ours), in a
multiprocessing Pool of the same size. Ours: the whole `alexnet prepare` (listing, decode with
DCT-domain downscaling, one box resize, JPEG encode, shards, index, statistics, manifest).

Fidelity: PSNR of our stored image against the reference's stored image, both decoded (target
>= 35 dB), and of our pixels against the reference's before either is JPEG-encoded (what the
DCT-domain downscaling and box resize change on their own). Also a JPEG-quality table: bytes per
image and PSNR against the unencoded pixels, for the size/fidelity trade-off.
"""
from __future__ import annotations

import argparse
import io
import json
import multiprocessing as mp
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alexnet.data.decode import encode_jpeg, open_rgb, resize_crop  # noqa: E402
from alexnet.data.store import open_prepared  # noqa: E402
from alexnet.prepare import DEFAULT_QUALITY, prepare  # noqa: E402

IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"
SIZES = [(1600, 1200), (2048, 1536), (3264, 2448), (1200, 1800), (2560, 1440)]


def pink_noise(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """(h, w, 3) noise with a 1/f amplitude spectrum, like natural image texture, std ~1."""
    fy, fx = np.fft.fftfreq(h)[:, None], np.fft.rfftfreq(w)[None, :]
    f = np.sqrt(fx ** 2 + fy ** 2)
    f[0, 0] = 1.0
    out = np.empty((h, w, 3), np.float32)
    for c in range(3):
        spectrum = (rng.standard_normal(f.shape) + 1j * rng.standard_normal(f.shape)) / f
        x = np.fft.irfft2(spectrum, s=(h, w))
        out[..., c] = x / x.std()
    return out


def make_large(photos: list[Path], n: int, folder: Path, seed: int = 0) -> list[Path]:
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        w, h = SIZES[i % len(SIZES)]
        base = Image.open(photos[i % len(photos)]).convert("RGB").resize((w, h), Image.Resampling.BICUBIC)
        x = np.asarray(base, np.float32) + 12 * pink_noise(h, w, rng)
        path = folder / f"photo_{i:04d}.jpg"
        Image.fromarray(np.clip(x, 0, 255).astype(np.uint8)).save(path, quality=92)
        paths.append(path)
    return paths


def reference_one(args) -> None:
    """The straightforward loop body: open, RGB, LANCZOS shorter side 256, centre crop, save."""
    src, dst, size, quality = args
    img = Image.open(src).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.LANCZOS)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    img.crop((left, top, left + size, top + size)).save(dst, quality=quality)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def run_case(name: str, files: list[Path], workers: int, quality: int, tmp: Path) -> dict:
    # an ImageFolder of one class, so that `alexnet prepare` reads exactly these files
    src = tmp / f"{name}_src" / "train" / "c0"
    src.mkdir(parents=True)
    for f in files:
        os.symlink(f.resolve(), src / f.name)
    ref_out = tmp / f"{name}_ref"
    ref_out.mkdir()
    jobs = [(str(src / f.name), str(ref_out / (f.stem + ".jpg")), 256, quality) for f in files]

    t = time.perf_counter()
    with mp.get_context().Pool(workers) as pool:
        pool.map(reference_one, jobs, chunksize=4)
    ref_s = time.perf_counter() - t

    t = time.perf_counter()
    prepare(src.parent.parent, tmp / f"{name}_ours", workers=workers, quality=quality, progress=False)
    ours_s = time.perf_counter() - t

    split = open_prepared(tmp / f"{name}_ours").split("train")
    stored_psnr, pixel_psnr = [], []
    for i, key in enumerate(split.keys()):
        ours = np.asarray(Image.open(io.BytesIO(split[i][0])).convert("RGB"))
        ref_file = ref_out / (Path(key).stem + ".jpg")
        stored_psnr.append(psnr(ours, np.asarray(Image.open(ref_file).convert("RGB"))))
        # both pipelines' pixels before JPEG encoding: the difference the resampling makes
        data = (src / Path(key).name).read_bytes()
        img = Image.open(io.BytesIO(data)).convert("RGB")
        w, h = img.size
        s = 256 / min(w, h)
        img = img.resize((max(256, round(w * s)), max(256, round(h * s))), Image.Resampling.LANCZOS)
        l, t_ = (img.width - 256) // 2, (img.height - 256) // 2
        pixel_psnr.append(psnr(resize_crop(open_rgb(data, 256), 256), np.asarray(img.crop((l, t_, l + 256, t_ + 256)))))
    n = len(files)
    return {"case": name, "images": n, "workers": workers, "quality": quality,
            "reference_images_per_s": n / ref_s, "images_per_s": n / ours_s, "ratio": ref_s / ours_s,
            "psnr_vs_reference_stored_db": float(np.mean(stored_psnr)),
            "psnr_vs_reference_stored_min_db": float(np.min(stored_psnr)),
            "psnr_vs_reference_before_encoding_db": float(np.mean(pixel_psnr))}


def quality_table(files: list[Path], qualities=(75, 85, 90, 95, 100)) -> list[dict]:
    """Bytes per 256x256 image and PSNR against the unencoded pixels, per JPEG quality."""
    arrays = [resize_crop(open_rgb(f.read_bytes(), 256), 256) for f in files]
    rows = []
    for q in qualities:
        sizes, psnrs = [], []
        for a in arrays:
            data = encode_jpeg(a, q)
            sizes.append(len(data))
            psnrs.append(psnr(a, np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))))
        rows.append({"quality": q, "kb_per_image": float(np.mean(sizes)) / 1024, "psnr_db": float(np.mean(psnrs))})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=120, help="generated full-resolution images")
    ap.add_argument("--nette-images", type=int, default=2000, help="Imagenette images")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--quality", type=int, default=DEFAULT_QUALITY)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not IMAGENETTE.is_dir():
        sys.exit(f"needs the Imagenette photographs at {IMAGENETTE}")
    photos = sorted(IMAGENETTE.glob("train/*/*.JPEG"))
    nette = photos[:: max(1, len(photos) // args.nette_images)][: args.nette_images]
    photos = photos[:: max(1, len(photos) // args.images)][: args.images]
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    try:
        large = make_large(photos, args.images, tmp / "large_photos")
        results = [run_case("large", large, args.workers, args.quality, tmp),
                   run_case("imagenette", nette, args.workers, args.quality, tmp)]
        table = quality_table(sorted(IMAGENETTE.glob("val/*/*.JPEG"))[::40])
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'case':<12}{'images':>7}{'workers':>8}{'reference img/s':>17}{'ours img/s':>12}{'ratio':>7}"
          f"{'PSNR stored':>13}{'PSNR before encoding':>23}")
    for r in results:
        print(f"{r['case']:<12}{r['images']:>7}{r['workers']:>8}{r['reference_images_per_s']:>17.1f}"
              f"{r['images_per_s']:>12.1f}{r['ratio']:>6.2f}x{r['psnr_vs_reference_stored_db']:>11.1f} dB"
              f"{r['psnr_vs_reference_before_encoding_db']:>13.1f} dB")
    print(f"\n{'JPEG quality':<14}{'KiB/image':>10}{'PSNR':>10}")
    for row in table:
        print(f"{row['quality']:<14}{row['kb_per_image']:>10.1f}{row['psnr_db']:>8.1f} dB")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "quality_table": table,
                                               "cpu_count": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
