"""What this machine runs: library, Python and device versions.

    env = envinfo.environment()   # {"alexnet": "0.1.0", "torch": ..., "devices": [{"name": ..., ...}], ...}

`alexnet info` prints it; every run folder saves it in env.json (alexnet.runlog), so that a result
names the software and hardware it came from.
"""
from __future__ import annotations

import os
import platform
import sys

import torch

from . import __version__


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
