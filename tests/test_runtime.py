"""One runtime module for device and precision, and the multi-GPU defects found when a GPU was first at hand, on CPU.

Each numbered defect has a test here: (1) every rank bound to its own GPU before the process group
starts, (2) evaluate/features under torchrun on their rank's GPU, (3) the built-in data made once
per node on an empty cache, (4) no host-device sync per step, (5) compile + DDP + accumulation
all-reduce once per step, (6) a divergence on one rank stops every rank with the same message,
(7) cuDNN autotuning and TF32 on unless deterministic. The CUDA-only checks are in
benchmarks/gpu_check.py and the test at the end (skipped without 2 GPUs).
"""
import ast
import os
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch

from alexnet import config, distributed, loop, mfu, runtime
from alexnet.errors import UserError
from conftest import free_port

ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def tiny_sets(data, out, *more):
    base = [f"data.path={data}" if data else "data.builtin_per_class=4", f"train.out={out}", "train.batch_size=8",
            "train.precision=fp32"]
    return ["--preset", "tiny", *[a for s in base + list(more) for a in ("--set", s)]]


class FakeCuda:
    """Two pretend GPUs: records set_device calls and what happened before them."""

    def __init__(self, monkeypatch, events):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
        monkeypatch.setattr(torch.cuda, "set_device", lambda d: events.append(("set_device", str(d))))
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)


# ---------------------------------------------------------------- (1), (2): each rank owns its GPU

def test_each_rank_is_bound_to_its_gpu_before_the_process_group_starts(monkeypatch):
    events = []
    FakeCuda(monkeypatch, events)
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setattr(distributed, "init", lambda kind: events.append(("init", kind)) or distributed.Context(1, 2, 1))
    rt = runtime.setup("auto", "auto")
    assert rt.device == torch.device("cuda", 1) and rt.dtype == torch.bfloat16
    assert events == [("set_device", "cuda:1"), ("init", "cuda")]  # bound first: NCCL and object collectives use it
    assert runtime.pick_device("cuda") == torch.device("cuda", 1)  # "cuda" means this rank's GPU too
    assert runtime.pick_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(UserError, match="has 2 CUDA device"):
        runtime.pick_device("cuda:5")


