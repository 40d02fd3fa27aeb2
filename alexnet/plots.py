"""Pictures: the training curves, the conv1 kernels as in the paper's Figure 3, and the set-up and
saving every figure of the project goes through.

    plots.curves(run_folder / "metrics.jsonl" records, "curves.png")
    plots.filters(model.conv1_weight(), towers=2, path="conv1.png")
    plt = plots.pyplot()                 # every figure starts here: matplotlib on the Agg backend
    fig, ax = plt.subplots(); ...
    plots.save(fig, "x.png", dpi=110)    # and ends here: laid out, written, closed

Figure 3 shows the 96 learned 11x11x3 conv1 kernels, the 48 of GPU 1 above the 48 of GPU 2: the
two towers specialise (one largely colour-agnostic, one colour-specific). Each kernel is scaled to
[0, 1] on its own for display, as is usual for such pictures.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, imported on first use so that commands that
    draw nothing do not pay for matplotlib's import."""
    import matplotlib
    matplotlib.use("Agg")  # files only; no display needed
    import matplotlib.pyplot as plt
    return plt


def save(fig, path: str | Path, dpi: int = 110) -> Path:
    """Lay the figure out tightly, write it to path (the format from its suffix, e.g. .png) and close
    it, so that a long run drawing many figures holds none in memory. Returns path as a Path."""
    fig.tight_layout()
    fig.savefig(path, dpi=dpi)
    pyplot().close(fig)
    return Path(path)


def curves(records: list[dict], path: str | Path, title: str = "") -> Path:
    """Loss, top-1/top-5 error and learning rate against epochs, from metrics.jsonl records."""
    plt = pyplot()
    train = [r for r in records if r["kind"] == "train"]
    val = [r for r in records if r["kind"] == "val"]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    ax = axes[0]
    if train:
        ax.plot([r["epoch"] for r in train], [r["loss"] for r in train], label="train (augmented)", alpha=0.8)
    if val:
        ax.plot([r["epoch"] for r in val], [r["loss"] for r in val], "o-", label="validation")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title="loss")
    ax.legend()
    ax = axes[1]
    if train:
        ax.plot([r["epoch"] for r in train], [100 * (1 - r["top1"]) for r in train], label="train top-1", alpha=0.8)
    if val:
        ax.plot([r["epoch"] for r in val], [100 * r["top1_error"] for r in val], "o-", label="val top-1")
        ax.plot([r["epoch"] for r in val], [100 * r["top5_error"] for r in val], "s--", label="val top-5")
    ax.set(xlabel="epoch", ylabel="error (%)", title="error")
    ax.set_ylim(bottom=0)
    ax.legend()
    ax = axes[2]
    if train:
        ax.plot([r["epoch"] for r in train], [r["lr"] for r in train])
    ax.set(xlabel="epoch", ylabel="learning rate", title="learning rate")
    if title:
        fig.suptitle(title)
    return save(fig, path, dpi=110)


def kernel_grid(weight: torch.Tensor, columns: int) -> np.ndarray:
    """(K, 3, h, w) kernels -> an RGB mosaic, each kernel min-max scaled to [0, 1], 1 px gaps."""
    w = weight.detach().float().cpu()
    k, _, h, wd = w.shape
    lo = w.flatten(1).min(1).values[:, None, None, None]
    hi = w.flatten(1).max(1).values[:, None, None, None]
    w = ((w - lo) / (hi - lo).clamp_min(1e-12)).permute(0, 2, 3, 1).numpy()  # (K, h, w, 3)
    rows = math.ceil(k / columns)
    grid = np.ones((rows * (h + 1) - 1, columns * (wd + 1) - 1, 3))
    for i in range(k):
        r, c = divmod(i, columns)
        grid[r * (h + 1):r * (h + 1) + h, c * (wd + 1):c * (wd + 1) + wd] = w[i]
    return grid


def filters(weight: torch.Tensor, path: str | Path, towers: int = 1, title: str = "") -> Path:
    """The conv1 kernels; with towers=2 the first half (GPU 1) above the second (GPU 2), as Fig. 3."""
    plt = pyplot()
    k = weight.shape[0]
    parts = weight.chunk(towers) if towers > 1 else [weight]
    per = len(parts[0])  # the widest grid up to 16 columns that fills its rows (48 -> 16 x 3, as Fig. 3)
    columns = next((c for c in range(min(16, per), 7, -1) if per % c == 0), min(16, per))
    fig, axes = plt.subplots(len(parts), 1, figsize=(columns * 0.55, 0.6 * sum(math.ceil(len(p) / columns) for p in parts) + 0.8 * len(parts)),
                             squeeze=False)
    for t, (ax, part) in enumerate(zip(axes[:, 0], parts)):
        ax.imshow(kernel_grid(part, columns), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        if towers > 1:
            ax.set_title(f"tower {t + 1} (GPU {t + 1} in the paper): kernels {t * len(part)}-{(t + 1) * len(part) - 1}",
                         fontsize=9)
    fig.suptitle(title or f"conv1: {k} kernels of {weight.shape[2]}x{weight.shape[3]}x{weight.shape[1]}", fontsize=10)
    return save(fig, path, dpi=120)


def main(args) -> int:
    """`alexnet filters CKPT --out conv1.png`: Figure 3 from a checkpoint."""
    from . import weights
    from .errors import UserError
    from .fileio import writable_output

    if not args.checkpoint:
        raise UserError("give a checkpoint: alexnet filters CKPT (a file or a run folder) or --checkpoint CKPT")
    writable_output(args.out, "picture")

    src = weights.read(args.checkpoint, "checkpoint")  # ours, or any file --weights reads
    weight = weights.our_names(src.state).get("conv1.weight")
    if weight is None or weight.dim() != 4:
        raise weights.WeightsError(f"{args.checkpoint} ({src.kind}) holds no conv1 kernels (conv1.weight, or "
                                   f"features.0.weight in torchvision's layout)")
    m = src.model or {}
    towers = m.get("towers") or (2 if m.get("name") == "alexnet2012" else 1)
    out = filters(weight, args.out, towers=towers,
                  title=f"conv1 of {args.checkpoint}: {weight.shape[0]} kernels of "
                        f"{weight.shape[2]}x{weight.shape[3]}x{weight.shape[1]}")
    print(out)
    return 0
