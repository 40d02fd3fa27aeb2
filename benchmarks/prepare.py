"""Benchmark `alexnet prepare` against the straightforward Pillow loop: whole commands, side by side.

    python benchmarks/prepare.py                           # ImageNet-sized photos + large photos, 2 workers
    python benchmarks/prepare.py --workers 1 --rounds 5 --json out.json
    python benchmarks/prepare.py --cases imagenet --repeat 10 --profile       # 3,000 photos
    python benchmarks/prepare.py --cases imagenet --repeat 10 --decoder pillow --resampler pillow

Inputs (paper.md §2; house style 17: the photo sizes users have):
- "imagenet": the 300 ImageNet photographs at their original size in ../shared/data/imagenet-photos
  (median 500x375, ~105 KB; 14 of 300 with a shorter side >= 512, where the DCT-domain shortcut
  applies). `--repeat R` lists each photo R times under other names, for a longer steady state.
- "large": full-resolution JPEGs generated here from those photos (upscaled to camera sizes,
  1600x1200 .. 3264x2448, with 1/f noise texture added for fine detail, saved at quality 92).
- "imagenette" (only when named): the 224x224 Imagenette copies in ../shared/data/imagenette.

Both sides run as whole commands in fresh processes with the same number of worker processes:
the reference is benchmarks/pillow_loop.py (open, convert("RGB"), LANCZOS shorter side to 256,
centre crop, save at the same quality, in a multiprocessing Pool); ours is `python -m alexnet
prepare SRC OUT --workers N` (listing, decoding, resizing, encoding, tar shards with fsync and
SHA-256, index, training statistics, manifest). The sides alternate for `--rounds` rounds and the
fastest time of each counts (the machine may be shared; every time is in the JSON).

Fidelity: PSNR of each stored image against the reference's stored image, both decoded (target
>= 35 dB); photos with an EXIF orientation are left out of it and counted (ours turns them upright,
the reference does not). Also the PSNR of our pixels against the reference's before either is
JPEG-encoded. `--profile` adds where the time goes in one process: per-image milliseconds of
reading, decoding, resizing, encoding, statistics, hashing and fsync, the start-up of the command,
and the reference's work on each photo timed right after ours (photo by photo, so that the VM's
drifting speed slows both alike: the steadiest per-photo ratio this machine gives). Last, a JPEG-quality table: bytes per stored image and PSNR against the unencoded pixels.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alexnet.data import codecs  # noqa: E402
from alexnet.data.decode import encode_jpeg, open_rgb, resize_crop  # noqa: E402
from alexnet.data.store import open_prepared  # noqa: E402
from alexnet.data.shards import DEFAULT_QUALITY, Stats  # noqa: E402

SHARED = ROOT.parent / "shared" / "data"
PHOTOS = SHARED / "imagenet-photos"
IMAGENETTE = SHARED / "imagenette"
SIZES = [(1600, 1200), (2048, 1536), (3264, 2448), (1200, 1800), (2560, 1440)]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}


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


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def pooled(psnrs: list[float]) -> float:
    """The PSNR of all images together (of their mean squared error); inf when all are identical."""
    mse = np.mean([255.0 ** 2 / 10 ** (p / 10) for p in psnrs])
    return float("inf") if mse == 0 else float(10 * np.log10(255.0 ** 2 / mse))


def reference_pixels(data: bytes, size: int = 256) -> np.ndarray:
    """The reference loop's pixels before encoding (as benchmarks/pillow_loop.py computes them)."""
    img = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    img = img.resize((max(size, round(w * s)), max(size, round(h * s))), Image.Resampling.LANCZOS)
    left, top = (img.width - size) // 2, (img.height - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size)))


