"""`alexnet train`: the paper's recipe, torchvision's, or a fast one, on one CPU or many GPUs.

    alexnet train                                     # the built-in shapes, preset quick, minutes on a CPU
    alexnet train --data prepared/imagenet --preset paper
    torchrun --nproc_per_node=8 -m alexnet train --data prepared/imagenet --preset fast

One path for every scale: torchrun's environment decides rank and world size (alexnet.distributed),
each rank reads its share of every epoch (alexnet.data.loader), the global batch is
per-device batch x world size x accumulation and is checked, and only rank 0 prints and writes.
Mixed precision is one autocast context built from a dtype name, with a GradScaler only for fp16.
The run folder (alexnet.runlog) holds the config, versions, metrics, TensorBoard events,
checkpoints (last.pt every epoch, best.pt on a new best validation top-1), plots and summary.json;
pointing --out at a folder that holds a checkpoint, or --resume, continues the run where it stopped.
"""
from __future__ import annotations

import contextlib
import math
import os
import signal
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import torch
import torch.nn.functional as F

from . import checkpoint, config as config_mod, distributed, plots
from .checkpoint import unwrap
from .data.loader import Loader
from .data.store import open_prepared
from .errors import UserError
from .evaluate import autocast, evaluate
from .model import from_config
from .optim import Schedule, build_optimizer, scaled_lr
from .runlog import RunLog, read_metrics


