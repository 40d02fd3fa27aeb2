"""Gradient communication of AlexNet under DDP: fp32 vs bf16 compression, with and without overlap.

    python benchmarks/ddp.py                        # 2 gloo processes on this CPU
    python benchmarks/ddp.py --world 2 --size 64 --steps 6 --json out.json

AlexNet's 61 M parameters make the per-step gradient all-reduce large (about 245 MB in fp32). Each
configuration runs the same training steps of alexnet2012 (batch norm, paper-sized FC layers) in
`--world` gloo processes on random data and reports the mean step time:
- fp32, overlapped: DDP's default (25 MB buckets all-reduced while the backward pass still runs);
- fp32, not overlapped: one bucket big enough for every gradient, so nothing is sent until the
  backward pass ends;
- bf16 / fp16 compressed: DDP's communication hooks, half the bytes (alexnet.distributed);
plus the time of a bare all-reduce of 61 M fp32 values, the floor of what compression can save.
The input is small (`--size`, default 64 px) so that communication, not convolution, dominates, as
it does for AlexNet on fast GPUs.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
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
from alexnet.distributed import compress_gradients  # noqa: E402
from alexnet.model import build  # noqa: E402

CONFIGS = [("fp32, overlapped (DDP default)", "none", 25), ("fp32, not overlapped", "none", 1024),
           ("bf16 compressed, overlapped", "bf16", 25), ("fp16 compressed, overlapped", "fp16", 25)]


def worker(rank: int, world: int, port: int, size: int, batch: int, steps: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    results = {}
    flat = torch.randn(61_000_000)
    for _ in range(2):
        dist.all_reduce(flat)
    dist.barrier()
    t = time.perf_counter()
    for _ in range(3):
        dist.all_reduce(flat)
    results["bare all-reduce of 61 M fp32"] = (time.perf_counter() - t) / 3
    del flat
    x = torch.randn(batch, 3, size, size)
    y = torch.randint(0, 1000, (batch,))
    for name, compression, bucket_mb in CONFIGS:
        torch.manual_seed(0)
        model = build("alexnet2012", 1000, norm="batchnorm", seed=0)
        ddp = torch.nn.parallel.DistributedDataParallel(model, bucket_cap_mb=bucket_mb)
        compress_gradients(ddp, compression)
        opt = torch.optim.SGD(ddp.parameters(), lr=1e-3, momentum=0.9)
        times = []
        for i in range(steps + 1):
            dist.barrier()
            t = time.perf_counter()
            loss = F.cross_entropy(ddp(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if i:  # the first step builds the buckets
                times.append(time.perf_counter() - t)
        results[name] = sum(times) / len(times)
    if rank == 0:
        Path(out).write_text(json.dumps(results))
    dist.destroy_process_group()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--world", type=int, default=2)
    ap.add_argument("--size", type=int, default=64, help="input side in px")
    ap.add_argument("--batch", type=int, default=16, help="per process")
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tempfile.mktemp(suffix=".json")
    mp.spawn(worker, args=(args.world, port, args.size, args.batch, args.steps, out), nprocs=args.world)
    results = json.loads(Path(out).read_text())
    os.unlink(out)
    base = results[CONFIGS[0][0]]
    print(f"alexnet2012 DDP step, {args.world} gloo processes on {os.cpu_count()} cores, batch {args.batch} per "
          f"process at {args.size} px\n")
    for name, seconds in results.items():
        ratio = "" if name.startswith("bare") else f"{base / seconds:6.2f}x"
        print(f"  {name:<34}{1000 * seconds:>9.0f} ms {ratio}")
    if args.json:
        Path(args.json).write_text(json.dumps({"world": args.world, "size": args.size, "batch": args.batch,
                                               "cores": os.cpu_count(), "seconds": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
