"""`alexnet info`: the layer table of a network (the paper's Fig. 2) and what this machine has.

    alexnet info                          # versions, devices, threads
    alexnet info --model alexnet2012      # layer, output shape, parameters, multiply-accumulates
    alexnet info --model alexnet_owt --input-size 128 --json owt128.json
    alexnet info --model alexnet2012 --parallel towers   # §3.2: what each of two devices holds and sends

The table is measured, not typed in: a forward pass with hooks records each layer's output shape,
its parameters and its multiply-accumulates (MACs: conv and FC layers; LRN, pooling and ReLU are
counted as 0). For alexnet2012 at 224 px the totals are 60,965,224 parameters and ~0.72 GMAC.
"""
from __future__ import annotations

import json
from pathlib import Path

from .envinfo import environment
from .errors import UserError
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


def towers_report(net, input_size: int, batch: int, precision: str) -> tuple[str, dict]:
    """§3.2 in numbers: what each device holds and sends with model.parallel=towers, beside what
    data parallelism all-reduces. (text, JSON-able dict)."""
    from . import towers

    width = 2 if precision == "bf16" else 4
    rows = towers.plan(net, input_size)
    sent = towers.step_bytes(rows, batch, width)
    params = sum(p.numel() for p in net.parameters())
    # every device's gradients, all-reduced each step: fp32 whatever the autocast precision (the
    # weights are fp32), unless train.grad_compression halves them
    data_parallel = params * 4
    per_image = sent["total"] / batch
    header = ("layer", "each device holds", "params per device", "crosses between the devices, each way",
              "values/image", "MB/step")
    def both(pair: list[int]) -> str:  # "2,048", or "4 / 3" where the towers' shares differ (odd sizes)
        return f"{pair[0]:,}" if pair[0] == pair[1] else f"{pair[0]:,} / {pair[1]:,}"

    lines = []
    for r in rows:
        unit = "kernels" if r["layer"].startswith("conv") else "units"
        step = sum(e["values_per_image"][0] * (2 if e["backward"] else 1) for e in r.get("exchanges", []))
        lines.append((r["layer"], f"{both(r['holds'])} of {r['of']:,} {unit}", both(r["params"]), r["crosses"] or "-",
                      both(r["values_per_image"]) if r["values_per_image"][0] else "-",
                      f"{step * batch * width / 1e6:.1f}" if step else "-"))
    lines.append(("total", "", both([sum(r["params"][t] for r in rows) for t in range(2)]), "",
                  both([sum(r["values_per_image"][t] for r in rows) for t in range(2)]), f"{sent['total'] / 1e6:.1f}"))
    widths = [max(len(x[i]) for x in [header, *lines]) for i in range(6)]
    fmt = lambda x: "  ".join(v.rjust(w) if i in (2, 4, 5) else v.ljust(w)  # noqa: E731
                              for i, (v, w) in enumerate(zip(x, widths))).rstrip()
    rule = "-" * max(len(fmt(x)) for x in [header, *lines])
    text = "\n".join([
        f"{net.variant} on two devices, one tower each (§3.2, Fig. 2): {net.fc8.out_features} classes, "
        f"{input_size}x{input_size} input, batch {batch} per pair of devices, {precision} ({width} bytes per value).",
        "MB/step: what one device sends per optimizer step, forward and backward (the backward pass sends back "
        "as many values at every exchange but the logits); \"a / b\": tower 0's and tower 1's shares where they "
        "differ, MB/step is tower 0's.\n",
        fmt(header), rule, *map(fmt, lines[:-1]), rule, fmt(lines[-1]), "",
        f"model.parallel=towers: each device sends {sent['total'] / 1e6:.1f} MB per step ({sent['forward'] / 1e6:.1f} "
        f"forward, {sent['backward'] / 1e6:.1f} backward), {per_image / 1e3:.0f} KB per image",
        f"model.parallel=data:   each device all-reduces the gradients of {params:,} parameters, "
        f"{data_parallel / 1e6:.1f} MB per step in fp32 whatever the batch (a ring all-reduce over 2 devices sends "
        f"as much and receives as much; train.grad_compression=bf16 halves it)",
        f"at {batch} images per pair the split sends {data_parallel / sent['total']:.1f}x fewer bytes; the two are "
        f"even at {data_parallel / per_image:,.0f} images per pair"])
    report = {"parallel": "towers", "batch_per_pair": batch, "precision": precision, "bytes_per_value": width,
              "layers": rows, "towers_bytes_per_step": sent, "data_parallel_bytes_per_step": data_parallel,
              "params": params, "even_at_batch": data_parallel / per_image}
    return text, report


def main(args) -> int:
    if args.json:
        writable_output(args.json, "JSON table")
    towers_only = [flag for flag, value in (("--batch", args.batch), ("--precision", args.precision)) if value]
    if args.parallel == "towers" and args.model is None:
        raise UserError("--parallel towers describes a network: add --model alexnet2012")
    if towers_only and args.parallel != "towers":
        raise UserError(f"{' and '.join(towers_only)} describe{'s' if len(towers_only) == 1 else ''} what crosses "
                        f"between the towers: add --parallel towers (and --model alexnet2012)")
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
    if args.parallel == "towers":
        if args.model != "alexnet2012":
            raise UserError(f"--parallel towers splits the two towers of alexnet2012 (§3.2); {args.model} has one")
        text, report = towers_report(net, args.input_size, args.batch or 128, args.precision or "fp32")
        print(text)
        if args.json:
            Path(args.json).write_text(json.dumps({"model": args.model, "input_size": args.input_size,
                                                   "num_classes": args.num_classes, **report}, indent=2) + "\n")
        return 0
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