def test_nccl_ranks_sharing_a_gpu_are_refused_before_the_process_group(monkeypatch):
    """Two processes on one GPU make NCCL fail ("Duplicate GPU detected"): one line instead."""
    events = []
    FakeCuda(monkeypatch, events)
    monkeypatch.setattr(distributed, "init", lambda kind: events.append(("init", kind)) or distributed.Context(1, 2, 1))
    for key, value in {"WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2", "LOCAL_RANK": "1"}.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(UserError, match="would put all 2 processes of this node on one GPU"):
        runtime.setup("cuda:0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "3")
    monkeypatch.setenv("WORLD_SIZE", "3")
    with pytest.raises(UserError, match="3 processes on this node but 2 GPU"):
        runtime.setup("auto")
    assert events == []  # nothing bound, no process group
    runtime.setup("auto", distributed_job=False)  # a process that works alone (an ablation's child) may share


def test_precision_auto_asks_for_native_bf16_on_cuda(monkeypatch):
    """torch >= 2.3's is_bf16_supported() also says True on GPUs that only emulate bf16 (T4, V100)."""
    FakeCuda(monkeypatch, [])
    asked = []

    def t4(including_emulation=True):  # a T4: bf16 only through emulation
        asked.append(including_emulation)
        return including_emulation
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", t4)
    assert runtime.amp_dtype("auto", torch.device("cuda", 0)) == torch.float16 and asked == [False]


def test_every_command_gets_its_device_from_the_runtime_module():
    """No module re-implements "auto" or builds its own autocast: the source is checked, so a new
    command that does is caught here (runtime.py is the one place; envinfo (what `alexnet info` prints)
    and checkpoint only report and save CUDA state, mfu names the device, the loader runs CUDA streams)."""
    allowed = {"runtime.py", "envinfo.py", "checkpoint.py", "mfu.py", "loader.py"}
    offenders = []
    for path in (ROOT / "alexnet").rglob("*.py"):
        if path.name in allowed:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr in ("is_available", "autocast", "synchronize") and \
                    ast.unparse(node.value) in ("torch.cuda", "torch", "torch.backends.mps"):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not offenders, offenders
    for module in ("evaluate", "predict", "features", "export", "bench", "train"):
        assert "runtime." in (ROOT / "alexnet" / f"{module}.py").read_text(), module


def test_evaluate_under_torchrun_asks_the_runtime_for_the_ranks_device(monkeypatch, tiny, tiny_checkpoint, tmp_path):
    from alexnet import cli
    ckpt = Path(shutil.copytree(tiny_checkpoint.parent, tmp_path / "run"))
    asked = []
    real = runtime.setup
    monkeypatch.setattr(runtime, "setup", lambda device, precision="fp32", *a, **k:
                        asked.append((device, precision)) or real("cpu", precision, *a, **k))
    assert cli.main(["evaluate", str(ckpt / "last.pt"), "--data", str(tiny), "--device", "cuda"]) == 0
    assert cli.main(["features", str(ckpt / "last.pt"), "--data", str(tiny), "--out", str(tmp_path / "f.npy")]) == 0
    assert asked == [("cuda", "fp32"), ("auto", "fp32")]


def test_one_workers_rule_for_every_command_and_a_flag_on_each(monkeypatch, tiny, tiny_checkpoint, tmp_path):
    """evaluate, features and neighbors always used 2 loader workers; train's help
    said "one per core" but used cores / 4. One rule (runtime.loader_workers), a --workers on each."""
    monkeypatch.setattr(runtime, "usable_cores", lambda: 16)
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert runtime.loader_workers("cuda") == 15 and runtime.loader_workers("cpu") == 4
    assert runtime.loader_workers("cuda", 8) == 1 and runtime.loader_workers("cpu", 8) == 1
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    assert runtime.loader_workers("cuda") == 3
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")
    monkeypatch.setattr(runtime, "usable_cores", lambda: 8)  # the default on CPU: 8 // 4 = 2 workers

    from alexnet import cli
    from alexnet.train import loader_spec
    ckpt = Path(shutil.copytree(tiny_checkpoint.parent, tmp_path / "run"))
    used = []
    real = torch.utils.data.DataLoader
    monkeypatch.setattr(torch.utils.data, "DataLoader", lambda *a, **k: used.append(k.get("num_workers")) or real(*a, **k))
    last, out = str(ckpt / "last.pt"), tmp_path / "f.npy"
    for argv in (["evaluate", last, "--data", str(tiny)], ["evaluate", last, "--data", str(tiny), "--workers", "0"],
                 ["features", last, "--data", str(tiny), "--out", str(out), "--workers", "1"],
                 ["features", last, "--data", str(tiny), "--out", str(tmp_path / "g.npy")]):
        assert cli.main(argv) == 0, argv
    assert used == [2, 0, 1, 2]
    cfg = config.resolve("quick", sets=[f"data.path={tiny}"])
    assert loader_spec(cfg, runtime.setup("cpu"), train=True, batch_size=8, crop=56).workers == 2
    help_text = {c: " ".join(cli.build_parser()._subparsers._group_actions[0].choices[c].format_help().split())
                 for c in ("train", "evaluate", "features", "neighbors")}
    assert all("--workers" in h and "cores / processes on the node" in h for h in help_text.values()), help_text


# ---------------------------------------------------------------- (3): one-time side effects

def test_two_processes_on_an_empty_cache_generate_the_built_in_data_once(tmp_path):
    """`torchrun --nproc_per_node=2 -m alexnet train` on a machine whose cache is empty."""
    env = {**ENV, "ALEXNET_CACHE": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "alexnet", "train",
                           *tiny_sets(None, tmp_path / "run")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert (proc.stdout + proc.stderr).count("generating the built-in data set") == 1
    made = [p for p in (tmp_path / "cache").iterdir() if p.name.startswith("shapes-")]
    assert len(made) == 1 and (made[0] / "manifest.json").is_file()
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".")]  # no work folders left


