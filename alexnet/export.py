"""`alexnet export CKPT OUT --format onnx|torchscript|pt2|safetensors`: the network for other tools.

onnx, torchscript and pt2 (torch.export's ExportedProgram, what AOTInductor compiles; TorchScript
is in maintenance) are programs. Each takes what a user has: RGB images already resized to the
network's input (C x C, the centre crop of the shorter-side-S image, §2) as float32 on the 0-255
scale, shape (batch, 3, C, C), any batch size, and returns the logits (softmax gives the
probabilities). The mean subtraction the network was trained with (the training set's mean image
cropped to the centre, or per-channel mean/std) is inside the program, so nothing about
normalisation can be got wrong downstream. safetensors holds the weights alone, for other tools and
for every command here (alexnet.weightsfile). Every file's metadata says the rest: the variant,
input size S and C, the normalisation, the class ids and names, and where it came from with its
SHA-256 (ONNX metadata_props; an `alexnet.json` extra file for TorchScript and pt2; the
safetensors header).

    torch.export.load("model.pt2").module()(images)     # (B, 3, C, C) RGB 0-255 -> (B, classes) logits
"""
from __future__ import annotations

import copy
import importlib.util
import json
import warnings
from pathlib import Path

import torch

from . import runtime, weightsfile
from .errors import UserError
from .fileio import atomic_write, writable_output
from .inference import Network, load_any


def _pool_matrix(n_in: int, n_out: int) -> torch.Tensor:
    """(n_out, n_in): row i averages bin [floor(i n_in / n_out), ceil((i+1) n_in / n_out)), as adaptive pooling does."""
    m = torch.zeros(n_out, n_in)
    for i in range(n_out):
        a, b = (i * n_in) // n_out, -((-(i + 1) * n_in) // n_out)
        m[i, a:b] = 1.0 / (b - a)
    return m


