"""Does any step grow faster than the data? Every step of the pipeline on two ImageNet-shaped sets.

    python benchmarks/scale.py                                   # 1,000 classes, 12 and 48 images each (~10 min)
    python benchmarks/scale.py --per-class 3 12 --json s.json    # quicker
    python benchmarks/scale.py --classes 20 --per-class 1 4 --size 72 --quick   # seconds (the test's mode)

A synthetic set shaped like ImageNet's folders: one folder per ILSVRC-2012 WNID (1,000
by default), train/<wnid>/<wnid>_<i>.JPEG, and val with a quarter as many per class, small
photographs of random shapes. It is built at two sizes (--per-class SMALL LARGE, at least 4x
apart) and every step runs on each as a whole command in a fresh process, as a user runs it:

    prepare     alexnet prepare SRC OUT --size S
    open        opening the prepared set and both splits (manifest, index checksums, keys, labels)
    loader      one streaming training epoch of the loader with --workers processes (no network)
    train       one training epoch of a small network (width 0.25, 256-unit FC layers), streaming
    evaluate    alexnet evaluate ... --views 10 on the val split
    features    alexnet features on the train split
    neighbors   alexnet neighbors of 4 queries, from those features

For each: CPU seconds (the process and all it waited for: loader workers included), wall seconds,
peak memory (the sum of the RSS of the command's process tree, sampled every 20 ms; and the
largest RSS of any one worker process), and bytes written (the block-layer writes the kernel
accounts to the process tree, ru_oublock x 512), then the ratio LARGE / SMALL of each. Linear
growth gives at most the data's ratio (4x; start-up costs make it less); the target is every
step within 4.5x for 4x the data, and per-worker memory that does not grow with the split.
Run it alone: on a 2-core machine anything else computing skews the CPU times.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

STEPS = ("prepare", "open", "loader", "train", "evaluate", "features", "neighbors")


def make_set(root: Path, classes: int, per_class: int, seed: int = 0) -> Path:
    """ImageNet-shaped folders: train/<wnid>/<wnid>_<i>.JPEG (per_class each) and val (a quarter),
    photographs of a few random shapes, 96-160 x 72-120 px (kept small: the pipeline's growth with
    the number of images is measured, not the decoder's speed)."""
    from alexnet.data.classes import ilsvrc2012
    wnids = [c.id for c in ilsvrc2012()][:classes] if classes <= 1000 else [f"n{i:08d}" for i in range(classes)]
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class), ("val", max(1, per_class // 4))):
        for c, wnid in enumerate(wnids):
            folder = root / split / wnid
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                w, h = int(rng.integers(96, 161)), int(rng.integers(72, 121))
                img = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 256, 3)))
                d = ImageDraw.Draw(img)
                for _ in range(3):
                    x0, y0 = int(rng.integers(0, w - 8)), int(rng.integers(0, h - 8))
                    d.ellipse((x0, y0, x0 + int(rng.integers(8, w // 2)), y0 + int(rng.integers(8, h // 2))),
                              fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
                img.save(folder / f"{wnid}_{i}.JPEG", quality=85)
    return root


def _tree(pid: int) -> list[int]:
    """pid and all its descendants (from /proc's children lists)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo += [int(c) for c in f.read().split()]
        except OSError:
            pass
    return out


def _rss(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def measure(argv: list[str], log: Path) -> dict:
    """Run one command; its CPU seconds, wall seconds, peak tree RSS, largest worker RSS, bytes written."""
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, "TQDM_DISABLE": "1"})
    peak, worker_peak, done = [0], [0], threading.Event()

    def sample():
        while not done.is_set():
            pids = _tree(proc.pid)
            sizes = [_rss(p) for p in pids]
            peak[0] = max(peak[0], sum(sizes))
            worker_peak[0] = max([worker_peak[0]] + sizes[1:])  # every process but the command's own
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    _, status, usage = os.wait4(proc.pid, 0)
    done.set()
    sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:4])} ... failed ({proc.returncode}); see {log}:\n{log.read_text()[-2000:]}")
    return {"cpu_s": usage.ru_utime + usage.ru_stime, "wall_s": time.perf_counter() - t, "peak_rss_mb": peak[0] / 2**20,
            "worker_peak_rss_mb": worker_peak[0] / 2**20, "written_mb": usage.ru_oublock * 512 / 2**20}


OPEN = """
import sys
from alexnet.data.store import open_prepared
ds = open_prepared(sys.argv[1])
for name in ds.split_names:
    s = ds.split(name); s.keys(); s.labels
ds.stats
"""

LOADER = """
import sys
from alexnet.data.loader import Loader
from alexnet.data.store import open_prepared
ds = open_prepared(sys.argv[1]); split = ds.split("train")
loader = Loader(split, ds, batch_size=int(sys.argv[4]), train=True, crop=int(sys.argv[2]),
                workers=int(sys.argv[3]), scale=(0.35, 1), ratio=(0.75, 4 / 3))
n = sum(len(b.labels) for b in loader.epoch(0))
loader.close()
print(n, "images")
"""


def steps(src: Path, out: Path, work: Path, size: int, workers: int, images: int, py=sys.executable) -> dict:
    crop = min(size, max(64, size * 8 // 9 // 8 * 8))  # alexnet2012 needs 64 px at least
    batch = str(min(128, max(1, images // 2)))  # 128, or less for the test's handful of images
    m = ["-m", "alexnet"]
    fast = ["--device", "cpu", "--workers", str(workers)]
    train_out = work / "run"
    queries = [str(p) for p in sorted((src / "val").rglob("*.JPEG"))[:4]]
    commands = {
        "prepare": [py, *m, "prepare", str(src), str(out), "--size", str(size), "--workers", str(max(workers, 1))],
        "open": [py, "-c", OPEN, str(out)],
        "loader": [py, "-c", LOADER, str(out), str(crop), str(workers), batch],
        "train": [py, *m, "train", "--data", str(out), "--out", str(train_out), "--epochs", "1", "--batch-size", batch,
                  "--workers", str(workers), "--set", "model.width=0.25", "--set", "model.hidden=256",
                  "--set", f"data.crop={crop}", "--set", "data.resident=false", "--set", "eval.every=1000",
                  "--set", "schedule.warmup_epochs=0", "--device", "cpu"],
        "evaluate": [py, *m, "evaluate", str(train_out / "last.pt"), "--data", str(out), "--views", "10",
                     "--json", str(work / "eval.json"), *fast],
        "features": [py, *m, "features", str(train_out / "last.pt"), "--data", str(out), "--out",
                     str(work / "fc7.npy"), *fast],
        "neighbors": [py, *m, "neighbors", str(train_out / "last.pt"), "--data", str(out), "--features",
                      str(work / "fc7.npy"), "--query", *queries, "--k", "6", "--device", "cpu"],
    }
    return {name: measure(commands[name], work / f"{name}.log") for name in STEPS}


def table(results: dict) -> str:
    small, large = results["sizes"]
    a, b = results["runs"][str(small)], results["runs"][str(large)]
    head = (f"| step | CPU s ({small:,} / {large:,} images) | ratio | peak RSS MB (tree) | ratio | largest worker "
            f"RSS MB | ratio | written MB | ratio |\n|---|---|---|---|---|---|---|---|---|\n")
    rows = []
    for s in STEPS:
        cells = [s]
        for key in ("cpu_s", "peak_rss_mb", "worker_peak_rss_mb", "written_mb"):
            x, y = a[s][key], b[s][key]
            cells += [f"{x:.1f} / {y:.1f}", f"{y / x:.2f}x" if x > 0.05 else "-"]
        rows.append("| " + " | ".join(cells) + " |")
    return head + "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, nargs=2, default=[12, 48], metavar=("SMALL", "LARGE"))
    p.add_argument("--size", type=int, default=72, help="prepared size S (px; at least 64)")
    p.add_argument("--workers", type=int, default=2, help="loader workers of every step (default 2)")
    p.add_argument("--work", type=Path, help="folder for the sets and runs (default: a temporary one, removed)")
    p.add_argument("--json", type=Path)
    p.add_argument("--quick", action="store_true", help="allow sizes less than 4x apart (the test's mode)")
    args = p.parse_args()
    small, large = args.per_class
    if not args.quick and large < 4 * small:
        p.error("--per-class LARGE must be at least 4x SMALL (the comparison the target is stated for); --quick to allow less")
    work = args.work or Path(tempfile.mkdtemp(prefix="alexnet-scale-"))
    results = {"classes": args.classes, "per_class": args.per_class, "size": args.size, "workers": args.workers,
               "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d"), "sizes": [], "runs": {}}
    try:
        for per_class in (small, large):
            base = work / f"set{per_class}"
            t = time.perf_counter()
            src = make_set(base / "src", args.classes, per_class)
            n = args.classes * per_class
            print(f"{n:,} training images in {args.classes:,} classes made in {time.perf_counter() - t:.0f} s", flush=True)
            results["sizes"].append(n)
            results["runs"][str(n)] = run = steps(src, base / "prepared", base, args.size, args.workers, n)
            for name, r in run.items():
                print(f"  {name:<10} {r['cpu_s']:7.1f} CPU s {r['wall_s']:7.1f} s  peak {r['peak_rss_mb']:7.0f} MB  "
                      f"worker {r['worker_peak_rss_mb']:6.0f} MB  written {r['written_mb']:8.1f} MB", flush=True)
        a, b = (results["runs"][str(n)] for n in results["sizes"])
        results["ratio"] = {s: {k: (b[s][k] / a[s][k] if a[s][k] > 0 else None) for k in a[s]} for s in STEPS}
        print(table(results))
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
