"""Fine-tuning against training from scratch, for the same wall-clock budget, on real photos.

    python benchmarks/finetune.py                              # about 25 minutes on a 2-core CPU
    python benchmarks/finetune.py --pretrain-minutes 2 --minutes 0.5 --seeds 1 --json out.json
    python benchmarks/finetune.py --work DIR --minutes 0.25    # reuses DIR's pre-trained net and finished runs

1. Pre-train on five Imagenette classes (tench, English springer, cassette player, chain saw,
   church: all their ~4,700 training images) with a budget run of the `fast` recipe scaled to a CPU
   (the settings of benchmarks/imagenette_budget.py: 112 px crops of 144 px images, a half-width
   alexnet2012 with batch norm, 1024-unit FC layers).
2. On the other five classes (French horn, garbage truck, gas pump, golf ball, parachute) with only
   50 training images per class, train three ways for the same budget each, over N seeds:
   - scratch: the same network and recipe from random weights;
   - frozen features: --init the pre-trained checkpoint, --freeze features (conv1..conv5 fixed,
     batch-norm statistics included), a new head at 10x the lr;
   - end to end: --init the pre-trained checkpoint, everything trained, the new head at 10x.
3. Evaluate each on all validation images of those five classes (centre crop).
Every step is the `alexnet` command a user would run (printed in the JSON); the subsets are CSV
lists given to `alexnet prepare`. Figures: docs/benchmarks.md.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"
PRETRAIN = ["n01440764", "n02102040", "n02979186", "n03000684", "n03028079"]
TARGET = ["n03394916", "n03417042", "n03425413", "n03445777", "n03888257"]
RECIPE = ["--preset", "fast", "--set", "data.crop=112", "--set", "model.width=0.5", "--set", "model.hidden=1024",
          "--set", "model.dropout=0", "--set", "train.batch_size=64", "--set", "optim.lr_batch=128",
          "--set", "optim.weight_decay=5e-4", "--set", "schedule.warmup_epochs=1", "--set", "train.epochs=100000",
          "--set", "eval.every=100000", "--set", "train.precision=auto"]
WAYS = {
    "scratch": ["--set", "optim.lr=0.04"],
    "frozen features": ["--set", "optim.lr=0.01", "--freeze", "features", "--set", "optim.head_lr_mult=10"],
    "end to end": ["--set", "optim.lr=0.01", "--set", "optim.head_lr_mult=10"],
}


def alexnet(*args, quiet: bool = True) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "alexnet", *map(str, args)], check=True, env=env,
                   stdout=subprocess.DEVNULL if quiet else None)


def subset_csv(path: Path, classes: list[str], per_class: int | None, seed: int = 0) -> Path:
    """A CSV list (path,label,split) of Imagenette: all validation images of `classes`, and
    `per_class` training images of each (all when None), chosen at random with `seed`."""
    rng = random.Random(seed)
    rows = ["path,label,split"]
    for wnid in classes:
        train = sorted((IMAGENETTE / "train" / wnid).iterdir())
        if per_class is not None:
            train = sorted(rng.sample(train, per_class))
        rows += [f"{p},{wnid},train" for p in train]
        rows += [f"{p},{wnid},val" for p in sorted((IMAGENETTE / "val" / wnid).iterdir())]
    path.write_text("\n".join(rows) + "\n")
    return path


def run(data: Path, out: Path, minutes: float, seed: int, extra: list[str]) -> dict:
    """One training run; a finished one (summary.json) is read, an interrupted one resumes."""
    if not (out / "summary.json").is_file():
        alexnet("train", "--data", data, "--out", out, *RECIPE, *extra, "--set", f"train.budget_minutes={minutes}",
                "--set", f"train.seed={seed}")
    s = json.loads((out / "summary.json").read_text())
    return {"top1": s["top1"], "top5": s["top5"], "epochs": s["epochs_done"], "images_per_s": s["images_per_s"],
            "training_time_s": s["training_time_s"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain-minutes", type=float, default=8.0)
    ap.add_argument("--minutes", type=float, default=1.5, help="training budget of each way and seed")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--per-class", type=int, default=50, help="training images per target class")
    ap.add_argument("--work", help="folder for the data and runs (default: a temporary one, kept)")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not IMAGENETTE.is_dir():
        sys.exit(f"needs the Imagenette photographs at {IMAGENETTE}")
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-finetune-"))
    work.mkdir(parents=True, exist_ok=True)
    pre, target = work / "pretrain", work / "target"
    alexnet("prepare", subset_csv(work / "pretrain.csv", PRETRAIN, None), pre, "--size", "144")
    alexnet("prepare", subset_csv(work / "target.csv", TARGET, args.per_class), target, "--size", "144")
    if not (work / "pretrained" / "summary.json").is_file():
        run(pre, work / "pretrained", args.pretrain_minutes, 0, ["--set", "optim.lr=0.04"])
    source = json.loads((work / "pretrained" / "summary.json").read_text())
    ckpt = work / "pretrained" / "best.pt"
    results = {}
    for way, extra in WAYS.items():
        init = [] if way == "scratch" else ["--init", ckpt]
        results[way] = [run(target, work / f"{way.replace(' ', '-')}-{args.minutes:g}min-seed{seed}", args.minutes, seed,
                            init + extra)
                        for seed in range(args.seeds)]
    report = {"pretrain": {"classes": PRETRAIN, "minutes": args.pretrain_minutes, "top1": source["top1"],
                           "epochs": source["epochs_done"]},
              "target": {"classes": TARGET, "train_images_per_class": args.per_class, "minutes_each": args.minutes,
                         "seeds": args.seeds},
              "cores": os.cpu_count(), "recipe": "alexnet train " + " ".join(RECIPE),
              "ways": {w: {"command_extra": " ".join(map(str, WAYS[w])), "runs": r,
                           "top1_mean": statistics.mean(x["top1"] for x in r),
                           "top1_std": statistics.stdev([x["top1"] for x in r]) if len(r) > 1 else 0.0,
                           "epochs_mean": statistics.mean(x["epochs"] for x in r)} for w, r in results.items()}}
    print(f"pre-trained on 5 classes for {args.pretrain_minutes:g} min: top-1 {100 * source['top1']:.1f}% "
          f"({source['epochs_done']:.1f} epochs)")
    print(f"target: 5 other classes, {args.per_class} training images each, {args.minutes:g} min per run, "
          f"{args.seeds} seed(s)")
    for way, r in report["ways"].items():
        print(f"  {way:<16} top-1 {100 * r['top1_mean']:5.1f}% +- {100 * r['top1_std']:.1f}  "
              f"({r['epochs_mean']:.0f} epochs)")
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
