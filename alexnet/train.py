"""`alexnet train`: the paper's recipe, torchvision's, or a fast one, on one CPU or many GPUs.

    alexnet train                                     # the built-in shapes, preset quick, minutes on a CPU
    alexnet train --data prepared/imagenet --preset paper
    torchrun --nproc_per_node=8 -m alexnet train --data prepared/imagenet --preset fast

One path for every scale: torchrun's environment decides rank and world size, alexnet.runtime
binds each rank to its device and picks the precision, each rank reads its share of every epoch
(alexnet.data.loader), the global batch is per-device batch x world size x accumulation and is
checked, and only rank 0 prints and writes. A run is a few steps that pass one `Run` along, as
torchvision's reference and ffcv's trainer chain theirs:

    run = setup(cfg, resume)   # device, data, global batch, model, optimizer, schedule, run folder
    restore(run, resume)       # continue from a checkpoint: weights, optimizer, schedule, RNG, position
    initialise(run)            # or start from other weights (--init: fine-tuning), with a load table
    run.hold_resident()        # the splits decoded into the device's memory, where they fit
    fit(run)                   # the epochs (alexnet.loop: the steps), validation, checkpoints
    finish(run)                # final validation, plots, summary.json

setup is itself a list of steps (open_data, check_data, build_model, wrap, the loaders, and the run
folder chosen and claimed by alexnet.runfolder); restore and initialise are alexnet.resume's.
The run folder (alexnet.runlog) holds the config, versions, metrics, TensorBoard events,
checkpoints (last.pt every epoch, the one before kept as last.prev.pt; best.pt, the weights without
the optimizer's state, on a new best validation top-1), plots and summary.json, which with the
final message says how many bytes the folder holds; pointing --out at a folder that holds a
checkpoint, or --resume, continues the run where it stopped. No checkpoint is written with weights
that are not finite or that blew up (alexnet.loop.BlowUpGuard); the error names the one to resume from.
"""
from __future__ import annotations

import copy
import dataclasses
import math
import os
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from . import budget, checkpoint, config as config_mod, distributed, mfu, plots, runfolder, runtime, towers
from .data import augment as A
from .data.loader import Loader, LoaderSpec
from .data.store import PreparedDataset, open_prepared
from .errors import UserError
from .evaluate import at_chance, evaluate, result_notes
from .ema import EMA
from .fileio import FolderLock
from .loop import NORM_GROWTH, BlowUpGuard, Diverged, Stopper, param_norm, train_epoch
from .model import build, freeze
from .optim import Schedule, build_optimizer, param_groups, scaled_lr
from .resume import adopt_model, initialise, restore
from .runlog import RunLog, folder_bytes, read_metrics, size_text

__all__ = ["train", "Run", "setup", "restore", "fit", "finish", "Diverged"]


