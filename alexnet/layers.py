"""The layer table of a network (the paper's Fig. 2), measured rather than typed in.

    rows = layers.layer_table(model.build("alexnet2012"), 224)
    rows[0]   # {"layer": "conv1", "op": "conv 11x11x3/4 ceil, 96", "output": [96, 55, 55],
              #  "params": 34944, "macs": 105415200}

A forward pass with hooks records each layer's output shape, its parameters and its
multiply-accumulates (MACs: conv and FC layers; LRN, pooling and ReLU count 0). `alexnet info
--model` prints it; alexnet.mfu counts a training step's FLOPs from it.
"""
from __future__ import annotations

import torch
from torch import nn

from .model import AlexNet, LocalResponseNorm, evaluating


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