def rotated(path: Path) -> bool:
    return Image.open(path).getexif().get(0x0112, 1) != 1


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall-clock seconds, CPU seconds of the command and all its processes)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.perf_counter()
    subprocess.run(cmd, check=True, env=ENV, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def run_case(name: str, files: list[Path], workers: int, quality: int, rounds: int, tmp: Path,
             codec_args: tuple[str, ...] = ()) -> dict:
    # an ImageFolder of one class, so that `alexnet prepare` reads exactly these files, in this order
    src = tmp / f"{name}_src" / "train" / "c0"
    src.mkdir(parents=True)
    linked = []
    for i, f in enumerate(files):
        linked.append(src / f"{i:06d}{f.suffix}")
        os.symlink(f.resolve(), linked[-1])
    listed = tmp / f"{name}_files.txt"
    listed.write_text("".join(f"{p}\n" for p in linked))
    ref_out, ours_out = tmp / f"{name}_ref", tmp / f"{name}_ours"
    ref_cmd = [sys.executable, str(ROOT / "benchmarks" / "pillow_loop.py"), str(listed), str(ref_out),
               "--workers", str(workers), "--quality", str(quality)]
    ours_cmd = [sys.executable, "-m", "alexnet", "prepare", str(src.parent.parent), str(ours_out),
                "--workers", str(workers), "--quality", str(quality), *codec_args]
    ref_s, ours_s, ref_cpu, ours_cpu = [], [], [], []
    for r in range(rounds):  # alternate which side goes first
        for side in ((0, 1) if r % 2 == 0 else (1, 0)):
            shutil.rmtree(ours_out if side else ref_out, ignore_errors=True)
            wall, cpu = timed(ours_cmd if side else ref_cmd)
            (ours_s if side else ref_s).append(wall)
            (ours_cpu if side else ref_cpu).append(cpu)

    ds = open_prepared(ours_out)
    split, chosen = ds.split("train"), ds.manifest["options"]
    pixels = codecs.Pixels(256, decoder=chosen.get("decoder", "pillow"), resampler=chosen.get("resampler", "pillow"))
    stored, before, left_out = [], [], 0
    for i, key in enumerate(split.keys()):
        n = int(Path(key).stem)
        if rotated(linked[n]):
            left_out += 1
            continue
        ours = np.asarray(Image.open(io.BytesIO(split[i][0])).convert("RGB"))
        stored.append(psnr(ours, np.asarray(Image.open(ref_out / f"{n:06d}.jpg").convert("RGB"))))
        data = linked[n].read_bytes()
        before.append(psnr(pixels.load(data), reference_pixels(data)))
    n = len(files)
    return {"case": name, "images": n, "workers": workers, "quality": quality, "rounds": rounds,
            "decoder": pixels.decoder, "resampler": pixels.resampler,
            "reference_s": ref_s, "ours_s": ours_s,
            "reference_images_per_s": n / min(ref_s), "images_per_s": n / min(ours_s),
            "ratio": min(ref_s) / min(ours_s), "reference_cpu_s": ref_cpu, "ours_cpu_s": ours_cpu,
            "cpu_ratio": min(ref_cpu) / min(ours_cpu),
            "psnr_vs_reference_stored_db": pooled(stored),
            "psnr_vs_reference_stored_median_db": float(np.median(stored)),
            "psnr_vs_reference_stored_min_db": float(np.min(stored)),
            "psnr_vs_reference_before_encoding_db": pooled(before),
            "psnr_left_out_exif_rotated": left_out}


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
        rows.append({"quality": q, "kb_per_image": float(np.mean(sizes)) / 1024, "psnr_db": pooled(psnrs)})
    return rows


def profile_stages(files: list[Path], tmp: Path, quality: int, decoder: str = "pillow",
                   resampler: str = "pillow") -> dict:
    """Per-image milliseconds of each stage of `alexnet prepare`'s work with this decoder and
    resampler (alexnet.data.codecs), in this one process."""
    import threadpoolctl

    threadpoolctl.threadpool_limits(1)  # as in prepare's workers
    if resampler == "torch":
        import torch

        torch.set_num_threads(1)
    pix = codecs.Pixels(256, decoder=decoder, resampler=resampler)
    stats = Stats(256)
    t = dict.fromkeys(("read", "decode", "resize", "encode", "statistics", "sha256"), 0.0)
    payloads, reference = [], 0.0
    for f in files:
        c = time.perf_counter()
        data = f.read_bytes()
        c1 = time.perf_counter()
        if decoder == "simplejpeg" and (img := codecs.decode_simplejpeg(data, 256)) is not None:
            pass
        else:
            img = open_rgb(data, 256)
        c2 = time.perf_counter()
        arr = codecs.resize_crop_torch(np.asarray(img), 256) if resampler == "torch" else resize_crop(img, 256)
        c3 = time.perf_counter()
        payloads.append(pix.encode(arr, quality))
        c4 = time.perf_counter()
        stats.add(arr)
        c5 = time.perf_counter()
        hashlib.sha256(payloads[-1]).digest()
        c6 = time.perf_counter()
        for k, a, b in (("read", c, c1), ("decode", c1, c2), ("resize", c2, c3), ("encode", c3, c4),
                        ("statistics", c4, c5), ("sha256", c5, c6)):
            t[k] += b - a
        # the reference's work on the same bytes, right after ours: photo by photo, so that a VM
        # whose speed drifts between runs (up to 1.4x here) slows both sides alike
        c7 = time.perf_counter()
        encode_jpeg(reference_pixels(data), quality)
        reference += time.perf_counter() - c7
    ms = {k: 1000 * v / len(files) for k, v in t.items()}
    ours_ms = sum(ms.values())
    blob = tmp / "fsync-probe"
    c = time.perf_counter()
    with open(blob, "wb") as fh:  # one shard's worth of output, written and fsynced
        fh.write(b"".join(payloads))
        fh.flush()
        os.fsync(fh.fileno())
    ms["write+fsync"] = 1000 * (time.perf_counter() - c) / len(files)
    one = tmp / f"startup_src_{decoder}" / "train" / "c0"
    one.mkdir(parents=True)
    os.symlink(files[0].resolve(), one / ("x" + files[0].suffix))
    startup = min(timed([sys.executable, "-m", "alexnet", "prepare", str(one.parent.parent),
                         str(tmp / f"startup{decoder}{i}"), "--workers", "1", "--decoder", decoder,
                         "--resampler", resampler])[0] for i in range(3))
    bare = min(timed([sys.executable, "-c", "import PIL.Image, multiprocessing"])[0] for _ in range(3))
    return {"decoder": decoder, "resampler": resampler, "ms_per_image": ms, "startup_one_image_s": startup, "python_with_pillow_s": bare,
            "interleaved": {"ours_ms_per_image": ours_ms, "reference_ms_per_image": 1000 * reference / len(files),
                            "ratio": 1000 * reference / len(files) / ours_ms}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", default="imagenet,large", help="comma-separated: imagenet, large, imagenette")
    ap.add_argument("--repeat", type=int, default=1, help="list each ImageNet photo this many times")
    ap.add_argument("--images", type=int, default=100, help="generated large photos")
    ap.add_argument("--nette-images", type=int, default=2000, help="Imagenette images")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--rounds", type=int, default=3, help="timed runs per side, alternating")
    ap.add_argument("--quality", type=int, default=DEFAULT_QUALITY)
    ap.add_argument("--decoder", default="auto", help="ours: alexnet prepare --decoder (default: its own choice)")
    ap.add_argument("--resampler", default="auto", help="ours: alexnet prepare --resampler (default: its own choice)")
    ap.add_argument("--profile", action="store_true", help="also time each stage on the ImageNet photos")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    # Byte-compile ours as `pip install` does: where PYTHONDONTWRITEBYTECODE is set (this VM), an
    # editable checkout is otherwise compiled from source on every run (~50 ms), which no installed
    # user pays. The reference is one small script, and Pillow's site-packages are compiled.
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(ROOT / "alexnet")], check=True)
    cases = args.cases.split(",")
    photos = sorted(PHOTOS.glob("train/*/*.JPEG"))
    if not photos:
        sys.exit(f"needs the ImageNet photographs at {PHOTOS}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-prepare-"))
    results, profile = [], None
    try:
        for case in cases:
            if case == "imagenet":
                files = photos * args.repeat
            elif case == "large":
                files = make_large(photos[:: max(1, len(photos) // args.images)], args.images, tmp / "large_photos")
            elif case == "imagenette":
                nette = sorted(IMAGENETTE.glob("train/*/*.JPEG"))
                if not nette:
                    print(f"skipping imagenette: {IMAGENETTE} is not here", file=sys.stderr)
                    continue
                files = nette[:: max(1, len(nette) // args.nette_images)][: args.nette_images]
            else:
                sys.exit(f"unknown case {case!r}")
            results.append(run_case(case, files, args.workers, args.quality, args.rounds, tmp,
                                    ("--decoder", args.decoder, "--resampler", args.resampler)))
        if args.profile:
            profile = [profile_stages(photos, tmp, args.quality, *pair)
                       for pair in (("pillow", "pillow"), ("simplejpeg", "torch"))]
        table = quality_table(photos)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{'case':<12}{'images':>7}{'workers':>8}{'reference img/s':>17}{'ours img/s':>12}{'ratio':>8}"
          f"{'CPU-time ratio':>16}{'PSNR stored (median)':>24}{'PSNR before encoding':>22}")
    for r in results:
        print(f"{r['case']:<12}{r['images']:>7}{r['workers']:>8}{r['reference_images_per_s']:>17.1f}"
              f"{r['images_per_s']:>12.1f}{r['ratio']:>7.2f}x{r['cpu_ratio']:>15.2f}x"
              f"{r['psnr_vs_reference_stored_db']:>12.1f} dB ({r['psnr_vs_reference_stored_median_db']:.1f})"
              f"{r['psnr_vs_reference_before_encoding_db']:>13.1f} dB")
    for r in results:
        print(f"  {r['case']}: decoder {r['decoder']}, resampler {r['resampler']} (prepare's choice); wall reference {', '.join(f'{s:.2f}' for s in r['reference_s'])} s, "
              f"ours {', '.join(f'{s:.2f}' for s in r['ours_s'])} s; CPU reference "
              f"{', '.join(f'{s:.2f}' for s in r['reference_cpu_s'])} s, ours {', '.join(f'{s:.2f}' for s in r['ours_cpu_s'])} s; "
              f"worst PSNR {r['psnr_vs_reference_stored_min_db']:.1f} dB; "
              f"{r['psnr_left_out_exif_rotated']} EXIF-rotated photo(s) left out of PSNR")
    print(f"\n{'JPEG quality':<14}{'KiB/image':>10}{'PSNR':>10}   (the ImageNet photos at 256x256)")
    for row in table:
        print(f"{row['quality']:<14}{row['kb_per_image']:>10.1f}{row['psnr_db']:>8.1f} dB")
    for p in profile or []:
        print(f"\nwhere the time goes, decoder {p['decoder']}, resampler {p['resampler']} (ImageNet photos, one "
              f"process, ms per image): " + ", ".join(f"{k} {v:.2f}" for k, v in p["ms_per_image"].items()))
        print(f"start-up: `alexnet prepare` of one image {p['startup_one_image_s']:.2f} s; "
              f"python with Pillow {p['python_with_pillow_s']:.2f} s")
        il = p["interleaved"]
        print(f"per photo, the two sides alternating photo by photo in one process: ours "
              f"{il['ours_ms_per_image']:.2f} ms, reference {il['reference_ms_per_image']:.2f} ms: {il['ratio']:.2f}x")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "profile": profile, "quality_table": table,
                                               "cpu_count": os.cpu_count()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
