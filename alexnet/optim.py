"""The optimizer and learning-rate schedule of a training run.

§5's update rule, with momentum m = 0.9, weight decay d = 0.0005 and learning rate e:
    v <- m v - d e w - e grad;   w <- w + v.
torch.optim.SGD (momentum=m, weight_decay=d) computes b <- m b + (grad + d w); w <- w - e b, which is
the same update while e is constant (v = -e b); when e is divided by 10 the paper's velocity keeps
the old rate's steps for a while, torch's shrinks at once. `optim.update = "paper"` uses PaperSGD
below (the paper preset does); "torch" uses torch.optim.SGD (optionally Nesterov).

Learning rate: `optim.lr` is stated per `optim.lr_batch` images and scaled linearly to the global
batch (Goyal et al. 2017): lr = optim.lr * global_batch / lr_batch. Schedules (`schedule.name`),
all multiplied by a linear warm-up over `schedule.warmup_epochs`:
- plateau (§5): divide by 1/gamma (10) when the validation error has not improved for `patience`
  epochs, at most `max_decays` (3) times;
- step: x gamma every `step_epochs` epochs (torchvision's recipe: 0.1 every 30);
- linear: decay to 0 at the last step; onecycle: warm up (over 30% of training when
  warmup_epochs is 0) then decay linearly to 0; cosine: half a cosine to 0; constant.
With a wall-clock budget (`train.budget_minutes`) the decaying schedules follow the clock instead
of the step count: progress = elapsed / budget, so a run ends at lr 0 when its time is up, however
fast the machine is.
"""
from __future__ import annotations

import math

import torch

from .config import Config


class PaperSGD(torch.optim.Optimizer):
    """§5 exactly: v <- m v - d lr w - lr grad; w <- w + v."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 5e-4):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None if closure is None else closure()
        for group in self.param_groups:
            lr, m, d = group["lr"], group["momentum"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "velocity" not in state:
                    state["velocity"] = torch.zeros_like(p)
                v = state["velocity"]
                v.mul_(m).add_(p, alpha=-d * lr).add_(p.grad, alpha=-lr)
                p.add_(v)
        return loss


def param_groups(model: torch.nn.Module, cfg: Config, lr: float) -> list[dict]:
    """The trainable parameters as optimizer groups: fc8 (the head) at lr x optim.head_lr_mult,
    the rest at lr; frozen parameters (requires_grad False) are left out. Each group keeps its
    "lr_mult" so that the schedule's lr reaches it scaled (alexnet.loop)."""
    head = [p for n, p in model.named_parameters() if n.startswith("fc8.") and p.requires_grad]
    body = [p for n, p in model.named_parameters() if not n.startswith("fc8.") and p.requires_grad]
    mult = cfg.optim.head_lr_mult
    return [g for g in ({"params": body, "lr": lr, "lr_mult": 1.0, "name": "body"},
                        {"params": head, "lr": lr * mult, "lr_mult": mult, "name": "head"}) if g["params"]]


def build_optimizer(cfg: Config, params, lr: float) -> torch.optim.Optimizer:
    o = cfg.optim
    if o.update == "paper":
        if o.nesterov:
            raise ValueError("optim.nesterov needs optim.update=torch")
        return PaperSGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum, weight_decay=o.weight_decay,
                           nesterov=o.nesterov)


def scaled_lr(cfg: Config, global_batch: int) -> float:
    return cfg.optim.lr * global_batch / cfg.optim.lr_batch


class Schedule:
    """lr(epoch, step) for every optimizer step, plus the plateau state; checkpointed whole."""

    def __init__(self, cfg: Config, base_lr: float, steps_per_epoch: int):
        s = cfg.schedule
        self.name, self.base_lr, self.steps_per_epoch = s.name, base_lr, max(1, steps_per_epoch)
        self.epochs, self.gamma, self.step_epochs = cfg.train.epochs, s.gamma, s.step_epochs
        self.patience, self.max_decays = s.patience, s.max_decays
        warmup = s.warmup_epochs if not (s.name == "onecycle" and s.warmup_epochs == 0) else 0.3 * self.epochs
        self.warmup_steps = round(warmup * self.steps_per_epoch)
        self.total_steps = self.epochs * self.steps_per_epoch
        self.budget_s = None if cfg.train.budget_minutes is None else 60.0 * cfg.train.budget_minutes
        self.decays, self.best, self.bad_epochs = 0, math.inf, 0  # plateau state

    def lr(self, epoch: int, step: int, elapsed_s: float = 0.0) -> float:
        t = epoch * self.steps_per_epoch + step  # optimizer steps taken before this one
        warm = min(1.0, (t + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        if self.name == "plateau":
            shape = self.gamma ** self.decays
        elif self.name == "step":
            shape = self.gamma ** (epoch // self.step_epochs)
        elif self.name == "constant":
            shape = 1.0
        else:  # decays to 0 after the warm-up (by steps, or by the clock under a budget)
            span = max(1, self.total_steps - self.warmup_steps)
            p = min(1.0, max(0.0, (t - self.warmup_steps) / span))
            if self.budget_s:
                p = min(1.0, elapsed_s / self.budget_s)
            shape = 0.5 * (1 + math.cos(math.pi * p)) if self.name == "cosine" else 1.0 - p
        return self.base_lr * warm * shape

    def on_epoch_end(self, val_error: float | None) -> bool:
        """Feed the epoch's validation error (plateau); True when the lr was divided."""
        if self.name != "plateau" or val_error is None:
            return False
        if val_error < self.best - 1e-4:
            self.best, self.bad_epochs = val_error, 0
            return False
        self.bad_epochs += 1
        if self.bad_epochs > self.patience and self.decays < self.max_decays:
            self.decays, self.bad_epochs = self.decays + 1, 0
            return True
        return False

    def state_dict(self) -> dict:
        return {"decays": self.decays, "best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict) -> None:
        self.decays, self.best, self.bad_epochs = state["decays"], state["best"], state["bad_epochs"]
