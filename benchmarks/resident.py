"""The resident data path against streaming, side by side in one run.

    python benchmarks/resident.py                       # ~25 minutes on 2 cores: both parts
    python benchmarks/resident.py --minutes 2 --json out.json
    python benchmarks/resident.py --data prepared/imagenette144 --skip-budget

Part 1, the loader alone (alexnet.feed.bench_feed, as `alexnet bench feed`): Imagenette's 9,469
training photos prepared at 144 px, batches of 128 at 112 px crops, 2 epochs, a consumer that
does nothing: the resident split (decoded once; batches gathered and augmented in this process by
one thread per core) against the streaming loader (worker processes decode and augment, one per
core), in images/s after warm-up and CPU seconds per 1,000 images; for the budget recipe's §4.1
crops and for the fast preset's random-resized crops. Then the fast recipe's step fed by the
resident loader against the same step alone.

Part 2, training: the documented Imagenette budget recipe (benchmarks/imagenette_budget.py's OURS,
docs/benchmarks.md) for the same wall-clock minutes, once with data.resident=true and once with
data.resident=false (the loader's default workers), in alternating order when --rounds > 1:
training images/s, epochs, top-1 on the 3,925 validation photos (centre crop), and the whole
command's wall time. Run it alone: on 2 cores anything else running slows both sides.
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

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from imagenette_budget import IMAGENETTE, OURS  # noqa: E402

from alexnet.feed import bench_feed, print_feed  # noqa: E402


def train_once(data: Path, out: Path, minutes: float, resident: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "alexnet", "train", "--data", str(data), "--out", str(out), *OURS,
           "--set", f"train.budget_minutes={minutes}", "--set", f"data.resident={resident}"]
    t = time.time()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    s = json.loads((out / "summary.json").read_text())
    start = [line for line in proc.stdout.splitlines() if line.startswith(("data:", "  train:", "  val:"))]
    return {"data.resident": resident, "top1": s["top1"], "top5": s["top5"], "images_per_s": s["images_per_s"],
            "epochs": s["epochs_done"], "training_time_s": s["training_time_s"], "command_wall_s": time.time() - t,
            "precision": s["precision"], "start_up": start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", help="Imagenette prepared at 144 px (default: prepared here into a temporary folder)")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget per side (part 2)")
    ap.add_argument("--rounds", type=int, default=1, help="training runs per side, alternating (part 2)")
    ap.add_argument("--skip-budget", action="store_true", help="part 1 only")
    ap.add_argument("--json", help="write all figures here")
    args = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench-resident-"))
    try:
        data = Path(args.data) if args.data else tmp / "imagenette144"
        if not args.data:
            if not IMAGENETTE.is_dir():
                sys.exit(f"needs the Imagenette photographs at {IMAGENETTE} (or --data PREPARED)")
            subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(IMAGENETTE), str(data), "--size", "144"],
                           check=True, stdout=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)})
        result = {"cores": os.cpu_count(), "data": str(data), "loader": {}}
        for name, scale in (("§4.1 crops (the budget recipe)", (1.0, 1.0)), ("random-resized crops", (0.35, 1.0))):
            print(f"\n== loader alone, {name}")
            r = bench_feed(str(data), batch=128, crop=112, workers=os.cpu_count(), epochs=2, steps=10, scale=scale)
            print_feed(r)
            result["loader"][name] = r
        if not args.skip_budget:
            runs = []
            for k in range(args.rounds):
                for resident in (("true", "false") if k % 2 == 0 else ("false", "true")):
                    print(f"\n== training {args.minutes:g} min, data.resident={resident}", flush=True)
                    r = train_once(data, tmp / f"run-{resident}-{k}", args.minutes, resident)
                    print(f"top-1 {100 * r['top1']:.2f}%, {r['images_per_s']:.0f} img/s, {r['epochs']} epochs, "
                          f"command {r['command_wall_s']:.0f} s")
                    runs.append(r)
            result["budget"] = {"minutes": args.minutes, "runs": runs,
                                "command": "alexnet train --data PREPARED " + " ".join(OURS)
                                + f" --set train.budget_minutes={args.minutes:g} --set data.resident=true|false"}
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2, default=str) + "\n")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
