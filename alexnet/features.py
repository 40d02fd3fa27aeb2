"""`alexnet features` and `alexnet neighbors`: fc7 codes and the paper's Fig. 4 (right).

    alexnet features best.pt --data prepared/imagenet --split train --out train_fc7.npy
    alexnet neighbors best.pt --data prepared/imagenet --query a.jpg b.jpg --k 6 --sheet nn.png

§6.1: "the feature activations induced by an image at the last, 4096-dimensional hidden layer"
(fc7, after its ReLU) are compared by Euclidean distance; images whose codes are close look alike
to the network even where their pixels differ. `features` writes the codes of a whole split as a
memory-mapped .npy (N x 4096, float32 or float16) with a .json beside it (the data set, ids, labels,
classes); it writes in batches and an interrupted run continues where it stopped. `neighbors`
searches a split exactly: it streams the training codes in chunks (from a features file, or
computed on the fly) and keeps each query's k best, so a million vectors never need to sit in
memory at once.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from . import runtime
from .data.augment import eval_views
from .errors import UserError
from .fileio import writable_output
from .inference import Network, load_any


def codes(net: Network, images: torch.Tensor) -> torch.Tensor:
    """(B, 3, S, S) uint8 -> (B, 4096) fc7 after ReLU, on the centre crop."""
    x = eval_views(images.to(net.device), net.crop, 1, net.norm_for(images.shape[-1]))
    return net.forward(x, embed=True)


def _loader(images, start: int, batch_size: int, workers: int):
    """Batches of (images, indices, failures) in order, from image `start` on."""
    from .images import collate

    order = [list(range(i, min(i + batch_size, len(images)))) for i in range(start, len(images), batch_size)]
    return torch.utils.data.DataLoader(images, batch_sampler=order, num_workers=workers, collate_fn=collate)


def _ours(out: Path, meta_path: Path) -> dict | None:
    """The metadata of an earlier `features` run at OUT (to resume it), or None when neither file
    exists. Raises UserError when OUT or OUT.json exists but is not a `features` output: a user's file
    of that name is never overwritten."""
    if not meta_path.exists():
        if out.exists():
            raise UserError(f"{out} exists and was not written by alexnet features (no {meta_path.name} beside it); "
                            f"choose another --out, or remove {out} yourself")
        return None
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        meta = None
    if not isinstance(meta, dict) or not {"checkpoint_sha256", "count", "done", "ids"} <= set(meta):
        raise UserError(f"{meta_path} exists and was not written by alexnet features; choose another --out, or "
                        f"remove {meta_path} yourself")
    return meta


def progress_path(out: Path) -> Path:
    """OUT.progress.json: how far an unfinished `features` run got, in JSON Lines: one line
    {"done": images, "failed": [...]} per batch, its "failed" that batch's unreadable images only,
    so that a batch appends a few bytes however many failures came before (rewriting the whole list
    each batch was quadratic in them). The name keeps its suffix: the one JSON object earlier
    versions wrote there is a valid one-line file of the same meaning, and their runs resume."""
    return out.with_suffix(".progress.json")


def _progress_line(done: int, failed: list) -> bytes:
    """One line of the progress file, its newline included: the next append starts a line of its own."""
    return (json.dumps({"done": done, "failed": failed}) + "\n").encode()


def read_progress(path: Path) -> tuple[int, list] | None:
    """(images done, every failure so far) from the lines of a progress file, or None when it
    cannot be read (a run starts again then: its rows are rewritten). A last line that is not a
    whole JSON object is the torn end of a run killed mid-append and is ignored: its batch is done
    again, from the line before. A damaged line before the last is not a torn append: None."""
    try:
        text = path.read_bytes()
    except OSError:
        return None
    done, failed, start = 0, [], 0
    while start < len(text):
        end = text.find(b"\n", start)
        stop = len(text) if end < 0 else end + 1
        try:
            state = json.loads(text[start:stop].decode("utf-8"))
            done, more = int(state["done"]), list(state["failed"])
        except (ValueError, UnicodeDecodeError, KeyError, TypeError):
            if stop < len(text):
                return None
            break  # the torn last line
        failed += more
        start = stop
    return done, failed


def write_features(net: Network, data: str, split: str, out: str | Path, batch_size: int = 128,
                   dtype: str = "float32", workers: int | None = None, progress: bool = True) -> dict:
    """fc7 codes of every image of the split -> OUT (N x 4096 .npy, memory-mapped) + OUT.json; resumable.

    What is written, and how often (nothing may grow faster than the data): OUT.json
    (the identity, every image's id and label, the classes: tens of MB at ImageNet's size) twice,
    at the start and at the end; after each batch only its rows of OUT and one line appended to
    OUT.progress.json, a few bytes (the images done, and the batch's images that could not be
    read), which the end removes. An interrupted run continues from OUT.progress.json, which it
    first rewrites once as one line (its torn end dropped). workers: loader processes (None: the rule
    of alexnet.runtime.loader_workers). Returns the metadata; raises UserError for an OUT that is
    not ours, of another checkpoint or data set, or a split none of whose images can be read."""
    from tqdm import tqdm

    from .images import Images
    from .fileio import atomic_write

    out = Path(out)
    meta_path, marker = out.with_suffix(".json"), progress_path(out)
    images = Images(data, split, net.size)
    n, dim = len(images), net.model.fc7.out_features
    if n == 0:
        raise UserError(f"{data} ({split}) holds no images")
    identity = {"checkpoint": net.source, "checkpoint_sha256": net.sha256, "data_checksum": images.checksum,
                "split": split, "count": n, "dim": dim, "dtype": dtype}
    done = 0
    meta = _ours(out, meta_path)  # raises for files features did not write: they are never overwritten
    if meta is not None and out.is_file():
        if {k: meta.get(k) for k in identity} != identity:
            raise UserError(f"{out} holds features of another checkpoint or data set; choose another --out")
        if marker.is_file() and meta["done"] < n:  # an unfinished run: its progress is in the marker
            state = read_progress(marker)
            meta["done"], meta["failed"] = state if state is not None else (0, [])  # None: start again
        done = meta["done"]
        if progress and done < n:
            print(f"resuming {out} at image {done:,} of {n:,}")
        array = RowFile(out)
    else:
        # the header and a sparse body, then unmapped at once (nothing holds it): RowFile writes the rows
        np.lib.format.open_memmap(out, mode="w+", dtype=dtype, shape=(n, dim))
        array = RowFile(out)
        meta = {**identity, "data": str(Path(data).resolve()), "done": 0, "ids": images.keys,
                "labels": images.labels.tolist(), "classes": images.classes, "failed": []}
        atomic_write(meta_path, json.dumps(meta).encode())  # once: what does not change
    workers = runtime.loader_workers(net.device) if workers is None else workers
    # the state so far as the first line, once (a resumed run's torn end, or a stale marker, goes);
    # then one line per batch, appended and flushed, never fsynced: the marker is cheap to rebuild
    atomic_write(marker, _progress_line(done, meta["failed"]), durable=False)
    with open(marker, "ab") as log, array:
        for batch, idx, bad in tqdm(_loader(images, done, batch_size, workers), disable=not progress, desc="features",
                                    unit="batch"):
            failed = [{"index": i, "path": images.keys[i], "error": e} for i, e in bad]
            meta["failed"] += failed
            if bad:  # NaN rows: an unreadable image has no code, and no search may take zeros for one
                array.write([i for i, _ in bad], np.full((len(bad), dim), np.nan))
            if batch is not None:
                array.write(idx.tolist(), codes(net, batch).cpu().numpy())
            done = max([done] + [int(i) + 1 for i in idx.tolist()] + [i + 1 for i, _ in bad])
            array.sync()
            # only after the rows are on disk: a rerun redoes at most one batch
            log.write(_progress_line(done, failed))
            log.flush()
    meta["done"] = done
    if n and len(meta["failed"]) == n:  # a result computed on nothing is an error, and is not kept
        for path in (out, meta_path, marker):
            path.unlink(missing_ok=True)
        f = meta["failed"][0]
        raise UserError(f"none of the {n:,} images of {data} ({split}) could be read (e.g. {f['path']}: {f['error']})")
    atomic_write(meta_path, json.dumps(meta).encode())  # complete: OUT.json says so, the marker goes
    marker.unlink(missing_ok=True)
    return meta


class RowFile:
    """Rows of a 2-D .npy array on disk, written in place: write(rows, values) with pwrite, sync()
    with fdatasync. Not a memory map: msync of a shared map on ext4 wrote ~5x the array's bytes
    at 48,000 rows and ~13x at 192,000 (ru_oublock; benchmarks/scale.py), growing with the file at
    every batch, where pwrite + fdatasync writes each row once (1.03x).

    rows: sorted or not, any row indices; values (len(rows), dim), cast to the file's dtype.
    Raises ValueError for a file that is not a C-ordered 2-D .npy array."""

    def __init__(self, path: Path):
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read(f)
            self.offset = f.tell()
        if fortran or len(shape) != 2:
            raise ValueError(f"{path}: not a C-ordered 2-D array")
        self.shape, self.dtype = shape, dtype
        self.row_bytes = shape[1] * dtype.itemsize
        self.fd = os.open(path, os.O_RDWR)

    def write(self, rows: list[int], values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=self.dtype)
        start = 0
        while start < len(rows):  # one pwrite per run of consecutive rows (a batch is usually one)
            end = start + 1
            while end < len(rows) and rows[end] == rows[end - 1] + 1:
                end += 1
            os.pwrite(self.fd, data[start:end].tobytes(), self.offset + rows[start] * self.row_bytes)
            start = end

    def sync(self) -> None:
        os.fdatasync(self.fd)

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self) -> "RowFile":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def knn(queries: torch.Tensor, chunks, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact k nearest neighbours in Euclidean distance, streaming the database.

    queries (Q, D); chunks yields (vectors (B, D), global indices (B,)). Returns (Q, k) distances
    (ascending; ties broken by the smaller index) and the indices. Memory: O(Q * (k + B))."""
    q = queries.double()
    best_d = torch.full((len(q), 0), float("inf"), dtype=torch.float64)
    best_i = torch.empty((len(q), 0), dtype=torch.long)
    for vectors, index in chunks:
        v = vectors.double()
        d2 = (q * q).sum(1, keepdim=True) - 2 * q @ v.T + (v * v).sum(1)[None]  # (Q, B)
        d = d2.clamp_min(0).sqrt()
        all_d = torch.cat([best_d, d], 1)
        all_i = torch.cat([best_i, index[None].expand(len(q), -1)], 1)
        # sort by (distance, index) so that equal distances keep the earlier image
        order = np.lexsort((all_i.numpy(), all_d.numpy()), axis=1)[:, :k]
        best_d = torch.gather(all_d, 1, torch.from_numpy(order))
        best_i = torch.gather(all_i, 1, torch.from_numpy(order))
    return best_d, best_i


