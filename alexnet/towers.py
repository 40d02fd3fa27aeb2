"""§3.2 for real: alexnet2012's two towers on two processes (`--set model.parallel=towers`).

    torchrun --nproc_per_node=2 -m alexnet train --set model.parallel=towers ...   # the paper's setting
    layout = towers.Layout.create(ctx)          # which tower this process holds, its partner, its replicas
    net = towers.TowerNet(full, layout)         # this tower's half of every layer, cut from a whole network
    full_state = towers.join([s0, s1])          # the ordinary one-device state dict; split(full, t) undoes it

"Parallelizing the training across two GPUs" (§3.2, Figure 2): each GPU holds half of the kernels
(or neurons) of every layer, and "the GPUs communicate only in certain layers". Rank 2k holds
tower 0 of replica k, rank 2k+1 tower 1. Per image, in the number format of the forward pass:

| where | what crosses, each way | per image |
|---|---|---|
| conv1, conv2 (+ LRN, pooling) | nothing: each tower sees only its own 48 and 128 maps | 0 |
| input of conv3 | pool2's maps, 13x13x128 | 21,632 values |
| conv4, conv5 (+ pooling) | nothing: each tower's conv4 reads only its own 192 conv3 maps | 0 |
| input of fc6 | pool5, 6x6x128 | 4,608 values |
| input of fc7 | fc6's 2,048 units | 2,048 values |
| input of fc8 | fc7's 2,048 units | 2,048 values |
| output of fc8 | the logits of the tower's classes (500 of 1,000) | 500 values |

The backward pass sends the same amounts back at the first four exchanges (the gradient with
respect to the other tower's half of the input: both towers' kernels read all of it, so each
tower's input gradient is the sum of both towers' contributions), and nothing at the logits: both
towers compute the loss from the same gathered logits, so each keeps its own classes' gradient.
With 1,000 classes, fp32: 123 KB forward and 121 KB backward per image and process, about 31 MB
per step at a batch of 128 per pair, against the 244 MB of gradients (61M parameters) that data
parallelism all-reduces per step (the paper's argument for the split, in numbers: `alexnet info
--model alexnet2012 --parallel towers`).

Dropout (§4.2) is applied to the gathered inputs of fc7 and fc8 with the same mask on both towers:
the two processes of a pair seed torch's generator alike (alexnet.train.build_model) and draw the
same masks in the same order, so the split network is the one-device network, mask for mask.

The cut is one rule: every tensor of the one-device state dict (weights, biases, batch norm's
statistics, SGD's velocity) is split along its first axis, tower 0 taking the first ceil(n/2)
rows; scalars are copied. conv2, conv4 and conv5 are groups=2 convolutions in the one-device
network, whose first half of kernels reads the first half of the maps, so their halves are the
towers' ungrouped kernels; conv3 and the FC layers read everything and are cut by rows alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from .distributed import peer_lost
from .errors import UserError
from .lrn import LocalResponseNorm
from .model import AlexNet

TOWERS = 2

# bytes this process sent through the tower exchanges, by place (benchmarks/towers.py reads it)
traffic: dict[str, int] = {}


def check(model_cfg, world_size: int) -> None:
    """Refuse a job model.parallel=towers cannot run, before any work: one line, a UserError.
    model_cfg: a config.ModelConfig (whose own checks, alexnet2012 with two towers, are
    config.validate's); world_size: the processes of the job (torchrun's)."""
    if model_cfg.parallel == "towers" and world_size % TOWERS:
        raise UserError(f"model.parallel=towers needs an even number of processes, two per replica (one tower "
                        f"each), and this job has {world_size}: run torchrun --nproc_per_node=2 -m alexnet train "
                        f"--set model.parallel=towers ... (or 2N processes for N replicas)")


def share(n: int, tower: int) -> slice:
    """The rows of an n-row tensor that `tower` holds: tower 0 the first ceil(n/2), tower 1 the rest."""
    half = (n + 1) // 2
    return slice(0, half) if tower == 0 else slice(half, n)


def split(state: dict[str, torch.Tensor], tower: int) -> dict[str, torch.Tensor]:
    """One tower's part of a one-device alexnet2012 state dict (or of any dict of tensors in its
    layout, e.g. SGD's velocities): every tensor cut along its first axis, scalars copied."""
    return {k: v[share(v.shape[0], tower)].clone() if v.dim() else v.clone() for k, v in state.items()}


