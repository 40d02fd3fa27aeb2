"""What a run folder keeps: a fine-tuning run of alexnet_owt wrote 1.8 GB, four
full copies of 456 MB (best, last and a .prev of each). Now last.pt (the whole state), one previous
copy of it, and best.pt without the optimizer's state (SGD's momentum is one more copy of the
weights); every reader of best.pt still reads it, and the run says how much its folder holds."""
import pytest
import torch
from PIL import Image

from alexnet import checkpoint, cli, config
from alexnet import train as train_module
from alexnet.data import synthetic
from alexnet.train import finish_message, train


def cfg(data, out, *more):
    return config.resolve("tiny", sets=[f"data.path={data}", f"train.out={out}", "train.epochs=3", *more])


def every_validation_a_new_best(monkeypatch, start: float = 0.0):
    """Each validation reports a better top-1 than the last, so that best.pt is written every epoch
    (a healthy fine-tuning run's usual course; the tiny set's own top-1 moves little)."""
    real, calls = train_module.evaluate, []

    def improving(*args, **kwargs):
        calls.append(1)
        return {**real(*args, **kwargs), "top1": start + 0.01 * len(calls)}
    monkeypatch.setattr(train_module, "evaluate", improving)


@pytest.fixture(scope="module")
def run(tiny, tmp_path_factory):
    """3 epochs, best.pt and last.pt each written 3 times: (run folder, summary)."""
    out = tmp_path_factory.mktemp("files") / "run"
    with pytest.MonkeyPatch.context() as m:
        every_validation_a_new_best(m)
        summary = train(cfg(tiny, out), progress=False)
    return out, summary


def test_a_run_keeps_last_pt_one_previous_copy_and_a_best_pt_without_optimizer_state(run, tiny, capsys):
    out, summary = run
    names = sorted(p.name for p in out.glob("*.pt*"))
    assert names == ["best.pt", "last.prev.pt", "last.pt"], names  # no best.prev.pt: best.pt was written 3 times
    best, last = checkpoint.load(out / "best.pt"), checkpoint.load(out / "last.pt")
    assert best["optimizer"] is None and last["optimizer"]["state"]
    for key in ("model", "config", "classes", "data", "epoch", "step", "best", "num_classes", "schedule"):
        assert key in best, key  # what inference, --init and a resume read
    assert best["epoch"] == 3 and best["best"]["top1"] == pytest.approx(0.03)
    # SGD with momentum: last.pt holds the weights twice (momentum buffers), best.pt once
    weights = sum(t.numel() * t.element_size() for t in last["model"].values())
    momentum = sum(s["momentum_buffer"].numel() * 4 for s in last["optimizer"]["state"].values())
    assert 0.9 * weights < momentum <= weights
    size = {n: (out / n).stat().st_size for n in names}
    assert size["best.pt"] < 0.6 * size["last.pt"] and size["last.prev.pt"] == pytest.approx(size["last.pt"], rel=1e-3)
    # what the folder holds and what the saves wrote: in summary.json and the final message
    assert summary["checkpoint_bytes"] == size
    assert sum(size.values()) < summary["folder_bytes"] <= sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert summary["checkpoints_written"]["saves"] == 6
    assert summary["checkpoints_written"]["bytes"] == pytest.approx(3 * size["best.pt"] + 3 * size["last.pt"], rel=1e-3)
    from alexnet.runlog import size_text
    finish_message(summary, out, tiny)
    said = capsys.readouterr().out
    files = ", ".join(f"{name} {size_text(size[name])}" for name in ("last.pt", "last.prev.pt", "best.pt"))
    assert f"({size_text(summary['folder_bytes'])} on disk: {files}; 6 checkpoint saves wrote " in said


def test_every_reader_of_best_pt_reads_it_and_a_resume_from_it_restarts_the_momentum(run, tiny, tmp_path,
                                                                                        monkeypatch, capsys):
    out, _ = run
    best = str(out / "best.pt")
    photo = tmp_path / "x.png"
    Image.fromarray(synthetic.draw(3, synthetic.image_rng(5, "val", 0), 72)).save(photo)
    assert cli.main(["evaluate", best, "--data", str(tiny), "--json", str(tmp_path / "e.json")]) == 0
    assert cli.main(["predict", str(photo), "--checkpoint", best, "--json", str(tmp_path / "p.json")]) == 0
    assert cli.main(["export", best, str(tmp_path / "m.pt")]) == 0
    assert cli.main(["features", best, "--data", str(tiny), "--split", "val", "--out", str(tmp_path / "f.npy")]) == 0
    assert cli.main(["filters", best, "--out", str(tmp_path / "c.png")]) == 0
    assert cli.main(["evaluate", str(out), "--data", str(tiny)]) == 0  # a run folder means its best.pt
    ft = train(cfg(tiny, tmp_path / "ft", "train.epochs=1", f"train.init={best}"), progress=False)  # fine-tuning
    assert ft["epochs_done"] == 1
    capsys.readouterr()
    # a resume from best.pt (in a folder of its own, beside the best.prev.pt an older alexnet left)
    again = tmp_path / "again"
    again.mkdir()
    (again / "best.pt").write_bytes((out / "best.pt").read_bytes())
    (again / "best.prev.pt").write_bytes((out / "best.pt").read_bytes())
    every_validation_a_new_best(monkeypatch, start=0.5)
    summary = train(cfg(tiny, again, "train.epochs=4"), resume=str(again / "best.pt"), progress=True)
    said = capsys.readouterr().out
    assert "resuming" in said and "best.pt holds no optimizer state" in said and "momentum from zero" in said
    assert summary["epochs_done"] == 4 and checkpoint.load(again / "last.pt")["optimizer"]["state"]
    assert sorted(p.name for p in again.glob("*.pt*")) == ["best.pt", "last.pt"]  # the stale best.prev.pt removed
    assert all(torch.isfinite(t).all() for t in checkpoint.load(again / "best.pt")["model"].values()
               if t.is_floating_point())


def test_last_pt_exists_at_every_instant_of_a_save(tmp_path, monkeypatch):
    """A kill -9 can land between any two system calls of a save. Keeping the previous checkpoint
    by renaming it left a moment with no last.pt (a run killed there had nothing to resume from
    under that name); every rename of a save now finds last.pt in place."""
    import os

    from alexnet import fileio
    path = tmp_path / "last.pt"
    checkpoint.save(path, {"model": {"w": torch.zeros(3)}})
    seen, real = [], os.replace

    def replace(src, dst):
        seen.append(path.exists())
        real(src, dst)

    monkeypatch.setattr(fileio.os, "replace", replace)
    checkpoint.save(path, {"model": {"w": torch.ones(3)}})
    assert seen and all(seen), seen
    assert torch.equal(checkpoint.load(path)["model"]["w"], torch.ones(3))
    assert torch.equal(checkpoint.load(checkpoint.previous(path))["model"]["w"], torch.zeros(3))
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []
