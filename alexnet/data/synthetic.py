"""The built-in data set: ten classes of procedurally drawn shapes, generated deterministically.

    path = synthetic.ensure()            # ~/.cache/alexnet/shapes-... (made once, then reused)

`alexnet train` with no --data trains on this, so the whole path (prepare format, loader, training,
evaluation, plots) runs on any machine with nothing downloaded. Each image is one shape (arrow, bar,
circle, crescent, cross, heart, ring, square, star, triangle) at a random position, size
and rotation, filled with a random colour or a random two-colour texture (stripes, checks,
blotches), on a random background (a colour, a gradient, or a texture in two nearby colours), with
a few random lines as clutter. Colours
are drawn independently of the class, so colour alone does not give it away
(tests/test_synthetic.py fits a linear classifier on mean colours and finds it near chance): the
network has to learn shape, as on real photographs.

Every image comes from its own generator seeded by (seed, split, index), so the set is the same
on every machine and can be generated in parallel. It is written as PNG files to a temporary
ImageFolder and converted by `alexnet prepare`, the same path a user's images take.
"""
from __future__ import annotations

import hashlib
import math
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from ..fileio import cache_dir

CLASSES = ("arrow", "bar", "circle", "crescent", "cross", "heart", "ring", "square", "star", "triangle")
VERSION = 3  # bump when the drawing changes: the cache key includes it


def _regular(n: int, r: float = 1.0, phase: float = 0.0) -> np.ndarray:
    t = phase + np.arange(n) * 2 * np.pi / n
    return np.stack([r * np.cos(t), r * np.sin(t)], 1)


def _outline(name: str) -> list[tuple[np.ndarray, int]]:
    """Polygons (unit radius, centred) with fill value 1 (shape) or 0 (a hole cut afterwards)."""
    if name == "circle":
        return [(_regular(64), 1)]
    if name == "ring":
        return [(_regular(64), 1), (_regular(64, 0.55), 0)]
    if name == "crescent":
        return [(_regular(64), 1), (_regular(64, 0.85) + [0.45, 0.0], 0)]
    if name == "triangle":
        return [(_regular(3, 1.0, np.pi / 2), 1)]
    if name == "square":
        return [(_regular(4, 1.0, np.pi / 4), 1)]
    if name == "bar":  # a hexagon was here: at 64 px it was too often taken for a circle
        return [(np.array([[-1, -0.26], [1, -0.26], [1, 0.26], [-1, 0.26]]), 1)]
    if name == "star":
        p = _regular(10, 1.0, np.pi / 2)
        p[1::2] *= 0.42
        return [(p, 1)]
    if name == "cross":
        a, b = 0.32, 1.0
        return [(np.array([[-a, -b], [a, -b], [a, -a], [b, -a], [b, a], [a, a], [a, b], [-a, b],
                           [-a, a], [-b, a], [-b, -a], [-a, -a]]), 1)]
    if name == "arrow":
        return [(np.array([[-1, -0.25], [0.2, -0.25], [0.2, -0.65], [1, 0], [0.2, 0.65], [0.2, 0.25],
                           [-1, 0.25]]), 1)]
    if name == "heart":
        t = np.linspace(0, 2 * np.pi, 80, endpoint=False)
        x, y = 16 * np.sin(t) ** 3, 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        p = np.stack([x, -y - 2.5], 1) / 17.0
        return [(p, 1)]
    raise ValueError(name)


def _colour(rng) -> np.ndarray:
    return rng.integers(0, 256, 3).astype(np.float32)


