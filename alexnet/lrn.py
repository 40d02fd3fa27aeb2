"""§3.3 local response normalisation, within each tower, with a fast training path.

    lrn = LocalResponseNorm(5, alpha=1e-4, beta=0.75, k=2.0, convention="authors", groups=2)
    y = lrn(x)                                    # (B, C, H, W) -> (B, C, H, W)

b_i = a_i / (k + alpha' * sum_{j = i - n//2}^{i + (n-1)//2} a_j^2) ^ beta, the sum clipped to the
tower's maps, computed as a sum of shifted slices of a^2 (`_lrn`), with a hand-written backward for
training (`_LRNFunction`); under tracing (ONNX and TorchScript export) it is F.local_response_norm,
which the exporters understand. On a CPU, F.local_response_norm's graph (pad, avg_pool3d, pow, div
and their backwards, each a fresh full-size tensor) made a training step of the half-width network
~2.5x slower than this and an evaluation ~1.3x, and it has no bf16 kernel. tests/test_model.py
checks all three against a float64 loop, and the gradient with gradcheck.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .errors import UserError

LRN_CONVENTIONS = ("authors", "literal")


class LocalResponseNorm(nn.Module):
    """§3.3 response normalisation across neighbouring maps, within each tower.

    b_i = a_i / (k + alpha' * sum_{j = i - n//2}^{i + (n-1)//2} a_j^2) ^ beta, the sum clipped to the
    tower's maps. convention="authors": alpha' = alpha / n (cuda-convnet, and what
    torch.nn.LocalResponseNorm computes); "literal": alpha' = alpha, the printed formula (which then
    needs alpha=5e-4 to match the authors' network). Caffe's AlexNet uses k=1; the paper k=2.
    """

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0,
                 convention: str = "authors", groups: int = 1):
        super().__init__()
        if convention not in LRN_CONVENTIONS:
            raise UserError(f"LRN convention {convention!r} is not one of {', '.join(LRN_CONVENTIONS)}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.convention, self.groups = convention, groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        coefficient = self.alpha / self.size if self.convention == "authors" else self.alpha
        if not torch.jit.is_tracing():  # not exporting (ONNX and TorchScript trace the F version below)
            if torch.is_grad_enabled() and x.requires_grad:  # training: the hand-written backward
                return _LRNFunction.apply(x, self.size, coefficient, self.beta, self.k, self.groups)
            return _lrn(x, self.size, coefficient, self.beta, self.k, self.groups)[0]
        # F.local_response_norm averages the window (divides by n): pass n*alpha for the literal form.
        alpha = self.alpha if self.convention == "authors" else self.alpha * self.size
        if self.groups == 1:
            return F.local_response_norm(x, self.size, alpha, self.beta, self.k)
        b, c, h, w = x.shape  # each tower normalises over its own c/groups maps only
        y = F.local_response_norm(x.reshape(b * self.groups, c // self.groups, h, w),
                                  self.size, alpha, self.beta, self.k)
        return y.reshape(b, c, h, w)

    def extra_repr(self) -> str:
        return (f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"convention={self.convention}, groups={self.groups}")


def _window_sum(z: torch.Tensor, before: int, after: int, groups: int) -> torch.Tensor:
    """(B, C, H, W) -> the sum over channels j in [i - before, i + after] of z_j, clipped to each of
    the `groups` towers' channels; any memory format (shifted slices, added in place)."""
    out = z.clone()
    c = z.shape[1] // groups
    for g in range(groups):
        zg, og = z[:, g * c:(g + 1) * c], out[:, g * c:(g + 1) * c]
        for off in range(1, min(before, c - 1) + 1):
            og[:, off:] += zg[:, :-off]
        for off in range(1, min(after, c - 1) + 1):
            og[:, :-off] += zg[:, off:]
    return out


def _lrn(x: torch.Tensor, size: int, coefficient: float, beta: float, k: float, groups: int):
    """(output in x's dtype, x in float32 or float64, d, d^-beta): b = a d^-beta, computed in float32
    for 16-bit inputs."""
    dtype = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    xf = x.to(dtype)
    d = _window_sum(xf * xf, size // 2, (size - 1) // 2, groups).mul_(coefficient).add_(k)
    p = d.pow(-beta)
    return (xf * p).to(x.dtype), xf, d, p


class _LRNFunction(torch.autograd.Function):
    """§3.3 with a hand-written backward: b_i = a_i d_i^-beta, d_i = k + coefficient * sum_j a_j^2.

    db_i/da_m = d_i^-beta [i = m] - 2 beta coefficient a_i a_m d_i^(-beta-1) [m in window(i)], so the
    gradient is g d^-beta - 2 beta coefficient a * (the transposed window's sum of g a d^(-beta-1)),
    a few passes in place, in float32 under autocast."""

    @staticmethod
    def forward(ctx, x, size: int, coefficient: float, beta: float, k: float, groups: int):
        y, xf, d, p = _lrn(x, size, coefficient, beta, k, groups)
        ctx.save_for_backward(xf, d, p)
        ctx.options = (size, coefficient, beta, groups, x.dtype)
        return y

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        xf, d, p = ctx.saved_tensors
        size, coefficient, beta, groups, dtype = ctx.options
        g = grad.to(xf.dtype)
        t = (g * xf).mul_(p).div_(d)  # g_j a_j d_j^(-beta-1)
        u = _window_sum(t, (size - 1) // 2, size // 2, groups)  # the transposed window
        dx = (g * p).sub_(u.mul_(xf).mul_(2 * beta * coefficient))
        return dx.to(dtype), None, None, None, None, None
