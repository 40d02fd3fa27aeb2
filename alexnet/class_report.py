"""What an evaluation says class by class, readable at 10 classes and at ImageNet's 1,000.

    pairs = confused_pairs(confusion, classes, n=10, examples=examples)   # with names and an example image
    rank = ranked(per_class, counts, classes, n=20)                        # the best and worst 20 classes
    confusion_png(confusion, classes, "report.confusion.png")              # readable: <= 40 classes shown
    confused_png(pairs, images, "report.confused.png")                     # each pair beside an example
    per_class_png(rank, "report.per_class.png")

A full confusion matrix of 1,000 classes drawn on a page is 1.2 px a cell with no names: nothing
can be read from it. What a person reads at that scale is a list with names:
the pairs of classes most often taken for each other, each with a photograph that was, and the
classes the network gets most and least right. The confusion matrix is drawn whole up to READABLE
classes, and beyond that for the READABLE classes most involved in confusions (the rows and
columns with the most off-diagonal counts), which is where its structure is: e.g. ImageNet's dog
breeds, which §6.1's Figure 4 shows the network confusing among themselves.
"""
from __future__ import annotations

from pathlib import Path

import torch

from .plots import pyplot, save

READABLE = 40  # classes whose names a confusion matrix can still print legibly on one figure


def confused_pairs(confusion: torch.Tensor, classes: list[dict], n: int = 10,
                   examples: torch.Tensor | None = None) -> list[dict]:
    """The n (true, predicted) pairs of different classes with the most images, most first.

    confusion: (K, K) counts, rows true, columns predicted. examples: (K * K,) long, one image index
    per pair (-1: none), from Tally. Returns [{"true", "predicted" (names), "count", "true_id",
    "predicted_id", "example" (an image index, when examples are given)}]; pairs with no image are
    left out."""
    c = confusion.clone()
    c.fill_diagonal_(0)
    values, flat = c.flatten().topk(min(n, c.numel()))
    out = []
    for v, f in zip(values.tolist(), flat.tolist()):
        if v <= 0:
            break
        t, p = divmod(f, c.shape[0])
        pair = {"true": classes[t]["name"], "predicted": classes[p]["name"], "count": int(v),
                "true_id": classes[t]["id"], "predicted_id": classes[p]["id"]}
        if examples is not None and int(examples[f]) >= 0:
            pair["example"] = int(examples[f])
        out.append(pair)
    return out


def ranked(per_class: list[float | None], counts: list[int], classes: list[dict], n: int = 20) -> dict:
    """The n best and n worst classes by top-1 accuracy: {"best": [...], "worst": [...]}, each
    [{"id", "name", "accuracy", "images"}], best first and worst first; ties in name order. Classes
    without images in the split are left out (their accuracy is undefined, not 0)."""
    rows = [{"id": c["id"], "name": c["name"], "accuracy": a, "images": int(k)}
            for c, a, k in zip(classes, per_class, counts) if a is not None and k > 0]
    rows.sort(key=lambda r: (-r["accuracy"], r["name"]))
    return {"best": rows[:n], "worst": sorted(rows, key=lambda r: (r["accuracy"], r["name"]))[:n]}


def most_confused_classes(confusion: torch.Tensor, n: int = READABLE) -> list[int]:
    """The n classes with the most off-diagonal counts (as true class plus as prediction), in
    their class order: the part of a large confusion matrix worth looking at."""
    c = confusion.double().clone()
    c.fill_diagonal_(0)
    involvement = c.sum(0) + c.sum(1)
    top = involvement.topk(min(n, len(involvement))).indices
    return sorted(i for i in top.tolist() if involvement[i] > 0) or list(range(min(n, len(involvement))))


def confusion_png(confusion: torch.Tensor, classes: list[dict], path: str | Path) -> Path:
    """The row-normalised confusion matrix with class names: whole up to READABLE classes, else the
    READABLE most confused classes (the title says how many of how many)."""
    plt = pyplot()
    k = len(classes)
    keep = list(range(k)) if k <= READABLE else most_confused_classes(confusion, READABLE)
    c = confusion.double()
    rows = c / c.sum(1, keepdim=True).clamp_min(1)  # each true class's predictions, as shares of the class
    shown = rows[keep][:, keep]
    m = len(keep)
    fig, ax = plt.subplots(figsize=(min(14, 3 + 0.3 * m), min(12, 2.5 + 0.28 * m)))
    im = ax.imshow(shown.numpy(), cmap="Blues", vmin=0, vmax=max(float(shown.max()), 1e-9) if k > READABLE else 1)
    names = [classes[i]["name"][:20] for i in keep]
    ax.set_xticks(range(m), names, rotation=90, fontsize=7)
    ax.set_yticks(range(m), names, fontsize=7)
    title = ("confusion matrix (rows: share of each true class)" if k <= READABLE else
             f"confusion among the {m} most confused of {k:,} classes\n(rows: share of each true class)")
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return save(fig, path, dpi=110)


def confused_png(pairs: list[dict], images, path: str | Path, columns: int = 4) -> Path:
    """The most confused pairs as a sheet: per pair one image of the true class that was taken for
    the other (`images[i]` -> ((3, S, S) uint8 | None, ...), e.g. alexnet.images.Images), titled
    "true -> predicted (count)"."""
    plt = pyplot()
    pairs = [p for p in pairs if "example" in p] or pairs
    rows = max(1, -(-len(pairs) // columns))
    fig, axes = plt.subplots(rows, columns, figsize=(2.6 * columns, 2.9 * rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, p in zip(axes.flat, pairs):
        img = images[p["example"]][0] if "example" in p else None
        if img is not None:
            ax.imshow(img.permute(1, 2, 0).numpy())
        ax.set_title(f"{p['true'][:22]}\n-> {p['predicted'][:22]}  ({p['count']:,})", fontsize=8)
    fig.suptitle("most confused pairs: an image of the true class taken for the predicted one", fontsize=9)
    return save(fig, path, dpi=100)


def per_class_png(rank: dict, path: str | Path) -> Path:
    """Two bar charts: the best and the worst classes by top-1 accuracy, with names."""
    plt = pyplot()
    n = max(len(rank["best"]), len(rank["worst"]), 1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 1.2 + 0.26 * n))
    for ax, key, colour in ((axes[0], "worst", "tab:red"), (axes[1], "best", "tab:green")):
        rows = rank[key][::-1]  # the first at the top
        ax.barh(range(len(rows)), [100 * r["accuracy"] for r in rows], color=colour)
        ax.set_yticks(range(len(rows)), [f"{r['name'][:24]} ({r['images']})" for r in rows], fontsize=7)
        ax.set(xlim=(0, 100), xlabel="top-1 accuracy (%)", title=f"the {len(rows)} {key} classes (images)")
        ax.grid(axis="x", alpha=0.3)
    return save(fig, path, dpi=100)
