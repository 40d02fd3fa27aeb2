"""`alexnet train` end to end on a tiny built-in set: run folder, resume, accumulation, errors."""
import json

import pytest
import torch
import torch.nn.functional as F
import yaml

from alexnet import checkpoint, cli, config
from alexnet.errors import UserError
from alexnet.model import build
from alexnet.runtime import amp_dtype, pick_device
from alexnet.train import Diverged, train


def tiny_cfg(data, out, *sets):
    base = [f"data.path={data}", f"train.out={out}", "train.epochs=2"]
    return config.resolve("tiny", sets=base + list(sets))


def test_a_run_writes_a_self_describing_folder(tiny, tmp_path):
    out = tmp_path / "run"
    summary = train(tiny_cfg(tiny, out), progress=False)
    for name in ("config.yaml", "env.json", "metrics.jsonl", "last.pt", "best.pt", "curves.png", "conv1.png",
                 "summary.json"):
        assert (out / name).is_file(), name
    assert list(out.glob("events.out.tfevents.*")), "TensorBoard events"
    saved = json.loads((out / "summary.json").read_text())
    assert saved == json.loads(json.dumps(summary))
    for key in ("top1", "top5", "epochs", "images_per_s", "wall_time_s", "checkpoint", "plots"):
        assert key in saved
    assert 0 <= saved["top1"] <= saved["top5"] <= 1 and saved["epochs"] == 2
    assert config.from_dict(yaml.safe_load((out / "config.yaml").read_text())) == tiny_cfg(tiny, out)
    env = json.loads((out / "env.json").read_text())
    assert env["torch"] == torch.__version__ and "git" in env
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert {r["kind"] for r in records} == {"train", "val"} and len([r for r in records if r["kind"] == "val"]) == 2
    state = checkpoint.load(out / "last.pt")
    assert state["epoch"] == 2 and state["step"] == 0 and len(state["classes"]) == 10
    net = build("alexnet2012", 10, norm="batchnorm", width=0.25, hidden=64)
    net.load_state_dict(state["model"])  # unwrapped: plain keys
    assert state["data"]["mean_image"].shape == (3, 72, 72) and state["data"]["crop"] == 64


def test_resume_continues_and_matches_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    from conftest import straight_and_resumed
    cfg = lambda out: tiny_cfg(tiny, out, "train.epochs=3", "train.deterministic=true")  # noqa: E731
    a, b = straight_and_resumed(cfg, tmp_path, monkeypatch)  # "split": stopped after epoch 1, then resumed
    assert a["epoch"] == b["epoch"] == 3
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    vals = [json.loads(line) for line in (tmp_path / "split" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in vals if r["kind"] == "val"] == [1, 2, 3]


def test_gradient_accumulation_matches_one_big_batch(tiny, tmp_path):
    # fp32: precision=auto picks bf16 on AVX512-BF16 CPUs, whose rounding depends on the batch split
    common = ["model.norm=none", "model.dropout=0", "train.epochs=1", "data.pca_std=0", "schedule.warmup_epochs=0",
              "train.precision=fp32"]
    train(tiny_cfg(tiny, tmp_path / "a", *common), progress=False)
    train(tiny_cfg(tiny, tmp_path / "b", *common, "train.accumulation=4"), progress=False)
    a, b = checkpoint.load(tmp_path / "a" / "last.pt"), checkpoint.load(tmp_path / "b" / "last.pt")
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=1e-4, atol=1e-6, msg=key)


def test_divergence_stops_with_a_clear_message(tiny, tmp_path):
    with pytest.raises(Diverged, match=r"diverged at epoch 1, step \d+: loss nan"):
        train(tiny_cfg(tiny, tmp_path / "nan", "optim.lr=1e12", "schedule.warmup_epochs=0"), progress=False)
    assert not (tmp_path / "nan" / "last.pt").exists()


def test_bad_runs_fail_before_any_work(tiny, tmp_path):
    with pytest.raises(UserError, match="larger than the training split"):
        train(tiny_cfg(tiny, tmp_path / "x", "train.batch_size=512"), progress=False)
    with pytest.raises(UserError, match="larger than the prepared images"):
        train(tiny_cfg(tiny, tmp_path / "x", "data.crop=100"), progress=False)
    with pytest.raises(UserError, match="not a prepared data set|not found"):
        train(tiny_cfg(tmp_path / "nothing", tmp_path / "x"), progress=False)
    with pytest.raises(UserError, match="unknown device"):
        pick_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            pick_device("cuda")