class Diverged(UserError):
    """The loss became NaN or infinite."""


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank % torch.cuda.device_count())
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name}: CUDA is not available on this machine")
        if device.index is None:
            device = torch.device("cuda", local_rank % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise UserError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise UserError(f"device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None: fp32). auto -> bf16 where it runs natively: on CPUs without
    AVX512-BF16/AMX, PyTorch's bf16 convolutions are emulated and measured ~60x slower than fp32."""
    if precision == "auto":
        if device.type == "cuda":
            precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def builtin_data(cfg: config_mod.Config, progress: bool) -> Path:
    """The built-in shapes, stored at the size the crop needs (S = 8/7 C, as 256 is to 224)."""
    from .data import synthetic
    size = max(72, int(round(cfg.data.crop * 256 / 224 / 8)) * 8)
    return synthetic.ensure(train_per_class=1000, val_per_class=100, size=size, progress=progress)


def default_out(cfg: config_mod.Config) -> Path:
    return Path("runs") / f"{datetime.now().strftime('%Y%m%d-%H%M%S')}-{cfg.preset}"


def train(cfg: config_mod.Config, resume: str | None = None, progress: bool = True) -> dict:
    """Run (or continue) training as configured; returns the summary (also in summary.json)."""
    started = time.time()
    wants_cuda = cfg.train.device.startswith("cuda") or (cfg.train.device == "auto" and torch.cuda.is_available())
    ctx = distributed.init("cuda" if wants_cuda else "cpu")
    device = pick_device(cfg.train.device, ctx.local_rank)
    dtype = amp_dtype(cfg.train.precision, device)
    say = print if ctx.main and progress else (lambda *a, **k: None)

    # ------------------------------------------------------------------ data and global batch
    data_path = Path(cfg.data.path) if cfg.data.path else builtin_data(cfg, ctx.main and progress)
    ds = open_prepared(data_path)
    train_split, val_split = ds.split(cfg.data.train_split), ds.split(cfg.data.val_split)
    if cfg.data.crop > ds.size:
        raise UserError(f"data.crop {cfg.data.crop} is larger than the prepared images ({ds.size} px)")
    per_device, rest = divmod(cfg.train.batch_size, ctx.world_size * cfg.train.accumulation)
    if rest:
        raise UserError(f"train.batch_size {cfg.train.batch_size} is not divisible by world size "
                        f"{ctx.world_size} x accumulation {cfg.train.accumulation}")
    if cfg.train.batch_size > len(train_split):
        raise UserError(f"train.batch_size {cfg.train.batch_size} is larger than the training split "
                        f"({len(train_split)} images)")
    num_classes = cfg.model.num_classes or len(ds.classes)
    say(f"global batch {cfg.train.batch_size} = {per_device} per device x {ctx.world_size} process(es) "
        f"x {cfg.train.accumulation} accumulation step(s); {len(train_split):,} training and "
        f"{len(val_split):,} validation images, {num_classes} classes; device {device}, "
        f"precision {'fp32' if dtype is None else str(dtype).split('.')[-1]}")

    # ------------------------------------------------------------------ model, optimizer, schedule
    torch.manual_seed(cfg.train.seed + 1_000_003 * ctx.rank)  # dropout masks differ across ranks
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
    m = cfg.model
    model = from_config(m, num_classes, seed=cfg.train.seed)
    smallest = min(cfg.data.crop, cfg.data.progressive_from or cfg.data.crop)
    if smallest < model.min_input_size:
        raise UserError(f"{m.name} needs crops of at least {model.min_input_size} px; data.crop / "
                        f"data.progressive_from ask for {smallest}")
    model.to(device, memory_format=torch.channels_last if cfg.train.channels_last else torch.preserve_format)
    workers = cfg.data.workers if cfg.data.workers is not None else (
        max(1, (os.cpu_count() or 1) // 4) if device.type == "cpu" else min(8, os.cpu_count() or 1))
    loader_kw = dict(crop=cfg.data.crop, seed=cfg.train.seed, rank=ctx.rank, world_size=ctx.world_size,
                     workers=workers, device=device, mean=cfg.data.mean,
                     dtype="float32", channels_last=cfg.train.channels_last)
    def train_loader_for(crop: int) -> Loader:
        return Loader(train_split, ds, per_device * cfg.train.accumulation, train=True, flip=cfg.data.flip,
                      pca_std=cfg.data.pca_std, scale=cfg.data.scale, ratio=cfg.data.ratio,
                      **{**loader_kw, "crop": crop})

    train_loader = train_loader_for(cfg.data.crop)
    val_loader = Loader(val_split, ds, cfg.eval.batch_size, train=False, views=cfg.eval.views, **loader_kw)
    steps = train_loader.steps(0)
    if steps == 0:
        raise UserError(f"the training split has {len(train_split)} images: too few for one global batch "
                        f"of {cfg.train.batch_size}")
    optimizer = build_optimizer(cfg, model.parameters(), scaled_lr(cfg, cfg.train.batch_size))
    schedule = Schedule(cfg, scaled_lr(cfg, cfg.train.batch_size), steps)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    # ------------------------------------------------------------------ run folder and resume
    out = Path(cfg.train.out) if cfg.train.out else (
        Path(resume).parent if resume not in (None, "auto") else distributed.broadcast(default_out(cfg)))
    state, path = None, None
    if resume not in (None, "auto"):
        state, path = checkpoint.load(resume), Path(resume)
    elif resume == "auto" or (out / "last.pt").exists() or (out / "last.prev.pt").exists():
        state, path = checkpoint.load_latest(out, warn=say)
        if resume == "auto" and state is None:
            raise UserError(f"--resume: no checkpoint in {out}; start a new run without --resume")
    epoch, step, best, elapsed = 0, 0, {"top1": -1.0}, 0.0
    if state is not None:
        if state["config"]["model"] != config_mod.to_dict(cfg)["model"]:
            raise UserError(f"{path} was trained with another model configuration; "
                            f"use another --out, or the same model settings")
        unwrap(model).load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        rng = state["rng"]  # one state per rank; a run resumed on another world size reuses rank 0's
        checkpoint.set_rng_state(rng[ctx.rank] if isinstance(rng, list) and len(rng) == ctx.world_size
                                 else rng[0] if isinstance(rng, list) else rng)
        epoch, step, best, elapsed = state["epoch"], state["step"], state["best"], state.get("elapsed_s", 0.0)
        say(f"resuming {path} at epoch {epoch + 1}, step {step}")
    log = RunLog(out, cfg, active=ctx.main, extra_env={"world_size": ctx.world_size, "device": str(device)})
    net = model
    if ctx.distributed:  # gradients all-reduced in buckets while the backward pass still runs
        net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None)
        distributed.compress_gradients(net, cfg.train.grad_compression)
    if cfg.train.compile:
        net = torch.compile(net)

    def save(epoch_: int, step_: int, name: str = "last.pt") -> None:
        rng = distributed.gather(checkpoint.rng_state())  # every rank's, for an exact resume
        if not ctx.main:
            return
        checkpoint.save(out / name, {
            "model": unwrap(model).state_dict(), "optimizer": optimizer.state_dict(),
            "schedule": schedule.state_dict(), "scaler": scaler.state_dict(), "epoch": epoch_, "step": step_,
            "best": best, "elapsed_s": clock(), "rng": rng, "config": config_mod.to_dict(cfg),
            "classes": ds.classes, "data": data_summary(ds, cfg, train_loader), "num_classes": num_classes})

    # ------------------------------------------------------------------ the epochs
    images_seen, train_time = 0, 0.0
    stopper = Stopper(elapsed, cfg.train.budget_minutes, device)
    clock = stopper.clock
    val, position = None, epoch + step / steps  # epochs done, fractional
    with stopper:
        while epoch < cfg.train.epochs and not stopper.out_of_time():
            t0 = time.time()
            crop = progressive_crop(cfg, epoch, stopper)
            if crop != train_loader.options["crop"]:  # progressive resizing: a loader for the new size
                train_loader = train_loader_for(crop)
                say(f"training crops: {crop} px")
            seen, stopped_at = train_epoch(net, optimizer, schedule, scaler, train_loader, epoch, step, cfg,
                                           device, dtype, log, ctx, progress, save, stopper)
            train_time += time.time() - t0
            images_seen += seen
            position = epoch + (stopped_at / steps if stopped_at is not None else 1)
            if stopped_at is not None and stopper.signal:  # SIGINT/SIGTERM: save and leave
                save(epoch, stopped_at)
                say(f"\nstopped by {stopper.signal} at epoch {epoch + 1}, step {stopped_at}: saved "
                    f"{out / 'last.pt'}; run the same command with --out {out} to resume")
                log.close()
                return {"stopped": stopper.signal, "checkpoint": str(out / "last.pt"), "run": str(out)}
            out_of_time = stopped_at is not None
            val = None
            if out_of_time or (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs:
                val = evaluate(net, val_loader, device, dtype, num_classes)
                decayed = schedule.on_epoch_end(val["top1_error"]) if not out_of_time else False
                log.log("val", epoch * steps + (stopped_at or steps), epoch=position,
                        **{k: v for k, v in val.items() if k != "per_class"})
                say(f"epoch {epoch + 1}/{cfg.train.epochs}: val top-1 {100 * val['top1']:.2f}%  top-5 "
                    f"{100 * val['top5']:.2f}%  loss {val['loss']:.3f}" + ("  (lr divided)" if decayed else "")
                    + (f"  (time budget of {cfg.train.budget_minutes:g} min reached)" if out_of_time else ""))
                if val["top1"] > best["top1"]:
                    best = {"top1": val["top1"], "top5": val["top5"], "epoch": position}
                    save(epoch if out_of_time else epoch + 1, stopped_at or 0, "best.pt")
            if out_of_time:
                save(epoch, stopped_at)
                break
            epoch, step = epoch + 1, 0
            save(epoch, 0)

    # ------------------------------------------------------------------ the end: plots, summary
    if val is None:  # the last epoch was not evaluated (eval.every, or a finished run resumed); all ranks
        val = evaluate(net, val_loader, device, dtype, num_classes)
    in_sync = distributed.in_sync(unwrap(model).parameters())
    if not in_sync:
        say("warning: the ranks' weights differ at the end of training (a DDP bug or a non-deterministic op)")
    summary = {}
    if ctx.main:
        records = read_metrics(out)
        curves = plots.curves(records, out / "curves.png", title=f"{m.name}, preset {cfg.preset}")
        filters = plots.filters(unwrap(model).conv1_weight(), out / "conv1.png", towers=unwrap(model).towers)
        summary = {"top1": val["top1"], "top5": val["top5"], "top1_error": val["top1_error"],
                   "top5_error": val["top5_error"], "val_loss": val["loss"], "best": best,
                   "epochs": cfg.train.epochs, "epochs_done": round(position, 3),
                   "training_time_s": clock(), "images_per_s": images_seen / max(train_time, 1e-9),
                   "wall_time_s": time.time() - started, "checkpoint": str(out / "last.pt"),
                   "best_checkpoint": str(out / "best.pt"), "plots": [str(curves), str(filters)],
                   "metrics": str(out / "metrics.jsonl"), "run": str(out), "data": str(data_path),
                   "device": str(device), "world_size": ctx.world_size, "ranks_in_sync": in_sync,
                   "preset": cfg.preset, "precision": "fp32" if dtype is None else str(dtype).split(".")[-1]}
        log.write_json("summary.json", summary)
        if progress:
            finish_message(summary, out, data_path)
    log.close()
    return summary


def data_summary(ds, cfg, loader) -> dict:
    """What a checkpoint needs to preprocess new images as in training (the loader's actual choice:
    --keep-aspect data sets use channel means even when the config asks for the mean image)."""
    st = ds.stats
    mode = "pixel" if loader.norm_cpu.mean_image is not None else "channel"
    return {"size": ds.size, "crop": cfg.data.crop, "mean_mode": mode,
            "mean_image": torch.as_tensor(st["mean_image"], dtype=torch.float32),
            "mean": torch.as_tensor(st["mean"], dtype=torch.float32), "std": torch.as_tensor(st["std"], dtype=torch.float32)}


def train_epoch(net, optimizer, schedule, scaler, loader, epoch, start_step, cfg, device, dtype, log, ctx,
                progress, save, stopper) -> tuple[int, int | None]:
    """One epoch from `start_step`: (images this rank trained on, the number of steps done when
    the stopper (time budget, SIGINT/SIGTERM) ended it early, else None). Running sums stay on
    the device and are read (a sync) only when the progress bar or the log shows them."""
    from tqdm import tqdm

    net.train()
    steps = loader.steps(epoch)
    accum = cfg.train.accumulation
    show_every = max(1, cfg.train.log_every // 4)
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="step",
               disable=not (progress and ctx.main), dynamic_ncols=True, leave=True)
    loader.reset_timing()
    t_start, seen = time.perf_counter(), 0
    window = torch.zeros(3, dtype=torch.float64, device=device)  # loss sum, right, n
    stopped_at = None
    for step, batch in enumerate(loader.epoch(epoch, start_step), start=start_step):
        lr = schedule.lr(epoch, step, stopper.clock())
        for group in optimizer.param_groups:
            group["lr"] = lr
        x, y = batch.images, batch.labels.to(device, non_blocking=True)
        xs, ys = x.chunk(accum), y.chunk(accum)
        for i, (xi, yi) in enumerate(zip(xs, ys)):
            last = i == len(xs) - 1
            ddp = isinstance(net, torch.nn.parallel.DistributedDataParallel)
            with (net.no_sync() if ddp and not last else contextlib.nullcontext()):
                with autocast(device, dtype):
                    logits = net(xi)
                loss = F.cross_entropy(logits.float(), yi, label_smoothing=cfg.optim.label_smoothing)
                scaler.scale(loss / len(xs)).backward()
            window += torch.stack([loss.detach().double() * len(yi), (logits.argmax(1) == yi).sum().double(),
                                   torch.tensor(float(len(yi)), device=device, dtype=torch.float64)])
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        seen += len(y)
        done = step + 1
        if done % show_every == 0 or done == steps or done % cfg.train.log_every == 0:
            loss_sum, right, n = window.tolist()
            if not math.isfinite(loss_sum):  # checked at every read: the weights may be bad from here on
                raise Diverged(divergence_report(net, loss, logits, epoch, step, lr))
            elapsed = time.perf_counter() - t_start
            rate = seen * ctx.world_size / max(elapsed, 1e-9)
            wait = loader.wait_s / max(elapsed, 1e-9)
            bar.set_postfix(loss=f"{loss_sum / n:.3f}", top1=f"{100 * right / n:.1f}%", lr=f"{lr:.3g}",
                            img_s=f"{rate:.0f}", wait=f"{100 * wait:.0f}%", refresh=False)
            if done % cfg.train.log_every == 0 or done == steps:
                log.log("train", epoch * steps + done, epoch=epoch + done / steps, loss=loss_sum / n,
                        top1=right / n, lr=lr, images_per_s=rate, data_wait=wait)
                window.zero_()
        bar.update(1)
        if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0 and done < steps:
            save(epoch, done)
        if done < steps and stopper.should_stop():
            stopped_at = done
            break
    bar.close()
    return seen, stopped_at


def progressive_crop(cfg: config_mod.Config, epoch: int, stopper: "Stopper") -> int:
    """The training crop for this epoch: from data.progressive_from up to data.crop over the first 3/4
    of training (by the clock under a time budget), in steps of 8 px, then data.crop."""
    start, end = cfg.data.progressive_from, cfg.data.crop
    if start is None:
        return end
    done = stopper.clock() / stopper.budget if stopper.budget else epoch / cfg.train.epochs
    ramp = min(1.0, done / 0.75)
    return min(end, int(start + (end - start) * ramp) // 8 * 8 if ramp < 1 else end)


class Stopper:
    """When to stop early: the wall-clock budget, or SIGINT/SIGTERM (finish the step, save, exit 0;
    a second Ctrl-C stops at once). All ranks agree: the slowest clock and any rank's signal decide."""

    def __init__(self, elapsed: float, budget_minutes: float | None, device):
        self.resumed_at, self.started = elapsed, time.time()
        self.budget = None if budget_minutes is None else 60.0 * budget_minutes
        self.device, self.signal, self._previous = device, None, {}

    def clock(self) -> float:  # training wall time across resumes (what train.budget_minutes limits)
        return self.resumed_at + time.time() - self.started

    def out_of_time(self) -> bool:
        return self.budget is not None and self.clock() >= self.budget

    def should_stop(self) -> bool:
        if self.budget is None and not distributed.is_initialized() and self.signal is None:
            return False
        t = torch.tensor([self.clock(), 1.0 if self.signal else 0.0], dtype=torch.float64, device=self.device)
        distributed.all_reduce_max(t)
        if t[1].item() and self.signal is None:
            self.signal = "a signal on another rank"
        return bool(t[1].item()) or (self.budget is not None and t[0].item() >= self.budget)

    def _handle(self, signum, frame):
        if self.signal is not None:  # the second one: stop now
            raise KeyboardInterrupt
        self.signal = signal.Signals(signum).name
        print(f"\n{self.signal}: finishing this step and saving a checkpoint (again to stop at once)",
              file=sys.stderr)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            for s in (signal.SIGINT, signal.SIGTERM):
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        return False


def divergence_report(net, loss, logits, epoch, step, lr) -> str:
    """Where the numbers went bad: the loss, the logits, or which parameter."""
    bad = [name for name, p in unwrap(net).named_parameters() if not torch.isfinite(p).all()]
    where = (f"parameters {', '.join(bad[:5])} hold NaN/inf" if bad else
             "the logits are not finite" if not torch.isfinite(logits).all() else "the loss is not finite")
    return (f"training diverged at epoch {epoch + 1}, step {step}: loss {loss.item()}, lr {lr:.4g}; {where}. "
            f"The last good checkpoint is untouched: lower optim.lr or use schedule.warmup_epochs, then resume")


def finish_message(s: dict, out: Path, data: Path) -> None:
    minutes, seconds = divmod(int(s["wall_time_s"]), 60)
    print(f"\ndone in {minutes}m{seconds:02d}s: validation top-1 {100 * s['top1']:.2f}%, top-5 {100 * s['top5']:.2f}% "
          f"({s['images_per_s']:.0f} training images/s)")
    print(f"  run folder   {out}")
    print(f"  checkpoint   {s['checkpoint']}  (best: {s['best_checkpoint']})")
    print(f"  metrics      {s['metrics']}  (tensorboard --logdir {out})")
    print(f"  plots        {', '.join(s['plots'])}")
    print("next:")
    print(f"  alexnet evaluate {s['best_checkpoint']} --data {data} --views 10")
    print(f"  alexnet predict IMAGE.jpg --checkpoint {s['best_checkpoint']}")
    print(f"  alexnet filters {s['best_checkpoint']} --out conv1.png")


def main(args) -> int:
    cfg = args.cfg
    train(cfg, resume=args.resume)
    return 0