def _texture(rng, size: int, a=None, b=None) -> np.ndarray:
    """(size, size, 3) float: stripes, checks or blotches in two colours (random ones by default)."""
    a = _colour(rng) if a is None else a
    b = _colour(rng) if b is None else b
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    kind = rng.integers(0, 3)
    if kind == 0:  # stripes at a random angle and period
        angle, period = rng.uniform(0, np.pi), rng.uniform(5, 16) * size / 72
        m = (np.sin((xx * np.cos(angle) + yy * np.sin(angle)) * 2 * np.pi / period) > 0)
    elif kind == 1:  # checks
        period = rng.uniform(6, 18) * size / 72
        m = ((xx // period + yy // period) % 2) == 0
    else:  # blotches: smooth noise, thresholded
        coarse = rng.random((6, 6)).astype(np.float32)
        m = np.asarray(Image.fromarray(coarse * 255).convert("L").resize((size, size), Image.BICUBIC)) > 127
    return np.where(m[..., None], a, b)


def _background(rng, size: int) -> np.ndarray:
    """A solid colour, a two-colour gradient, or a texture in two nearby colours (so the shape's
    outline, not the texture's edges, is the strongest contour in the image)."""
    kind = rng.choice(3, p=[0.4, 0.3, 0.3])
    a = _colour(rng)
    if kind == 0:
        return np.broadcast_to(a, (size, size, 3)).copy()
    if kind == 1:
        b, angle = _colour(rng), rng.uniform(0, 2 * np.pi)
        yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
        t = np.clip((xx - 0.5) * np.cos(angle) + (yy - 0.5) * np.sin(angle) + 0.5, 0, 1)[..., None]
        return a * (1 - t) + b * t
    return _texture(rng, size, a, np.clip(a + rng.normal(0, 35, 3), 0, 255))


def _fill(rng, size: int) -> np.ndarray:
    """The shape's paint: a solid colour or a texture in two random colours."""
    if rng.random() < 0.4:
        return np.broadcast_to(_colour(rng), (size, size, 3)).copy()
    return _texture(rng, size)


def draw(label: int, rng: np.random.Generator, size: int = 72) -> np.ndarray:
    """One (size, size, 3) uint8 image of class `label`; the shape's edge is anti-aliased by drawing
    its mask at 4x and box-filtering it down."""
    background = _background(rng, size)
    fill = _fill(rng, size)
    # keep the shape visible: its mean colour differs clearly from the background's
    for _ in range(20):
        if np.abs(fill.mean((0, 1)) - background.mean((0, 1))).sum() > 90:
            break
        fill = _fill(rng, size)
    big = 4 * size
    mask = Image.new("L", (big, big), 0)
    pen = ImageDraw.Draw(mask)
    radius = rng.uniform(0.26, 0.44) * big
    centre = big / 2 + rng.uniform(-0.14, 0.14, 2) * big
    angle = rng.uniform(0, 2 * np.pi)
    rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    stretch = np.diag([1.0, rng.uniform(0.8, 1.0)])  # a little anisotropy, so sizes vary by axis too
    for poly, value in _outline(CLASSES[label]):
        pts = (poly @ stretch @ rot.T) * radius + centre
        pen.polygon([tuple(p) for p in pts], fill=255 * value)
    m = np.asarray(mask.reduce(4), np.float32)[..., None] / 255.0
    img = Image.fromarray(np.clip(background * (1 - m) + fill * m, 0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(img)
    for _ in range(rng.integers(0, 3)):  # clutter: thin random lines
        pen.line(list(rng.uniform(0, size, 4)), fill=tuple(int(c) for c in _colour(rng)), width=1)
    noisy = np.asarray(img, np.float32) + rng.normal(0, 4, (size, size, 3)).astype(np.float32)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, {"train": 0, "val": 1}[split], index])


def _write_class(job) -> None:
    root, split, label, n, size, seed = job
    folder = Path(root) / split / CLASSES[label]
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        index = label * n + i
        Image.fromarray(draw(label, image_rng(seed, split, index), size)).save(folder / f"{index:05d}.png",
                                                                                compress_level=1)


def write_folder(root: Path, per_class: dict[str, int], size: int = 72, seed: int = 0,
                 workers: int | None = None) -> None:
    """An ImageFolder of PNGs: root/<split>/<class>/<index>.png, per_class[split] images per class."""
    import multiprocessing as mp

    jobs = [(str(root), split, label, n, size, seed) for split, n in per_class.items() for label in range(len(CLASSES))]
    if workers is None:
        workers = os.cpu_count() or 1
    if workers <= 1:
        for job in jobs:
            _write_class(job)
        return
    with mp.get_context().Pool(workers, _quiet_worker) as pool:
        pool.map(_write_class, jobs)


def _quiet_worker() -> None:
    """Ctrl-C is the parent's to handle (it stops the pool): a worker that took it too printed
    "Process ForkPoolWorker-1:" and a traceback each."""
    import signal
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def ensure(train_per_class: int = 500, val_per_class: int = 100, size: int = 72, seed: int = 0,
           root: Path | None = None, progress: bool = True) -> Path:
    """The prepared built-in data set, generated on first use; returns its folder."""
    from .prepare import prepare

    key = hashlib.sha256(repr((VERSION, train_per_class, val_per_class, size, seed)).encode()).hexdigest()[:10]
    out = (root or cache_dir()) / f"shapes-{train_per_class}-{val_per_class}-{size}px-{key}"
    if (out / "manifest.json").is_file():
        return out
    if progress:
        print(f"generating the built-in data set (10 classes of shapes, {train_per_class} train and "
              f"{val_per_class} val images per class, {size} px) in {out}")
    out.parent.mkdir(parents=True, exist_ok=True)
    # Everything is made under names of this process's own and renamed into place at the end, so
    # that two processes generating at once (two runs on a fresh cache) never touch each other's files.
    work = Path(tempfile.mkdtemp(prefix=f".{out.name}-", dir=out.parent))
    try:
        write_folder(work / "src", {"train": train_per_class, "val": val_per_class}, size, seed)
        prepare(work / "src", work / "prepared", size=size, progress=False)
        try:
            os.rename(work / "prepared", out)
        except OSError:  # another process finished first: its copy is identical (same seed)
            if not (out / "manifest.json").is_file():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
