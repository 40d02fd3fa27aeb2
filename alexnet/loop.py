"""The hot loop of `alexnet train`: one epoch of optimizer steps, when to stop, and divergence.

    stopper = Stopper(elapsed_s, budget_minutes)        # time budget and SIGINT/SIGTERM, agreed by all ranks
    seen, stopped_at = train_epoch(run, epoch, start_step, stopper, progress=True)

Nothing here waits for the device except where a comment says "sync point": the loss and accuracy
sums stay on the device and are read at logging intervals only, and the ranks agree on stopping
through a small asynchronous all-reduce on the CPU (gloo) that is launched at one step and read at
the next, so a stop request costs at most one step of delay and never stalls the GPU queue.
"""
from __future__ import annotations

import contextlib
import math
import signal
import statistics
import sys
import threading
import time
from collections import deque

import torch
import torch.nn.functional as F

from . import distributed, mfu
from .checkpoint import unwrap
from .errors import UserError


class Diverged(UserError):
    """The loss or the weights became NaN or infinite, or blew up while still finite (BlowUpGuard);
    the same message on every rank."""


# The two rules of BlowUpGuard, each an order of magnitude beyond what healthy runs do. Measured
# on the built-in shapes (200 images per class, 620 steps, logged every step): the quick, paper
# and fast presets from scratch, fine-tuning with --init (with its warm-up, and with 10x its lr
# and no warm-up), and the quick and paper presets at 5x their lr. The parameters' L2 norm
# moved by at most 8% over a whole run (0.2% in a step: weight decay holds it), and no logged
# loss exceeded 1.3x the median of the 8 before it. Runs that blew up (lr 100-1e5 x the preset's)
# grew the norm 3.5-3,400x in their first step, then 1,000x or more in the next, while the loss was
# still finite for one or two steps: batch norm hides the weights' scale from the loss.
NORM_GROWTH = 10.0  # x the parameter norm of the last checkpoint that passed (or of the start)
LOSS_JUMP = 10.0  # x the running level of the logged training loss (the median of the last 8) ...
LOSS_CHANCE = 10.0  # ... and x chance, ln(C): a network wrong with ~e^-10 of its softmax on the label
LOSS_WINDOW = 8  # logged losses the running level is the median of


class BlowUpGuard:
    """Finite blow-ups: a diverging run wrote weights with max |w| 6.6e19 to
    last.pt before its loss turned NaN, and every resume from them diverged at once. A checkpoint
    is refused, and the run stops, when either rule fires:

    - weights: the parameters' global L2 norm is not finite, or grew more than NORM_GROWTH since
      the last checkpoint that passed (since the start or the resume before the first);
    - loss: a logged training loss above LOSS_JUMP x its running level and LOSS_CHANCE x ln(C).

    Both are ratios, free of the model's and the data's scale; the second needs both conditions so
    that neither a loss rising from near 0 nor a fine-tuning run starting far above chance (a head
    for other classes) sets it off. The losses are the host floats the loop already reads at its
    sync points; the norm costs one sync per checkpoint. Every rank sees the same losses (summed
    over ranks) and the same weights, so every rank decides alike."""

    def __init__(self, num_classes: int, norm: float, since: str):
        self.chance = math.log(max(num_classes, 2))
        self.losses: deque[float] = deque(maxlen=LOSS_WINDOW)
        self.norm, self.since = norm, since  # the reference: the last good checkpoint's parameter norm
        self.start_norm = norm  # of the weights the run started or resumed from

    def loss(self, loss: float) -> str | None:
        """Record a logged training loss (mean over the ranks); why it shows a blow-up, or None."""
        level = statistics.median(self.losses) if self.losses else None
        self.losses.append(loss)
        if level is not None and loss > LOSS_JUMP * level and loss > LOSS_CHANCE * self.chance:
            return (f"the training loss {loss:.4g} is {times(loss / max(level, 1e-30))} its running level "
                    f"{level:.4g} and {times(loss / self.chance)} chance (ln {round(math.exp(self.chance))})")
        return None

    def weights(self, norm: float) -> str | None:
        """Why weights of this parameter norm show a blow-up, or None."""
        if not math.isfinite(norm):
            return f"the weights' L2 norm overflows float32 (it was {self.norm:.4g} at {self.since})"
        if norm > NORM_GROWTH * self.norm:
            return (f"the weights' L2 norm grew {times(norm / self.norm)}, from {self.norm:.4g} at {self.since} "
                    f"to {norm:.4g}")
        return None

    def passed(self, norm: float, since: str) -> None:
        """A checkpoint of these weights was written: the new reference."""
        self.norm, self.since = norm, since


def times(ratio: float) -> str:
    """A ratio for messages: 3.4x, 34x, 3,400x, 2.7e+10x."""
    return f"{ratio:.2g}x" if ratio < 10 else f"{ratio:,.0f}x" if ratio < 1e6 else f"{ratio:.2g}x"


def param_norm(model: torch.nn.Module) -> float:
    """The global L2 norm of all the model's parameters, frozen ones included (a sync point)."""
    return l2_norm(list(unwrap(model).parameters())).item()


