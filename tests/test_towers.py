"""§3.2's two towers on two processes (model.parallel=towers) against the one-device network."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
import torch.multiprocessing as mp

from alexnet import checkpoint, towers
from alexnet.model import build
from conftest import free_port, wait_for

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count everywhere: float sums agree
# no random crops, flips or colour noise, fp32: the same inputs in every form of the run
SAME = ["data.crop=72", "data.flip=false", "data.pca_std=0", "train.deterministic=true", "train.precision=fp32"]


def train_cmd(data, out, *sets, procs=1):
    launch = [sys.executable] if procs == 1 else [sys.executable, "-m", "torch.distributed.run",
                                                  f"--nproc_per_node={procs}", f"--master_port={free_port()}"]
    base = [f"data.path={data}", f"train.out={out}", *SAME]
    return launch + ["-m", "alexnet", "train", "--preset", "tiny", *[a for s in base + list(sets) for a in ("--set", s)]]


def run(cmd, timeout=300):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=ENV)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def assert_close_states(a: dict, b: dict) -> None:
    """Every tensor within 1e-4 relative (1e-5 absolute): fp32 sums in another order."""
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)


# ----------------------------------------------------------------------------- the cut itself

@pytest.mark.parametrize("classes", [1000, 7])
def test_split_and_join_are_inverse_and_each_tower_holds_half(classes):
    full = build("alexnet2012", classes, seed=0, norm="batchnorm").state_dict()
    halves = [towers.split(full, t) for t in range(2)]
    joined = towers.join(halves)
    assert all(torch.equal(joined[k], full[k]) for k in full)
    assert halves[0]["conv2.weight"].shape == (128, 48, 5, 5)  # one tower's kernels of a groups=2 conv
    assert halves[1]["conv3.weight"].shape == (192, 256, 3, 3)  # conv3 reads both towers' maps
    assert halves[0]["fc8.weight"].shape[0] + halves[1]["fc8.weight"].shape[0] == classes  # 4 + 3 for 7
    held = [sum(v.numel() for k, v in h.items() if v.is_floating_point() and "running" not in k) for h in halves]
    assert sum(held) == sum(p.numel() for p in build("alexnet2012", classes, norm="batchnorm").parameters())


def test_a_one_device_optimizer_state_splits_and_joins_back():
    net = build("alexnet2012", 10, seed=0, width=0.25, hidden=64)
    opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9)
    net(torch.randn(2, 3, 72, 72)).sum().backward()
    opt.step()
    state = opt.state_dict()
    joined = towers.join_optimizer([towers.split_optimizer(state, t) for t in range(2)])
    for i, s in state["state"].items():
        assert torch.equal(joined["state"][i]["momentum_buffer"], s["momentum_buffer"])


# ----------------------------------------------------------------------------- two gloo processes

def _pair(rank, port, world, classes, queue, die_at=None):
    import torch.distributed as dist
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    full = build("alexnet2012", classes, seed=0, width=0.5, hidden=256)  # fp32, dropout 0.5, LRN
    net = towers.TowerNet(full, towers.Layout.create(rank, world))
    x = torch.randn(4, 3, 96, 96, generator=torch.Generator().manual_seed(1)) * 50
    y = torch.arange(4) % classes
    if die_at == rank:
        net(x)
        os._exit(9)  # a pair member that dies between two steps
    try:
        torch.manual_seed(3)  # the dropout masks: one generator state for the pair, as train seeds it
        towers.traffic.clear()
        logits = net(x)
        torch.nn.functional.cross_entropy(logits, y).backward()
    except towers.PartnerLost as e:
        queue.put(("lost", rank, str(e)))
        return
    sent = dict(towers.traffic)
    grads = towers.gather_state(net, {n: p.grad for n, p in net.named_parameters()})
    if rank == 0:
        torch.manual_seed(3)
        ref = full(x)
        torch.nn.functional.cross_entropy(ref, y).backward()
        queue.put(("ok", (logits - ref).abs().max().item(), ref.abs().max().item(),  # numpy: no shared memory
                   {n: (grads[n].numpy(), p.grad.numpy()) for n, p in full.named_parameters()}, sent))
    dist.barrier()
    dist.destroy_process_group()


def spawn_pair(classes=10, die_at=None, world=2):
    """Rank 0's report ("ok", ...) or ("lost", rank, message); fails if a process hangs."""
    import queue as queues
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_pair, args=(r, port, world, classes, queue, die_at)) for r in range(world)]
    for p in procs:
        p.start()
    try:
        report = queue.get(timeout=120)  # read before joining: a large report fills the pipe
    except queues.Empty:
        report = None
    for p in procs:
        p.join(30)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
    assert report is not None and not hung, "a process of the pair hung"
    return report