@dataclass
class Run:
    """Everything one training run holds, handed from step to step."""
    cfg: config_mod.Config
    rt: runtime.Runtime
    out: Path
    data_path: Path
    ds: PreparedDataset
    num_classes: int
    per_device: int  # images per device per optimizer step (before accumulation splits them)
    model: torch.nn.Module  # the plain network (what checkpoints hold)
    net: torch.nn.Module  # what the loop calls: model, or DDP and/or torch.compile around it
    layout: towers.Layout | None  # model.parallel=towers: this process's tower and partner (model is a TowerNet)
    ddp: torch.nn.parallel.DistributedDataParallel | None
    optimizer: torch.optim.Optimizer
    schedule: Schedule
    scaler: torch.amp.GradScaler
    train_loader: Loader
    val_loader: Loader
    steps: int  # optimizer steps per epoch
    ceiling: dict  # the device's measured FLOP/s ceiling in the training dtype (alexnet.mfu)
    say: Callable = print
    log: RunLog | None = None
    epoch: int = 0  # epochs done
    step: int = 0  # steps done within `epoch`
    best: dict = field(default_factory=lambda: {"top1": -1.0})
    elapsed: float = 0.0  # training seconds before this process (resumed runs)
    started: float = field(default_factory=time.time)
    stopper: Stopper | None = None
    guard: BlowUpGuard | None = None  # refuses checkpoints of weights that blew up (set by fit)
    resumed_from: Path | None = None  # the checkpoint this process continued from (restore)
    resumed_at: str = ""  # its position, "epoch E, step S"
    saved_last: str | None = None  # "epoch E, step S" of the last.pt this process wrote (it passed the checks)
    written: list = field(default_factory=list)  # (name, bytes) of every checkpoint this process wrote
    frozen_norms: list = field(default_factory=list)  # batch-norm layers of frozen parts: kept in eval mode
    norm: A.Normalize | None = None  # the initial weights' normalisation (None: the data set's statistics)
    lock: FolderLock | None = None  # rank 0's exclusive lock on the run folder
    resident: dict = field(default_factory=dict)  # split name -> data.resident.Resident (empty: streamed)
    ema: EMA | None = None  # the moving average of the weights (train.ema > 0; made by fit)
    ema_state: dict | None = None  # the average a resumed checkpoint held, loaded by fit
    _flops: dict = field(default_factory=dict)

    def train_loader_for(self, crop: int) -> Loader:
        return train_loader(self.cfg, self.rt, self.ds, self.per_device, crop, self.norm, self.resident)

    def set_norm(self, norm: A.Normalize) -> None:
        """Train and validate with the normalisation the initial weights were trained with."""
        self.norm = norm
        self.close_loaders()
        self.train_loader = self.train_loader_for(self.train_loader.spec.crop)
        self.val_loader = val_loader(self.cfg, self.rt, self.ds, norm, self.resident)

    def hold_resident(self, progress: bool = True) -> None:
        """Decode the splits into the device's memory when data.resident allows (resident_splits),
        and make batches from there from now on (the same batches: alexnet.data.resident). Done
        after the checks that can refuse a run (the run folder's lock, resume, --init), which
        must not wait for a data set to be decoded."""
        self.resident = resident_splits(self.cfg, self.rt, self.ds, self.say, progress)
        if self.resident:
            self.close_loaders()
            self.train_loader = self.train_loader_for(self.train_loader.spec.crop)
            self.val_loader = val_loader(self.cfg, self.rt, self.ds, self.norm, self.resident)

    def close_loaders(self) -> None:
        """Stop the loaders' worker processes (kept from one epoch to the next)."""
        for loader in (self.train_loader, self.val_loader):
            loader.close()

    def flops_per_image(self, crop: int) -> float:
        """Training FLOPs per image at this crop (alexnet.mfu), of the whole network (both towers
        of a pair together, with model.parallel=towers), cached per crop."""
        if crop not in self._flops:
            net = self.model
            if self.layout is not None:  # the one-device network's layers, shapes only
                with torch.device("meta"):
                    net = build(self.cfg.model, self.num_classes, seed=0)  # not the global generator
            self._flops[crop] = mfu.train_flops_per_image(net, crop)
        return self._flops[crop]

    def full_state(self, module: torch.nn.Module | None = None) -> dict | None:
        """The one-device state dict of `module` (default the model): with model.parallel=towers
        both towers' halves joined (every process calls this; rank 0 gets it, others None)."""
        module = self.model if module is None else module
        if self.layout is None:
            return module.state_dict()
        return towers.gather_state(self.model, module.state_dict())

    def load_full_state(self, state: dict, module: torch.nn.Module | None = None) -> None:
        """Load a one-device state dict into `module` (default the model), this tower's half of it
        with model.parallel=towers."""
        module = self.model if module is None else module
        module.load_state_dict(state if self.layout is None else towers.split(state, self.layout.tower))

    def global_norm(self, norm: torch.Tensor) -> torch.Tensor:
        """The norm over the whole network from this process's part (a sync point with towers)."""
        return towers.global_norm(norm, self.layout)

    def save(self, epoch: int, step: int, name: str = "last.pt") -> None:
        """Checkpoint the state (every rank takes part; rank 0 writes): last.pt the whole of it,
        the one it replaces kept as last.prev.pt; best.pt all of it but the optimizer's state, with
        no previous copy (what predict, evaluate, export and --init read is half
        the size). Raises Diverged, on every rank alike, rather than write weights that are not
        finite, or that blew up while finite (self.guard), over a good checkpoint."""
        bad = non_finite(self.model)  # sync point (a save)
        if self.layout is not None:  # each tower checks its half; every process must raise alike
            bad = sorted({name for names in distributed.gather(bad) for name in names})
        if bad:
            raise Diverged(f"training diverged before epoch {epoch + 1}, step {step}: tensors "
                           f"{', '.join(bad[:5])} hold NaN/inf, so {name} was not written (no checkpoint was "
                           f"written with non-finite weights): {self.resume_advice()}")
        norm = self.global_norm(torch.tensor(param_norm(self.model), dtype=torch.float64)).item()  # sync point (a save)
        # rank 0's verdict for all: the ranks' weights are equal, but a verdict must never differ
        blown = distributed.broadcast(self.guard.weights(norm) if self.guard is not None else None)
        if blown:
            raise Diverged(f"training diverged before epoch {epoch + 1}, step {step}: {blown}, so {name} was not "
                           f"written (no checkpoint is written with weights that blew up, finite or not): "
                           f"{self.resume_advice()}")
        if self.guard is not None:
            self.guard.passed(norm, f"{name} of epoch {epoch + 1}, step {step}")
        if name == "last.pt":
            self.saved_last = f"epoch {epoch + 1}, step {step}"
        rng = distributed.gather(checkpoint.rng_state())  # every rank's, for an exact resume
        best = name == "best.pt"
        use_ema = best and self.best.get("weights") == "ema"  # best.pt holds the better of the two
        # the one-device layout whatever the processes hold (towers: both halves gathered, on rank 0)
        weights = self.full_state(self.ema.module if use_ema else self.model)
        ema = self.full_state(self.ema.module) if self.ema is not None and not best else None
        optimizer = None if best else self.optimizer.state_dict()
        if optimizer is not None and self.layout is not None:
            optimizer = towers.gather_optimizer(self.model, optimizer)
        if not self.rt.main:
            return
        clock = self.stopper.clock() if self.stopper else self.elapsed
        extra = {"weights": "ema" if use_ema else "raw"}
        if ema is not None:
            extra.update(ema=ema, ema_decay=self.ema.decay)  # for an exact resume
        self.written.append((name, checkpoint.save(self.out / name, {
            **extra, "model": weights, "optimizer": optimizer,
            "schedule": self.schedule.state_dict(), "scaler": self.scaler.state_dict(), "epoch": epoch,
            "step": step, "best": self.best, "elapsed_s": clock, "rng": rng,
            "config": config_mod.to_dict(self.cfg), "classes": self.ds.classes,
            "data": data_summary(self.ds, self.cfg, self.train_loader, self.norm is not None),
            "num_classes": self.num_classes}, keep_previous=not best)))

    def resume_advice(self) -> str:
        """For Diverged's message: what to change, and which checkpoint to resume from: last.pt when
        it is good (this process wrote it, so it passed the checks; or this process started from it
        and its weights are not NORM_GROWTH x larger than best.pt's), else best.pt, whose weights
        were good enough to validate best."""
        o, s, last, best = self.cfg.optim, self.cfg.schedule, self.out / "last.pt", self.out / "best.pt"
        change = (f"lower optim.lr (now {o.lr:g}; e.g. --set optim.lr={o.lr / 10:g}) or warm up for longer "
                  f"(schedule.warmup_epochs, now {s.warmup_epochs:g})")
        if self.saved_last:
            return f"{change}, then run the same command to resume from {last} ({self.saved_last}, the last good one)"
        start = self.resumed_from
        if start is None:
            return f"no checkpoint was written yet: {change}, then run the same command to start again"
        grown = self.grown_beyond(best) if best.is_file() and start.resolve() != best.resolve() else None
        if grown:
            return (f"{start}, where this run resumed, holds weights {grown:.3g}x the norm of best.pt's: they were "
                    f"saved on the way to a blow-up (by an alexnet without this check, or growing less than "
                    f"{NORM_GROWTH:g}x per checkpoint). {change[0].upper()}{change[1:]}, then resume from best.pt: "
                    f"the same command with --resume {best} (it has no optimizer state: the momentum starts again)")
        same = start.parent.resolve() == self.out.resolve() and start.name in ("last.pt", "last.prev.pt")
        return (f"{change}, then run the same command{'' if same else f' with --resume {start}'} to resume from "
                f"{start} ({self.resumed_at}, where this run resumed)")

    def grown_beyond(self, path: Path) -> float | None:
        """How many times the norm of the weights this process started from exceeds that of the
        checkpoint at `path`, when it is more than NORM_GROWTH (else None, also when unreadable)."""
        try:
            state = checkpoint.load(path)["model"]
        except checkpoint.CheckpointError:
            return None
        theirs = math.sqrt(sum(float(state[n].double().pow(2).sum()) for n, _ in self.model.named_parameters()
                               if n in state))
        ratio = self.guard.start_norm / max(theirs, 1e-30) if self.guard is not None else 0.0
        return ratio if ratio > NORM_GROWTH else None