def neighbours(net: Network, data: str, split: str, queries: list[Path], k: int = 6, features: str | None = None,
               batch_size: int = 256, workers: int | None = None, progress: bool = True) -> dict:
    """Each query image's k nearest training images by fc7 distance (§6.1, Fig. 4): from a features
    file when given, else computed on the fly with `workers` loader processes (None: the rule of
    alexnet.runtime.loader_workers). Raises UserError for unreadable queries or a split with no
    readable image."""
    from tqdm import tqdm

    from .data.decode import BadImage, read_file
    from .images import Images

    pictures = []
    for q in queries:
        try:
            pictures.append(net.read_image(read_file(q)))
        except (BadImage, OSError) as e:
            raise UserError(f"query image {q}: {e}; give readable image files to --query") from e
    query_codes = net.forward(net.preprocess(pictures), embed=True).cpu()  # the §2 preprocessing of predict
    images = Images(data, split, net.size)
    if features:  # precomputed codes: stream them from the memory map, unreadable images (NaN rows) left out
        store = open_features(features, net, images, split)
        chunks = (finite_rows(torch.from_numpy(np.array(store[i:i + batch_size], dtype=np.float32)),  # a copy
                              torch.arange(i, min(i + batch_size, len(store)))) for i in range(0, len(store), batch_size))
    else:
        loader = _loader(images, 0, batch_size, runtime.loader_workers(net.device) if workers is None else workers)
        chunks = ((codes(net, batch).cpu(), idx) for batch, idx, _ in
                  tqdm(loader, disable=not progress, desc="neighbours", unit="batch") if batch is not None)
    dist, index = knn(query_codes, chunks, k)
    if index.shape[1] == 0:  # zero images searched is an error, never an empty answer
        raise UserError(f"none of the {len(images):,} images of {data} ({split}) could be read: there are no "
                        f"neighbours to show; check the folder's images (alexnet prepare lists what it skips)")
    return {"queries": [str(q) for q in queries], "distances": dist.tolist(), "indices": index.tolist(),
            "keys": [[images.keys[i] for i in row] for row in index.tolist()],
            "labels": [[images.classes[int(images.labels[i])]["name"] for i in row] for row in index.tolist()],
            "images": images}