def test_the_split_forward_and_gradients_equal_the_one_device_network():
    status, diff, scale, grads, sent = spawn_pair(classes=7)  # 7 classes: fc8 split 4 + 3
    assert status == "ok"
    # the same float32 operations in another arrangement: logits within 1e-5 of their scale, the
    # dropout masks (0.5 on fc7's and fc8's inputs) the same as one device's
    assert diff <= 1e-5 * max(scale, 1.0), (diff, scale)
    for name, (split_grad, one_device) in grads.items():
        torch.testing.assert_close(torch.from_numpy(split_grad), torch.from_numpy(one_device), rtol=1e-4, atol=1e-6,
                                   msg=name)
    # the bytes really sent equal alexnet info's plan (alexnet.towers.plan), exchange by exchange
    rows = towers.plan(build("alexnet2012", 7, width=0.5, hidden=256), 96)
    planned = {e["at"]: e["values_per_image"][0] * 4 * 4 for r in rows for e in r.get("exchanges", [])}
    backward = {e["at"] + " (backward)": e["values_per_image"][0] * 4 * 4 for r in rows
                for e in r.get("exchanges", []) if e["backward"]}
    assert sent == {**planned, **backward}


def test_a_pair_member_that_dies_stops_its_partner_with_a_message():
    t0 = time.time()
    status, rank, message = spawn_pair(die_at=1)
    assert (status, rank) == ("lost", 0)
    assert "the other tower (rank 1) is gone" in message and "resume" in message and "\n" not in message
    assert time.time() - t0 < 60  # stopped, not hung until a timeout