def loader_spec(c: config_mod.Config, rt: runtime.Runtime, *, train: bool, batch_size: int, crop: int) -> LoaderSpec:
    """A loader of this run (LoaderSpec.from_config) placed on this rank: its device, its share of
    the world (its replica's: the two towers of a pair read the same images), data.workers processes
    (None: the rule of alexnet.runtime.loader_workers)."""
    workers = c.data.workers if c.data.workers is not None else runtime.loader_workers(rt.device)
    return LoaderSpec.from_config(c, train=train, batch_size=batch_size, crop=crop, rank=rt.ctx.replica,
                                  world_size=rt.ctx.replicas, device=rt.device, workers=workers)


def train_loader(c: config_mod.Config, rt: runtime.Runtime, ds: PreparedDataset, per_device: int, crop: int,
                 norm: A.Normalize | None = None, resident: dict | None = None) -> Loader:
    """This rank's training batches (§4.1 augmentation) at `crop` px, from the resident split
    when `resident` holds it, else streamed by worker processes."""
    spec = loader_spec(c, rt, train=True, batch_size=per_device * c.train.accumulation, crop=crop)
    return Loader(ds.split(c.data.train_split), ds, spec, norm=norm, resident=(resident or {}).get(c.data.train_split))


def val_loader(c: config_mod.Config, rt: runtime.Runtime, ds: PreparedDataset, norm: A.Normalize | None = None,
               resident: dict | None = None) -> Loader:
    """This rank's share of the validation images (the centre crop, with its reflection, or the 10
    views, of eval.crop px, by default data.crop), each counted once."""
    spec = loader_spec(c, rt, train=False, batch_size=c.eval.batch_size, crop=eval_crop(c))
    return Loader(ds.split(c.data.val_split), ds, spec, norm=norm, resident=(resident or {}).get(c.data.val_split))


def eval_crop(c: config_mod.Config) -> int:
    """The side of the evaluation crops in px: eval.crop, by default data.crop."""
    return c.eval.crop or c.data.crop


def resident_splits(c: config_mod.Config, rt: runtime.Runtime, ds: PreparedDataset, say, progress: bool) -> dict:
    """The training and validation splits decoded into the device's memory when data.resident
    allows (alexnet.data.resident): {split name: Resident}, or {} when they stream. Every rank
    makes the same choice (the smallest free memory decides); where the decoded split is cached,
    local rank 0 writes the cache and the node's other ranks map it."""
    from .data import resident
    splits = list({s: ds.split(s) for s in (c.data.train_split, c.data.val_split)}.values())
    try:
        fits, why, error = *resident.decide(ds, splits, c.data.resident, rt.device,
                                            int(os.environ.get("LOCAL_WORLD_SIZE", "1"))), None
    except UserError as e:
        fits, why, error = False, "", str(e)
    answers = distributed.gather((fits, why, error))
    error = next((a[2] for a in answers if a[2]), None)
    if error:
        raise UserError(error)
    if not all(a[0] for a in answers):
        say(f"data: streamed by worker processes ({next(a[1] for a in answers if not a[0])})")
        return {}
    say(f"data: resident in {rt.device.type} memory, batches made there without workers ({why})")
    cached = c.data.resident_cache == "true" or (c.data.resident_cache == "auto" and rt.device.type == "cpu")
    out = {}
    for split in splits:
        def load(split=split):
            return resident.load(split, ds.size, rt.device, c.data.resident_cache, progress=rt.main and progress,
                                 say=say)
        out[split.name] = res = runtime.once_per_node(load) if cached and not split.raw else load()
        say(f"  {split.name}: {len(split):,} images of {ds.size}x{ds.size}, {resident.gib(res.nbytes)}, {res.source}")
    return out


