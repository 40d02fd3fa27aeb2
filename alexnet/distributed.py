"""One launch path from a laptop to many nodes: torchrun's environment, read in one place.

    ctx = distributed.init()     # world size 1 without torchrun; gloo on CPU, NCCL on CUDA
    if ctx.main: print(...)      # only rank 0 prints and writes
    distributed.all_reduce_sum(t)

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT; a plain `alexnet train`
has none of them and runs as world size 1 through the same code.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the job. With model.parallel=towers (alexnet.towers) the processes
    come in pairs, one tower each, that see the same images: the data is shared among the
    `replicas` = world_size / towers pairs, this process's share being replica `replica`."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    towers: int = 1  # processes per replica of the network (2: its towers split, §3.2)

    @property
    def replicas(self) -> int:
        """Copies of the whole network in the job: what the data and the global batch are divided among."""
        return self.world_size // self.towers

    @property
    def replica(self) -> int:
        """Which of them this process belongs to (its share of every epoch's images)."""
        return self.rank // self.towers

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init(device_type: str = "cpu") -> Context:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        # The store's keys are namespaced by torchrun's restart count: with a static rendezvous
        # (--master_port) the agent keeps one store across --max-restarts, and a restarted rank
        # could otherwise read a dead rank's address and fail ("connectFullMesh ... Connection refused").
        store, rank, world = next(dist.rendezvous("env://"))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        dist.init_process_group("nccl" if device_type == "cuda" else "gloo",
                                store=dist.PrefixStore(f"alexnet/attempt_{attempt}", store),
                                rank=rank, world_size=world)
    return Context(rank, world, local)


def shutdown() -> None:
    """Tear the process group down before exit: a gloo group left to the interpreter's exit can
    abort the process ("terminate called without an active exception"), which torchrun reports
    as a failed rank even though the work was done."""
    global _cpu_group
    if is_initialized():
        dist.destroy_process_group()
    _cpu_group = None


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def all_reduce_max(t: torch.Tensor, group=None) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group)
    return t


def all_reduce_max_async(t: torch.Tensor, group=None):
    """Start a MAX all-reduce of `t` in place; returns the work handle to wait() on."""
    return dist.all_reduce(t, op=dist.ReduceOp.MAX, group=group, async_op=True)


_cpu_group = None


def cpu_group():
    """A process group for small CPU tensors (control messages such as "stop now"): the default
    group when it is gloo, else one gloo group made once (every rank must call this, in the same
    order, the first time)."""
    global _cpu_group
    if dist.get_backend() == "gloo":
        return dist.group.WORLD
    if _cpu_group is None:
        _cpu_group = dist.new_group(backend="gloo")
    return _cpu_group


def broadcast(obj):
    """Rank 0's value of a picklable object on every rank (e.g. the default run folder's name)."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj) -> list:
    """Every rank's picklable object, in rank order, on every rank ([obj] without torchrun)."""
    if not is_initialized():
        return [obj]
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def in_sync(parameters, group=None) -> bool:
    """True when every rank (of `group`: default all) holds the same weights (compared through
    sums of each tensor). Every rank of the job calls it, each with its own group."""
    if not is_initialized():
        return True
    sums = torch.stack([p.detach().double().sum() for p in parameters])
    lo, hi = sums.clone(), sums.clone()
    dist.all_reduce(lo, op=dist.ReduceOp.MIN, group=group)
    dist.all_reduce(hi, op=dist.ReduceOp.MAX, group=group)
    return bool(torch.equal(lo, hi))


def compress_gradients(ddp: torch.nn.parallel.DistributedDataParallel, kind: str) -> None:
    """Send gradients as bf16 or fp16 (half the bytes of AlexNet's ~245 MB fp32 all-reduce per
    step), through DDP's own communication hooks; "none" keeps fp32."""
    from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

    if kind == "bf16":
        ddp.register_comm_hook(None, default_hooks.bf16_compress_hook)
    elif kind == "fp16":
        ddp.register_comm_hook(None, default_hooks.fp16_compress_hook)


def peer_lost(error: BaseException) -> str | None:
    """The reason, in a few words, when `error` is a collective's failure because another process
    of the job is gone (gloo: "Connection reset by peer", "Connection closed by peer"; a broken
    pipe), else None. gloo reports it at once; NCCL waits for its watchdog, and torchrun's agent
    stops the job first."""
    text = str(error) if isinstance(error, RuntimeError) else ""
    if not re.search(r"Connection (reset|closed) by peer|Broken pipe|Socket closed", text):
        return None
    first = next((line.strip() for line in text.splitlines() if line.strip()), "")
    return re.split(r"(?<=\.)\s", re.sub(r"^\[[^\]]*\]\s*", "", first))[0].rstrip(".")[:160]  # gloo's file:line off


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