def join(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """The one-device state dict from the towers' parts, in tower order: `split`'s inverse."""
    first = states[0]
    return {k: torch.cat([s[k] for s in states]) if v.dim() else v.clone() for k, v in first.items()}


def optimizer_state(state: dict, cut) -> dict:
    """An optimizer's state_dict with every per-parameter tensor passed through `cut` (tensor ->
    tensor): the velocities have their parameter's shape, so they split and join as it does. The
    towers' optimizers list the same parameter names in the same order (TowerNet registers its
    layers as AlexNet does), so indices mean the same parameters in both layouts."""
    return {**state, "state": {i: {k: cut(i, k, v) if isinstance(v, torch.Tensor) and v.dim() else v
                                   for k, v in s.items()} for i, s in state["state"].items()}}


def split_optimizer(state: dict, tower: int) -> dict:
    return optimizer_state(state, lambda i, k, v: v[share(v.shape[0], tower)].clone())


def join_optimizer(states: list[dict]) -> dict:
    return optimizer_state(states[0], lambda i, k, v: torch.cat([s["state"][i][k] for s in states]))


@dataclass
class Layout:
    """Where this process sits in a towers x replicas job: 2N processes, rank = 2 x replica + tower."""
    tower: int
    replica: int
    replicas: int
    peer: int  # the global rank of the other tower of this pair
    pair_group: object = None  # the two processes of this pair (saving gathers the towers of pair 0)
    replica_group: object = None  # the N processes holding this tower (gradients are averaged there)

    @classmethod
    def create(cls, rank: int, world_size: int) -> "Layout":
        """Make the process groups (every rank must call this, in the same order)."""
        pairs = [dist.new_group([2 * k, 2 * k + 1]) for k in range(world_size // TOWERS)]
        replicas = [dist.new_group(list(range(t, world_size, TOWERS))) for t in range(TOWERS)]
        tower, replica = rank % TOWERS, rank // TOWERS
        return cls(tower, replica, world_size // TOWERS, rank ^ 1, pairs[replica], replicas[tower])

    def __deepcopy__(self, memo) -> "Layout":
        """The same layout: a copy of a TowerNet (the moving average of its weights, alexnet.ema)
        sits on the same processes, and process groups cannot be copied."""
        return self

    @property
    def counts(self) -> bool:
        """Whether this process's batches count in the job's sums (losses, accuracies, images):
        the two towers of a pair see the same images and compute the same logits, so only tower 0's
        are summed, and every image is counted once."""
        return self.tower == 0


class PartnerLost(UserError):
    """The other tower's process stopped (killed, crashed): this tower cannot compute alone."""


def _swap(x: torch.Tensor, peer: int, shape: torch.Size, where: str) -> torch.Tensor:
    """Send x to the partner and receive its tensor of `shape` (NCCL or gloo point-to-point).
    Raises PartnerLost when the partner is gone (gloo reports a closed connection at once; under
    torchrun the agent also stops every process of a job whose member died)."""
    x = x.contiguous()
    theirs = torch.empty(shape, dtype=x.dtype, device=x.device)
    try:
        for work in dist.batch_isend_irecv([dist.P2POp(dist.isend, x, peer),
                                            dist.P2POp(dist.irecv, theirs, peer)]):
            work.wait()
    except RuntimeError as e:
        reason = peer_lost(e) or next((line.strip() for line in str(e).splitlines() if line.strip()), type(e).__name__)
        raise PartnerLost(f"the process of the other tower (rank {peer}) is gone: the exchange at the {where} "
                          f"failed ({reason[:160]}). A tower cannot go on alone; run the same command again to "
                          f"resume from the last checkpoint") from None
    traffic[where] = traffic.get(where, 0) + x.numel() * x.element_size()
    return theirs


class _Exchange(torch.autograd.Function):
    """Forward: (B, mine, ...) -> (B, tower 0's + tower 1's, ...), the partner's half received.
    Backward: this tower's slice of the gradient plus the partner's gradient of that slice, sent
    back (when `summed`: both towers' layers read the whole input); else the slice alone (both
    towers compute the same loss from the gathered tensor: its gradient is the same on both)."""

    @staticmethod
    def forward(ctx, x, layout, theirs: int, summed: bool, where: str):
        shape = list(x.shape)
        shape[1] = theirs
        received = _swap(x, layout.peer, torch.Size(shape), where)
        ctx.layout, ctx.summed, ctx.where = layout, summed, where
        ctx.sizes = [x.shape[1], theirs] if layout.tower == 0 else [theirs, x.shape[1]]
        return torch.cat([x, received] if layout.tower == 0 else [received, x], dim=1)

    @staticmethod
    def backward(ctx, grad):
        parts = grad.split(ctx.sizes, dim=1)
        t = ctx.layout.tower
        mine = parts[t]
        if ctx.summed:
            mine = mine + _swap(parts[1 - t], ctx.layout.peer, mine.shape, ctx.where + " (backward)")
        return mine, None, None, None, None


@torch.compiler.disable  # a graph break: torch.compile does not trace point-to-point sends
def exchange(x: torch.Tensor, layout: Layout, theirs: int, summed: bool = True, where: str = "") -> torch.Tensor:
    """(B, C_mine, ...) -> (B, C_mine + theirs, ...): both towers' activations in tower order."""
    return _Exchange.apply(x, layout, theirs, summed, where)


class TowerNet(nn.Module):
    """One tower of alexnet2012 (§3.2, Fig. 2): half of the kernels of every conv layer and half
    of the units of fc6, fc7 and fc8, exchanging activations with the other tower's process at the
    input of conv3 and of each FC layer (the table in the module docstring).

    (B, 3, H, W) mean-subtracted images -> (B, num_classes) logits, the same on both towers.
    Built from a whole network (`full`, an alexnet.model.AlexNet with two towers), whose weights it
    takes its half of; its state dict has the one-device names, each tensor `split`'s rows.
    Raises UserError for another variant or the one-tower network.
    """

    def __init__(self, full: nn.Module, layout: Layout):
        super().__init__()
        if getattr(full, "variant", None) != "alexnet2012" or full.towers != TOWERS:
            raise UserError("model.parallel=towers splits alexnet2012's two towers (§3.2)")
        self.layout, self.variant, self.towers = layout, full.variant, full.towers
        self.norm, self.activation, self.min_input_size = full.norm, full.activation, full.min_input_size
        t = layout.tower
        # registered in AlexNet's order, so that parameter indices (the optimizer's) match its
        # made on the meta device, then given memory and the whole network's values: a layer's own
        # initialisation would draw from torch's global generator, whose dropout masks must stay
        # those of the one-device network
        for name, m in full.named_children():
            setattr(self, name, _half(m, t))
        self.to_empty(device=full.conv1.weight.device)
        self.load_state_dict(split(full.state_dict(), t))
        self.widths = {name: getattr(full, name).weight.shape[0] for name in ("conv2", "conv5", "fc6", "fc7", "fc8")}

    def _theirs(self, name: str, per_map: int = 1) -> int:
        """The partner's share of layer `name`'s outputs (times the values per map)."""
        n = self.widths[name]
        s = share(n, 1 - self.layout.tower)
        return (s.stop - s.start) * per_map

    _act, _unit = AlexNet._act, AlexNet._unit  # the same units as the one-device network's

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.min_input_size:
            raise UserError(f"{self.variant} needs inputs of at least {self.min_input_size}x"
                            f"{self.min_input_size} px, got {tuple(x.shape[-2:])}")
        unit, act, lay = self._unit, self._act, self.layout
        x = self.pool1(unit(x, self.conv1, self.norm1))                      # (B, 48, 27, 27): own maps only
        x = self.pool2(unit(x, self.conv2, self.norm2))                      # (B, 128, 13, 13)
        x = exchange(x, lay, self._theirs("conv2"), where="conv3 input")     # (B, 256, 13, 13): both towers
        x = unit(x, self.conv3, self.norm3)                                  # (B, 192, 13, 13)
        x = unit(x, self.conv4, self.norm4)                                  # (B, 192, 13, 13): own maps only
        x = self.avgpool(self.pool5(unit(x, self.conv5, self.norm5)))        # (B, 128, 6, 6)
        x = torch.flatten(x, 1)                                              # (B, 4608), channel-major
        x = exchange(x, lay, self._theirs("conv5", x.shape[1] // self.conv5.out_channels), where="fc6 input")
        x = act(self.fc6(self.dropout6(x)))                                  # (B, 2048)
        x = exchange(x, lay, self._theirs("fc6"), where="fc7 input")         # (B, 4096)
        x = act(self.fc7(self.dropout7(x)))                                  # (B, 2048): same mask on both
        x = exchange(x, lay, self._theirs("fc7"), where="fc8 input")         # (B, 4096): fc7, both towers
        x = self.fc8(self.dropout8(x))                                       # (B, 500): this tower's classes
        return exchange(x, lay, self._theirs("fc8"), summed=False, where="logits")  # (B, 1000)

    def conv1_weight(self) -> torch.Tensor:
        """This tower's conv1 kernels (48 of the 96): Fig. 3's top row for tower 0."""
        return self.conv1.weight.detach()


def _half(m: nn.Module, tower: int) -> nn.Module:
    """A layer of the one-device network cut to `tower`'s half, its weights not yet copied: a
    convolution keeps its input channels per group and becomes ungrouped; LRN normalises within
    the tower's maps (groups=1 over half the maps is groups=2's window for that tower)."""
    import copy

    if isinstance(m, nn.Conv2d):
        s = share(m.out_channels, tower)
        return type(m)(m.weight.shape[1], s.stop - s.start, m.kernel_size, stride=m.stride, padding=m.padding,
                       bias=m.bias is not None, device="meta", dtype=m.weight.dtype)
    if isinstance(m, nn.Linear):
        s = share(m.out_features, tower)
        return nn.Linear(m.in_features, s.stop - s.start, bias=m.bias is not None, device="meta", dtype=m.weight.dtype)
    if isinstance(m, nn.BatchNorm2d):
        s = share(m.num_features, tower)
        return nn.BatchNorm2d(s.stop - s.start, eps=m.eps, momentum=m.momentum, device="meta", dtype=m.weight.dtype)
    if isinstance(m, LocalResponseNorm):
        return LocalResponseNorm(m.size, m.alpha, m.beta, m.k, m.convention, groups=1)
    return copy.deepcopy(m)  # pooling, dropout, identity: no weights


def _parts_on_rank_0(obj, layout: Layout) -> list | None:
    """Both towers' `obj` (picklable, on the CPU) on tower 0 of pair 0, the process that writes
    checkpoints (rank 0), in tower order; None elsewhere. Only pair 0 takes part: the replicas of a
    tower hold the same weights, so pair 0 speaks for all."""
    if layout.replica != 0:
        return None
    parts = [None, None] if layout.tower == 0 else None
    dist.gather_object(obj, parts, dst=0, group=layout.pair_group)  # dst: a global rank
    return parts


def gather_state(net: TowerNet, state: dict) -> dict | None:
    """The one-device form of a per-tower dict of tensors (net.state_dict(), an EMA's), joined on
    rank 0 (others: None). Every process of the job calls it."""
    parts = _parts_on_rank_0({k: v.cpu() for k, v in state.items()}, net.layout)
    return join(parts) if parts else None


def gather_optimizer(net: TowerNet, state: dict) -> dict | None:
    """An optimizer's state_dict in the one-device layout, on rank 0 (see gather_state)."""
    parts = _parts_on_rank_0(optimizer_state(state, lambda i, k, v: v.cpu()), net.layout)
    return join_optimizer(parts) if parts else None


def global_norm(norm: torch.Tensor, layout: Layout | None) -> torch.Tensor:
    """The L2 norm over both towers from this tower's (a 0-d tensor; a sync point); `norm` itself
    without a Layout (model.parallel=data: every process holds the whole network)."""
    if layout is None:
        return norm
    sq = (norm.double() ** 2).reshape(1).clone()
    dist.all_reduce(sq, group=layout.pair_group)
    return sq.sqrt().reshape(()).to(norm.dtype)


# where the towers exchange (§3.2): the layer whose input crosses, the layer whose output it is, and
# whether the backward pass sends gradients back (the consumers on both towers read all of it)
CROSSINGS = (("conv3", "pool2", True), ("fc6", "avgpool", True), ("fc7", "fc6", True), ("fc8", "fc7", True),
             ("logits", "fc8", False))


def plan(net: nn.Module, input_size: int = 224) -> list[dict]:
    """What each device holds and what crosses between the two, per layer of a one-device
    alexnet2012 (`net`, an alexnet.model.AlexNet with two towers) at `input_size` px:
    [{"layer", "holds": [tower 0's, tower 1's] output maps or units, "of", "params": [per tower],
      "crosses": what is received, "values_per_image": [sent by tower 0, by tower 1] forward,
      "backward": whether as many values go back}]. Measured from the network's own layer table
    (alexnet.layers), not typed in; tests/test_towers.py checks it against the bytes really sent."""
    from .layers import layer_table

    outputs = {r["layer"]: r["output"] for r in layer_table(net, input_size)}
    state = net.state_dict()
    rows = []
    for layer in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8"):
        n = outputs[layer][0]
        holds = [share(n, t).stop - share(n, t).start for t in range(TOWERS)]
        params = [sum(split({k: v}, t)[k].numel() for k, v in state.items()
                      if k.startswith(layer + ".") or k.startswith(layer.replace("conv", "norm") + "."))
                  for t in range(TOWERS)]
        rows.append({"layer": layer, "holds": holds, "of": n, "params": params, "crosses": None,
                     "values_per_image": [0, 0], "backward": False})
    by_name = {r["layer"]: r for r in rows}
    for into, source, backward in CROSSINGS:
        shape = outputs[source]
        per_map = math.prod(shape[1:]) if len(shape) == 3 else 1
        sent = [(share(shape[0], t).stop - share(shape[0], t).start) * per_map for t in range(TOWERS)]
        label = "pool5" if source == "avgpool" else source  # the adaptive pool: pool5's 6x6 maps
        what = (f"{label} {shape[1]}x{shape[2]}x{shape[0] // TOWERS} per tower" if len(shape) == 3
                else f"{label} {sent[0]:,} units per tower")
        row = by_name["fc8"] if into == "logits" else by_name[into]
        logits = f"{sent[0]:,} logits per tower" if sent[0] == sent[1] else f"{sent[0]:,} / {sent[1]:,} logits"
        text = f"output: {logits}" if into == "logits" else f"input: {what}"
        row["crosses"] = text if row["crosses"] is None else f"{row['crosses']}; {text}"
        row["values_per_image"] = [a + b for a, b in zip(row["values_per_image"], sent)]
        row.setdefault("exchanges", []).append({"at": f"{into} input" if into != "logits" else "logits",
                                                "values_per_image": sent, "backward": backward})
        row["backward"] = row["backward"] or backward
    return rows


def step_bytes(rows: list[dict], batch: int, bytes_per_value: int, tower: int = 0) -> dict:
    """Bytes one tower's process sends per optimizer step at `batch` images per pair:
    {"forward", "backward", "total"} (the backward sends back as many values at every summed
    exchange, none at the logits)."""
    forward = sum(e["values_per_image"][tower] for r in rows for e in r.get("exchanges", []))
    backward = sum(e["values_per_image"][tower] for r in rows for e in r.get("exchanges", []) if e["backward"])
    scale = batch * bytes_per_value
    return {"forward": forward * scale, "backward": backward * scale, "total": (forward + backward) * scale}