def test_a_partner_lost_while_a_checkpoint_gathers_is_one_line(tiny, tmp_path):
    # two processes started by hand (no torchrun agent to stop the survivor); tower 1 dies where the
    # first checkpoint gathers its half (injected through sitecustomize, in that process only)
    inject = tmp_path / "inject"
    inject.mkdir()
    (inject / "sitecustomize.py").write_text(
        "import os\n"
        "if os.environ.get('RANK') == '1':\n"
        "    import alexnet.towers as t\n"
        "    t.gather_state = lambda *a, **k: os._exit(9)\n")
    port = free_port()
    cmd = train_cmd(tiny, tmp_path / "lost", "train.epochs=2", "train.batch_size=8", "train.checkpoint_every=2",
                    "model.parallel=towers")
    procs = []
    for rank in range(2):
        env = {**ENV, "RANK": str(rank), "LOCAL_RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_WORLD_SIZE": "2",
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port),
               "PYTHONPATH": os.pathsep.join([str(inject), *filter(None, [os.environ.get("PYTHONPATH")])])}
        procs.append(subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        out, err = procs[0].communicate(timeout=120)
    finally:
        for p in procs:
            p.kill()
    assert procs[1].wait() == 9  # the injected death happened
    assert procs[0].returncode == 2, err[-2000:]
    last = err.strip().splitlines()[-1]
    assert "another process of this job is gone" in last and "Traceback" not in err, err[-2000:]
    assert not (tmp_path / "lost" / "last.pt").exists()  # nothing half-written


# ----------------------------------------------------------------------------- training

def test_twenty_split_steps_end_at_the_one_device_weights(tiny, tmp_path):
    # batch norm, dropout 0.5 (the tiny preset's network with dropout on), a moving average of the
    # weights: the towers see the same images and draw the same masks, so the pair is the
    # one-device network step for step
    sets = ["train.epochs=2", "train.batch_size=8", "model.dropout=0.5", "train.ema=0.9"]  # 80 images: 2 x 10 steps
    run(train_cmd(tiny, tmp_path / "one", *sets))
    run(train_cmd(tiny, tmp_path / "two", *sets, "model.parallel=towers", procs=2))
    one, two = checkpoint.load(tmp_path / "one" / "last.pt"), checkpoint.load(tmp_path / "two" / "last.pt")
    assert (two["epoch"], two["config"]["model"]["parallel"]) == (2, "towers")
    assert_close_states(one["model"], two["model"])  # the ordinary one-device state dict
    assert_close_states(one["ema"], two["ema"])  # the moving average, gathered alike
    summary = json.loads((tmp_path / "two" / "summary.json").read_text())
    reference = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert summary["parallel"] == "towers" and summary["replicas"] == 1
    assert abs(summary["val_loss"] - reference["val_loss"]) < 1e-4  # each validation image counted once


def test_two_pairs_of_towers_equal_one_device_with_the_same_global_batch(tiny, tmp_path):
    # 4 processes = 2 replicas x 2 towers, 8 images per pair; no dropout or batch statistics, which
    # differ between one batch of 16 and two of 8
    sets = ["train.epochs=2", "train.batch_size=16", "model.norm=none", "model.dropout=0"]
    run(train_cmd(tiny, tmp_path / "one", *sets))
    proc = run(train_cmd(tiny, tmp_path / "four", *sets, "model.parallel=towers", procs=4), timeout=600)
    assert "8 per pair of processes (one tower each, the same images) x 2 pair(s)" in proc.stdout
    assert_close_states(checkpoint.load(tmp_path / "one" / "last.pt")["model"],
                        checkpoint.load(tmp_path / "four" / "last.pt")["model"])
    summary = json.loads((tmp_path / "four" / "summary.json").read_text())
    assert summary["ranks_in_sync"] and summary["replicas"] == 2  # each tower's replicas hold the same half


def test_sigterm_saves_a_one_device_checkpoint_that_resumes_on_one_device(tiny, tmp_path):
    # §3.3's LRN, no dropout: batch norm over 4 images makes a run sensitive to the last bit (a tie in a
    # max-pool that flips changes a gradient by 0.5%), and the two forms differ in the last bits
    sets = ["train.epochs=3", "train.batch_size=4", "train.checkpoint_every=2", "model.dropout=0", "model.norm=lrn"]
    run(train_cmd(tiny, tmp_path / "ref", *sets))  # uninterrupted, one device
    out = tmp_path / "moved"
    proc = subprocess.Popen(train_cmd(tiny, out, *sets, "model.parallel=towers", procs=2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, env=ENV, start_new_session=True)
    try:
        assert wait_for(lambda: (out / "last.pt").exists())
        proc.send_signal(signal.SIGTERM)  # to torchrun, which passes it to both towers, as a scheduler does
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert "stopped by SIGTERM" in output, output[-3000:]  # both towers finished the step and saved
    stopped = checkpoint.load(out / "last.pt")
    assert (stopped["epoch"], stopped["step"]) < (3, 0)
    resumed = run(train_cmd(tiny, out, *sets))  # the split run's checkpoint continues on one device
    assert "resuming" in resumed.stdout
    assert_close_states(checkpoint.load(tmp_path / "ref" / "last.pt")["model"], checkpoint.load(out / "last.pt")["model"])


def test_a_one_device_checkpoint_continues_split(tiny, tmp_path):
    sets = ["train.epochs=3", "train.batch_size=4", "train.checkpoint_every=3", "model.dropout=0", "model.norm=lrn"]
    run(train_cmd(tiny, tmp_path / "ref", *sets))
    out = tmp_path / "moved"
    proc = subprocess.Popen(train_cmd(tiny, out, *sets), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=ENV)
    assert wait_for(lambda: (out / "last.pt").exists())
    proc.send_signal(signal.SIGTERM)
    output, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0 and "stopped by SIGTERM" in output, output[-2000:]
    resumed = run(train_cmd(tiny, out, *sets, "model.parallel=towers", procs=2))
    assert "resuming" in resumed.stdout
    assert_close_states(checkpoint.load(tmp_path / "ref" / "last.pt")["model"], checkpoint.load(out / "last.pt")["model"])


# ----------------------------------------------------------------------------- refusals

@pytest.mark.parametrize("sets, procs, expected", [
    (["model.parallel=towers"], 1, "needs an even number of processes, two per replica"),
    (["model.parallel=towers"], 3, "this job has 3: run torchrun --nproc_per_node=2"),
    (["model.parallel=towers", "model.name=alexnet_owt"], 1, "alexnet_owt has one tower"),
    (["model.parallel=towers", "model.towers=1"], 1, "model.towers=1 asks for §3.2's one-tower network"),
    (["model.parallel=pipeline"], 1, "model.parallel"),
    (["model.parallel=towers", "train.minutes=1"], 1, "train.minutes (--minutes) chooses its recipe by timing one"),
])
def test_what_towers_cannot_run_is_one_line_before_any_work(tiny, tmp_path, sets, procs, expected):
    proc = subprocess.run(train_cmd(tiny, tmp_path / "bad", *sets, procs=procs), capture_output=True, text=True,
                          timeout=300, env=ENV)
    assert proc.returncode == (2 if procs == 1 else 1), proc.stderr[-2000:]  # torchrun: 1 when a rank fails
    assert expected in proc.stdout + proc.stderr
    assert not (tmp_path / "bad" / "last.pt").exists()
    if procs == 1:
        assert "Traceback" not in proc.stderr


def test_a_pair_resumes_with_one_random_state_whoever_wrote_the_checkpoint():
    from alexnet.distributed import Context
    from alexnet.resume import rng_state_for
    states = [{"rank": r} for r in range(4)]  # a 4-process checkpoint: one state per rank
    towers4 = [rng_state_for(states, Context(rank=r, world_size=4, towers=2))["rank"] for r in range(4)]
    assert towers4 == [0, 0, 2, 2]  # both towers of a pair draw the same dropout masks
    assert [rng_state_for(states, Context(rank=r, world_size=4))["rank"] for r in range(4)] == [0, 1, 2, 3]
    assert rng_state_for(states, Context(rank=1, world_size=2, towers=2))["rank"] == 0  # another world: rank 0's


def test_a_collective_that_loses_a_process_is_named_in_one_line():
    from alexnet.distributed import peer_lost
    gloo = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:545] Read error "
                        "[127.0.0.1]:56203: Connection reset by peer. This is typically caused by a remote worker "
                        "hanging or bugs in the application. Check the logs of the remote worker. GLHF!")
    assert peer_lost(gloo) == "Read error [127.0.0.1]:56203: Connection reset by peer"
    assert peer_lost(RuntimeError("CUDA out of memory")) is None and peer_lost(ValueError("x")) is None


