"""Scaling out and surviving: torchrun/DDP on gloo, multi-node rendezvous, kill -9, SIGTERM, restarts."""
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from alexnet import checkpoint
from conftest import free_port, wait_for


def train_args(data, out, *sets):
    base = [f"data.path={data}", f"train.out={out}", "train.epochs=2"]
    return ["train", "--preset", "tiny", *[a for s in base + list(sets) for a in ("--set", s)]]


# the same inputs whatever the world size: no random crops (crop = stored size), flips or colour
# noise, no dropout or batch statistics, fp32 (precision=auto picks bf16 on AVX512-BF16 CPUs, whose
# rounding depends on the batch split); then DDP's averaged gradient is the big batch's gradient
SAME_INPUTS = ["data.crop=72", "data.flip=false", "data.pca_std=0", "model.norm=none", "model.dropout=0",
               "train.deterministic=true", "train.precision=fp32"]


ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count everywhere: float sums agree bit for bit


def run(cmd, timeout=300, **kw):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV, **kw)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def weights(out: Path) -> dict:
    return checkpoint.load(out / "last.pt")["model"]


def assert_same(a: dict, b: dict, exact: bool = False) -> None:
    for key in a:
        if exact:
            assert torch.equal(a[key], b[key]), key
        else:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


def test_two_gloo_processes_equal_one_process_with_the_same_global_batch(tiny, tmp_path):
    run([sys.executable, "-m", "alexnet", *train_args(tiny, tmp_path / "one", *SAME_INPUTS)])
    run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
         "-m", "alexnet", *train_args(tiny, tmp_path / "two", *SAME_INPUTS)])
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"]  # both ranks end with the same weights
    assert_same(weights(tmp_path / "one"), weights(tmp_path / "two"))
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert abs(one["top1"] - summary["top1"]) < 1e-9  # every validation image counted exactly once


