"""§3.2's split against data parallelism: step time and bytes sent per step, two processes.

    python benchmarks/towers.py                              # 2 gloo processes on this CPU
    python benchmarks/towers.py --size 224 --batch 32 --json towers.json
    python benchmarks/towers.py --device cuda                # 2 GPUs, NCCL (benchmarks/gpu_check.py runs it)

Both modes train alexnet2012 (LRN, dropout, full width, 4,096-unit FC layers: the paper's network)
with SGD on the same random images, one global batch of `--batch` images per step:
- towers (model.parallel=towers): one tower per process, both processes seeing the whole batch;
  the activations cross at conv3 and the FC layers (alexnet.towers);
- data (model.parallel=data, the default; what every other implementation does): the whole network
  in each process, half the batch each, the gradients all-reduced by DDP.
Bytes are counted where they are handed to the collectives: the tower exchanges' own counter, and a
DDP communication hook that counts every gradient bucket before all-reducing it as DDP does (a ring
all-reduce over two processes sends each of them that many bytes and receives as many). The
planned figures (`alexnet info --model alexnet2012 --parallel towers`) are printed beside them.
Step times are medians over `--steps` steps after one warm-up step, rounds alternating between the
modes. On a CPU both processes share the cores, and the figures say little about GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from alexnet import towers  # noqa: E402
from alexnet.model import build  # noqa: E402


def counting_hook(counter: dict):
    """DDP's default all-reduce (sum, then divide by the world size), counting the bytes handed to it."""
    def hook(group, bucket):
        buf = bucket.buffer()
        counter["bytes"] = counter.get("bytes", 0) + buf.numel() * buf.element_size()
        world = dist.get_world_size(group)
        fut = dist.all_reduce(buf.div_(world), group=group, async_op=True).get_future()
        return fut.then(lambda f: f.value()[0])
    return hook


def worker(rank: int, args, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(args.port))
    cuda = args.device == "cuda"
    device = torch.device("cuda", rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 2) // 2))
    dist.init_process_group("nccl" if cuda else "gloo", rank=rank, world_size=2)
    layout = towers.Layout.create(rank, 2)
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).to(device)
    y = torch.randint(0, 1000, (args.batch,), generator=g).to(device)
    full = build("alexnet2012", 1000, seed=0)
    nets = {"towers": towers.TowerNet(full, layout).to(device),
            "data": torch.nn.parallel.DistributedDataParallel(full.to(device), device_ids=[rank] if cuda else None)}
    ddp_bytes: dict = {}
    nets["data"].register_comm_hook(None, counting_hook(ddp_bytes))
    opts = {k: torch.optim.SGD(n.parameters(), lr=1e-4, momentum=0.9) for k, n in nets.items()}
    half = slice(rank * args.batch // 2, (rank + 1) * args.batch // 2)  # data parallel: this process's half
    inputs = {"towers": (x, y), "data": (x[half], y[half])}
    times: dict = {k: [] for k in nets}
    sent: dict = {k: [] for k in nets}
    for step in range(args.steps + 1):
        for mode, net in nets.items():  # alternating, so that both see the same machine state
            xi, yi = inputs[mode]
            towers.traffic.clear()
            ddp_bytes.clear()
            dist.barrier()
            if cuda:
                torch.cuda.synchronize()
            t = time.perf_counter()
            with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                loss = F.cross_entropy(net(xi).float(), yi)
            opts[mode].zero_grad(set_to_none=True)
            loss.backward()
            opts[mode].step()
            if cuda:
                torch.cuda.synchronize()
            if step:  # the first builds DDP's buckets and warms the caches
                times[mode].append(time.perf_counter() - t)
                sent[mode].append(sum(towers.traffic.values()) if mode == "towers" else ddp_bytes.get("bytes", 0))
    if rank == 0:
        plan = towers.step_bytes(towers.plan(build("alexnet2012", 1000), args.size), args.batch,
                                 2 if dtype is not None else 4)
        Path(out).write_text(json.dumps({
            "seconds": {k: statistics.median(v) for k, v in times.items()},
            "bytes_sent": {k: statistics.median(v) for k, v in sent.items()},
            "planned_towers_bytes": plan["total"],
            "planned_data_bytes": sum(p.numel() for p in full.parameters()) * 4,
            "device": torch.cuda.get_device_name(device) if cuda else f"CPU, {os.cpu_count()} cores"}))
    dist.barrier()
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=int, default=224, help="input side in px (default 224)")
    ap.add_argument("--batch", type=int, default=32, help="global batch: images per step (default 32)")
    ap.add_argument("--steps", type=int, default=5, help="measured steps per mode (default 5)")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    if args.device == "cuda" and torch.cuda.device_count() < 2:
        sys.exit(f"benchmarks/towers.py --device cuda needs 2 GPUs; this machine has {torch.cuda.device_count()}")
    if args.batch % 2:
        sys.exit("--batch must be even: data parallelism gives each process half of it")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        args.port = s.getsockname()[1]
    out = tempfile.mktemp(suffix=".json")
    mp.spawn(worker, args=(args, out), nprocs=2)
    r = json.loads(Path(out).read_text())
    os.unlink(out)
    s, b = r["seconds"], r["bytes_sent"]
    print(f"alexnet2012, 2 processes ({r['device']}), global batch {args.batch} at {args.size} px, {args.precision}; "
          f"median of {args.steps} steps\n")
    print(f"  {'':<30}{'step ms':>10}{'MB sent per step':>20}{'planned MB':>12}")
    print(f"  {'towers (model.parallel=towers)':<30}{1000 * s['towers']:>10.0f}{b['towers'] / 1e6:>20.1f}"
          f"{r['planned_towers_bytes'] / 1e6:>12.1f}")
    print(f"  {'data (DDP, the default)':<30}{1000 * s['data']:>10.0f}{b['data'] / 1e6:>20.1f}"
          f"{r['planned_data_bytes'] / 1e6:>12.1f}")
    print(f"\n  towers / data: {s['data'] / s['towers']:.2f}x the step rate, {b['data'] / max(b['towers'], 1):.1f}x "
          f"fewer bytes sent")
    if args.json:
        Path(args.json).write_text(json.dumps({**vars(args), **r}, indent=2) + "\n")


if __name__ == "__main__":
    main()
