"""Imagenette under the same wall-clock budget: ours against torchvision's reference recipe.

    python benchmarks/imagenette_budget.py                  # 20 minutes each side (about 45 min in all)
    python benchmarks/imagenette_budget.py --minutes 5 --json out.json

Reference (what a user would run): torchvision.datasets.ImageFolder on the Imagenette photos +
Pillow + Compose([RandomResizedCrop(224), RandomHorizontalFlip(), ToTensor(), Normalize(...)]),
torchvision.models.alexnet(num_classes=10) with its default init, SGD lr 0.01, momentum 0.9,
weight decay 1e-4, batch 128, fp32, a DataLoader with one worker per core; it trains until the budget
is spent, then is evaluated with Resize(256) + CenterCrop(224).

Ours: `alexnet prepare` (size 144) then `alexnet train --preset fast` scaled to a 2-core CPU (the
OURS overrides below: 112 px crops, a half-width alexnet2012 with batch norm, 1024-unit FC layers
without dropout, batch 128, channels_last, precision auto: bf16 autocast on CPUs with native bf16
(AVX512-BF16/AMX), fp32 on the others, where emulated bf16 is ~60x slower), with train.budget_minutes so
that the linear decay ends exactly when the time is up; evaluated on the centre crop. The budget
covers training only on both sides (not the one-time prepare, not the final evaluation).
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
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
IMAGENETTE = ROOT.parent / "shared" / "data" / "imagenette"
OURS = ["--preset", "fast", "--set", "data.crop=112", "--set", "model.width=0.5", "--set", "model.hidden=1024",
        "--set", "model.dropout=0", "--set", "train.batch_size=128", "--set", "optim.lr=0.04",
        "--set", "optim.lr_batch=128", "--set", "optim.weight_decay=5e-4", "--set", "schedule.warmup_epochs=1",
        "--set", "train.epochs=1000", "--set", "eval.every=1000", "--set", "train.precision=auto"]


def reference(minutes: float, workers: int, batch: int = 128) -> dict:
    import torchvision
    from torchvision import transforms as T

    torch.manual_seed(0)
    norm = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    train = torchvision.datasets.ImageFolder(str(IMAGENETTE / "train"), T.Compose(
        [T.RandomResizedCrop(224), T.RandomHorizontalFlip(), T.ToTensor(), norm]))
    val = torchvision.datasets.ImageFolder(str(IMAGENETTE / "val"), T.Compose(
        [T.Resize(256), T.CenterCrop(224), T.ToTensor(), norm]))
    model = torchvision.models.alexnet(num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    loader = torch.utils.data.DataLoader(train, batch_size=batch, shuffle=True, num_workers=workers, drop_last=True)
    start, seen, epochs, budget = time.time(), 0, 0, 60 * minutes
    model.train()
    while time.time() - start < budget:
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            seen += len(y)
            if time.time() - start >= budget:
                break
        else:
            epochs += 1
    trained = time.time() - start
    model.eval()
    right = n = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(val, batch_size=256, num_workers=workers):
            right += int((model(x).argmax(1) == y).sum())
            n += len(y)
    return {"top1": right / n, "n_images": n, "training_time_s": trained, "images_per_s": seen / trained,
            "epochs": seen / len(train)}


def ours(minutes: float, tmp: Path) -> dict:
    prepared = tmp / "imagenette144"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(IMAGENETTE), str(prepared), "--size", "144"],
                   check=True, env=env, stdout=subprocess.DEVNULL)
    out = tmp / "run"
    cmd = [sys.executable, "-m", "alexnet", "train", "--data", str(prepared), "--out", str(out), *OURS,
           "--set", f"train.budget_minutes={minutes}"]
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    s = json.loads((out / "summary.json").read_text())
    return {"top1": s["top1"], "training_time_s": s["training_time_s"], "images_per_s": s["images_per_s"],
            "precision": s["precision"],
            "epochs": s["epochs_done"], "command": "alexnet train --data PREPARED " + " ".join(OURS)
            + f" --set train.budget_minutes={minutes}"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--minutes", type=float, default=20.0, help="training budget per side")
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if not IMAGENETTE.is_dir():
        sys.exit(f"needs the Imagenette photographs at {IMAGENETTE}")
    tmp = Path(tempfile.mkdtemp(prefix="bench-budget-"))
    try:
        result = {"minutes": args.minutes, "cores": os.cpu_count(), "ours": ours(args.minutes, tmp),
                  "reference": reference(args.minutes, args.workers)}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    result["difference_points"] = 100 * (result["ours"]["top1"] - result["reference"]["top1"])
    for side in ("reference", "ours"):
        r = result[side]
        print(f"{side:<10} top-1 {100 * r['top1']:5.1f}%  after {r['training_time_s'] / 60:.1f} min, "
              f"{r['epochs']:.1f} epochs, {r['images_per_s']:.0f} training images/s, {r.get('precision', 'fp32')}")
    print(f"difference: {result['difference_points']:+.1f} points")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