def builtin_data(cfg: config_mod.Config, progress: bool) -> Path:
    """The built-in shapes, stored at the size the crop needs (S = 8/7 C, as 256 is to 224), with a
    validation split a fifth of the training one, 10 to 100 images per class (100 for the presets'
    500: a smaller data.builtin_per_class, for a quick try, no longer waits for 1,000 validation images)."""
    from .data import synthetic
    size = max(72, int(round(cfg.data.crop * 256 / 224 / 8)) * 8)
    val = min(100, max(10, cfg.data.builtin_per_class // 5))
    return synthetic.ensure(train_per_class=cfg.data.builtin_per_class, val_per_class=val, size=size,
                            progress=progress)


def setup(cfg: config_mod.Config, resume: str | None = None, progress: bool = True) -> Run:
    """Device and precision, data, the global batch, model, optimizer, schedule and run folder, in
    that order; raises UserError (on every rank alike) for what cannot work, before any is claimed."""
    c = cfg
    rt = runtime.setup(c.train.device, c.train.precision, c.train.deterministic)
    towers.check(c.model, rt.ctx.world_size)
    layout = None
    if c.model.parallel == "towers":  # §3.2: process pairs, one tower each
        rt = dataclasses.replace(rt, ctx=dataclasses.replace(rt.ctx, towers=towers.TOWERS))
        layout = towers.Layout.create(rt.ctx.rank, rt.ctx.world_size)
    say = print if rt.main and progress else (lambda *a, **k: None)
    data_path, ds = open_data(c, rt, progress)
    per_device, num_classes = check_data(c, rt, ds, data_path, say)
    model, frozen_norms = build_model(c, rt, num_classes, layout)
    lr = scaled_lr(c, c.train.batch_size)
    optimizer = build_optimizer(c, param_groups(model, c, lr), lr)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.dtype == torch.float16)
    out = runfolder.choose(c, resume)
    ddp, net = wrap(model, c, rt, layout)
    loader = train_loader(c, rt, ds, per_device, c.data.crop)
    steps = loader.steps(0)
    if steps == 0:
        raise UserError(f"the training split has {len(loader.split)} images: too few for one global batch "
                        f"of {c.train.batch_size}")
    lock = runfolder.claim(out, rt)  # last: a failed setup leaves no lock behind
    return Run(c, rt, out, data_path, ds, num_classes, per_device, model, net, layout, ddp, optimizer,
               Schedule(c, lr, steps), scaler, loader, val_loader(c, rt, ds), steps,
               runtime.once_per_node(mfu.ceiling, rt.device, rt.dtype), say=say,  # probed once per node
               frozen_norms=frozen_norms, lock=lock)


def open_data(c: config_mod.Config, rt: runtime.Runtime, progress: bool) -> tuple[Path, PreparedDataset]:
    """The prepared data set of data.path, or the built-in shapes, generated by one rank per node
    while the others wait: (its folder, the opened set)."""
    data_path = Path(c.data.path) if c.data.path else runtime.once_per_node(builtin_data, c, rt.main and progress)
    return data_path, open_prepared(data_path)


def check_data(c: config_mod.Config, rt: runtime.Runtime, ds: PreparedDataset, data_path: Path,
               say: Callable) -> tuple[int, int]:
    """(images per device per optimizer step, classes): the global batch = per device x world size
    x accumulation, checked, and the crops, splits and classes the run needs; says the sizes.
    Raises UserError for what does not fit."""
    train_split, val_split = ds.split(c.data.train_split), ds.split(c.data.val_split)
    if c.data.crop > ds.size:
        raise UserError(f"data.crop {c.data.crop} is larger than the prepared images ({ds.size} px)")
    if eval_crop(c) > ds.size:
        raise UserError(f"eval.crop {eval_crop(c)} is larger than the prepared images ({ds.size} px): give at most "
                        f"{ds.size}, or prepare the data at a larger --size")
    per_device, rest = divmod(c.train.batch_size, rt.ctx.replicas * c.train.accumulation)
    if rest:
        replicas = (f"world size {rt.ctx.world_size}" if rt.ctx.towers == 1 else
                    f"{rt.ctx.replicas} replica(s) ({rt.ctx.world_size} processes, {rt.ctx.towers} towers each)")
        raise UserError(f"train.batch_size {c.train.batch_size} is not divisible by {replicas} x accumulation "
                        f"{c.train.accumulation}")
    if len(val_split) == 0:  # a validation top-1 over zero images would read 0.00%
        raise UserError(f"split {c.data.val_split!r} of {data_path} holds no images, so there is nothing to "
                        f"validate on: prepare a source with a val/ folder (or labelled validation files), or "
                        f"set data.val_split to a split that has images ({', '.join(ds.split_names)})")
    if c.train.batch_size > len(train_split):
        raise UserError(f"train.batch_size {c.train.batch_size} is larger than the training split "
                        f"({len(train_split)} images)")
    if len(ds.classes) < 2:
        raise UserError(f"{data_path} has {len(ds.classes)} class(es): a classifier needs at least 2")
    num_classes = c.model.num_classes or len(ds.classes)
    if num_classes < len(ds.classes):
        raise UserError(f"model.num_classes {num_classes} is smaller than the {len(ds.classes)} classes of "
                        f"{data_path}; leave it unset to use the data set's")
    shared = (f"{per_device} per device x {rt.ctx.world_size} process(es)" if rt.ctx.towers == 1 else
              f"{per_device} per pair of processes (one tower each, the same images) x {rt.ctx.replicas} pair(s)")
    say(f"global batch {c.train.batch_size} = {shared} "
        f"x {c.train.accumulation} accumulation step(s); {len(train_split):,} training and "
        f"{len(val_split):,} validation images, {num_classes} classes; device {rt.device}, precision {rt.precision}")
    return per_device, num_classes


def build_model(c: config_mod.Config, rt: runtime.Runtime, num_classes: int,
                layout: towers.Layout | None = None) -> tuple[torch.nn.Module, list]:
    """The network of model.*, initialised from train.seed, on the device in its memory format, with
    train.freeze's parts frozen: (the network, its frozen batch-norm layers); with a Layout
    (model.parallel=towers) this process's tower of it (alexnet.towers.TowerNet). Seeds torch's
    global RNG per replica first: dropout masks differ across replicas, and the two towers of a
    pair draw the same ones. UserError when the crops are too small."""
    torch.manual_seed(c.train.seed + 1_000_003 * rt.ctx.replica)
    model = build(c.model, num_classes, seed=c.train.seed)
    smallest = min(c.data.crop, c.data.progressive_from or c.data.crop)
    if smallest < model.min_input_size:
        raise UserError(f"{c.model.name} needs crops of at least {model.min_input_size} px; data.crop / "
                        f"data.progressive_from ask for {smallest}")
    if layout is not None:  # cut from the whole network, so that both forms start from the same weights
        model = towers.TowerNet(model, layout)
    model.to(rt.device, memory_format=torch.channels_last if c.train.channels_last else torch.preserve_format)
    return model, freeze(model, c.train.freeze)


def wrap(model: torch.nn.Module, c: config_mod.Config, rt: runtime.Runtime, layout: towers.Layout | None = None):
    """(the DDP wrapper or None, what the loop calls): under torchrun DDP, whose gradients are
    all-reduced in buckets while the backward pass still runs (compressed as train.grad_compression
    says), and torch.compile around it with train.compile. With towers, DDP averages each tower's
    gradients over that tower's replicas (its own process group); one pair needs no DDP."""
    ddp, net = None, model
    if rt.ctx.replicas > 1:
        ddp = net = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[rt.device.index] if rt.device.type == "cuda" else None,
            process_group=layout.replica_group if layout is not None else None)
        distributed.compress_gradients(ddp, c.train.grad_compression)
    if c.train.compile:
        net = torch.compile(net)
    return ddp, net


