"""How close training comes to the hardware: FLOPs per image, the device's measured ceiling, MFU.

    flops = mfu.train_flops_per_image(model, crop)      # forward + backward, from the layer table
    peak = mfu.ceiling(device, torch.bfloat16)          # {"flops_per_s": ..., "best": "conv2 ...", ...}
    share = images_per_s * flops / peak["flops_per_s"]   # model FLOPs utilisation (nanoGPT's MFU)

The ceiling is measured, not looked up: the best rate of matrix products and of AlexNet's own
convolutions (conv1..conv5 and fc6's product at 224 px, both memory formats) on this device, in
this dtype, with the threads this process uses, each after a warm-up and as the best of several
repetitions. A real training step runs the same kernels, so it cannot beat the best of them: a
share above 100% means the probe missed a faster kernel, and is a bug. Probing takes a few seconds,
so results are cached per machine (device name, dtype, threads, torch version) in the alexnet cache
folder (ALEXNET_CACHE, else ~/.cache/alexnet).
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import torch
import torch.nn.functional as F

PROBE_VERSION = 1


def train_flops_per_image(model: torch.nn.Module, size: int) -> float:
    """FLOPs of one training image at `size` px: forward 2 x MACs; backward 2 x MACs for the weight
    gradients of every layer plus 2 x MACs for the input gradients of every layer but the first
    (the image needs none). LRN, pooling and ReLU are not counted, as in nanoGPT's estimate."""
    from .layers import layer_table

    macs = [r["macs"] for r in layer_table(model, size) if r["macs"]]
    return 2.0 * sum(macs) * 3 - 2.0 * macs[0]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    if device.type == "cpu":
        try:
            for line in Path("/proc/cpuinfo").read_text().splitlines():
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        import platform
        return platform.processor() or platform.machine()
    return device.type


def _best_rate(fn, flops: float, device: torch.device, repeats: int, warmup_s: float) -> float:
    """FLOP/s of fn's fastest run, after warming up for warmup_s (oneDNN JIT, AMX and GPU clocks)."""
    from .runtime import synchronize

    t0 = time.perf_counter()
    while True:  # at least two calls: the first one also compiles kernels
        fn()
        fn()
        synchronize(device)
        if time.perf_counter() - t0 >= warmup_s:
            break
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        synchronize(device)
        best = min(best, time.perf_counter() - t)
    return flops / best


def probe_shapes(batch: int) -> list[tuple[str, dict]]:
    """AlexNet's largest conv layers (torchvision's alexnet_owt and the paper's alexnet2012) and
    fc6's product at 224 px with `batch` images, plus square products: (name, spec)."""
    # conv1 (3 input channels) and the grouped convs run well below these on every device measured
    convs = [  # name, in channels, out channels, kernel, stride, padding, groups, input side
        ("owt conv2", 64, 192, 5, 1, 2, 1, 27), ("owt conv4", 384, 256, 3, 1, 1, 1, 13),
        ("2012 conv3", 256, 384, 3, 1, 1, 1, 13)]
    shapes = [(n, {"conv": (cin, cout, k, s, p, g, side)}) for n, cin, cout, k, s, p, g, side in convs]
    shapes += [("fc6 product", {"mm": (batch, 9216, 4096)}), ("square product 2048", {"mm": (2048, 2048, 2048)}),
               ("square product 4096", {"mm": (4096, 4096, 4096)})]
    return shapes


def measure_ceiling(device: torch.device, dtype: torch.dtype | None, batch: int | None = None,
                    repeats: int = 5, warmup_s: float = 0.3) -> dict:
    """Probe now (no cache): the best FLOP/s over probe_shapes, fp32 when dtype is None."""
    dt = dtype or torch.float32
    batch = batch or (256 if device.type == "cuda" else 32)
    rates = {}
    with torch.no_grad():  # tensors made in the dtype itself: no autocast casts to slow the probe down
        for name, spec in probe_shapes(batch):
            if "mm" in spec:
                m, k, n = spec["mm"]
                if device.type == "cpu" and m * k * n > 2048 ** 3:
                    continue  # seconds per call on a CPU, and no faster than 2048
                a = torch.randn(m, k, device=device, dtype=dt)
                b = torch.randn(k, n, device=device, dtype=dt)
                rates[name] = _best_rate(lambda: a @ b, 2.0 * m * k * n, device, repeats, warmup_s)
                continue
            cin, cout, k, s, p, g, side = spec["conv"]
            w = torch.randn(cout, cin // g, k, k, device=device, dtype=dt)
            out_side = (side + 2 * p - k) // s + 1
            flops = 2.0 * batch * cout * out_side ** 2 * (cin // g) * k * k
            for fmt in (torch.contiguous_format, torch.channels_last):
                x = torch.randn(batch, cin, side, side, device=device, dtype=dt).contiguous(memory_format=fmt)
                wf = w.contiguous(memory_format=fmt)
                label = f"{name} {'NHWC' if fmt is torch.channels_last else 'NCHW'}"
                rates[label] = _best_rate(lambda: F.conv2d(x, wf, stride=s, padding=p, groups=g), flops,
                                          device, repeats, warmup_s)
    best = max(rates, key=rates.get)
    return {"flops_per_s": rates[best], "best": best, "rates": rates, "dtype": str(dt).split(".")[-1],
            "device": device_name(device), "threads": torch.get_num_threads(), "batch": batch,
            "torch": torch.__version__, "probe_version": PROBE_VERSION}


def ceiling(device: torch.device, dtype: torch.dtype | None, refresh: bool = False) -> dict:
    """The device's measured ceiling in this dtype (see measure_ceiling), cached per machine.
    refresh=True measures again and keeps the higher of the two (a probe that ran while something
    else used the machine reads low; `alexnet bench train` refreshes)."""
    from .fileio import atomic_write, cache_dir

    key = "|".join([device_name(device), str(dtype or torch.float32), str(torch.get_num_threads()),
                    torch.__version__, str(PROBE_VERSION)])
    path = cache_dir() / "ceilings.json"
    try:
        cache = json.loads(path.read_text())
    except (OSError, ValueError):
        cache = {}
    if key in cache and not refresh:
        return cache[key]
    result = measure_ceiling(device, dtype)
    if key in cache and cache[key]["flops_per_s"] > result["flops_per_s"]:
        result = cache[key]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, (json.dumps({**cache, key: result}, indent=1) + "\n").encode(), durable=False)
    except OSError:  # a read-only home: measure again next time
        pass
    return result


def peak_memory(device: torch.device) -> dict:
    """The most memory this process has held: CUDA's allocator peak on a GPU, the resident set
    size on a CPU (Linux reports ru_maxrss in KiB)."""
    if device.type == "cuda":
        return {"peak_memory_gib": torch.cuda.max_memory_allocated(device) / 2 ** 30, "memory_kind": "cuda allocated"}
    return {"peak_memory_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20,
            "memory_kind": "process RSS"}
