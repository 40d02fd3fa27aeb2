"""Exact evaluation (§6): top-1 / top-5 error, loss and per-class accuracy, any number of ranks.

    metrics = evaluate(model, loader, device)      # loader: an evaluation Loader (views 1 or 10)

Counting is exact: every rank sums its own images' counts and the sums are all-reduced, so each
validation image is counted once whatever the world size (the loader gives no padding duplicates).
With 10 views the softmax of the views is averaged per image before ranking (§4.1); with several
models (an ensemble, §6 "5 CNNs") their softmaxes are averaged too. Ties count against the model:
an image is top-k correct when fewer than k other classes score at least as high as the true one,
so a network that outputs the same score for every class is never right by luck.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from . import distributed
from .checkpoint import unwrap


def topk_correct(probs: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """(B, C) scores, (B,) labels -> (B,) bool: fewer than k other classes score >= the true one."""
    true = probs.gather(1, labels[:, None])
    at_least = (probs >= true).sum(1) - 1  # the other classes scoring at least as high
    return at_least < k


def autocast(device: torch.device, dtype: torch.dtype | None):
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


@torch.no_grad()
def evaluate(models, loader, device: torch.device, amp_dtype: torch.dtype | None = None,
             num_classes: int | None = None) -> dict:
    """Top-1/top-5 accuracy and error, mean loss (of the averaged softmax), per-class accuracy."""
    models = models if isinstance(models, (list, tuple)) else [models]
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    if num_classes is None:
        num_classes = unwrap(models[0]).fc8.out_features
    sums = torch.zeros(4, dtype=torch.float64, device=device)  # n, top-1 right, top-5 right, loss
    per_class = torch.zeros(2, num_classes, dtype=torch.float64, device=device)  # right, total
    for batch in loader.epoch(0):
        x, y = batch.images, batch.labels.to(device)
        views = x.shape[1] if x.dim() == 5 else 1
        flat = x.flatten(0, 1) if views > 1 else x
        probs = 0
        for m in models:
            with autocast(device, amp_dtype):
                logits = m(flat)
            p = F.softmax(logits.float(), dim=1)
            probs = probs + (p.view(len(y), views, -1).mean(1) if views > 1 else p)
        probs = probs / len(models)
        right1 = topk_correct(probs, y, 1)
        right5 = topk_correct(probs, y, min(5, probs.shape[1]))
        nll = -torch.log(probs.gather(1, y[:, None]).clamp_min(1e-12)).squeeze(1)
        sums += torch.stack([torch.tensor(float(len(y)), device=device), right1.sum().double(),
                             right5.sum().double(), nll.sum().double()])
        per_class[0].index_add_(0, y, right1.double())
        per_class[1].index_add_(0, y, torch.ones_like(y, dtype=torch.float64))
    distributed.all_reduce_sum(sums)
    distributed.all_reduce_sum(per_class)
    for m, mode in zip(models, modes):
        m.train(mode)
    n, r1, r5, loss = sums.tolist()
    n = max(n, 1.0)
    acc = (per_class[0] / per_class[1].clamp_min(1)).tolist()
    return {"n_images": int(sums[0].item()), "top1": r1 / n, "top5": r5 / n,
            "top1_error": 1 - r1 / n, "top5_error": 1 - r5 / n, "loss": loss / n,
            "per_class": [a if t > 0 else None for a, t in zip(acc, per_class[1].tolist())]}