def non_finite(model: torch.nn.Module) -> list[str]:
    """Names of the model's floating tensors that hold NaN or inf: parameters and buffers, since
    under fp16 an overflow can fill batch norm's running statistics with NaN while the loss scaler
    skips the step and the weights stay finite."""
    return [n for n, t in model.state_dict().items() if t.is_floating_point() and not torch.isfinite(t).all()]


def preset_keys(name: str | None) -> set[str]:
    """The config keys a preset named on the command line sets: they override the --minutes recipe's
    choices as --set does (alexnet.budget); none when no preset was named."""
    return set(config_mod.flatten(config_mod.PRESETS[name](), f"preset {name}")) if name else set()


def written(args) -> set[str]:
    """The config keys this command line and its --config files write (alexnet.config.given)."""
    from .cli import CONFIG_FLAGS

    flags = {flag: (key, getattr(args, "flag_" + key.replace(".", "__"), None))
             for flag, (key, _) in CONFIG_FLAGS.items()}
    return config_mod.given(getattr(args, "config", None) or (), getattr(args, "set", None) or (), flags)


def fit(run: Run, progress: bool = True) -> dict:
    """The epochs: train, validate, checkpoint, until the epochs or the time budget are spent or a
    signal asks to stop. Returns {"val": last validation or None, "position": epochs done
    (fractional), "images": images this rank trained on, "train_s": seconds, "stopped": signal name}."""
    cfg, say = run.cfg, run.say
    result = {"val": None, "position": run.epoch + run.step / run.steps, "images": 0, "train_s": 0.0,
              "stopped": None}
    run.stopper = stopper = Stopper(run.elapsed, cfg.train.budget_minutes)
    if cfg.train.ema > 0 and run.ema is None:
        run.ema = EMA(run.model, cfg.train.ema)
        if run.ema_state is not None:
            run.ema.load_state_dict(run.ema_state)
        elif run.resumed_from is not None:
            say(f"  {run.resumed_from.name} holds no moving average of the weights: train.ema starts from its weights")
        say(f"moving average of the weights: decay {cfg.train.ema:g} per optimizer step (half-life "
            f"{run.ema.half_life():,.0f} steps, {run.ema.half_life() / run.steps:.2g} epochs); validated beside them")
    start_norm = run.global_norm(torch.tensor(param_norm(run.model), dtype=torch.float64)).item()  # sync point, once
    run.guard = BlowUpGuard(run.num_classes, start_norm,
                            f"the resume from {run.resumed_from.name}" if run.resumed_from else "the start")
    with stopper:
        while run.epoch < cfg.train.epochs and not stopper.agreed_out_of_time():
            epoch, t0 = run.epoch, time.time()
            crop = progressive_crop(cfg, epoch, stopper)
            if crop != run.train_loader.spec.crop:  # progressive resizing: a loader for the new size
                run.train_loader.close()
                run.train_loader = run.train_loader_for(crop)
                say(f"training crops: {crop} px")
            seen, stopped_at = train_epoch(run, epoch, run.step, stopper, progress)
            result["train_s"] += time.time() - t0
            result["images"] += seen
            result["position"] = epoch + (stopped_at / run.steps if stopped_at is not None else 1)
            if stopped_at is not None and stopper.signal:  # SIGINT/SIGTERM: save and leave
                run.save(epoch, stopped_at)
                say(f"\nstopped by {stopper.signal} at epoch {epoch + 1}, step {stopped_at}: saved "
                    f"{run.out / 'last.pt'}; run the same command with --out {run.out} to resume")
                return {**result, "stopped": stopper.signal}
            out_of_time = stopped_at is not None
            result["val"] = None
            if out_of_time or (epoch + 1) % cfg.eval.every == 0 or epoch + 1 == cfg.train.epochs:
                result["val"] = validate(run, epoch, stopped_at, result["position"], out_of_time)
            if out_of_time:
                run.save(epoch, stopped_at)
                break
            run.epoch, run.step = epoch + 1, 0
            run.save(run.epoch, 0)
    return result


