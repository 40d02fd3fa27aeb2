"""Reliability of `alexnet train`: checkpoints that are never lost or poisoned, pre-emption
of the whole process group, one writer per run folder, a user's folder never overwritten, and the
data set checked on resume."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from alexnet import checkpoint, cli, config
from alexnet.data import synthetic
from alexnet.errors import UserError
from alexnet.data.prepare import prepare
from alexnet.train import Diverged, train
from conftest import wait_for

ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def sets(data, out, *more):
    return [f"data.path={data}", f"train.out={out}", "train.epochs=2", *more]


def args(data, out, *more):
    return ["train", "--preset", "tiny", *[a for s in sets(data, out, *more) for a in ("--set", s)]]


def cfg(data, out, *more):
    return config.resolve("tiny", sets=sets(data, out, *more))


# ------------------------------------------------------------------ checkpoints (item 3)

def test_an_empty_last_checkpoint_falls_back_and_the_good_one_is_never_rotated_away(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    train(cfg(tiny, out), progress=False)
    good = checkpoint.load(out / "last.prev.pt")
    (out / "last.pt").write_bytes(b"")  # 0 bytes: a crash between create and write on some file systems
    with pytest.raises(checkpoint.CheckpointError, match=r"last\.pt is damaged or truncated \(.*0 bytes\)"):
        checkpoint.load(out / "last.pt")
    train(cfg(tiny, out, "train.epochs=3", "train.checkpoint_every=1"), progress=True)
    printed = capsys.readouterr().out
    assert "resuming from the previous checkpoint" in printed and "damaged file is kept as last.pt.damaged-" in printed
    aside = list(out.glob("last.pt.damaged-*"))
    assert len(aside) == 1 and aside[0].stat().st_size == 0  # set aside, not rotated into last.prev.pt
    assert checkpoint.load(out / "last.pt")["epoch"] == 3
    assert good["epoch"] == 1 and checkpoint.load(out / "last.prev.pt")["format"] == "alexnet-checkpoint"


def test_a_diverging_run_never_writes_nan_weights(tiny, tmp_path):
    out = tmp_path / "nan"
    train(cfg(tiny, out, "train.epochs=1"), progress=False)  # a good checkpoint to protect
    # NaN weights, or weights that blew up first: at lr 1e12 one step does it
    with pytest.raises(Diverged, match="no checkpoint was written with non-finite weights|No checkpoint was written"
                                      "|last.pt was not written"):
        train(cfg(tiny, out, "train.epochs=3", "optim.lr=1e12", "schedule.warmup_epochs=0",
                  "train.checkpoint_every=1", "train.log_every=1000"), progress=False)
    for name in ("last.pt", "last.prev.pt"):
        if (out / name).exists():
            state = checkpoint.load(out / name)["model"]
            assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point()), name


# lr 1e3 (25,000x the preset's), from the end of a good first epoch: the weights' norm grows ~30x in
# the first step of epoch 2 and ~1e7x by the third, while the loss stays finite for two steps
# (batch norm hides the weights' scale); before the check, last.pt then held max |w| ~6e19. fp32:
# bf16 autocast (precision auto on AVX512-BF16 CPUs) would move the step at which they blow up.
BLOW_UP = ["train.epochs=3", "optim.lr=1e3", "schedule.warmup_epochs=0", "train.checkpoint_every=1",
           "train.log_every=1", "train.precision=fp32"]


def params_of(state: dict) -> dict:
    """The parameters of a checkpoint's model (its buffers left out: batch norm's running_var of
    conv1 is ~1e3 in a healthy network fed 0-255 pixels)."""
    from alexnet.model import build
    names = {n for n, _ in build("alexnet2012", 10, norm="batchnorm", width=0.25, hidden=64).named_parameters()}
    return {k: v for k, v in state["model"].items() if k in names}


def test_weights_that_blow_up_while_finite_are_not_saved_and_the_run_resumes_from_last_pt(tiny, tmp_path, capsys):
    """the weights blew up (max |w| 6e19 here before, 6.6e19 in the issue) and were saved
    as last.pt while still finite, before the loss turned NaN; every resume from them diverged at
    once. Now that save is refused, last.pt stays the last good one, and the one-line error says
    to resume from it and what to change."""
    out = tmp_path / "blow"
    train(cfg(tiny, out, "train.epochs=1", "train.precision=fp32"), progress=False)
    good = checkpoint.load(out / "last.pt")
    assert cli.main(args(tiny, out, *BLOW_UP)) == 2
    for name in ("last.pt", "last.prev.pt"):  # no exploded copy anywhere (before: last.pt max |w| ~1e27)
        if (out / name).exists():
            biggest = max(t.abs().max().item() for t in params_of(checkpoint.load(out / name)).values())
            assert biggest < 100, (name, biggest)
    kept = checkpoint.load(out / "last.pt")
    assert (kept["epoch"], kept["step"]) == (1, 0)
    for key, value in params_of(good).items():
        assert torch.equal(params_of(kept)[key], value), key  # the good one, untouched
    line = capsys.readouterr().err.strip().splitlines()[-1]
    # "diverged": what `alexnet ablate` tells a failed run from a mistake in its input by
    assert "training diverged" in line and "grew" in line and "so last.pt was not written" in line, line
    assert f"run the same command to resume from {out / 'last.pt'} (epoch 2, step 0" in line, line
    assert "lower optim.lr (now 1000; e.g. --set optim.lr=100)" in line and "schedule.warmup_epochs" in line, line
    # the same command with the preset's lr goes on from the good last.pt
    summary = train(cfg(tiny, out, *BLOW_UP[:1], *BLOW_UP[3:], "optim.lr=0.04"), progress=False)
    assert summary["epochs_done"] == 3
    assert all(torch.isfinite(t).all() for t in params_of(checkpoint.load(out / "last.pt")).values())


def test_a_last_pt_saved_on_the_way_to_a_blow_up_sends_the_resume_to_best_pt(tiny, tmp_path, monkeypatch, capsys):
    """A last.pt that holds blown-up weights (written by an alexnet without the check, here by
    turning the check off) diverges again at once on resume even at the preset's lr; the error
    then names best.pt, and a resume from it (no optimizer state: said) trains on."""
    from alexnet import loop
    out = tmp_path / "poisoned"
    train(cfg(tiny, out, "train.epochs=1", "train.precision=fp32"), progress=False)
    with monkeypatch.context() as m:  # what HEAD did: no check, the exploded weights saved
        for rule in ("NORM_GROWTH", "LOSS_JUMP"):
            m.setattr(loop, rule, float("inf"), raising=False)
        with pytest.raises(Diverged):
            train(cfg(tiny, out, *BLOW_UP), progress=False)
    assert max(t.abs().max().item() for t in params_of(checkpoint.load(out / "last.pt")).values()) > 1e6
    assert cli.main(args(tiny, out, "train.epochs=3", "train.precision=fp32")) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"{out / 'last.pt'}, where this run resumed, holds weights" in line, line
    assert f"then resume from best.pt: the same command with --resume {out / 'best.pt'}" in line, line
    summary = train(cfg(tiny, out, "train.epochs=3", "train.precision=fp32"), resume=str(out / "best.pt"),
                    progress=True)
    said = capsys.readouterr().out
    assert "best.pt holds no optimizer state" in said and "momentum from zero" in said
    assert summary["epochs_done"] == 3
    assert max(t.abs().max().item() for t in params_of(checkpoint.load(out / "last.pt")).values()) < 100


def test_the_blow_up_rules_need_an_order_of_magnitude_and_spare_a_high_start():
    from alexnet.loop import BlowUpGuard
    guard = BlowUpGuard(10, norm=20.0, since="the start")
    # a fine-tuning run that starts far above chance (ln 10 = 2.3) and learns, with a warm-up bump
    for loss in (40.0, 30.0, 12.0, 5.0, 2.3, 1.0, 0.3, 0.05, 0.4, 2.0, 0.2):
        assert guard.loss(loss) is None, loss
    assert guard.weights(199.0) is None and guard.weights(1.0) is None  # shrinking is no blow-up
    assert "grew 11x, from 20 at the start to 220" in guard.weights(220.0)
    assert "overflows float32" in guard.weights(float("inf"))
    guard.passed(200.0, "last.pt of epoch 2, step 0")
    assert guard.weights(1000.0) is None and "from 200 at last.pt of epoch 2, step 0" in guard.weights(2001.0)
    low = BlowUpGuard(10, norm=20.0, since="the start")
    for _ in range(8):
        low.loss(0.01)
    assert low.loss(5.0) is None  # 500x its level, but within 10x chance: a bad batch, not a blow-up
    assert "is 3,000x its running level 0.01 and 13x chance (ln 10)" in low.loss(30.0)


def test_nan_in_batch_norm_statistics_counts_as_divergence():
    """fp16: an overflow can put NaN in running_var while the scaler skips the step (weights finite)."""
    from alexnet.model import build
    from alexnet.train import non_finite
    net = build("alexnet2012", 10, norm="batchnorm", width=0.25, hidden=64)
    assert non_finite(net) == []
    bn = next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
    bn.running_var[0] = float("nan")
    assert len(non_finite(net)) == 1 and non_finite(net)[0].endswith("running_var")
    assert all(torch.isfinite(p).all() for p in net.parameters())


# ------------------------------------------------------------------ pre-emption (item 4)

def test_sigterm_to_the_whole_process_group_with_loader_workers_saves_and_exits_0(tiny, tmp_path):
    out = tmp_path / "term"
    cmd = [sys.executable, "-m", "alexnet", *args(tiny, out, "train.epochs=100", "train.batch_size=8", "data.workers=2",
                                                     "data.resident=false")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=ENV,
                            start_new_session=True)
    try:
        assert wait_for(lambda: (out / "last.pt").exists())
        os.killpg(proc.pid, signal.SIGTERM)  # what scancel, Kubernetes and systemd do: every process of the group
        output, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, output[-3000:]
    assert "stopped by SIGTERM" in output and "DataLoader worker" not in output
    assert checkpoint.load(out / "last.pt")["epoch"] < 100


def test_a_loader_worker_killed_mid_run_is_one_line_and_the_run_resumes(tiny, tmp_path):
    """The out-of-memory killer takes a loader worker: a traceback and exit 1 before; now one line
    that names the cause and says how to resume, and the same command continues from last.pt."""
    out = tmp_path / "oom"
    cmd = [sys.executable, "-m", "alexnet", *args(tiny, out, "train.epochs=100", "train.batch_size=8",
                                                  "data.workers=2", "data.resident=false",
                                                  "train.checkpoint_every=1")]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            start_new_session=True)
    try:
        assert wait_for(lambda: (out / "last.pt").exists())
        children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert children, "no worker processes found"
        os.kill(int(children[0]), signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    lines = err.strip().splitlines()
    assert proc.returncode == 2 and "Traceback" not in err, err[-3000:]
    assert "a data-loading worker process died" in lines[-1] and "run the same command again" in lines[-1]
    done = train(cfg(tiny, out, "train.epochs=1"), progress=False)  # the run goes on from its checkpoint
    assert done["epochs_done"] >= 1


def test_kill_9_of_train_frees_its_folder_at_once_and_its_workers_die_with_it(tiny, tmp_path):
    """kill -9 of the main process alone (its loader workers alive): the same command restarted
    within a second was refused for ~20 s as "in use by pid N", N the dead process, while the
    workers, which had inherited the lock, lived on."""
    out = tmp_path / "k9"
    cmd = [sys.executable, "-m", "alexnet", *args(tiny, out, "train.epochs=100", "train.batch_size=8", "data.workers=2",
                                                  "data.resident=false")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        assert wait_for(lambda: (out / "last.pt").exists())
        workers = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
        assert workers, "no worker processes found"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        again = subprocess.run([sys.executable, "-m", "alexnet", *args(tiny, out, "train.epochs=1")],
                               capture_output=True, text=True, env=ENV, timeout=120)
        assert again.returncode == 0, again.stderr[-2000:]
        assert "in use" not in again.stderr
        assert wait_for(lambda: not any(Path(f"/proc/{w}").exists() for w in workers), timeout=10)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_a_lock_is_not_inherited_by_children_and_never_names_a_dead_process(tmp_path):
    from alexnet.fileio import FolderLock
    (tmp_path / "f").mkdir()
    (tmp_path / "f" / "metrics.jsonl").write_text("")  # a folder with work in it: release() keeps its .lock
    lock = FolderLock(tmp_path / "f", "run folder").acquire()
    child = os.fork()
    if child == 0:  # a forked child holds the parent's descriptor, not its lock
        time.sleep(5)
        os._exit(0)
    try:
        code = ("import sys; from alexnet.fileio import FolderLock, FolderBusy\n"
                "try: FolderLock(sys.argv[1]).acquire()\n"
                "except FolderBusy as e: print(e)")
        busy = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], capture_output=True, text=True)
        assert f"in use by pid {os.getpid()}" in busy.stdout  # the kernel names the holder
        lock.release()
        free = subprocess.run([sys.executable, "-c", code, str(tmp_path / "f")], capture_output=True, text=True)
        assert free.stdout == "" and free.returncode == 0  # the child still lives: it held nothing
        (tmp_path / "f" / ".lock").write_text("999999999\n")  # a stale pid in the file, no holder
        FolderLock(tmp_path / "f").acquire().release()
    finally:
        os.kill(child, signal.SIGKILL)
        os.waitpid(child, 0)


# ------------------------------------------------------------------ one writer, the user's folder (items 6, 7)

def test_a_second_run_in_the_same_folder_is_refused(tiny, tmp_path, capsys):
    out = tmp_path / "busy"
    cmd = [sys.executable, "-m", "alexnet", *args(tiny, out, "train.epochs=100", "train.batch_size=8")]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV, start_new_session=True)
    try:
        assert wait_for(lambda: (out / "metrics.jsonl").exists())
        metrics = (out / "metrics.jsonl").read_bytes()
        assert cli.main(args(tiny, out, "train.seed=7")) == 2
        err = capsys.readouterr().err.strip()
        assert f"in use by pid {proc.pid}" in err and len(err.splitlines()) == 1
        assert (out / "metrics.jsonl").read_bytes().startswith(metrics)  # nothing of the second run in it
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    # the lock dies with its process (kill -9 included): the same command now continues the run
    train(cfg(tiny, out, "train.epochs=1"), progress=False)


def test_a_users_own_folder_is_not_overwritten(tiny, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "config.yaml").write_text("my: settings\n")
    (out / "summary.json").write_text('{"mine": true}\n')
    assert cli.main(args(tiny, out)) == 2
    assert "is not empty and is not a run folder" in capsys.readouterr().err
    assert (out / "config.yaml").read_text() == "my: settings\n" and sorted(p.name for p in out.iterdir()) == [
        "config.yaml", "summary.json"]


# ------------------------------------------------------------------ data sets (items 9, 12, 14)

def test_resuming_on_another_data_set_names_the_classes(tiny, tmp_path):
    three = tmp_path / "three-src"
    synthetic.write_folder(three, {"train": 8, "val": 3}, size=72, seed=0, workers=1)
    for extra in ("cross", "heart", "ring", "square", "star", "triangle", "crescent"):
        for split in ("train", "val"):
            for f in (three / split / extra).iterdir():
                f.unlink()
            (three / split / extra).rmdir()
    prepare(three, tmp_path / "three", size=72, progress=False)
    out = tmp_path / "run"
    train(cfg(tmp_path / "three", out, "train.epochs=1"), progress=False)
    with pytest.raises(UserError, match=r"trained on 3 classes and .* has 10: only the data set has "
                                        r"crescent, cross, heart.*--init"):
        train(cfg(tiny, out, "train.epochs=2"), resume=str(out / "last.pt"), progress=False)


def test_one_class_and_too_few_outputs_are_refused(tiny, tmp_path):
    one = tmp_path / "one-src"
    for split in ("train", "val"):
        (one / split / "only").mkdir(parents=True)
        for i in range(4):
            from PIL import Image
            Image.fromarray(synthetic.draw(0, synthetic.image_rng(0, split, i), 72)).save(one / split / "only" / f"{i}.png")
    prepare(one, tmp_path / "one", size=72, progress=False)
    with pytest.raises(UserError, match="1 class\\(es\\): a classifier needs at least 2"):
        train(cfg(tmp_path / "one", tmp_path / "r1", "train.batch_size=4"), progress=False)
    with pytest.raises(UserError, match="model.num_classes 5 is smaller than the 10 classes"):
        train(cfg(tiny, tmp_path / "r2", "model.num_classes=5"), progress=False)
    assert not (tmp_path / "r1").exists() and not (tmp_path / "r2").exists()


def test_a_worker_death_raised_inside_a_checkpoint_write_is_still_recognised():
    """Seen in CI-like runs: the SIGCHLD handler raised the worker's death inside torch.save, whose
    zip writer then failed with its own error; the death is found in the exception's chain."""
    from alexnet.train import worker_death
    death = RuntimeError("DataLoader worker (pid 5600) is killed by signal: Killed. ")
    try:
        try:
            raise death
        except RuntimeError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1354880 vs 1354768")
    except RuntimeError as outer:
        assert worker_death(outer) is death
    assert worker_death(RuntimeError("CUDA out of memory")) is None and worker_death(ValueError("x")) is None


