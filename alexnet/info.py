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
from pathlib import Path

from .envinfo import environment
from .fileio import writable_output
from .layers import layer_table
from .model import VARIANTS, build


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