def validate(run: Run, epoch: int, stopped_at: int | None, position: float, out_of_time: bool) -> dict:
    """Validation at the end of an epoch (or when the budget ran out): log, plateau decay, best.pt."""
    cfg = run.cfg
    val, avg = validation(run)
    decayed = run.schedule.on_epoch_end(val["top1_error"]) if not out_of_time else False
    run.log.log("val", epoch * run.steps + (stopped_at or run.steps), epoch=position,
                **{k: v for k, v in val.items() if k != "per_class"},
                **({f"ema_{k}": v for k, v in avg.items() if k != "per_class"} if avg else {}))
    run.say(f"epoch {epoch + 1}/{cfg.train.epochs}: val top-1 {100 * val['top1']:.2f}%  top-5 "
            f"{100 * val['top5']:.2f}%  loss {val['loss']:.3f}"
            + (f"  (moving average: top-1 {100 * avg['top1']:.2f}%, top-5 {100 * avg['top5']:.2f}%)" if avg else "")
            + ("  (lr divided)" if decayed else "")
            + (f"  (time budget of {cfg.train.budget_minutes:g} min reached)" if out_of_time else ""))
    better, which = (avg, "ema") if avg and avg["top1"] > val["top1"] else (val, "raw")
    if better["top1"] > run.best["top1"]:
        run.best = {"top1": better["top1"], "top5": better["top5"], "epoch": position, "weights": which}
        run.save(epoch if out_of_time else epoch + 1, stopped_at or 0, "best.pt")
    return {**val, "ema": avg}


def validation(run: Run) -> tuple[dict, dict | None]:
    """The validation of the weights, and of their moving average when train.ema keeps one (else None);
    every rank takes part."""
    rt = run.rt
    counts = run.layout is None or run.layout.counts  # the towers of a pair see the same images: count once
    val = evaluate(run.net, run.val_loader, rt.device, rt.dtype, run.num_classes, counts=counts)
    avg = evaluate(run.ema.module, run.val_loader, rt.device, rt.dtype, run.num_classes, counts=counts) \
        if run.ema else None
    return val, avg


CHECKPOINTS = {"last.pt": 0, "last.prev.pt": 1, "best.pt": 2}  # the order they are listed in


def finish(run: Run, result: dict, progress: bool = True) -> dict:
    """The final validation (when the last epoch had none), plots and summary.json (rank 0)."""
    cfg, rt = run.cfg, run.rt
    if result["val"] is not None:
        raw, avg = result["val"], result["val"]["ema"]
    else:
        raw, avg = validation(run)  # all ranks take part
    # with train.ema the network a run ends with is the moving average (chosen before it was validated)
    val = avg if avg is not None else raw
    in_sync = distributed.in_sync(run.model.parameters(), group=run.layout.replica_group if run.layout else None)
    if not in_sync:
        run.say("warning: the ranks' weights differ at the end of training (a DDP bug or a non-deterministic op)")
    conv1 = run.model.conv1_weight()
    if run.layout is not None:  # both towers' kernels for Fig. 3 (every process takes part)
        conv1 = (towers.gather_state(run.model, {"conv1.weight": conv1}) or {}).get("conv1.weight")
    if not rt.main:
        return {}
    out = run.out
    curves = plots.curves(read_metrics(out), out / "curves.png", title=f"{cfg.model.name}, preset {cfg.preset}")
    filters = plots.filters(conv1, out / "conv1.png", towers=run.model.towers)
    files = folder_bytes(out)
    summary = {"top1": val["top1"], "top5": val["top5"], "top1_error": val["top1_error"],
               "top5_error": val["top5_error"], "val_loss": val["loss"], "best": run.best,
               "epochs": cfg.train.epochs, "epochs_done": round(result["position"], 3),
               "training_time_s": run.stopper.clock(), "images_per_s": result["images"] / max(result["train_s"], 1e-9),
               "wall_time_s": time.time() - run.started, "checkpoint": str(out / "last.pt"),
               "best_checkpoint": str(out / "best.pt"), "plots": [str(curves), str(filters)],
               "weights": "ema" if avg is not None else "raw",
               **({"raw": {k: raw[k] for k in ("top1", "top5", "top1_error", "top5_error", "loss")}}
                  if avg is not None else {}),
               "views": cfg.eval.views, "eval_crop": cfg.eval.crop or cfg.data.crop, "train_crop": cfg.data.crop,
               "metrics": str(out / "metrics.jsonl"), "run": str(out), "data": str(run.data_path),
               "device": str(rt.device), "world_size": rt.ctx.world_size, "ranks_in_sync": in_sync,
               "parallel": cfg.model.parallel, "replicas": rt.ctx.replicas,
               "preset": cfg.preset, "precision": rt.precision, "classes": len(run.ds.classes),
               "at_chance": at_chance(val["top1_error"], len(run.ds.classes)),
               "ceiling": {k: run.ceiling[k] for k in ("flops_per_s", "best", "dtype", "device", "threads")},
               **mfu.peak_memory(rt.device),
               # what the run leaves on disk and what its checkpoints wrote (best.pt: half of last.pt)
               "folder_bytes": sum(files.values()),
               "checkpoint_bytes": {n: files[n] for n in sorted((n for n in files if n.endswith(".pt")),
                                                                key=lambda n: (CHECKPOINTS.get(n, 3), n))},
               "checkpoints_written": {"saves": len(run.written), "bytes": sum(b for _, b in run.written)}}
    run.log.write_json("summary.json", summary)
    if progress:
        finish_message(summary, out, run.data_path)
    return summary


