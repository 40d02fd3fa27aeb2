"""`alexnet predict`: the top-k classes of image files, as a table, JSON or a picture.

    alexnet predict photo.jpg holiday/ --checkpoint runs/x/best.pt
    alexnet predict photo.jpg --weights torchvision --views 10 --json
    alexnet predict holiday/ --checkpoint best.pt --sheet sheet.png      # the paper's Fig. 4 (left)

As a library call (what a web page or HTTP API builds on):

    from alexnet.predict import Predictor
    predictor = Predictor(checkpoint="best.pt")            # or Predictor(weights="torchvision")
    predictor.predict_paths(["photo.jpg"], topk=5)         # [[{"id", "name", "probability"}, ...]]
    predictor.predict_images([pil_image], topk=5)          # an image you decoded yourself

Any image in a format of alexnet.data.decode.FORMATS works (JPEG, PNG, GIF, BMP, WebP, TIFF, AVIF,
...; greyscale, CMYK, EXIF-rotated; decoded as in `alexnet prepare`). Folders are searched recursively, following links (alexnet.data.folders: system
and hidden files are ignored and counted). Files that cannot be read are reported and skipped while
the rest are predicted: found = predicted + failures (exit status 0); an input that does not exist,
inputs without files, or files none of which is an image are an error (exit status 2, one line,
nothing written).
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from PIL import Image

from . import runtime
from .data.decode import BadImage, open_rgb, read_file
from .data.folders import walk
from .data.listing import printable
from .errors import UserError
from .fileio import writable_output
from .inference import Network, load_any


class Predictor:
    def __init__(self, checkpoint: str | None = None, weights: str | None = None, device: str = "cpu",
                 batch_size: int = 32, precision: str = "fp32"):
        rt = runtime.setup(device, precision, distributed_job=False)
        self.network: Network = load_any(checkpoint, weights, rt.device, rt.dtype)
        self.batch_size = batch_size

    @property
    def classes(self) -> list[dict]:
        return self.network.classes

    def predict_images(self, images: list[Image.Image], topk: int = 5, views: int = 1) -> list[list[dict]]:
        """RGB PIL images -> for each, the top-k classes with probabilities, most probable first."""
        out = []
        k = min(topk, len(self.classes))
        for i in range(0, len(images), self.batch_size):
            probs = self.network.probabilities(self.network.preprocess(images[i:i + self.batch_size], views))
            values, indices = probs.topk(k, dim=1)
            for vs, ix in zip(values.tolist(), indices.tolist()):
                out.append([{**self.classes[j], "index": j, "probability": v} for v, j in zip(vs, ix)])
        return out

    def predict_bytes(self, data: bytes, topk: int = 5, views: int = 1) -> list[dict]:
        """One encoded image file -> its top-k, decoded as `alexnet predict` and serve decode it
        (Network.read_image); raises BadImage when it cannot be decoded."""
        return self.predict_images([self.network.read_image(data)], topk, views)[0]

    def predict_paths(self, paths: list[str | Path], topk: int = 5, views: int = 1) -> list[list[dict]]:
        """Image files -> for each, its top-k, exactly as `alexnet predict` gives them (the same
        decode, Network.read_image). Raises BadImage naming the first file that does not decode,
        OSError for one that cannot be read."""
        images = []
        for path in paths:
            try:
                images.append(self.network.read_image(read_file(path)))
            except BadImage as e:
                raise BadImage(f"{printable(str(path))}: {e}") from None
        return self.predict_images(images, topk, views)


def image_files(inputs: list[str], ignored: list[dict] | None = None) -> tuple[list[Path], list[dict]]:
    """Files named, and every file below folders named (links followed, system and hidden files
    ignored into `ignored`, as alexnet.data.folders does for prepare); missing paths, broken links
    and the like are failures."""
    files, failures = [], []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = walk(str(path), str(path))
            files += [Path(f) for f in found.files]
            failures += [{"path": printable(str(path / e["path"])), "error": e["reason"]} for e in found.skipped]
            if ignored is not None:
                ignored += [{"path": printable(str(path / e["path"])), "reason": e["reason"]} for e in found.ignored]
        elif path.is_file():
            files.append(path)
        else:
            failures.append({"path": printable(str(path)), "error": "no such file or folder"})
    return files, failures


def predict_files(predictor: Predictor, files: list[Path], topk: int, views: int) -> tuple[list[dict], list[dict]]:
    """Decode in chunks (so a folder of a million photos never sits in memory) and predict.
    Every file is either a result or a failure; paths are printable (printable())."""
    results, failures = [], []
    for i in range(0, len(files), predictor.batch_size):
        images, names = [], []
        for path in files[i:i + predictor.batch_size]:
            try:  # decoded at reduced scale when large (a 108 MP camera JPEG costs a 2 MP decode)
                images.append(predictor.network.read_image(read_file(path)))
                names.append(path)
            except (BadImage, OSError) as e:
                failures.append({"path": printable(str(path)), "error": str(e) or type(e).__name__})
        for path, top in zip(names, predictor.predict_images(images, topk, views)):
            results.append({"path": printable(str(path)), "file": path, "top": top})
    return results, failures


def print_table(results: list[dict]) -> None:
    for r in results:
        print(r["path"])
        for rank, c in enumerate(r["top"], 1):
            print(f"  {rank}. {100 * c['probability']:6.2f}%  {c['name']} ({c['id']})")


def sheet(results: list[dict], path: str | Path, columns: int = 4) -> Path:
    """The paper's Fig. 4 (left): each image above the bars of its top-5 probabilities."""
    import math

    from .plots import pyplot, save

    plt = pyplot()
    n = len(results)
    columns = min(columns, n)
    rows = math.ceil(n / columns)
    fig, axes = plt.subplots(2 * rows, columns, figsize=(3.2 * columns, 4.6 * rows),
                             gridspec_kw={"height_ratios": [3, 1.6] * rows}, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for i, r in enumerate(results):
        row, col = divmod(i, columns)
        ax = axes[2 * row, col]
        img = open_rgb(read_file(r["file"]), min_side=256)
        img.thumbnail((256, 256))
        ax.imshow(img)
        ax.set_title(Path(r["path"]).name[:28], fontsize=8)
        bars = axes[2 * row + 1, col]
        bars.axis("on")
        top = r["top"][:5]
        names = [t["name"][:22] for t in top][::-1]
        probs = [t["probability"] for t in top][::-1]
        bars.barh(range(len(top)), probs, color=["#999999"] * (len(top) - 1) + ["#c0392b"])
        bars.set_yticks(range(len(top)), names, fontsize=7)
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=6)
    return save(fig, path, dpi=110)


