"""`alexnet train --minutes M`: the best network a wall clock allows, chosen by measuring this machine.

    alexnet train --data prepared/mine --minutes 10       # 10 minutes for the whole command
    alexnet train --data prepared/mine --minutes 10 --set model.width=1   # any choice can be overridden

M is the wall time of the whole command: start-up, decoding the data, training and the final
evaluation. The recipe measures the training step of the candidate networks on this device for a
second each (random batches of the planned size, after a warm-up step), and chooses:

- the network: alexnet2012 with batch norm (He init, no dropout: §4.2's dropout costs a short run
  its convergence speed, measured in docs/benchmarks.md), trained at the largest final crop the
  prepared size S allows (a multiple of 16 px, up to S / 1.15, so that evaluation can go 1.15x
  higher), at the widest of widths 0.5, 0.75, 1 (FC layers 2048 x width units) that still affords
  `min_epochs(N)` epochs of the N training images in the time left; when none does, width 0.5 and a
  warning. Resolution is never traded for epochs: on Imagenette 96-px crops for 13-36 epochs lost
  0.5-3 points to 112-px crops for 11-24 (docs/benchmarks.md, "Top-1 against the clock"); the
  prepared size is the user's resolution choice, the budget buys width.
- the crops over time: random-resized crops (area 25-100%, aspect 3/4-4/3, reflections; milder than
  ImageNet's 8%, which suits 90 epochs of a large set; from 50% in runs of 8 epochs or fewer: min_scale) that grow from 3/4 of the final crop to it
  over the first 3/4 of the time (progressive resizing, as ffcv-imagenet: 160 -> 192 px), then stay.
- evaluation at `eval.crop` = the final crop x 1.15 (at most S), the centre crop and its reflection
  averaged (--views 2): random-resized crops show objects larger than a centre crop of the same
  size does, so a network tests best at a higher resolution than it trained at (Touvron et al.,
  "Fixing the train-test resolution discrepancy", 2019: about 1.15x for these crop scales).
- the optimizer: SGD with Nesterov momentum 0.9, lr 0.04 per 128 images scaled linearly to the
  global batch (128 on a CPU, 512 on a GPU), weight decay 5e-4, no label smoothing (0.1 cost 0.6-0.8
  points of top-1 on Imagenette at 10 minutes, 2 seeds: docs/benchmarks.md), a linear
  warm-up over 3% of the epochs (0.5-2 epochs) and a linear decay that reaches 0 when the clock
  does (train.budget_minutes, set to the time left for training once the data are in memory).
- a moving average of the weights (train.ema) with a half-life of 2% of the planned steps; the run
  ends with it (alexnet.ema).

What the choices depend on: N (the epochs needed), the prepared size S (the largest crop), the
number of validation images (the final evaluation's time), the measured step rate, the budget.
Not on the classes or the photos: nothing here was chosen per data set. Values tuned on
Imagenette (10 classes, 9,469 images, 2-core CPU) are the lr, the crop range and min_epochs.

Under torchrun the budget is wall time for all ranks: rank 0's measurements decide for every rank,
and the training clock is the slowest rank's. With --init the network is the weights' own (only
the crops, epochs and optimizer are chosen, with the fine-tuning preset's lr and head multiplier).
A resumed run (the same command on the same --out, or --resume) keeps the choices it started with,
read from its checkpoint, and trains for the time that is left of its training budget.
Any key given with --set, --config, a flag or an explicit --preset keeps its given value.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from . import config as config_mod, distributed, runtime
from .errors import UserError

__all__ = ["process_start", "min_epochs", "plan", "set_training_time", "Plan"]

WIDTHS = (0.5, 0.75, 1.0)
EVAL_SCALE = 1.15  # eval.crop / final training crop (Touvron et al. 2019)
START_SCALE = 0.75  # progressive resizing starts at this share of the final crop
LR_PER_128 = 0.04
PROBE_S = 1.0  # seconds of timed steps per candidate width
REALISED = 0.8  # share of the probe's rate a run keeps (new kernels at each crop, checkpoints, data): 0.77-0.85
# measured on Imagenette (2-core CPU, 2 and 10 minutes)


def process_start() -> float:
    """The wall-clock time this process started (Linux: /proc, so that Python's and torch's imports
    count against the budget too); elsewhere, when this module was imported."""
    try:
        ticks = int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])
        uptime = float(Path("/proc/uptime").read_text().split()[0])
        return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return _IMPORTED


_IMPORTED = time.time()


def min_epochs(n: int) -> float:
    """Epochs a from-scratch run needs before a bigger network or crop pays: 32 for 10,000 images,
    24 for 100,000, 16 for ImageNet's 1.28 million (ffcv-imagenet's shortest config: 16 epochs)."""
    return max(16.0, min(32.0, 32.0 - 8.0 * math.log10(max(n, 1) / 1e4)))


@dataclass
class Plan:
    """The recipe's choices: config values and the lines that say why."""
    values: dict  # dotted config key -> value
    why: list  # lines to print
    epochs: float  # planned epochs


