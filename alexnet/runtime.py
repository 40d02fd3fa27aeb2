"""Where and how the numbers are computed, in one place: device, precision, autocast, the GPU's
fast-math switches, and each torchrun process's own device.

    rt = runtime.setup("auto", precision="auto")   # binds this rank to its GPU, starts the process group
    with rt.autocast():                             # one mixed-precision path for every command
        logits = model(x)
    rt.sync()                                       # before reading a clock (a no-op on CPU)
    runtime.once_per_node(make_data)                # one-time side effects: local rank 0, others wait

Every command (train, evaluate, predict, features, neighbors, export, bench, serve) gets its device
and precision here. Under torchrun each process owns the GPU of its LOCAL_RANK: it calls
`torch.cuda.set_device` before the process group starts, as nanoGPT and torchvision's
`init_distributed_mode` do, so NCCL and the object collectives (`broadcast_object_list`,
`all_gather_object`) never pile every rank onto cuda:0.
"""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from . import distributed
from .errors import UserError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def local_rank() -> int:
    """This process's index on its node under torchrun (0 without torchrun)."""
    return int(os.environ.get("LOCAL_RANK", "0"))


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str = "auto", rank_on_node: int | None = None) -> torch.device:
    """The torch.device that `name` means for this process.

    name: "auto" (the rank's GPU when CUDA is present, else MPS, else CPU), "cpu", "cuda" (this
    rank's GPU: LOCAL_RANK modulo the GPU count), "cuda:N" or "mps". Raises UserError for an
    unknown name or a device this machine does not have.
    """
    rank_on_node = local_rank() if rank_on_node is None else rank_on_node
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", rank_on_node % torch.cuda.device_count())
        return torch.device("mps") if mps_available() else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"device {name}: CUDA is not available on this machine; use --device cpu or auto")
        if device.index is None:
            device = torch.device("cuda", rank_on_node % torch.cuda.device_count())
        elif device.index >= torch.cuda.device_count():
            raise UserError(f"device {name}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    elif device.type == "mps" and not mps_available():
        raise UserError(f"device {name}: MPS is not available on this machine")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu, cuda, cuda:N or mps")
    return device


def check_one_gpu_per_rank(name: str) -> None:
    """NCCL needs a GPU of its own for each process of a node ("Duplicate GPU detected" otherwise):
    refuse, before the process group, `--device cuda:N` with several processes on the node and more
    processes than GPUs. Raises UserError."""
    ranks = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or ranks <= 1:
        return
    if name != "auto" and torch.device(name).index is not None:
        raise UserError(f"--device {name} would put all {ranks} processes of this node on one GPU; use --device "
                        f"cuda or auto (process r of a node gets GPU r)")
    if ranks > torch.cuda.device_count():
        raise UserError(f"{ranks} processes on this node but {torch.cuda.device_count()} GPU(s): NCCL needs one GPU "
                        f"per process; use torchrun --nproc_per_node={torch.cuda.device_count()}")


def cpu_has_native_bf16() -> bool:
    """True on CPUs with AVX512-BF16 or AMX, where oneDNN computes bf16 natively (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def amp_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of a precision name (None: plain fp32).

    auto -> bf16 where the device computes it natively (CUDA sm80+, CPUs with AVX512-BF16/AMX),
    fp16 on older GPUs, else fp32: on other CPUs PyTorch emulates bf16 convolutions, measured
    ~60x slower than fp32. Raises UserError for an unknown name.
    """
    if precision not in PRECISIONS:
        raise UserError(f"unknown precision {precision!r}; use {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type == "cuda":
            # including_emulation=False: since torch 2.3 the plain call also says True on T4/V100,
            # which only emulate bf16 (slowly); there fp16 with a loss scaler is the fast format
            precision = "bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp16"
        elif device.type == "cpu" and cpu_has_native_bf16():
            precision = "bf16"
        else:
            precision = "fp32"
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def precision_name(dtype: torch.dtype | None) -> str:
    return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """The one mixed-precision context: autocast to `dtype`, or nothing for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def configure(deterministic: bool = False) -> None:
    """cuDNN autotuning and TF32 matmuls on (airbench, ffcv, nanoGPT), unless a bit-exact run is
    wanted: then deterministic kernels, no autotuning and full fp32 matmuls. Process-wide."""
    torch.backends.cudnn.benchmark = not deterministic
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cuda.matmul.allow_tf32 = not deterministic  # what set_float32_matmul_precision("high") sets
    torch.backends.cudnn.allow_tf32 = not deterministic
    if deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def usable_cores() -> int:
    """The cores this process may run on (its CPU affinity, which containers and taskset narrow;
    os.cpu_count() counts the whole machine)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def loader_workers(device: torch.device | str, processes_on_node: int | None = None) -> int:
    """The default number of loader processes of every command (train, evaluate, features,
    neighbors): the one rule (alexnet.cli.WORKERS_RULE says it in each --workers help; the flag
    overrides it).

    Each process of the node gets an equal share of its cores (`LOCAL_WORLD_SIZE` under torchrun).
    On a GPU the workers decode while the device computes, so they get the whole share less one
    core for the process itself; on the CPU the network's own threads need the cores, so the
    workers get a quarter of the share (at least 1). E.g. 16 cores, one GPU: 15 workers; 8 ranks
    on 64 cores: 7 each; a 2-core CPU: 1."""
    processes = processes_on_node or int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    share = max(1, usable_cores() // max(1, processes))
    if torch.device(device).type == "cpu":
        return max(1, share // 4)
    return max(1, share - 1)


@dataclass(frozen=True)
class Runtime:
    """A process's device, autocast dtype (None: fp32) and place in the job (rank, world size)."""
    device: torch.device
    dtype: torch.dtype | None
    ctx: distributed.Context

    @property
    def precision(self) -> str:
        return precision_name(self.dtype)

    @property
    def main(self) -> bool:
        return self.ctx.main

    def autocast(self):
        return autocast(self.device, self.dtype)

    def sync(self) -> None:
        synchronize(self.device)


def setup(device: str = "auto", precision: str = "fp32", deterministic: bool = False,
          distributed_job: bool = True) -> Runtime:
    """Choose this process's device and precision; under torchrun, bind it to its GPU and start
    the process group (NCCL for CUDA, gloo otherwise). Safe to call more than once.

    distributed_job=False: a process that works alone even under torchrun's variables.
    Raises UserError for a device or precision this machine cannot give.
    """
    dev = pick_device(device)
    if dev.type == "cuda":
        if distributed_job:
            check_one_gpu_per_rank(device)
        torch.cuda.set_device(dev)  # before the process group: NCCL and object collectives use it
    ctx = distributed.init(dev.type) if distributed_job else distributed.Context()
    configure(deterministic)
    return Runtime(dev, amp_dtype(precision, dev), ctx)


def once_per_node(fn, *args, **kwargs):
    """Run a one-time side effect (data generation, a download) on local rank 0 of each node
    while the other ranks wait at a barrier, then on the others (who find it done). Without a
    process group it simply calls fn. Returns fn's result on every rank."""
    if not distributed.is_initialized():
        return fn(*args, **kwargs)
    result, error = None, None
    if local_rank() == 0:
        try:
            result = fn(*args, **kwargs)
        except BaseException as e:  # reach the barrier anyway, or the waiting ranks hang until the timeout
            error = e
    # a barrier that also tells every rank whether a node's rank 0 failed: the others must not
    # then try the same download or generation themselves, all at once
    reports = distributed.gather(None if error is None else (isinstance(error, UserError), str(error)))
    if error is not None:
        raise error
    failed = next((r for r in reports if r is not None), None)
    if failed is not None:
        user_error, message = failed
        raise (UserError if user_error else RuntimeError)(message)
    return result if local_rank() == 0 else fn(*args, **kwargs)