def test_two_nodes_rendezvous_on_localhost(tiny, tmp_path):
    port = free_port()
    cmd = lambda rank: [sys.executable, "-m", "torch.distributed.run", "--nnodes=2", "--nproc_per_node=1",  # noqa: E731
                        "--rdzv-backend=c10d", f"--rdzv-endpoint=127.0.0.1:{port}", "--rdzv-id=nodes-test",
                        f"--node-rank={rank}", "-m", "alexnet", *train_args(tiny, tmp_path / "nodes", *SAME_INPUTS)]
    nodes = [subprocess.Popen(cmd(r), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
             for r in (0, 1)]
    outputs = [n.communicate(timeout=300)[0] for n in nodes]
    assert all(n.returncode == 0 for n in nodes), outputs
    summary = json.loads((tmp_path / "nodes" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"]
    run([sys.executable, "-m", "alexnet", *train_args(tiny, tmp_path / "single", *SAME_INPUTS)])
    assert_same(weights(tmp_path / "single"), weights(tmp_path / "nodes"))


def mid_epoch_checkpoint(out: Path) -> bool:
    try:
        state = checkpoint.load(out / "last.pt")
    except Exception:
        return False
    return state["step"] > 0 or state["epoch"] > 0


def test_kill_9_mid_epoch_then_resume_gives_the_same_weights(tiny, tmp_path):
    sets = ["train.epochs=3", "train.deterministic=true", "train.checkpoint_every=2", "train.batch_size=8"]
    run([sys.executable, "-m", "alexnet", *train_args(tiny, tmp_path / "straight", *sets)])
    cmd = [sys.executable, "-m", "alexnet", *train_args(tiny, tmp_path / "killed", *sets)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True, env=ENV)
    assert wait_for(lambda: mid_epoch_checkpoint(tmp_path / "killed"))
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    interrupted = checkpoint.load(tmp_path / "killed" / "last.pt")
    assert (interrupted["epoch"], interrupted["step"]) < (3, 0)
    run(cmd)  # the same command resumes from the last checkpoint
    assert_same(weights(tmp_path / "straight"), weights(tmp_path / "killed"), exact=True)


def test_sigterm_finishes_the_step_saves_and_exits_0(tiny, tmp_path):
    sets = ["train.epochs=50", "train.batch_size=8"]
    cmd = [sys.executable, "-m", "alexnet", *train_args(tiny, tmp_path / "term", *sets)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV)
    assert wait_for(lambda: (tmp_path / "term" / "last.pt").exists())
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, output
    assert "stopped by SIGTERM" in output and "to resume" in output
    state = checkpoint.load(tmp_path / "term" / "last.pt")
    assert state["epoch"] < 50


def test_damaged_checkpoint_is_named_and_resume_falls_back(tiny, tmp_path):
    out = tmp_path / "damaged"
    run([sys.executable, "-m", "alexnet", *train_args(tiny, out)])
    assert (out / "last.prev.pt").exists()
    data = (out / "last.pt").read_bytes()
    (out / "last.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(checkpoint.CheckpointError, match=r"last\.pt is damaged or truncated"):
        checkpoint.load(out / "last.pt")
    proc = run([sys.executable, "-m", "alexnet", *train_args(tiny, out, "train.epochs=3")])
    assert "last.pt is damaged or truncated" in proc.stdout + proc.stderr
    assert "resuming from the previous checkpoint" in proc.stdout + proc.stderr
    assert checkpoint.load(out / "last.pt")["epoch"] == 3


def rank_pids(out: Path, local_rank: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="ignore")
            environ = Path(f"/proc/{pid}/environ").read_bytes().decode(errors="ignore").split("\0")
        except OSError:
            continue
        if str(out) in cmdline and f"LOCAL_RANK={local_rank}" in environ and "torch.distributed.run" not in cmdline:
            pids.append(int(pid))
    return pids


def test_torchrun_restarts_a_killed_rank_and_resumes(tiny, tmp_path):
    out = tmp_path / "elastic"
    sets = ["train.epochs=4", "train.batch_size=8", "train.checkpoint_every=2"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--max-restarts=1",
           f"--master_port={free_port()}", "-m", "alexnet", *train_args(tiny, out, *sets)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)
    try:
        assert wait_for(lambda: mid_epoch_checkpoint(out) and rank_pids(out, "1"))
        for pid in rank_pids(out, "1"):
            os.kill(pid, signal.SIGKILL)  # one rank dies mid-run
        output, _ = proc.communicate(timeout=300)
    finally:  # a hung launch must not outlive the test
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output[-3000:]
    assert "resuming" in output
    state = checkpoint.load(out / "last.pt")
    assert (state["epoch"], state["step"]) == (4, 0)
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()
             if '"val"' in line]
    assert steps[-1] == 4 * 10  # 80 images / global batch 8 = 10 steps per epoch, 4 epochs


def test_a_batch_the_world_size_does_not_divide_fails_before_any_work(tiny, tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           "-m", "alexnet", *train_args(tiny, tmp_path / "odd", "train.batch_size=15")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode != 0
    assert "train.batch_size 15 is not divisible by world size 2" in proc.stdout + proc.stderr
    assert not (tmp_path / "odd" / "last.pt").exists()


def test_minutes_under_torchrun_is_one_budget_and_one_choice_for_all_ranks(tiny, tmp_path):
    out = tmp_path / "minutes"
    proc = run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
                "-m", "alexnet", "train", "--data", str(tiny), "--out", str(out), "--minutes", "0.4",
                *[a for s in ("model.width=0.25", "model.hidden=64", "train.batch_size=16", "eval.batch_size=16",
                              "data.workers=0") for a in ("--set", s)]])
    summary = json.loads((out / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["ranks_in_sync"] and summary["weights"] == "ema"
    assert proc.stdout.count("chosen: width 0.25") == 1  # rank 0's measurements decide, rank 0 says so
    assert summary["views"] == 2 and summary["eval_crop"] == 72