def test_a_worker_death_that_python_can_only_print_is_kept_quiet_during_training():
    """torch's SIGCHLD handler raised the death inside logging's lock release, where Python prints
    it as "Exception ignored in ..." with a traceback (seen in CI); during training such a print is
    dropped (the loader reports the death at its next read), any other goes to the usual hook."""
    import types

    from alexnet.train import quiet_worker_deaths
    passed = []
    hook = quiet_worker_deaths(passed.append)
    death = types.SimpleNamespace(exc_value=RuntimeError("DataLoader worker (pid 10182) is killed by signal: Killed. "))
    other = types.SimpleNamespace(exc_value=RuntimeError("something else"))
    hook(death)
    hook(other)
    assert passed == [other]


def test_ctrl_c_while_the_built_in_data_is_generated_is_one_line(tmp_path):
    """Ctrl-C reaches the whole process group: each generating worker printed "Process
    ForkPoolWorker-1:" and a traceback before the command's own line."""
    env = {**ENV, "ALEXNET_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen([sys.executable, "-m", "alexnet", "train", "--out", str(tmp_path / "run")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert wait_for(lambda: any((tmp_path / "cache").rglob("*.png")), timeout=60)
        os.killpg(proc.pid, signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130 and "ForkPoolWorker" not in err and "Traceback" not in err, err[-2000:]
    assert err.strip().splitlines() == ["alexnet train: interrupted"]


def test_a_second_ctrl_c_inside_a_checkpoint_write_is_an_interrupt_not_a_traceback():
    """Seen by a break-it review: the second Ctrl-C ("stop at once") landed inside torch.save, whose
    zip writer then raised RuntimeError("unexpected pos ..."), and the run ended in a traceback."""
    from alexnet.train import in_chain
    try:
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 2395520 vs 2395416")
    except RuntimeError as e:
        assert isinstance(in_chain(e, lambda x: isinstance(x, KeyboardInterrupt)), KeyboardInterrupt)
        assert in_chain(e, lambda x: isinstance(x, ValueError)) is None


def test_train_ends_as_interrupted_when_the_interrupt_broke_a_checkpoint_write(tiny, tmp_path, monkeypatch, capsys):
    from alexnet import train as train_module

    def broken_save(*a, **k):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt:
            raise RuntimeError("unexpected pos 2395520 vs 2395416")
    monkeypatch.setattr(train_module.checkpoint, "save", broken_save)
    assert cli.main(args(tiny, tmp_path / "run", "train.epochs=1")) == 130
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "alexnet train: interrupted"


def test_a_worker_killed_while_handing_over_a_batch_is_a_worker_death():
    """Seen under load: the kill lands while the main process fetches a tensor the worker shares by
    descriptor, and multiprocessing's resource sharer raises ConnectionResetError before torch's
    SIGCHLD handler says "DataLoader worker ... killed": it is the same death, one line, exit 2."""
    from alexnet.train import worker_death
    try:
        exec(compile("raise ConnectionResetError(104, 'Connection reset by peer')",
                     "/usr/lib/python3.11/multiprocessing/resource_sharer.py", "exec"))
    except ConnectionResetError as e:
        fetch_failed = e
    death = worker_death(fetch_failed)
    assert isinstance(death, RuntimeError) and "DataLoader worker exited" in str(death)
    assert worker_death(ConnectionResetError(104, "a socket of the user's own")) is None