def train(cfg: config_mod.Config, resume: str | None = None, progress: bool = True,
          given: set[str] | frozenset = frozenset(), started: float | None = None) -> dict:
    """Run (or continue) training as configured; returns the summary (also in summary.json), or
    {"stopped": signal, "checkpoint", "run"} when SIGINT/SIGTERM ended it early. With train.minutes
    (--minutes) the budget recipe (alexnet.budget) first chooses every key not in `given` (the keys
    the user wrote: alexnet.config.given, plus an explicit preset's), and the minutes count from
    `started` (a time.time(); default: now; the command line passes the process's start)."""
    started = time.time() if started is None else started
    if cfg.train.minutes:
        cfg = plan_budget(cfg, resume, set(given), started, progress)
    run = setup(cfg, resume, progress)
    try:
        if not restore(run, resume) and cfg.train.init:
            initialise(run)
        run.hold_resident(progress)
        if cfg.train.minutes:
            budget.set_training_time(run, started, run.say, given)
        rt = run.rt
        run.log = RunLog(run.out, cfg, active=rt.main, extra_env={
            "world_size": rt.ctx.world_size, "device": str(rt.device), "precision": rt.precision,
            "ceiling": {k: run.ceiling[k] for k in ("flops_per_s", "best", "dtype", "device", "threads")}})
        try:
            previous_hook = sys.unraisablehook
            sys.unraisablehook = quiet_worker_deaths(previous_hook)
            try:
                result = fit(run, progress)
            except Exception as e:  # torch's DataLoader: a worker died (raised from its SIGCHLD handler)
                if in_chain(e, lambda x: isinstance(x, KeyboardInterrupt)):
                    # a second Ctrl-C ("stop at once") inside a checkpoint write: torch's zip writer
                    # then fails on its own ("unexpected pos"); atomic_write kept the old file
                    raise KeyboardInterrupt from None
                death = worker_death(e)
                if death is not None:
                    raise UserError(worker_died(run, death)) from None
                lost = distributed.peer_lost(e) if run.rt.ctx.distributed else None
                if lost is not None:  # e.g. a tower's partner killed while a checkpoint gathered its half
                    raise UserError(process_lost(run, lost)) from None
                raise
            finally:
                # the SIGCHLD handler's error can also land where Python can only print it ("Exception
                # ignored in ..." with a traceback, e.g. inside logging's lock release); the loader
                # reports the death itself at its next read, so that print is only noise
                sys.unraisablehook = previous_hook
            if result["stopped"]:
                return {"stopped": result["stopped"], "checkpoint": str(run.out / "last.pt"), "run": str(run.out)}
            return finish(run, result, progress)
        finally:
            run.log.close()
    finally:
        run.close_loaders()
        if run.lock:
            run.lock.release()


def plan_budget(cfg: config_mod.Config, resume: str | None, given: set[str], started: float,
                progress: bool) -> config_mod.Config:
    """The config of an `alexnet train --minutes M` run: the
    recipe's choices (alexnet.budget.plan) for a new run; for a run that resumes (--resume, or an
    --out folder with a checkpoint), the choices it started with, read from its checkpoint."""
    # measured in the precision the recipe trains in (auto: bf16 where native), unless one was given
    precision = cfg.train.precision if "train.precision" in given else "auto"
    rt = runtime.setup(cfg.train.device, precision, cfg.train.deterministic)
    say = print if rt.main and progress else (lambda *a, **k: None)
    cfg = copy.deepcopy(cfg)
    out = runfolder.named(cfg, resume)
    previous = Path(resume) if resume not in (None, "auto") else next(
        (out / n for n in runfolder.CHECKPOINTS if out is not None and (out / n).is_file()), None)
    if previous is not None:
        try:
            chosen = config_mod.flatten(checkpoint.load(previous)["config"])
        except (checkpoint.CheckpointError, KeyError, TypeError):
            chosen = None  # resume.restore reports what is wrong with it
        if chosen is not None:
            keep = {k: v for k, v in chosen.items()
                    if (k in budget.RECIPE_KEYS or k == "train.budget_minutes") and k not in given}
            config_mod.apply(cfg, keep, source=f"the recipe {previous} was trained with")
            config_mod.validate(cfg)
            say(f"--minutes {cfg.train.minutes:g}: {previous} continues with the recipe it started with")
            return cfg
    if cfg.data.path is None:
        cfg.data.path = str(runtime.once_per_node(builtin_data, cfg, rt.main and progress))
    ds = open_prepared(Path(cfg.data.path))
    num_classes = cfg.model.num_classes or len(ds.classes)
    left = 60.0 * cfg.train.minutes - (time.time() - started)
    chosen = budget.plan(cfg, ds, rt, num_classes, left, given, say)
    config_mod.apply(cfg, chosen.values, source="the --minutes recipe")
    config_mod.validate(cfg)
    for line in chosen.why:
        say(line)
    return cfg