def crops(size: int, low: int = 64) -> list[int]:
    """Candidate final training crops for prepared size S: the multiples of 16 from 3/4 of the largest
    up to the largest, S / 1.15 (at least `low`, the network's smallest input). Smaller crops are not
    offered: objects shrink with them, and on Imagenette 64 px crops for 14 epochs lost 10 points
    to 112 px crops for 5 (docs/benchmarks.md)."""
    top = max(low, int(size / EVAL_SCALE) // 16 * 16)
    bottom = max(low, int(math.ceil(0.75 * top / 16)) * 16)
    return list(range(bottom, top + 1, 16))


def mean_rate(rate: Callable[[int], float], final: int) -> float:
    """Images/s averaged over the time of a run whose crops grow from START_SCALE x final to final over
    the first 3/4 of the time (train.progressive_crop's ramp, in 8 px steps), then stay; rate(crop)
    gives images/s at one crop."""
    start = start_crop(final)
    ramp = [rate(max(start, min(final, int(start + (final - start) * r / 20) // 8 * 8))) for r in range(20)]
    return 0.75 * sum(ramp) / len(ramp) + 0.25 * rate(final)


def start_crop(final: int) -> int:
    return max(64, int(final * START_SCALE) // 8 * 8)


def eval_crop(final: int, size: int) -> int:
    return min(size, int(round(final * EVAL_SCALE / 8)) * 8)


def measure(model: torch.nn.Module, rt: runtime.Runtime, batch: int, crop: int, num_classes: int,
            seconds: float = PROBE_S) -> float:
    """Training images/s of `model` (forward, backward, SGD step) on random (batch, 3, crop, crop)
    images in the run's precision and memory format: one warm-up step, then steps for `seconds`."""
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-6, momentum=0.9)
    x = torch.randn(batch, 3, crop, crop, device=rt.device).to(memory_format=torch.channels_last)
    y = torch.randint(0, num_classes, (batch,), device=rt.device)

    def step():
        with rt.autocast():
            loss = F.cross_entropy(model(x).float(), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()
    runtime.synchronize(rt.device)
    n, t0 = 0, time.perf_counter()
    while n < 2 or time.perf_counter() - t0 < seconds:
        step()
        n += 1
        runtime.synchronize(rt.device)
    return n * batch / (time.perf_counter() - t0)


def plan(cfg: config_mod.Config, ds, rt: runtime.Runtime, num_classes: int, seconds_left: float,
         given: set[str], say: Callable = print) -> Plan:
    """Choose the recipe for `seconds_left` of wall time (what is left of --minutes after start-up),
    measuring the candidates on rt.device. Every rank measures; rank 0's choice is everyone's.
    Raises UserError when the budget cannot hold even the final evaluation."""
    from .mfu import train_flops_per_image
    from .model import build

    n, size = len(ds.split(cfg.data.train_split)), ds.size
    n_val = len(ds.split(cfg.data.val_split))
    if seconds_left < 10:
        raise UserError(f"--minutes {cfg.train.minutes:g} leaves {seconds_left:.0f} s after start-up: give more minutes")
    world = rt.ctx.world_size
    if "train.batch_size" in given:
        batch = cfg.train.batch_size
    else:  # 128 on a CPU, 512 on GPUs, at most an eighth of the training images (8 steps per epoch)
        batch = max(world, min(512 if rt.device.type == "cuda" else 128, n // 8) // world * world)
    per_device = max(1, batch // world)
    init = bool(cfg.train.init)
    finals = crops(size)[-1:] if "data.crop" not in given else [cfg.data.crop]
    finals = [c for c in finals if c <= size] or [min(size, cfg.data.crop)]
    widths = [cfg.model.width] if (init or "model.width" in given) else list(WIDTHS)

    # every width at the largest crop; the narrowest also at the smallest crop it would start from,
    # because small crops run fewer FLOP/s (measured 1.5x fewer at 64 px than 128 on a 2-core CPU)
    rates, flops, small, top = {}, {}, start_crop(finals[0]), finals[-1]
    for w in widths:
        m = model_config(cfg, w, init, given)
        torch.manual_seed(0)
        model = build(m, num_classes).to(rt.device, memory_format=torch.channels_last)
        flops[w] = {c: train_flops_per_image(model, c) for c in sorted(set(finals) | set(range(small, top + 1, 8)))}
        rates[w] = {finals[-1]: measure(model, rt, per_device, finals[-1], num_classes) * rt.ctx.world_size}
        if w == widths[0] and small != finals[-1]:
            rates[w][small] = measure(model, rt, per_device, small, num_classes) * rt.ctx.world_size
        del model
    rates, flops = distributed.broadcast((rates, flops))  # rank 0's measurements decide for all

    def speed(w: float, c: int) -> float:  # FLOP/s at crop c: linear in c between the two measured crops
        at_top = rates[w][top] * flops[w][top]
        lo = rates[widths[0]]
        if small not in lo or c >= top:
            return at_top
        ratio_small = lo[small] * flops[widths[0]][small] / (lo[top] * flops[widths[0]][top])
        share = (top - c) / (top - small)
        return at_top * (1 + (ratio_small - 1) * min(1.0, share))

    def images_per_s(w: float, c: int) -> float:
        return mean_rate(lambda k: speed(w, k) / (flops[w].get(k) or _flops_at(flops[w], k)), c)

    views = cfg.eval.views if "eval.views" in given else 2
    # forward only is about a third of a training step's FLOPs; measured for real once the data are in
    final_s = final_seconds(n_val, views, 3.0 * rates[widths[0]][top] * (top / eval_crop(top, size)) ** 2)
    train_s = seconds_left - final_s
    if train_s <= 5:
        raise UserError(f"--minutes leaves {seconds_left:.0f} s after start-up, and the final evaluation of "
                        f"{n_val:,} validation images alone needs about {final_s:.0f} s here: give more minutes")
    need = min_epochs(n)
    options = [(w, c, REALISED * train_s * images_per_s(w, c) / n) for w in widths for c in finals]
    fits = [o for o in options if o[2] >= need]
    short = not fits
    # one crop (the largest); the widest width that affords `need` epochs there, else the narrowest
    width, final, epochs = max(fits, key=lambda o: (o[1], o[0])) if fits else min(options, key=lambda o: (o[0], o[1]))
    values = recipe(cfg, width, final, size, batch, epochs, n, init, given)
    why = [f"--minutes {cfg.train.minutes:g}: {seconds_left:.0f} s left after start-up; about {final_s:.0f} s kept "
           f"for the final evaluation ({n_val:,} images x {views} view(s)), {train_s:.0f} s to train",
           f"measured training images/s, global batch {batch}: " +
           ", ".join(f"width {w:g}: {r:,.0f} at {c} px" for w, rs in rates.items() for c, r in rs.items()),
           f"{n:,} training images: a network and crop are worth their cost from {need:.0f} epochs "
           f"(alexnet.budget.min_epochs)",
           "affordable: " + ", ".join(f"width {w:g} at {c} px: {e:.0f} epochs" for w, c, e in options)]
    if short:
        why.append(f"note: the narrowest network at {final} px affords {epochs:.1f} epochs of {n:,} images in this "
                   f"budget, fewer than the {need:.0f} from-scratch training wants: more minutes would buy accuracy")
    why.append(f"chosen: width {width:g} ({values.get('model.hidden', cfg.model.hidden)}-unit FC layers), crops "
               f"{values.get('data.progressive_from', final)} -> {final} px (progressive, random-resized), "
               f"about {epochs:.0f} epochs, evaluated at {values.get('eval.crop', final)} px with "
               f"{values.get('eval.views', views)} view(s), moving average of the weights")
    kept = sorted(k for k in given if k in RECIPE_KEYS)
    if kept:
        why.append("kept as given: " + ", ".join(f"{k}={_get(cfg, k)}" for k in kept))
    return Plan({k: v for k, v in values.items() if k not in given}, why, epochs)


def min_scale(epochs: float) -> float:
    """The smallest area share of a random-resized crop: 0.25 for runs of 32 epochs or more, up to 0.5
    for 8 or fewer, because a short run has no time to fit what strong augmentation asks of it
    (on Imagenette, 3 epochs of 0.25-1 crops ended 6 points below §4.1's milder crops)."""
    return round(0.25 + 0.25 * min(1.0, max(0.0, (32.0 - epochs) / 24.0)), 3)


def _flops_at(table: dict, crop: int) -> float:
    """FLOPs at a crop the table lacks: scaled from the nearest by area (convolutions dominate)."""
    near = min(table, key=lambda k: abs(k - crop))
    return table[near] * (crop / near) ** 2


def _get(cfg, key: str):
    section, name = key.split(".")
    return getattr(getattr(cfg, section), name)


def model_config(cfg: config_mod.Config, width: float, init: bool, given: set[str]) -> config_mod.ModelConfig:
    """The model section the recipe would build at `width` (the weights' own with --init)."""
    import copy
    m = copy.deepcopy(cfg.model)
    if init:  # the weights' own network; torchvision's published weights are alexnet_owt
        if cfg.train.init == "torchvision" and "model.name" not in given:
            m.name, m.init = "alexnet_owt", "kaiming"
        return m
    for key, value in MODEL.items():
        if f"model.{key}" not in given:
            setattr(m, key, value)
    if "model.width" not in given:
        m.width = width
    if "model.hidden" not in given:
        m.hidden = int(2048 * m.width)
    return m


MODEL = {"name": "alexnet2012", "norm": "batchnorm", "init": "he", "dropout": 0.0}


def recipe(cfg, width: float, final: int, size: int, batch: int, epochs: float, n: int, init: bool,
           given: set[str]) -> dict:
    """The config values of the plan (before the given keys are taken out)."""
    v: dict = {}
    m = model_config(cfg, width, init, given)
    if not init:
        v.update({f"model.{k}": getattr(m, k) for k in (*MODEL, "width", "hidden")})
    elif m.name != cfg.model.name:
        v.update({"model.name": m.name, "model.init": m.init})
    v.update({
        "data.crop": final, "data.progressive_from": start_crop(final), "data.scale": (min_scale(epochs), 1.0),
        "data.ratio": (3 / 4, 4 / 3), "data.flip": True, "data.mean": "channel",
        "optim.update": "torch", "optim.nesterov": True, "optim.momentum": 0.9,
        # no label smoothing from scratch: off, top-1 rose 0.76 and 0.61 points (2 seeds, Imagenette,
        # 10 minutes); fine-tuning keeps the fine-tuning preset's 0.1
        "optim.label_smoothing": 0.1 if init else 0.0,
        "optim.lr": 0.002 if init else LR_PER_128, "optim.lr_batch": 64 if init else 128,
        "optim.weight_decay": 1e-4 if init else 5e-4, "optim.head_lr_mult": 10.0 if init else 1.0,
        "schedule.name": "linear", "schedule.warmup_epochs": warmup(epochs, cfg, given),
        "train.batch_size": batch, "train.epochs": 100_000, "train.precision": "auto", "train.channels_last": True,
        "eval.views": 2, "eval.crop": eval_crop(final, size), "eval.every": 100_000,
    })
    steps = epochs * max(1, n // batch)
    v["train.ema"] = 0.5 ** (1.0 / max(10.0, 0.02 * steps))  # a half-life of 2% of the steps (at least 10)
    if init:
        v["data.pca_std"] = 0.0
    return v


def warmup(epochs: float, cfg, given: set[str]) -> float:
    """Warm-up epochs: 3% of the planned epochs, 0.5 to 2; at most half of a train.epochs the user gave."""
    w = round(max(0.5, min(2.0, 0.03 * epochs)), 2)
    return min(w, cfg.train.epochs / 2) if "train.epochs" in given else w


RECIPE_KEYS = {f"model.{k}" for k in (*MODEL, "width", "hidden")} | {
    "data.crop", "data.progressive_from", "data.scale", "data.ratio", "data.flip", "data.mean", "data.pca_std",
    "optim.update", "optim.nesterov", "optim.momentum", "optim.label_smoothing", "optim.lr", "optim.lr_batch",
    "optim.weight_decay", "optim.head_lr_mult", "schedule.name", "schedule.warmup_epochs", "train.batch_size",
    "train.epochs", "train.precision", "train.channels_last", "train.ema", "eval.views", "eval.crop", "eval.every"}


def final_seconds(n_val: int, views: int, eval_rate: float, ema: bool = True) -> float:
    """Seconds to keep for what follows training: the final validation of the weights and of their
    average (n_val x views images each at eval_rate img/s, 20% added for making the crops), two
    checkpoint writes and the plots (matplotlib's import included; about 3 s on a 2-core CPU)."""
    evals = (2 if ema else 1) * n_val * views / max(eval_rate, 1.0)
    return 1.2 * evals + 3.5


def eval_rate(run) -> float:
    """Validation images/s of the run's network (forward only, in eval mode and the run's precision)
    on random batches of eval.batch_size at the evaluation crop: one warm-up pass, then two timed."""
    cfg, rt, model = run.cfg, run.rt, run.model
    crop, b = cfg.eval.crop or cfg.data.crop, cfg.eval.batch_size
    x = torch.randn(b, 3, crop, crop, device=rt.device)
    x = x.to(memory_format=torch.channels_last) if cfg.train.channels_last else x
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), rt.autocast():
            model(x)
            runtime.synchronize(rt.device)
            t0 = time.perf_counter()
            for _ in range(2):
                model(x)
            runtime.synchronize(rt.device)
    finally:
        model.train(was_training)
    return 2 * b * rt.ctx.world_size / (time.perf_counter() - t0)


def set_training_time(run, started: float, say: Callable = print, given: set[str] | frozenset = frozenset()) -> None:
    """Set the training budget (train.budget_minutes, and the schedule's clock) to what is left of
    --minutes once the data are in memory, less the final evaluation's time, on every rank alike.
    A resumed run keeps the budget it planned (its clock continues from the checkpoint); a
    train.budget_minutes in `given` (the user's) is kept as it is."""
    cfg = run.cfg
    total = 60.0 * cfg.train.minutes
    if "train.budget_minutes" in given:
        say(f"--minutes {cfg.train.minutes:g}: training for train.budget_minutes={cfg.train.budget_minutes:g} as given")
        return
    if run.resumed_from is not None and cfg.train.budget_minutes:
        left = 60.0 * cfg.train.budget_minutes - run.elapsed
        say(f"--minutes {cfg.train.minutes:g}: resumed with {max(left, 0):.0f} s of its training budget left")
        return
    rate = distributed.broadcast(eval_rate(run))
    used = distributed.broadcast(time.time() - started)
    n_val = len(run.ds.split(cfg.data.val_split))
    reserve = final_seconds(n_val, cfg.eval.views, rate, ema=cfg.train.ema > 0)
    train_s = total - used - reserve
    if train_s <= 5:
        raise UserError(f"--minutes {cfg.train.minutes:g}: {used:.0f} s went to start-up and loading the data, and "
                        f"the final evaluation needs about {reserve:.0f} s: nothing is left to train; give more minutes")
    cfg.train.budget_minutes = train_s / 60.0
    run.schedule.budget_s = train_s
    say(f"--minutes {cfg.train.minutes:g}: {used:.0f} s used by start-up and data; training for {train_s:.0f} s, "
        f"about {reserve:.0f} s kept for the final evaluation")