class FixedAdaptivePool(torch.nn.Module):
    """Adaptive average pooling for one known input size, as two small matrix products.

    The TorchScript-based ONNX exporter cannot take nn.AdaptiveAvgPool2d once the batch axis is
    dynamic ("input size not accessible"); for the fixed C x C input an export has, the pooling is a
    fixed linear map, which every runtime runs.
    """

    def __init__(self, size_in: tuple[int, int], size_out: tuple[int, int]):
        super().__init__()
        self.register_buffer("ph", _pool_matrix(size_in[0], size_out[0]))
        self.register_buffer("pw", _pool_matrix(size_in[1], size_out[1]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ph @ x @ self.pw.t()


def exportable(model: torch.nn.Module, crop: int) -> torch.nn.Module:
    """A copy of the model with its adaptive pooling fixed for crop x crop inputs."""
    model = copy.deepcopy(model).eval()
    pool = getattr(model, "avgpool", None)
    if isinstance(pool, torch.nn.AdaptiveAvgPool2d):
        seen = {}
        handle = pool.register_forward_hook(lambda m, inp, out: seen.update(i=inp[0].shape[-2:], o=out.shape[-2:]))
        with torch.no_grad():
            model(torch.zeros(1, 3, crop, crop))
        handle.remove()
        model.avgpool = FixedAdaptivePool(tuple(seen["i"]), tuple(seen["o"]))
    return model


class WithPreprocessing(torch.nn.Module):
    """(B, 3, C, C) float RGB 0-255 -> (B, classes) logits, mean subtraction included."""

    def __init__(self, net: Network):
        super().__init__()
        self.net = exportable(net.model, net.crop)
        c, s = net.crop, net.size
        off = int(round((s - c) / 2.0))
        if net.norm.mean_image is not None:  # the centre crop of the mean image, as evaluation uses
            mean = net.norm_for(s).mean_image[:, off:off + c, off:off + c].clone()
            std = torch.ones(3, 1, 1)
        else:
            mean, std = net.norm.mean.view(3, 1, 1).clone(), net.norm.std.view(3, 1, 1).clone()
        self.register_buffer("mean", mean.float())
        self.register_buffer("inv_std", (1.0 / std).float())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net((images - self.mean) * self.inv_std)


def metadata(net: Network, inside: bool = True) -> dict:
    """What an exported file says about its network: variant, source and its SHA-256, input, sizes,
    normalisation, output, classes. inside: the mean subtraction is in the program (onnx,
    torchscript, pt2), not for a weights file, whose user subtracts it (safetensors)."""
    n = net.norm
    where = "inside the graph" if inside else "subtract it before the network"
    return {
        "producer": "alexnet", "variant": getattr(net.model, "variant", None),
        "source": net.source, "source_sha256": net.sha256,
        "input": f"float32 RGB, 0-255, shape (batch, 3, {net.crop}, {net.crop}): the centre {net.crop}x{net.crop} "
                 f"crop of the image resized so that its shorter side is {net.size}",
        "input_size": net.crop, "resize_shorter_side": net.size,
        "normalization": (f"per-pixel mean image of the training set ({where})" if n.mean_image is not None
                          else f"per-channel (x - mean) / std ({where})"),
        "mean_rgb": (n.mean_image.mean((1, 2)) if n.mean_image is not None else n.mean).tolist(),
        "std_rgb": None if n.std is None else n.std.tolist(),
        "output": "logits (batch, classes); softmax gives the probabilities",
        "class_ids": [c["id"] for c in net.classes], "class_names": [c["name"] for c in net.classes],
    }


def export(net: Network, fmt: str, out: str | Path) -> Path:
    """Write `net` (on the CPU, fp32) to `out` in `fmt` (FORMATS); returns `out`. Raises UserError
    for an unknown format."""
    out = Path(out)
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use {', '.join(FORMATS)}")
    net = net.to("cpu")
    if fmt == "safetensors":
        return weightsfile.write(net, out, metadata(net, inside=False))
    # the weights in the default layout: channels_last is this process's inference choice, and torch.export's
    # save warns about each such tensor ("No complete tensor found")
    module = WithPreprocessing(net).eval().to(memory_format=torch.contiguous_format)
    example = torch.rand(2, 3, net.crop, net.crop) * 255
    meta = metadata(net)
    if fmt == "pt2":
        # the batch axis is dynamic (any size from 1); the image side is fixed, as the network's input is
        batch = torch.export.Dim("batch", min=1)
        program = torch.export.export(module, (example,), dynamic_shapes={"images": {0: batch}})
        extra = {"alexnet.json": json.dumps(meta)}
        return atomic_write(out, lambda f: torch.export.save(program, f, extra_files=extra))
    if fmt == "torchscript":
        # TorchScript is in maintenance: torch's FutureWarnings about it say nothing a user of this
        # command can act on; the file is what it always was
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            warnings.simplefilter("ignore", FutureWarning)
            traced = torch.jit.trace(module, example)
            torch.jit.save(traced, str(out), _extra_files={"alexnet.json": json.dumps(meta)})
        return out
    import onnx

    # the TorchScript-based exporter (dynamo=False) needs no onnxscript; its deprecation and tracer
    # warnings (the size checks are constants for a fixed C x C input) say nothing useful to a user
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(module, (example,), str(out), input_names=["images"], output_names=["logits"],
                          dynamic_axes={"images": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    model = onnx.load(str(out))
    for key, value in meta.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.checker.check_model(model)
    onnx.save(model, str(out))
    return out


FORMATS = ("onnx", "torchscript", "pt2", "safetensors")
EXTENSIONS = {".onnx": "onnx", ".pt": "torchscript", ".pts": "torchscript", ".torchscript": "torchscript",
              ".pt2": "pt2", ".safetensors": "safetensors"}
NAMES = {"onnx": ("an ONNX", ".onnx"), "torchscript": ("a TorchScript", ".pt"), "pt2": ("a torch.export", ".pt2"),
         "safetensors": ("a safetensors", ".safetensors")}  # for messages: the file's kind and its usual extension


def paths_and_format(paths: list[str], weights: str | None, fmt: str | None) -> tuple[str | None, str, str]:
    """(checkpoint or None, OUT, format) from `export`'s positionals (CKPT OUT, or OUT with
    --weights) and --format, the format taken from OUT's extension when not given. Raises UserError
    for the wrong number of paths, an extension that contradicts --format (a .pt holding ONNX), or
    neither telling the format."""
    if len(paths) not in (1, 2) or (len(paths) == 1) != bool(weights):
        raise UserError("give exactly one of a checkpoint or --weights, and the file to write: CKPT OUT, or "
                        f"--weights W OUT (got {len(paths)} path(s){' and --weights' if weights else ''})")
    checkpoint, out = (None, paths[0]) if len(paths) == 1 else paths
    implied = EXTENSIONS.get(Path(out).suffix.lower())
    if fmt is None and implied is None:
        raise UserError(f"cannot tell the format from {out}'s extension: name it .onnx, .pt (TorchScript), .pt2 or "
                        f".safetensors, or give --format {'|'.join(FORMATS)}")
    if fmt is not None and implied is not None and fmt != implied:
        raise UserError(f"{out} has the extension of {NAMES[implied][0]} file but --format is {fmt}: name it "
                        f"{Path(out).with_suffix(NAMES[fmt][1])} or leave --format out")
    return checkpoint, out, fmt or implied


def main(args) -> int:
    args.checkpoint, args.out, args.format = paths_and_format(args.paths, args.weights, args.format)
    writable_output(args.out, "export")
    # traced on the CPU in fp32 whatever the machine has: the exported graph must run anywhere
    rt = runtime.setup("cpu", "fp32", distributed_job=False)
    net = load_any(args.checkpoint, args.weights, rt.device, rt.dtype)
    if args.format == "onnx" and importlib.util.find_spec("onnx") is None:
        raise UserError("ONNX export needs the onnx package: pip install onnx onnxruntime")
    path = export(net, args.format, args.out)
    what = ("weights; the mean subtraction and sizes are in its metadata" if args.format == "safetensors"
            else f"input (batch, 3, {net.crop}, {net.crop}) RGB 0-255")
    print(f"{path}: {args.format}, {what}, {len(net.classes)} classes")
    return 0
