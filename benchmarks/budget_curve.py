"""Top-1 against minutes: `alexnet train --minutes M` against the documented recipe it replaces.

    python benchmarks/budget_curve.py --json out.json                      # 2, 5, 10, 20 min each (~75 min)
    python benchmarks/budget_curve.py --minutes 10 --which ours --seeds 0 1 --ablate --json abl.json
    python benchmarks/budget_curve.py --minutes 20 --which ours --size 192 --json s192.json   # prepared at 192 px
    python benchmarks/budget_curve.py --minutes 10 --which ours --seeds 0 --ablate --ablate-only --json abl.json
    python benchmarks/budget_curve.py --plot out.json --png docs/img/budget-curve.png   # the figure only

Ours: `alexnet train --data P160 --minutes M` on Imagenette prepared at 160 px; M is the wall time
of the whole command (start-up, decoding, training, the final evaluation), which this script
measures. Reference: today's documented recipe (benchmarks/imagenette_budget.py's OURS flags:
`--preset fast`, 112-px §4.1 crops of 144-px images, half width, 1024-unit FC layers, no dropout,
lr 0.04 per 128, centre crop) with train.budget_minutes=M, i.e. M minutes of training alone, so the
reference gets its start-up and final evaluation on top: the comparison favours it. Preparing the
data (`alexnet prepare`, about 10 s each) is done once and not counted. Both are evaluated on
Imagenette's 3,925 validation photos.

--ablate: each training-time part of the recipe off in turn at the same budget (progressive
resizing, random-resized crops, label smoothing), plus the evaluation-time parts (the moving
average, the reflection, eval.crop) measured on each full-recipe run's own weights. Run it alone:
on a 2-core machine anything else computing takes time from the budget.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from imagenette_budget import IMAGENETTE, OURS as DOCUMENTED  # noqa: E402

ABLATIONS = {  # the recipe's training-time parts, each off in turn
    "no progressive resizing": ["--set", "data.progressive_from=none"],
    "§4.1 crops (no random-resized crops)": ["--set", "data.scale=1,1", "--set", "data.ratio=1,1"],
    "no label smoothing": ["--set", "optim.label_smoothing=0"],
}


def prepared(size: int, work: Path) -> Path:
    out = work / f"imagenette{size}"
    if not (out / "manifest.json").is_file():
        t = time.time()
        subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(IMAGENETTE), str(out), "--size", str(size)],
                       check=True, stdout=subprocess.DEVNULL)
        print(f"prepared {out} in {time.time() - t:.0f} s (not counted)", flush=True)
    return out


def train(args: list[str], out: Path, log: Path) -> dict:
    """One `alexnet train` command in a new run folder (an existing one would be resumed), timed whole;
    its summary.json plus the wall time."""
    if out.exists():
        shutil.rmtree(out)
    t = time.time()
    with open(log, "w") as f:
        rc = subprocess.run([sys.executable, "-m", "alexnet", "train", *args, "--out", str(out)],
                            stdout=f, stderr=subprocess.STDOUT).returncode
    wall = time.time() - t
    if rc != 0:
        raise RuntimeError(f"train failed ({rc}); see {log}")
    s = json.loads((out / "summary.json").read_text())
    return {"top1": s["top1"], "top5": s["top5"], "command_s": wall, "epochs": s["epochs_done"],
            "images_per_s": s["images_per_s"], "training_s": s["training_time_s"], "raw": s.get("raw"),
            "weights": s.get("weights"), "eval_crop": s.get("eval_crop"), "train_crop": s.get("train_crop"),
            "views": s.get("views"), "run": str(out)}


def evaluate(ckpt: Path, data: Path, views: int, crop: int) -> float:
    subprocess.run([sys.executable, "-m", "alexnet", "evaluate", str(ckpt), "--data", str(data), "--views",
                    str(views), "--crop", str(crop), "--json", str(ckpt.with_suffix(f".{views}.{crop}.json"))],
                   capture_output=True, text=True, check=True)
    return json.loads(ckpt.with_suffix(f".{views}.{crop}.json").read_text())["top1"]


def evaluation_parts(run: dict, data: Path) -> dict:
    """The evaluation-time parts of a full-recipe run, on its own final weights: the moving average
    against the raw weights, 2 views against 1, eval.crop against the training crop."""
    state = torch.load(Path(run["run"]) / "last.pt", map_location="cpu", weights_only=False)
    ema = Path(run["run"]) / "ema-final.pt"
    raw = Path(run["run"]) / "raw-final.pt"
    for path, weights in ((ema, state["ema"]), (raw, state["model"])):
        torch.save({**{k: v for k, v in state.items() if k not in ("ema", "optimizer")}, "model": weights}, path)
    big, small = run["eval_crop"], run["train_crop"]
    return {"recipe (ema, 2 views, eval.crop)": evaluate(ema, data, 2, big),
            "raw weights instead of the moving average": evaluate(raw, data, 2, big),
            "1 view instead of 2": evaluate(ema, data, 1, big),
            f"evaluated at the training crop ({small} px)": evaluate(ema, data, 2, small)}


def plot(results: dict, png: Path) -> None:
    from alexnet.plots import pyplot, save

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    styles = {"ours": ("alexnet train --minutes M", "o", "-"),
              "reference": ("documented recipe (train.budget_minutes=M)", "s", "-")}
    names = list(styles) + sorted({r["recipe"] for r in results.get("runs", [])} - set(styles))
    for name in names:  # any other recipe name (e.g. an earlier rule's runs) dashed
        label, marker, line = styles.get(name, (name, "^", "--"))
        pts = sorted((r["minutes"], 100 * r["top1"]) for r in results.get("runs", []) if r["recipe"] == name
                     and r.get("seed", 0) == 0 and not r.get("ablation"))
        if pts:
            ax.plot(*zip(*pts), marker=marker, linestyle=line, label=label)
            for m, t in pts:
                ax.annotate(f"{t:.1f}", (m, t), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=8)
    ax.set(xlabel="minutes (ours: the whole command; reference: training alone)", ylabel="top-1 (%), 3,925 val photos",
           title="Imagenette on a 2-core CPU: top-1 against the clock")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    png.parent.mkdir(parents=True, exist_ok=True)
    save(fig, png, dpi=120)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, nargs="+", default=[10, 20, 5, 2])
    p.add_argument("--which", nargs="+", default=["ours", "reference"], choices=["ours", "reference"])
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--ablate", action="store_true", help="each training-time part off in turn (ours only)")
    p.add_argument("--parts", type=int, nargs="+", help="with --ablate: only these parts (0-based, in ABLATIONS order)")
    p.add_argument("--ablate-only", action="store_true", help="with --ablate: not the full recipe's runs (done before)")
    p.add_argument("--size", type=int, default=160, help="the size ours is prepared at (px, shorter side; default 160)")
    p.add_argument("--work", type=Path, default=None, help="folder for the prepared data and runs (default: a temp dir)")
    p.add_argument("--json", type=Path, help="results, rewritten after every run")
    p.add_argument("--plot", type=Path, help="only draw the figure from this results JSON")
    p.add_argument("--png", type=Path, default=ROOT / "docs" / "img" / "budget-curve.png")
    args = p.parse_args()
    if args.plot:
        plot(json.loads(args.plot.read_text()), args.png)
        print(f"wrote {args.png}")
        return 0
    if not IMAGENETTE.is_dir():
        print(f"skipped: {IMAGENETTE} not found")
        return 0
    work = args.work or Path(tempfile.mkdtemp(prefix="budget-curve-"))
    work.mkdir(parents=True, exist_ok=True)
    data = {"ours": prepared(args.size, work), "reference": prepared(144, work)}
    results = {"machine": os.uname().nodename, "cores": os.cpu_count(), "torch": torch.__version__,
               "date": time.strftime("%Y-%m-%d"), "runs": []}
    jobs = []
    for m in args.minutes:
        for seed in args.seeds:
            for which in ([] if args.ablate and args.ablate_only else args.which):
                jobs.append((which, m, seed, None))
            if args.ablate:
                jobs += [("ours", m, seed, name) for i, name in enumerate(ABLATIONS)
                         if args.parts is None or i in args.parts]
    for which, m, seed, ablation in jobs:
        tag = f"{which}-{m:g}min-seed{seed}" + (f"-S{args.size}" if which == "ours" and args.size != 160 else "") + (f"-{list(ABLATIONS).index(ablation)}" if ablation else "")
        flags = (["--minutes", f"{m:g}"] + (ABLATIONS[ablation] if ablation else []) if which == "ours" else
                 DOCUMENTED + ["--set", f"train.budget_minutes={m:g}"])
        r = train(["--data", str(data[which]), "--seed", str(seed), *flags], work / tag, work / f"{tag}.log")
        r.update(recipe=which, minutes=m, seed=seed, ablation=ablation, size=args.size if which == "ours" else 144)
        if which == "ours" and not ablation:
            r["evaluation_parts"] = evaluation_parts(r, data[which])
        results["runs"].append(r)
        print(f"{tag}: top-1 {100 * r['top1']:.2f}% in {r['command_s']:.0f} s (command), {r['epochs']:.1f} epochs, "
              f"{r['images_per_s']:.0f} img/s" + (f"; {r.get('evaluation_parts')}" if r.get("evaluation_parts") else ""),
              flush=True)
        if args.json:
            args.json.write_text(json.dumps(results, indent=2) + "\n")
    if args.json:
        plot(results, args.png)
    return 0


if __name__ == "__main__":
    sys.exit(main())