def train_epoch(run, epoch: int, start_step: int, stopper: "Stopper", progress: bool) -> tuple[int, int | None]:
    """One epoch of `run` (an alexnet.train.Run) from `start_step`: (images this rank trained on,
    the number of steps done when the stopper ended the epoch early, else None). Raises Diverged
    on every rank at once when the global loss sum is not finite or far above its running level
    (run.guard, a BlowUpGuard)."""
    from tqdm import tqdm

    cfg, rt, loader = run.cfg, run.rt, run.train_loader
    run.net.train()
    for m in run.frozen_norms:  # frozen batch norm: statistics of the loaded weights, not of these batches
        m.eval()
    steps = loader.steps(epoch)
    log_every = cfg.train.log_every
    show_every = max(1, log_every // 4)
    bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{cfg.train.epochs}", unit="step",
               disable=not (progress and rt.main), dynamic_ncols=True, leave=True)
    loader.reset_timing()
    t_start, seen, stopped_at = time.perf_counter(), 0, None
    window = torch.zeros(3, dtype=torch.float64, device=rt.device)  # loss sum, right, n of this rank
    params = [p for p in unwrap(run.model).parameters() if p.requires_grad]
    flops = run.flops_per_image(loader.spec.crop)
    try:  # the bar is closed on errors too, so that a message starts on a line of its own
        for step, batch in enumerate(loader.epoch(epoch, start_step), start=start_step):
            done = step + 1
            log_now = done % log_every == 0 or done == steps
            lr = run.schedule.lr(epoch, step, stopper.agreed_clock)
            for group in run.optimizer.param_groups:
                group["lr"] = lr * group.get("lr_mult", 1.0)
            y = batch.labels.to(rt.device, non_blocking=True)
            window += forward_backward(run, batch.images, y)
            grad_norm = run.global_norm(grad_norm_of(params, run.scaler)) if log_now else None
            run.scaler.step(run.optimizer)
            run.scaler.update()
            run.optimizer.zero_grad(set_to_none=True)
            if run.ema is not None:
                run.ema.update(run.model, epoch * steps + step)
            seen += len(y)
            if done % show_every == 0 or log_now:
                # sync point: the sums of all ranks, read once per display interval. A NaN on any
                # rank makes the sum NaN everywhere, so every rank stops here with the same message.
                # (towers: only tower 0 of each pair counts; both computed the same loss on the same images)
                counted = window if run.layout is None or run.layout.counts else torch.zeros_like(window)
                loss_sum, right, n = distributed.all_reduce_sum(counted.clone()).tolist()
                if not math.isfinite(loss_sum):
                    raise Diverged(divergence_report(run.model, loss_sum / max(n, 1), epoch, step, lr,
                                                     run.resume_advice()))
                blown = run.guard.loss(loss_sum / n) if run.guard is not None else None
                if blown:  # stop before the next save would be refused: the steps from here on are lost
                    raise Diverged(f"training diverged at epoch {epoch + 1}, step {step}, lr {lr:.4g}: {blown}. "
                                   f"No checkpoint was written after it: {run.resume_advice()}")
                elapsed = time.perf_counter() - t_start
                rate = seen * rt.ctx.replicas / max(elapsed, 1e-9)  # images/s of the whole job
                wait = loader.wait_s / max(elapsed, 1e-9)
                utilisation = rate * flops / (run.ceiling["flops_per_s"] * rt.ctx.world_size)
                bar.set_postfix(loss=f"{loss_sum / n:.3f}", top1=f"{100 * right / n:.1f}%", lr=f"{lr:.3g}",
                                img_s=f"{rate:.0f}", wait=f"{100 * wait:.0f}%", mfu=_share(utilisation),
                                refresh=False)
                if log_now:
                    run.log.log("train", epoch * steps + done, epoch=epoch + done / steps, loss=loss_sum / n,
                                top1=right / n, lr=lr, images_per_s=rate, data_wait=wait, mfu=utilisation,
                                grad_norm=grad_norm.item(), param_norm=run.global_norm(l2_norm(params)).item(),
                                **mfu.peak_memory(rt.device))
                    window.zero_()
            bar.update(1)
            if cfg.train.checkpoint_every and done % cfg.train.checkpoint_every == 0 and done < steps:
                run.save(epoch, done)
            if done < steps and stopper.should_stop():
                stopped_at = done
                break
    finally:
        bar.close()
    return seen, stopped_at


def _share(x: float) -> str:
    """A share for the progress bar with the digits that carry information: 0.4%, 7.3%, 24%
    (a tiny network on a CPU reads "mfu=0%", as if broken, at whole percents)."""
    pct = 100 * x
    return f"{pct:.0f}%" if pct >= 10 else f"{pct:.1f}%" if pct >= 0.1 else f"{pct:.2g}%"


