"""Where a run's weights come from when they are not new: its own checkpoint (resume) or another
network's (--init, fine-tuning, §6).

    resume.restore(run, "auto")      # continue from the run folder's last.pt: weights, optimizer, schedule,
                                     # scaler, RNG, position, normalisation; False when there is nothing
    resume.initialise(run)           # or copy the weights of train.init that fit, with a load table
    cfg = resume.adopt_model(cfg, given)   # before setup: build the network an --init checkpoint holds

restore refuses a checkpoint of another model configuration or other classes (one line naming
what differs); initialise keeps a loaded head only where its outputs mean this data set's classes
(match_classes: the same classes in another order are reordered, other classes get a new head).
`run` is an alexnet.train.Run.
"""
from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import torch

from . import checkpoint, config as config_mod, runfolder, runtime, towers, weights
from .errors import UserError
from .inference import normalisation_of
from .model import VARIANTS, build

if TYPE_CHECKING:
    from .train import Run


def restore(run: Run, resume: str | None) -> bool:
    """Continue from `resume` (a checkpoint path; "auto": the run folder's last), or from the run
    folder's checkpoint when it has one. Sets the weights, optimizer, schedule, scaler, RNG states,
    the position (epoch, step) and the normalisation in place; False when there is nothing to resume."""
    out, state, path = run.out, None, None
    if resume not in (None, "auto"):
        state, path = checkpoint.load(resume), Path(resume)
    elif resume == "auto" or runfolder.holds_checkpoint(out):
        state, path = checkpoint.load_latest(out, warn=run.say, set_aside=run.rt.main)
        if resume == "auto" and state is None:
            raise UserError(f"--resume: no checkpoint in {out}; start a new run without --resume")
    if state is None:
        return False
    defaults = config_mod.to_dict(config_mod.Config())["model"]  # keys added since the checkpoint was written
    if network({**defaults, **state["config"]["model"]}) != network(config_mod.to_dict(run.cfg)["model"]):
        raise UserError(f"{path} was trained with another model configuration; "
                        f"use another --out, or the same model settings")
    theirs, ours = [c["id"] for c in state["classes"]], [c["id"] for c in run.ds.classes]
    if theirs != ours:
        extra, missing = sorted(set(theirs) - set(ours)), sorted(set(ours) - set(theirs))
        diff = (f"only the checkpoint has {', '.join(extra[:5])}{' ...' if len(extra) > 5 else ''}; " if extra else "") + \
               (f"only the data set has {', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}" if missing
                else "the same classes in another order")
        raise UserError(f"{path} was trained on {len(theirs)} classes and {run.data_path} has {len(ours)}: {diff}. "
                        f"Resume with the data it was trained on, or fine-tune from it: --init {path} with a new --out")
    if state.get("weights") == "ema":  # a best.pt holding the moving average: continue from those weights
        run.say(f"  {path.name} holds the moving average of the weights (train.ema): training continues from it")
    run.load_full_state(state["model"])  # with model.parallel=towers, this tower's half
    run.ema_state = state.get("ema")
    optimizer = state.get("optimizer")
    if run.layout is not None:  # the checkpoint is in the one-device layout, whoever wrote it
        run.ema_state = towers.split(run.ema_state, run.layout.tower) if run.ema_state is not None else None
        optimizer = towers.split_optimizer(optimizer, run.layout.tower) if optimizer is not None else None
    if optimizer is not None:
        run.optimizer.load_state_dict(optimizer)
    run.schedule.load_state_dict(state["schedule"])
    run.scaler.load_state_dict(state["scaler"])
    rng, ctx = state["rng"], run.rt.ctx
    checkpoint.set_rng_state(rng_state_for(rng, ctx))
    run.epoch, run.step, run.best = state["epoch"], state["step"], state["best"]
    run.elapsed = state.get("elapsed_s", 0.0)
    if state["data"].get("normalisation") == "weights":  # a fine-tuning run: its initial weights' normalisation
        run.set_norm(normalisation_of(state["data"]))
    run.resumed_from, run.resumed_at = path, f"epoch {run.epoch + 1}, step {run.step}"
    run.say(f"resuming {path} at epoch {run.epoch + 1}, step {run.step}")
    if state.get("optimizer") is None:  # best.pt keeps the weights only (half the bytes)
        run.say(f"  {path.name} holds no optimizer state (a best.pt keeps the weights and what inference needs): "
                f"the optimizer starts again, its momentum from zero")
    written_by = len(rng) if isinstance(rng, list) else 1
    if written_by != ctx.world_size:  # say it; the position is exact either way
        run.say(f"  the checkpoint was written by {written_by} process(es), this run has {ctx.world_size}: the "
                f"global batch and the order of the images are unchanged, so the run continues at the same image; "
                f"only the ranks' dropout streams start from rank 0's saved state")
    return True


def rng_state_for(rng: list | dict, ctx) -> dict:
    """This process's RNG state from a checkpoint's (a list with one per rank; a dict from old
    checkpoints): its own rank's when the world size is the same, else rank 0's. With
    model.parallel=towers both processes of a pair take the state of its first rank, whoever wrote
    the checkpoint, so that they draw the same dropout masks (alexnet.towers)."""
    if not isinstance(rng, list):
        return rng
    if len(rng) != ctx.world_size:
        return rng[0]
    return rng[ctx.rank - ctx.rank % ctx.towers]