def test_info_prints_what_each_device_holds_and_sends(tmp_path):
    report = tmp_path / "towers.json"
    proc = subprocess.run([sys.executable, "-m", "alexnet", "info", "--model", "alexnet2012", "--parallel", "towers",
                           "--json", str(report)], capture_output=True, text=True, timeout=120, env=ENV)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(report.read_text())
    rows = {r["layer"]: r for r in data["layers"]}
    # §3.2 / Figure 2: half of every layer on each device; exchanges at conv3 and the FC layers only
    assert rows["conv1"]["holds"] == [48, 48] and rows["fc6"]["holds"] == [2048, 2048]
    assert [r["layer"] for r in data["layers"] if r["crosses"]] == ["conv3", "fc6", "fc7", "fc8"]
    assert rows["conv3"]["values_per_image"] == [13 * 13 * 128] * 2
    assert sum(sum(r["params"]) for r in data["layers"]) == 60_965_224
    assert data["data_parallel_bytes_per_step"] == 60_965_224 * 4
    assert "even at 997 images per pair" in proc.stdout
    # bf16 halves what crosses, not the fp32 gradients data parallelism all-reduces
    bf16 = subprocess.run([sys.executable, "-m", "alexnet", "info", "--model", "alexnet2012", "--parallel", "towers",
                           "--precision", "bf16", "--json", str(report)], capture_output=True, text=True, env=ENV)
    half = json.loads(report.read_text())
    assert half["towers_bytes_per_step"]["total"] * 2 == data["towers_bytes_per_step"]["total"]
    assert half["data_parallel_bytes_per_step"] == 60_965_224 * 4, bf16.stdout
    for args in (["--parallel", "towers"], ["--model", "alexnet2012", "--batch", "64"]):  # half-given: one line
        bad = subprocess.run([sys.executable, "-m", "alexnet", "info", *args], capture_output=True, text=True, env=ENV)
        assert bad.returncode == 2 and "--parallel towers" in bad.stderr and "Traceback" not in bad.stderr