def finite_rows(vectors: torch.Tensor, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    keep = torch.isfinite(vectors).all(1)
    return vectors[keep], index[keep]


def _make_it(path, split: str | None) -> str:
    """The command that makes a features file, with the split when it is known (never "--split None")."""
    return f"alexnet features CKPT --data DATA{f' --split {split}' if split else ''} --out {path}"


def open_features(path: str, net: Network, images, split: str | None) -> np.ndarray:
    """The memory-mapped codes of `alexnet features`, checked against what they must describe:
    the same checkpoint (SHA-256), split and data (checksum), complete. Raises UserError naming
    the difference."""
    path, meta_path = Path(path), Path(path).with_suffix(".json")
    if path.suffix == ".json":  # the metadata given for the codes
        raise UserError(f"{path} is the metadata of a features file; give the codes beside it: "
                        f"{path.with_suffix('.npy')}")
    if not path.is_file() or not meta_path.is_file():
        raise UserError(f"features file {path} (with {meta_path.name} beside it) not found; make it with "
                        f"{_make_it(path, split)}")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        raise UserError(f"{meta_path} is not the metadata alexnet features writes (not JSON text)") from None
    try:
        store = np.load(path, mmap_mode="r", allow_pickle=False)
    except (OSError, ValueError, EOFError):  # numpy's own text speaks of pickles and trust: not ours to show
        raise UserError(f"{path} is not a features file of alexnet features (not a NumPy .npy array); make it "
                        f"with {_make_it(path, split)}") from None
    if not isinstance(meta, dict) or not {"checkpoint_sha256", "split", "data_checksum", "count", "done"} <= set(meta):
        raise UserError(f"{meta_path} was not written by alexnet features")
    differences = [f"{what} ({str(meta[key])[:16]!r} there, {str(want)[:16]!r} here)" for what, key, want in (
        ("it was computed with another checkpoint", "checkpoint_sha256", net.sha256),
        ("it holds another split", "split", split),
        ("it was computed on another data set, not the data set given here", "data_checksum", images.checksum))
        if meta[key] != want]
    if differences:
        raise UserError(f"{path}: {'; '.join(differences)}; make them again with alexnet features")
    if meta["done"] != meta["count"] or store.shape != (meta["count"], net.model.fc7.out_features):
        raise UserError(f"{path} is incomplete ({meta['done']:,} of {meta['count']:,} images); run the same "
                        f"alexnet features command again to finish it")
    return store


def neighbour_sheet(result: dict, net: Network, path: str | Path) -> Path:
    """Fig. 4 (right): each query in the first column, its nearest training images to the right."""
    from .data.decode import read_file, resize_crop
    from .plots import pyplot, save

    plt = pyplot()

    images = result["images"]
    rows, k = len(result["queries"]), len(result["indices"][0])
    fig, axes = plt.subplots(rows, k + 1, figsize=(1.6 * (k + 1), 2.0 * rows), squeeze=False)
    for r, q in enumerate(result["queries"]):
        axes[r, 0].imshow(resize_crop(net.read_image(read_file(q)), net.size))
        axes[r, 0].set_title("query", fontsize=8)
        for c, (i, d) in enumerate(zip(result["indices"][r], result["distances"][r]), 1):
            img, _ = images[i]
            if img is None:
                continue
            axes[r, c].imshow(img.permute(1, 2, 0).numpy())
            axes[r, c].set_title(f"{result['labels'][r][c - 1][:14]}\n{d:.1f}", fontsize=7)
    for ax in axes.flat:
        ax.axis("off")
    return save(fig, path, dpi=110)


def _network(args) -> Network:
    """The checkpoint (or --weights) on the device and in the precision the flags ask for."""
    rt = runtime.setup(args.device, args.precision)
    return load_any(args.checkpoint, args.weights, rt.device, rt.dtype)


def main_features(args) -> int:
    writable_output(args.out, "features file")
    net = _network(args)
    meta = write_features(net, args.data, args.split, args.out, dtype=args.dtype, workers=args.workers)
    print(f"{meta['done']:,} fc7 codes ({meta['dim']}-d, {meta['dtype']}) in {args.out}; ids, labels and classes in "
          f"{Path(args.out).with_suffix('.json')}; {len(meta['failed'])} image(s) could not be read")
    return 0


def main_neighbors(args) -> int:
    if args.sheet:
        writable_output(args.sheet, "sheet")
    missing = [q for q in args.query if not Path(q).is_file()]
    if missing:
        raise UserError(f"query image not found: {missing[0]}")
    net = _network(args)
    result = neighbours(net, args.data, args.split, [Path(q) for q in args.query], args.k, args.features,
                        workers=args.workers)
    for q, keys, labels, dists in zip(result["queries"], result["keys"], result["labels"], result["distances"]):
        print(q)
        for key, label, d in zip(keys, labels, dists):
            print(f"  {d:10.2f}  {label:<24} {key}")
    if args.sheet:
        print(f"sheet: {neighbour_sheet(result, net, args.sheet)}")
    return 0