def forward_backward(run, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """One optimizer step's forward and backward passes: x (B, 3, C, C), y (B,) split into
    cfg.train.accumulation micro-batches whose gradients add up (each loss divided by their
    number). Returns (loss x images, right, images) as a (3,) float64 tensor on the device, unread."""
    cfg, rt = run.cfg, run.rt
    xs, ys = x.chunk(cfg.train.accumulation), y.chunk(cfg.train.accumulation)
    sums = torch.zeros(3, dtype=torch.float64, device=rt.device)
    for i, (xi, yi) in enumerate(zip(xs, ys)):
        # DDP all-reduces on the last micro-batch only. run.ddp is the DDP module itself: a
        # torch.compile wrapper around it is not an instance of DistributedDataParallel.
        skip_sync = run.ddp is not None and i < len(xs) - 1
        with run.ddp.no_sync() if skip_sync else contextlib.nullcontext():
            with rt.autocast():
                logits = run.net(xi)
            loss = F.cross_entropy(logits.float(), yi, label_smoothing=cfg.optim.label_smoothing)
            run.scaler.scale(loss / len(xs)).backward()
        sums += torch.stack([loss.detach().double() * len(yi), (logits.argmax(1) == yi).sum().double(),
                             torch.full((), float(len(yi)), device=rt.device, dtype=torch.float64)])
    return sums


def l2_norm(tensors) -> torch.Tensor:
    """The L2 norm of a list of tensors taken as one vector (a 0-d tensor on their device)."""
    return torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(t.detach().float()) for t in tensors]))


def grad_norm_of(params, scaler) -> torch.Tensor:
    """The global gradient norm of this step, unscaled when a GradScaler (fp16) scaled the loss."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return torch.zeros(())
    norm = l2_norm(grads)
    return norm / scaler.get_scale() if scaler.is_enabled() else norm


def divergence_report(model, loss: float, epoch: int, step: int, lr: float, advice: str) -> str:
    """Where the numbers went bad (which parameters, or only the loss), then `advice`: which
    checkpoint to resume from and what to change (alexnet.train.Run.resume_advice)."""
    bad = [name for name, p in unwrap(model).named_parameters() if not torch.isfinite(p).all()]
    where = f"parameters {', '.join(bad[:5])} hold NaN/inf" if bad else "the loss is not finite"
    return (f"training diverged at epoch {epoch + 1}, step {step}: loss {loss} (mean over all ranks), lr {lr:.4g}; "
            f"{where}. No checkpoint was written with non-finite weights, nor with weights that blew up while "
            f"finite (a save checks both first): {advice}")


class Stopper:
    """When to stop early: the wall-clock budget, or SIGINT/SIGTERM (finish the step, save, exit 0;
    a second Ctrl-C stops at once). All ranks agree: the slowest clock and any rank's signal decide.

    With one process the checks are host-only. Under torchrun each step launches an asynchronous
    MAX all-reduce of (clock, signal) on a CPU (gloo) group and the next step reads it, so the ranks
    decide on the same values at the same step without a host-device sync. `agreed_clock` is the
    clock all ranks use for the clock-driven learning-rate schedule (one step behind under torchrun).
    """

    def __init__(self, elapsed: float, budget_minutes: float | None):
        self.resumed_at, self.started = elapsed, time.time()
        self.budget = None if budget_minutes is None else 60.0 * budget_minutes
        self.signal, self._previous = None, {}
        self.agreed_clock = elapsed
        self.group = distributed.cpu_group() if distributed.is_initialized() else None
        self._pending = None  # (work handle, buffer) of the reduction launched at the last step

    def clock(self) -> float:
        """Training wall time across resumes (what train.budget_minutes limits), this rank's."""
        return self.resumed_at + time.time() - self.started

    def _decide(self, clock: float, signalled: bool) -> bool:
        self.agreed_clock = clock
        if signalled and self.signal is None:
            self.signal = "a signal on another rank"
        return signalled or (self.budget is not None and clock >= self.budget)

    def should_stop(self) -> bool:
        """Called once per step by every rank; the same answer on every rank."""
        if self.group is None:
            return self._decide(self.clock(), self.signal is not None)
        decision = False
        if self._pending is not None:
            work, buf = self._pending
            work.wait()  # launched a whole step ago: already done
            decision = self._decide(buf[0].item(), bool(buf[1].item()))  # CPU tensors: no device sync
        buf = torch.tensor([self.clock(), 1.0 if self.signal else 0.0], dtype=torch.float64)
        self._pending = (distributed.all_reduce_max_async(buf, group=self.group), buf)
        return decision

    def agreed_out_of_time(self) -> bool:
        """At an epoch boundary: a blocking agreement (is the budget spent on the slowest rank?)."""
        self.drain()
        clock = self.clock()
        if self.group is not None:
            clock = distributed.all_reduce_max(torch.tensor([clock], dtype=torch.float64), group=self.group).item()
        self.agreed_clock = clock
        return self.budget is not None and clock >= self.budget

    def drain(self) -> None:
        """Finish the reduction in flight (every rank calls this at the same point)."""
        if self._pending is not None:
            self._pending[0].wait()
            self._pending = None

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
        if exc[0] is None:
            self.drain()
        return False