def in_chain(error: BaseException | None, test: Callable) -> BaseException | None:
    """The first exception in `error`'s chain (itself, then what it was raised from or while
    handling) for which test(exception) holds, or None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if test(error):
            return error
        error = error.__cause__ or error.__context__
    return None


def worker_death(error: BaseException) -> RuntimeError | None:
    """torch's "DataLoader worker ... killed by signal" error, if `error` is it or was raised while
    handling it: the SIGCHLD handler raises it wherever the main process is, and inside a checkpoint
    write torch's zip writer then fails on its own ("unexpected pos"; atomic_write keeps the old file)."""
    found = in_chain(error, lambda e: isinstance(e, RuntimeError) and "DataLoader worker" in str(e))
    if found is None:  # killed while the main process fetched a tensor it shares by descriptor: the
        # fetch fails (Connection reset by peer) before the SIGCHLD handler speaks (seen under load)
        lost = in_chain(error, lambda e: isinstance(e, (ConnectionError, EOFError)) and any(
            "resource_sharer" in f.filename or "reductions" in f.filename for f in traceback.extract_tb(e.__traceback__)))
        if lost is not None:
            found = RuntimeError(f"DataLoader worker exited while handing over a batch ({type(lost).__name__}: {lost})")
    return found


def quiet_worker_deaths(hook: Callable) -> Callable:
    """sys.unraisablehook that drops a worker's death (the loader reports it at its next read) and
    passes anything else to `hook`."""
    return lambda unraisable: None if worker_death(unraisable.exc_value) else hook(unraisable)


def worker_died(run: Run, error: RuntimeError) -> str:
    """The one line for a data-loading worker that died mid-run. No checkpoint is written then:
    torch reports the death from a signal handler, possibly in the middle of an optimizer step,
    so the weights in memory may be half-updated; the last checkpoint written stands."""
    last = run.out / "last.pt"
    resume = (f"run the same command again to resume from {last} (the last checkpoint written)" if last.is_file()
              else "no checkpoint was written yet: the same command starts again")
    cause = str(error).splitlines()[0].strip().rstrip(".")
    return (f"a data-loading worker process died in epoch {run.epoch + 1} ({cause}; a worker killed by signal "
            f"Killed is often the out-of-memory killer's work: give fewer --workers or a smaller batch). {resume}")


def process_lost(run: Run, reason: str) -> str:
    """The one line for another process of the job that died mid-run (a collective failed): no
    checkpoint is written then, and the last one written stands (written atomically)."""
    last = run.out / "last.pt"
    resume = (f"run the same command again to resume from {last} (the last checkpoint written)" if last.is_file()
              else "no checkpoint was written yet: the same command starts again")
    return f"another process of this job is gone ({reason}), in epoch {run.epoch + 1}: {resume}"


def data_summary(ds, cfg, loader, from_weights: bool = False) -> dict:
    """What a checkpoint needs to preprocess new images as in training: the loader's actual
    normalisation (--keep-aspect data sets use channel means even when the config asks for the
    mean image; a fine-tuning run uses its initial weights' own, "normalisation": "weights")."""
    n = loader.norm_cpu
    channel_mean = n.mean if n.mean is not None else n.mean_image.mean((1, 2))
    return {"size": ds.size, "crop": eval_crop(cfg), "train_crop": cfg.data.crop, "mean_mode": "pixel" if n.mean_image is not None else "channel",
            "mean_image": n.mean_image, "mean": channel_mean.float(),
            "std": n.std.float() if n.std is not None else torch.ones(3),
            "normalisation": "weights" if from_weights else "data", "init": cfg.train.init}


def progressive_crop(cfg: config_mod.Config, epoch: int, stopper: Stopper) -> int:
    """The training crop for this epoch: from data.progressive_from up to data.crop over the first 3/4
    of training (by the agreed clock under a time budget), in steps of 8 px, then data.crop."""
    start, end = cfg.data.progressive_from, cfg.data.crop
    if start is None:
        return end
    done = stopper.agreed_clock / stopper.budget if stopper.budget else epoch / cfg.train.epochs
    ramp = min(1.0, done / 0.75)
    return min(end, int(start + (end - start) * ramp) // 8 * 8 if ramp < 1 else end)


def finish_message(s: dict, out: Path, data: Path) -> None:
    minutes, seconds = divmod(int(s["wall_time_s"]), 60)
    print(f"\ndone in {minutes}m{seconds:02d}s: validation top-1 {100 * s['top1']:.2f}%, top-5 {100 * s['top5']:.2f}% "
          f"({s['images_per_s']:.0f} training images/s)")
    for note in result_notes(s["top1_error"], s["classes"]):
        print(note)
    print(f"  run folder   {out}" + (f"  ({disk_use(s)})" if "folder_bytes" in s else ""))
    print(f"  checkpoint   {s['checkpoint']}  (best: {s['best_checkpoint']})")
    print(f"  metrics      {s['metrics']}  (tensorboard --logdir {out})")
    print(f"  plots        {', '.join(s['plots'])}")
    print("next:")
    print(f"  alexnet evaluate {s['best_checkpoint']} --data {data} --views 10")
    print(f"  alexnet predict IMAGE.jpg --checkpoint {s['best_checkpoint']}")
    print(f"  alexnet filters {s['best_checkpoint']} --out conv1.png")


def disk_use(s: dict) -> str:
    """What the run folder holds and what this process's checkpoint saves wrote, from a summary:
    "1.14 GB on disk: last.pt 456 MB, last.prev.pt 456 MB, best.pt 228 MB; 8 checkpoint saves wrote 2.74 GB"."""
    files = ", ".join(f"{name} {size_text(b)}" for name, b in s["checkpoint_bytes"].items())
    written = s["checkpoints_written"]
    return (f"{size_text(s['folder_bytes'])} on disk" + (f": {files}" if files else "")
            + f"; {written['saves']} checkpoint saves wrote {size_text(written['bytes'])}")


def main(args) -> int:
    main_rank = int(os.environ.get("RANK", "0")) == 0  # before the process group: torchrun's variable
    given = written(args)
    cfg = adopt_model(args.cfg, given, print if main_rank else (lambda *a, **k: None))
    train(cfg, resume=args.resume, given=given | preset_keys(args.preset), started=budget.process_start())
    return 0
