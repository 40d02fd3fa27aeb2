"""An exponential moving average of the weights (train.ema), evaluated and saved beside them.

    ema = EMA(model, decay=0.999)        # a copy of the network that averages its weights
    ema.update(model, t)                 # after optimizer step t (0-based)
    evaluate(ema.module, ...)            # the averaged network, in eval mode

The average follows Polyak-Ruppert averaging as the fast-training recipes use it (Mosaic's EMA,
timm's ModelEmaV2, TensorFlow's ExponentialMovingAverage): after every optimizer step,

    avg <- d_t * avg + (1 - d_t) * w,     d_t = min(decay, (1 + t) / (10 + t))

`decay` is per optimizer step (a half-life of ln 0.5 / ln decay steps; 0.999: 693 steps); d_t
ramps it in over the first steps, as TensorFlow's num_updates does, so that the average does not
remember the random initialisation for thousands of steps in a short run. d_t depends on t alone,
so a resumed run continues the same average exactly. Floating-point buffers (batch norm's running
mean and variance) are averaged like the weights, integer ones (num_batches_tracked) copied.
"""
from __future__ import annotations

import copy
import math

import torch

__all__ = ["EMA", "decay_for_half_life"]


def decay_for_half_life(steps: float) -> float:
    """The per-step decay whose weights halve after `steps` optimizer steps (> 0): 0.5 ** (1 / steps)."""
    return 0.5 ** (1.0 / max(steps, 1e-9))


class EMA:
    """The averaged copy of `model` (an nn.Module, unwrapped: not DDP or torch.compile), on its
    device. Raises ValueError for a decay outside (0, 1)."""

    def __init__(self, model: torch.nn.Module, decay: float):
        if not 0 < decay < 1:
            raise ValueError(f"EMA decay must be in (0, 1), got {decay}")
        self.decay = decay
        self.module = copy.deepcopy(model).eval()
        for p in self.module.parameters():
            p.requires_grad_(False)

    def half_life(self) -> float:
        """Optimizer steps after which a weight's share of the average has halved."""
        return math.log(0.5) / math.log(self.decay)

    def decay_at(self, t: int) -> float:
        """d_t for optimizer step t (0-based)."""
        return min(self.decay, (1.0 + t) / (10.0 + t))

    @torch.no_grad()
    def update(self, model: torch.nn.Module, t: int) -> None:
        """Fold in the weights of `model` after optimizer step t (0-based)."""
        d = self.decay_at(t)
        avg = [a for a in self.module.state_dict().values() if a.is_floating_point()]
        new = [w.detach() for w in model.state_dict().values() if w.is_floating_point()]
        torch._foreach_lerp_(avg, new, 1.0 - d)  # avg + (1 - d) (w - avg), one kernel per dtype/device
        for a, w in zip(self.module.buffers(), model.buffers()):
            if not a.is_floating_point():
                a.copy_(w)

    def state_dict(self) -> dict:
        return self.module.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state)
