"""`alexnet info`: the layer table of a network (the paper's Fig. 2) and what this machine has.

    alexnet info                          # versions, devices, threads
    alexnet info --model alexnet2012      # layer, output shape, parameters, multiply-accumulates
    alexnet info --model alexnet_owt --input-size 128 --json owt128.json

The table is measured, not typed in: a forward pass with hooks records each layer's output shape,
its parameters and its multiply-accumulates (MACs: conv and FC layers; LRN, pooling and ReLU are
counted as 0). For alexnet2012 at 224 px the totals are 60,965,224 parameters and ~0.72 GMAC.
"""
from __future__ import annotations

import json
import os
import platform
import sys
from pathlib import Path

import torch
from torch import nn

from . import __version__
from .fileio import writable_output
from .model import VARIANTS, AlexNet, LocalResponseNorm, build, evaluating


def describe(m: nn.Module) -> str:
    """A short description of a layer, in the paper's terms."""
    if isinstance(m, nn.Conv2d):
        k, s = m.kernel_size[0], m.stride[0]
        pad = "ceil" if type(m).__name__ == "CeilConv2d" else f"pad {m.padding[0]}"
        groups = f", {m.groups} towers" if m.groups > 1 else ""
        return f"conv {k}x{k}x{m.in_channels // m.groups}/{s} {pad}, {m.out_channels}{groups}"
    if isinstance(m, nn.Linear):
        return f"fc {m.in_features} -> {m.out_features}"
    if isinstance(m, nn.MaxPool2d):
        return f"max-pool {m.kernel_size}x{m.kernel_size}/{m.stride}"
    if isinstance(m, LocalResponseNorm):
        towers = ", per tower" if m.groups > 1 else ""
        return f"LRN n={m.size} k={m.k:g} alpha={m.alpha:g} beta={m.beta:g}{towers}"
    if isinstance(m, nn.BatchNorm2d):
        return "batch norm"
    if isinstance(m, nn.AdaptiveAvgPool2d):
        return f"adaptive avg-pool to {m.output_size[0]}x{m.output_size[1]}"
    return type(m).__name__


def layer_table(net: AlexNet, input_size: int = 224) -> list[dict]:
    """One row per layer that has an effect: name, what it is, output shape, params, MACs."""
    rows: list[dict] = []

    def hook(name):
        def record(m, inputs, output):
            shape = list(output.shape[1:])  # (C, H, W) or (F,)
            macs = 0
            if isinstance(m, nn.Conv2d):  # each output value: in/groups * k * k MACs
                macs = output[0].numel() * (m.in_channels // m.groups) * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.Linear):
                macs = m.in_features * m.out_features
            rows.append({"layer": name, "op": describe(m), "output": shape,
                         "params": sum(p.numel() for p in m.parameters()), "macs": macs})
        return record

    handles = [m.register_forward_hook(hook(name)) for name, m in net.named_children()
               if not isinstance(m, (nn.Identity, nn.Dropout))]
    try:
        with torch.no_grad(), evaluating(net):
            net(torch.zeros(1, 3, input_size, input_size, device=next(net.parameters()).device))
    finally:
        for h in handles:
            h.remove()
    return rows


def format_shape(shape: list[int]) -> str:
    """Paper style: 55x55x96 (H x W x C), or 4096."""
    if len(shape) == 3:
        c, h, w = shape
        return f"{h}x{w}x{c}"
    return "x".join(map(str, shape))


def format_table(rows: list[dict]) -> str:
    header = ("layer", "op", "output", "params", "MACs")
    lines = [(r["layer"], r["op"], format_shape(r["output"]), f"{r['params']:,}" if r["params"] else "-",
              f"{r['macs']:,}" if r["macs"] else "-") for r in rows]
    total_params = sum(r["params"] for r in rows)
    total_macs = sum(r["macs"] for r in rows)
    lines.append(("total", "", "", f"{total_params:,}", f"{total_macs:,}"))
    widths = [max(len(str(x[i])) for x in [header, *lines]) for i in range(5)]
    fmt = lambda x: "  ".join(str(v).ljust(w) if i < 3 else str(v).rjust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(x, widths)))
    rule = "-" * len(fmt(header))
    return "\n".join([fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1])])


def environment() -> dict:
    """Library, Python and device versions: printed by `alexnet info`, saved with every run."""
    import torchvision

    env = {
        "alexnet": __version__, "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "torchvision": torchvision.__version__,
        "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "cuda_available": torch.cuda.is_available(), "cuda": torch.version.cuda,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "devices": [],
    }
    if torch.cuda.is_available():
        env["cudnn"] = torch.backends.cudnn.version()
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            env["devices"].append({"index": i, "name": p.name, "memory_gib": round(p.total_memory / 2**30, 1),
                                   "capability": f"{p.major}.{p.minor}"})
    return env


def main(args) -> int:
    if args.json:
        writable_output(args.json, "JSON table")
    if args.model is None:
        env = environment()
        if args.json:
            Path(args.json).write_text(json.dumps(env, indent=2) + "\n")
        width = max(map(len, env))
        for key, value in env.items():
            if key == "devices":
                value = "; ".join(f"{d['index']}: {d['name']} ({d['memory_gib']} GiB)" for d in value) or "-"
            print(f"{key.ljust(width)}  {value}")
        return 0
    net = build(args.model, num_classes=args.num_classes, norm=args.norm)
    rows = layer_table(net, args.input_size)
    print(f"{args.model}: {VARIANTS[args.model].description}\n"
          f"{args.num_classes} classes, {args.input_size}x{args.input_size} input, norm={net.norm}, "
          f"MACs of conv and fc layers per image\n")
    print(format_table(rows))
    if args.json:
        report = {"model": args.model, "input_size": args.input_size, "num_classes": args.num_classes,
                  "norm": net.norm, "layers": rows,
                  "params": sum(r["params"] for r in rows), "macs": sum(r["macs"] for r in rows)}
        Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
    return 0