def main(args) -> int:
    """Exit status (one rule): 2, with one line and nothing written, when an input does not exist,
    the inputs hold no files, or no file is a readable image; 0 otherwise, the unreadable files
    among the others listed on stderr (and under "failures" in the JSON) as skipped."""
    for output in (args.sheet, None if args.json in (None, "-") else args.json):
        if output:
            writable_output(output, "output")
    predictor = Predictor(args.checkpoint, args.weights, args.device, precision=args.precision)
    missing = [item for item in args.inputs if not os.path.lexists(item)]
    if missing:
        raise UserError(f"{printable(missing[0])}: no such file or folder; give existing image files or folders")
    ignored: list[dict] = []
    files, failures = image_files(args.inputs, ignored)
    if not files and not failures:
        raise UserError(f"no files in {', '.join(map(printable, args.inputs))}: nothing to predict"
                        + (f" ({len(ignored)} system or hidden entries ignored)" if ignored else ""))
    results, bad = predict_files(predictor, files, args.topk, args.views)
    failures += bad
    if not results:
        raise UserError(f"none of the {len(failures)} file(s) found is a readable image (e.g. {failures[0]['path']}: "
                        f"{failures[0]['error']})")
    if args.json:
        text = json.dumps({"results": [{k: v for k, v in r.items() if k != "file"} for r in results],
                           "failures": failures, "ignored": ignored, "source": predictor.network.source}, indent=2)
        if args.json == "-":
            print(text)
        else:
            Path(args.json).write_text(text + "\n")
    else:
        print_table(results)
    if args.sheet:
        print(f"sheet: {sheet(results, args.sheet)}", file=sys.stderr)
    for f in failures:
        print(f"skipped {f['path']}: {f['error']}", file=sys.stderr)
    # found = predicted + skipped; system and hidden files are not counted as found
    print(f"{len(results) + len(failures)} file(s) found: {len(results)} image(s) predicted, {len(failures)} "
          f"failure(s){f'; {len(ignored)} system or hidden entries ignored' if ignored else ''}", file=sys.stderr)
    return 0