def initialise(run: Run) -> None:
    """Start from the weights of train.init (fine-tuning, §6): copy every tensor whose name and
    shape match, re-initialise the rest (a new head for other classes), print the load table, and
    train with the normalisation those weights expect. Raises WeightsError when the weights are for
    another architecture or nothing fits."""
    cfg = run.cfg
    src = runtime.once_per_node(weights.read, cfg.train.init)  # a download happens once per node
    holds, asks = f"{src.origin} holds {held(src)}", f"this run builds {built(cfg, run.num_classes)}"
    if src.model is not None and src.model.get("name") != cfg.model.name:
        hint = " (torchvision's architecture): use --model alexnet_owt or --preset finetune" \
            if src.model["name"] == "alexnet_owt" else ""
        raise weights.WeightsError(f"{src.origin} holds weights of {src.model['name']}{hint}; this run builds "
                                   f"{cfg.model.name}, a different architecture" if hint else
                                   f"{holds}; {asks}, a different architecture: leave model.name out to use the "
                                   f"checkpoint's")
    reinit = match_classes(src, run.ds.classes)
    # towers: loaded into the whole network (this process's weights, joined with its partner's, are
    # the whole network built from the same seed), then cut: the load table reads as for one device
    target = run.model if run.layout is None else build(cfg.model, run.num_classes, seed=cfg.train.seed)
    rows = weights.load_into(target, src, reinit=reinit)
    if run.layout is not None:
        run.load_full_state(target.state_dict())
    convs = [r for r in rows if r["key"].startswith("conv") and r["key"].endswith(".weight")]
    if not any(r["action"] == "loaded" for r in convs):  # fc layers alone (hidden x hidden) are no start
        first = next((f"{r['key']}: {r['why']}" for r in convs), "no conv layer")
        raise weights.WeightsError(f"nothing of the feature extractor (conv1..conv5) in {src.origin} fits this "
                                   f"network ({first}): {holds}; {asks}. Leave the model settings out to adopt "
                                   f"the checkpoint's, or set them to its values")
    run.say(weights.table(rows, src))
    if src.data is not None:
        run.set_norm(normalisation_of(src.data))


def match_classes(src: weights.Source, classes: list[dict]) -> dict[str, str]:
    """Keep a loaded head only where its outputs mean this data set's classes: the same classes in
    another order are put in this order (fc8's rows permuted, noted); other classes get a new head.
    Returns {key: reason} for the tensors to re-initialise."""
    ids = [c["id"] for c in classes]
    have = [c["id"] for c in src.classes] if src.classes else None
    head = [k for k in src.state if k.startswith(("fc8.", "classifier.6."))]
    if have is None or have == ids or not head or len(have) != len(ids):
        return {}
    if sorted(have) == sorted(ids):
        order = torch.tensor([have.index(i) for i in ids])
        for key in head:
            src.state[key] = src.state[key][order]
        src.notes.append("the head's outputs were reordered to this data set's class order")
        return {}
    return {k.replace("classifier.6.", "fc8."): "the source's classes are not this data set's (a new head)" for k in head}


def network(model: dict) -> dict:
    """The keys of a model config that define the network: all but model.parallel, which says
    how processes share it (a checkpoint is the one-device network's either way, so a run split
    into towers resumes on one device and back)."""
    return {k: v for k, v in model.items() if k != "parallel"}


def held(src: weights.Source) -> str:
    """What a weights Source is, for messages: model name, width, hidden units, classes (ours
    carry their config; for other files, width and hidden are read off conv1's and fc7's shapes)."""
    m, state = src.model or {}, weights.our_names(src.state)
    name = m.get("name", "an unknown network")
    width, hidden = m.get("width"), m.get("hidden")
    if hidden is None and "fc7.weight" in state:
        hidden = state["fc7.weight"].shape[0]
    if width is None and name in VARIANTS and "conv1.weight" in state:
        width = state["conv1.weight"].shape[0] / VARIANTS[name].channels[0]
    parts = [name] + [f"{k} {v:g}" for k, v in (("width", width), ("hidden", hidden)) if v is not None]
    extra = [f"{k} {m[k]}" for k in ("norm", "towers") if m.get(k) is not None]
    n = src.num_classes
    return ", ".join(parts + extra + ([f"{n} classes"] if n else []))


def built(cfg: config_mod.Config, num_classes: int) -> str:
    """What a run's network is, in `held`'s words."""
    m = cfg.model
    extra = [f"{k} {getattr(m, k)}" for k in ("norm", "towers") if getattr(m, k) is not None]
    return ", ".join([m.name, f"width {m.width:g}", f"hidden {m.hidden}"] + extra + [f"{num_classes} classes"])


def adopt_model(cfg: config_mod.Config, given: set[str], say: Callable = print) -> config_mod.Config:
    """Starting from one of our checkpoints (train.init), build its network: the model settings
    (model.*, but num_classes, which the data decides) are the checkpoint's, except the keys in
    `given`, those the user wrote (alexnet.config.given); a preset's are only defaults. Says which
    settings it took. Returns a new Config; `cfg` itself when train.init is not one of ours."""
    spec = cfg.train.init
    if not spec or spec == "torchvision":
        return cfg
    src = weights.read(spec)  # a missing or foreign file: the same one-line error as initialise's
    if not src.ours:  # ours (a checkpoint, or its safetensors export) carry their whole model config
        return cfg
    defaults = config_mod.to_dict(config_mod.Config())["model"]  # keys added since it was written
    theirs = network({**defaults, **src.model})
    changes = {f"model.{k}": v for k, v in theirs.items()
               if k in defaults and k != "num_classes" and f"model.{k}" not in given and getattr(cfg.model, k) != v}
    if not changes:
        return cfg
    adopted = config_mod.apply(copy.deepcopy(cfg), changes, source=f"the model settings of {spec}")
    config_mod.validate(adopted)
    say(f"model settings from {spec}: " + ", ".join(f"{k}={v} (not {getattr(cfg.model, k.split('.')[1])})"
                                                     for k, v in changes.items())
        + "; set any of them (--set model.KEY=VALUE) to choose otherwise")
    return adopted