def test_precision_auto_and_the_default_preset(capsys):
    assert amp_dtype("fp32", torch.device("cpu")) is None
    assert amp_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert amp_dtype("auto", torch.device("cpu")) in (None, torch.bfloat16)
    assert cli.main(["train", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["preset"] == "quick"  # built-in data: quick
    assert cli.main(["train", "--data", "somewhere", "--print-config"]) == 0
    assert yaml.safe_load(capsys.readouterr().out)["preset"] == "paper"


def test_the_quick_network_can_overfit_one_batch(tiny):
    from alexnet.data.loader import Loader
    from alexnet.data.store import open_prepared
    ds = open_prepared(tiny)
    batch = next(iter(Loader(ds.split("train"), ds, batch_size=32, train=True, crop=64, workers=0).epoch(0)))
    torch.manual_seed(0)
    net = build("alexnet2012", 10, norm="batchnorm", init="kaiming", width=0.5, hidden=256, dropout=0.0, seed=0)
    opt = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    first = None
    for _ in range(40):
        loss = F.cross_entropy(net(batch.images), batch.labels)
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.1 * first


def test_a_time_budget_stops_the_run_and_drives_the_decay(tiny, tmp_path):
    out = tmp_path / "budget"
    summary = train(tiny_cfg(tiny, out, "train.epochs=1000", "train.budget_minutes=0.05",
                             "schedule.warmup_epochs=0", "eval.every=1000", "train.log_every=1"), progress=False)
    assert 0 < summary["training_time_s"] < 60 and summary["epochs_done"] < 1000
    state = checkpoint.load(out / "last.pt")
    # the budget ends the run at the first epoch end or step past 3 s; the last save is at most one
    # (tiny) epoch earlier than that check
    assert state["elapsed_s"] >= 2.5 and state["epoch"] < 1000
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if '"train"' in line]
    lrs = [r["lr"] for r in records]
    # a record per step (log_every=1): two at least, even when a loaded machine takes seconds per step
    assert len(lrs) >= 2 and all(b <= a for a, b in zip(lrs, lrs[1:])), lrs  # the clock only moves forward
    # The decay is driven by the clock, not by the steps. By steps alone (1,000 epochs of at least one step)
    # the lr would fall by at most (t_last - t_first) / 1000 between the first and the last record; by the
    # clock it falls by the share of the 3 s that passed. How far the clock got depends on the machine's
    # load, so the test asks for a fall well beyond the steps' share, never for a level.
    t_first, t_last = records[0]["step"] - 1, records[-1]["step"] - 1  # steps taken before each logged step
    by_steps = (1 - t_last / 1000) / (1 - t_first / 1000)
    assert lrs[-1] / lrs[0] < by_steps - 0.01, (lrs, by_steps)


def test_progressive_resizing(tiny, tmp_path, capsys):
    from alexnet.loop import Stopper
    from alexnet.train import progressive_crop
    cfg = config.resolve("quick", sets=["data.crop=224", "data.progressive_from=128", "train.epochs=8"])
    stopper = Stopper(0.0, None)
    crops = [progressive_crop(cfg, e, stopper) for e in range(8)]
    assert crops[0] == 128 and crops[-1] == crops[-2] == 224 and crops == sorted(crops)
    assert all(c % 8 == 0 for c in crops)
    summary = train(tiny_cfg(tiny, tmp_path / "prog", "data.crop=72", "data.progressive_from=64", "train.epochs=4"))
    out = capsys.readouterr().out
    assert "training crops: 64 px" in out and "training crops: 72 px" in out and summary["epochs"] == 4
    with pytest.raises(UserError, match="needs crops of at least 64 px"):
        train(tiny_cfg(tiny, tmp_path / "small", "data.progressive_from=48"), progress=False)


def test_a_run_at_chance_and_a_top5_that_means_nothing_are_said(capsys, tmp_path):
    """A run that ended at chance finished with "done ... top-1 33.33%" and no word; with 5 classes
    or fewer top-5 is 100% by construction."""
    from alexnet.loop import _share
    from alexnet.train import finish_message
    s = {"wall_time_s": 5, "top1": 1 / 3, "top5": 1.0, "top1_error": 2 / 3, "images_per_s": 10.0, "classes": 3,
         "checkpoint": "c", "best_checkpoint": "b", "metrics": "m", "plots": ["p"]}
    finish_message(s, tmp_path, tmp_path)
    out = capsys.readouterr().out
    assert "chance level for 3 classes" in out and "with 3 classes top-5 counts every image right" in out
    finish_message({**s, "top1": 0.9, "top1_error": 0.1, "classes": 10}, tmp_path, tmp_path)
    out = capsys.readouterr().out
    assert "chance level" not in out and "top-5 counts" not in out
    assert [_share(x) for x in (0.24, 0.073, 0.004, 0.0004)] == ["24%", "7.3%", "0.4%", "0.04%"]


def test_a_resume_on_another_world_size_says_so(tiny, tmp_path, capsys):
    """the run resumed correctly with another number of processes but said nothing."""
    out = tmp_path / "run"
    train(tiny_cfg(tiny, out, "train.epochs=1"), progress=False)
    state = checkpoint.load(out / "last.pt")
    state["rng"] = state["rng"] * 2  # as written by 2 processes
    checkpoint.save(out / "last.pt", state)
    train(tiny_cfg(tiny, out, "train.epochs=2"), progress=True)
    said = capsys.readouterr().out
    assert "the checkpoint was written by 2 process(es), this run has 1" in said
    train(tiny_cfg(tiny, out, "train.epochs=3"), progress=True)  # written by 1, resumed by 1: nothing to say
    assert "written by" not in capsys.readouterr().out