def test_concurrent_generation_without_torchrun_is_safe(tmp_path):
    """Two separate runs on a fresh cache (no process group to coordinate them) both succeed."""
    code = ("from alexnet.data import synthetic; import sys; "
            "print(synthetic.ensure(train_per_class=6, val_per_class=2, size=72, root=__import__('pathlib').Path(sys.argv[1]), progress=False))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=ENV) for _ in range(2)]
    outs = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert outs[0][0] == outs[1][0]
    from alexnet.data.store import open_prepared
    assert len(open_prepared(outs[0][0].strip()).split("train")) == 60


# ---------------------------------------------------------------- (4): no sync per step

def test_the_hot_loop_reads_nothing_from_the_device_per_step(tiny, tmp_path, monkeypatch):
    """Host reads (.item(), .tolist()) happen at logging intervals and epoch ends, not per step:
    the count does not grow with the number of steps, also under a time budget (the stop check)."""
    from alexnet.train import train
    counts = []
    for n, name in ((1, "one"), (2, "two")):
        calls = [0]
        for method in ("item", "tolist"):
            real = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method, lambda self, real=real, *a: calls.__setitem__(0, calls[0] + 1)
                                or real(self, *a))
        cfg = config.resolve("tiny", sets=tiny_sets(tiny, tmp_path / name, f"train.epochs={n}", "train.log_every=1000",
                                                    "train.budget_minutes=100", "eval.every=1000")[3::2])
        train(cfg, progress=False)
        monkeypatch.undo()
        counts.append(calls[0])
    steps_per_epoch = 80 // 8
    assert counts[1] - counts[0] < steps_per_epoch, counts  # an epoch end's reads, not one or more per step


# ---------------------------------------------------------------- (5): compile + DDP + accumulation

def test_compiled_ddp_with_accumulation_all_reduces_once_per_step(monkeypatch):
    import torch.distributed as dist
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    dist.init_process_group("gloo", rank=0, world_size=1)
    try:
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 4))
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        reductions = []

        def count(state, bucket):
            reductions.append(1)
            fut = torch.futures.Future()
            fut.set_result(bucket.buffer())
            return fut

        ddp.register_comm_hook(None, count)
        cfg = config.resolve("quick", sets=["train.accumulation=4", "optim.label_smoothing=0"])
        run = types.SimpleNamespace(cfg=cfg, rt=runtime.Runtime(torch.device("cpu"), None, distributed.Context()),
                                    net=torch.compile(ddp, backend="eager"), ddp=ddp,
                                    scaler=torch.amp.GradScaler("cpu", enabled=False))
        sums = loop.forward_backward(run, torch.randn(8, 3, 2, 2), torch.randint(0, 4, (8,)))
        assert len(reductions) == 1  # the last of 4 micro-batches only
        assert sums[2].item() == 8
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- (6): divergence on one rank

NAN_ON_RANK_1 = textwrap.dedent("""
    import os, sys, types
    import alexnet.loop as loop
    real, calls = loop.F.cross_entropy, [0]

    def cross_entropy(*args, **kwargs):  # rank 1 alone sees a NaN loss from its third micro-batch on
        calls[0] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if os.environ["RANK"] == "1" and calls[0] >= 3 else loss

    loop.F = types.SimpleNamespace(cross_entropy=cross_entropy)
    from alexnet import cli
    sys.exit(cli.main(sys.argv[1:]))
""")


def test_a_divergence_on_one_rank_stops_every_rank_with_the_same_message(tiny, tmp_path):
    script = tmp_path / "nan_on_rank_1.py"
    script.write_text(NAN_ON_RANK_1)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", str(script), "train",
                           *tiny_sets(tiny, tmp_path / "run", "train.epochs=3", "train.log_every=4")],
                          capture_output=True, text=True, env=ENV, timeout=120)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0
    lines = [line[line.index("alexnet train: error"):] for line in out.splitlines() if "error: training diverged" in line]
    assert len(lines) == 2 and lines[0] == lines[1], out[-3000:]  # both ranks, one message
    assert "hold NaN/inf" in lines[0]
    assert not (tmp_path / "run" / "last.pt").exists()  # no checkpoint holds the NaN weights


# ---------------------------------------------------------------- (7): fast defaults

def test_cudnn_autotuning_and_tf32_unless_deterministic():
    try:
        runtime.setup("cpu", "fp32", deterministic=False)
        assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.allow_tf32 and not torch.backends.cudnn.deterministic
        runtime.setup("cpu", "fp32", deterministic=True)
        assert not torch.backends.cudnn.benchmark and not torch.backends.cuda.matmul.allow_tf32
        assert torch.backends.cudnn.deterministic and torch.are_deterministic_algorithms_enabled()
    finally:
        torch.use_deterministic_algorithms(False)
        runtime.configure(deterministic=False)


# ---------------------------------------------------------------- precision, MFU

def test_precision_names_and_errors():
    cpu = torch.device("cpu")
    assert runtime.amp_dtype("fp16", cpu) == torch.float16 and runtime.amp_dtype("fp32", cpu) is None
    assert runtime.amp_dtype("auto", cpu) == (torch.bfloat16 if runtime.cpu_has_native_bf16() else None)
    with pytest.raises(UserError, match="unknown precision"):
        runtime.amp_dtype("fp8", cpu)
    with pytest.raises(UserError, match="unknown device"):
        runtime.pick_device("tpu:0")
    with runtime.autocast(cpu, torch.bfloat16):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.bfloat16
    with runtime.autocast(cpu, None):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32


def test_training_flops_count_against_a_brute_force_count():
    """Forward 2 MACs per multiply-add, backward twice that except conv1's input gradient: checked
    against torch's own FLOP counter on a real forward + backward of torchvision's AlexNet."""
    import torchvision
    from torch.utils.flop_counter import FlopCounterMode

    from alexnet.model import build
    net = torchvision.models.alexnet()
    x = torch.randn(2, 3, 224, 224)
    with FlopCounterMode(display=False) as counter:
        net(x).sum().backward()
    measured = counter.get_total_flops() / 2
    assert mfu.train_flops_per_image(build("alexnet_owt", 1000), 224) == pytest.approx(measured, rel=1e-3)


# ---------------------------------------------------------------- CUDA only (benchmarks/gpu_check.py runs these)

@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_a_bf16_autocast_training_run_on_cuda(tiny, tmp_path):
    from alexnet.train import train
    cfg = config.resolve("tiny", sets=tiny_sets(tiny, tmp_path / "gpu", "train.device=cuda",
                                                "train.precision=auto")[3::2])
    summary = train(cfg, progress=False)
    assert summary["device"].startswith("cuda") and summary["precision"] in ("bf16", "fp16")
    assert summary["val_loss"] == summary["val_loss"]  # finite, not NaN
    assert torch.backends.cudnn.benchmark and torch.backends.cuda.matmul.allow_tf32


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 CUDA devices")
def test_two_processes_on_two_gpus_over_nccl(tiny, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2",
                           f"--master_port={free_port()}", "-m", "alexnet", "train",
                           *tiny_sets(tiny, tmp_path / "nccl", "train.device=cuda", "train.precision=auto")],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    import json
    summary = json.loads((tmp_path / "nccl" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] and summary["device"] == "cuda:0"
