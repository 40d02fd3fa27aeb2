"""Budget training: the moving average of the weights, evaluation at another crop, and
`alexnet train --minutes M`, whose choices are checked against a brute-force search of the same rule."""
import json
import math

import pytest
import torch

from alexnet import budget, checkpoint, cli, config
from alexnet.ema import EMA, decay_for_half_life
from alexnet.errors import UserError
from alexnet.evaluate import evaluate_networks
from alexnet import inference
from alexnet.model import build
from alexnet.train import plan_budget, preset_keys, train
from conftest import straight_and_resumed


def tiny_cfg(data, out, *sets):
    base = [f"data.path={data}", f"train.out={out}", "train.epochs=2"]
    return config.resolve("tiny", sets=base + list(sets))


# ------------------------------------------------------------------------------ the moving average

def test_the_moving_average_matches_a_float64_reimplementation():
    torch.manual_seed(0)
    net = build("alexnet2012", 5, norm="batchnorm", width=0.125, hidden=16)
    ema = EMA(net, decay=0.9)
    ref = {k: v.double().clone() for k, v in net.state_dict().items()}
    for t in range(30):
        with torch.no_grad():
            for p in net.parameters():
                p.add_(torch.randn_like(p))
            for name, b in net.named_buffers():
                if b.is_floating_point():
                    b.mul_(0.5).add_(1.0)
                else:
                    b.add_(1)
        ema.update(net, t)
        d = min(0.9, (1 + t) / (10 + t))  # TensorFlow's num_updates ramp
        for k, v in net.state_dict().items():
            ref[k] = d * ref[k] + (1 - d) * v.double() if v.is_floating_point() else v.double().clone()
    for k, v in ema.state_dict().items():
        torch.testing.assert_close(v.double(), ref[k], rtol=1e-5, atol=1e-5, msg=k)
    assert int(ema.state_dict()["norm1.num_batches_tracked"]) == 30  # integers are copied, not averaged
    assert not any(p.requires_grad for p in ema.module.parameters())
    assert abs(ema.half_life() - math.log(0.5) / math.log(0.9)) < 1e-9
    assert abs(decay_for_half_life(100) ** 100 - 0.5) < 1e-12
    with pytest.raises(ValueError, match=r"\(0, 1\)"):
        EMA(net, 1.0)


def test_a_run_with_ema_validates_and_saves_both_and_resumes_exactly(tiny, tmp_path, monkeypatch):
    cfg = lambda out: tiny_cfg(tiny, out, "train.epochs=3", "train.deterministic=true", "train.ema=0.8",  # noqa: E731
                               "train.precision=fp32")  # fp32: compared with evaluate's fp32 below
    a, b = straight_and_resumed(cfg, tmp_path, monkeypatch)
    for key in a["ema"]:  # the average continued exactly across the interruption
        torch.testing.assert_close(a["ema"][key], b["ema"][key], rtol=0, atol=0, msg=key)
    summary = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert summary["weights"] == "ema" and set(summary["raw"]) >= {"top1", "top5", "loss"}
    vals = [json.loads(line) for line in (tmp_path / "straight" / "metrics.jsonl").read_text().splitlines()]
    assert all("ema_top1" in r for r in vals if r["kind"] == "val")
    assert a["weights"] == "raw" and a["ema_decay"] == 0.8 and set(a["ema"]) == set(a["model"])
    best = checkpoint.load(tmp_path / "straight" / "best.pt")
    assert best["weights"] in ("raw", "ema") and best["best"]["weights"] == best["weights"] and "ema" not in best
    # the moving average validated at the end is the one last.pt holds: evaluate it independently
    net = inference.load(tmp_path / "straight" / "last.pt")
    net.model.load_state_dict(a["ema"])
    r = evaluate_networks([net], str(tiny), "val", views=1, workers=0, progress=False)
    assert abs(r["top1"] - summary["top1"]) < 1e-9


# -------------------------------------------------------------------------- evaluation at another crop

def test_eval_crop_evaluates_and_predicts_at_its_own_size(tiny, tmp_path):
    out = tmp_path / "run"
    train(tiny_cfg(tiny, out, "train.epochs=1", "eval.crop=72", "eval.views=2", "train.precision=fp32"), progress=False)
    state = checkpoint.load(out / "best.pt")
    assert state["data"]["crop"] == 72 and state["data"]["train_crop"] == 64  # what predict and serve use
    net = inference.load(out / "best.pt")
    assert net.crop == 72
    r72 = evaluate_networks([net], str(tiny), "val", views=2, workers=0, progress=False)
    r64 = evaluate_networks([net], str(tiny), "val", views=2, workers=0, progress=False, crop=64)
    assert r72["crop"] == 72 and r64["crop"] == 64
    summary = json.loads((out / "summary.json").read_text())
    assert summary["eval_crop"] == 72 and summary["views"] == 2
    assert abs(summary["top1"] - r72["top1"]) < 1e-9  # training's validation = evaluate's, at 72 px, 2 views
    with pytest.raises(UserError, match="--crop 80 is larger than the 72 px images"):
        evaluate_networks([net], str(tiny), "val", views=1, workers=0, progress=False, crop=80)
    with pytest.raises(UserError, match="eval.crop 80 is larger than the prepared images"):
        train(tiny_cfg(tiny, tmp_path / "x", "eval.crop=80"), progress=False)


def test_evaluate_and_predict_take_two_views(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    train(tiny_cfg(tiny, out, "train.epochs=1"), progress=False)
    assert cli.main(["evaluate", str(out / "best.pt"), "--data", str(tiny), "--views", "2", "--crop", "72",
                     "--json", str(tmp_path / "r.json")]) == 0
    r = json.loads((tmp_path / "r.json").read_text())
    assert r["views"] == 2 and r["crop"] == 72
    assert "2 view(s) of 72 px" in capsys.readouterr().out
    from PIL import Image
    from alexnet.data import synthetic
    image = tmp_path / "photo.png"
    Image.fromarray(synthetic.draw(3, synthetic.image_rng(9, "val", 0), 90)).save(image)
    assert cli.main(["predict", str(image), "--checkpoint", str(out / "best.pt"), "--views", "2", "--json"]) == 0
    top = json.loads(capsys.readouterr().out)["results"][0]["top"][0]
    net = inference.load(out / "best.pt")
    want = net.probabilities(net.preprocess([Image.open(image).convert("RGB")], views=2))[0]
    assert abs(top["probability"] - float(want.max())) < 1e-5


# ---------------------------------------------------------------------------------- the --minutes rule

def test_the_rules_numbers():
    assert budget.min_epochs(10_000) == 32 and budget.min_epochs(1_281_167) == 16  # ffcv's shortest: 16
    assert budget.min_epochs(100) == 32 and 23.9 < budget.min_epochs(100_000) < 24.1
    assert budget.crops(160) == [96, 112, 128] and budget.crops(256) == [160, 176, 192, 208]
    assert budget.crops(72) == [64]  # never below the network's smallest input
    assert budget.eval_crop(128, 160) == 144 and budget.eval_crop(128, 140) == 140  # 1.15x, at most S
    assert budget.min_scale(40) == 0.25 and budget.min_scale(8) == 0.5 and budget.min_scale(20) == 0.375
    assert budget.start_crop(128) == 96 and budget.start_crop(64) == 64
    one = config.resolve("paper", sets=["train.epochs=1"])  # a given train.epochs bounds the warm-up (validate)
    assert budget.warmup(100, one, set()) == 2.0 and budget.warmup(100, one, {"train.epochs"}) == 0.5
    assert budget.warmup(10, one, set()) == 0.5


class FakeSplit:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


class FakeData:
    """What plan() reads of a prepared data set."""
    def __init__(self, n, n_val, size, classes=10):
        self.size, self.classes = size, [{"id": str(i)} for i in range(classes)]
        self._splits = {"train": FakeSplit(n), "val": FakeSplit(n_val)}

    def split(self, name):
        return self._splits[name]


def fake_speed(monkeypatch, flops_per_s: float):
    """A device that runs every network at `flops_per_s` training FLOP/s (no small-crop penalty)."""
    from alexnet.mfu import train_flops_per_image
    monkeypatch.setattr(budget, "measure", lambda model, rt, batch, crop, n, seconds=1.0:
                        flops_per_s / train_flops_per_image(model, crop))


@pytest.mark.parametrize("n,size,seconds", [(9_469, 160, 600), (9_469, 160, 1200), (9_469, 160, 120),
                                            (50_000, 256, 3600), (1_281_167, 144, 7200), (3_000, 112, 300)])
def test_the_choice_is_the_largest_crop_and_the_widest_width_that_affords_the_epochs(monkeypatch, n, size, seconds):
    from alexnet import runtime
    from alexnet.mfu import train_flops_per_image
    fake_speed(monkeypatch, 2e11)
    rt = runtime.setup("cpu", "fp32")
    cfg = config.resolve("paper", sets=["train.minutes=10"])
    plan = budget.plan(cfg, FakeData(n, 500, size), rt, 10, seconds, set(), say=lambda *a: None)
    v = plan.values
    # brute force: every (width, crop), epochs from the same FLOP model and the same time accounting
    train_s = seconds - budget.final_seconds(500, 2, 3 * 2e11 / train_flops_per_image(
        build(budget.model_config(cfg, 0.5, False, set()), 10), budget.crops(size)[-1])
        * (budget.crops(size)[-1] / budget.eval_crop(budget.crops(size)[-1], size)) ** 2)
    table = []
    for w in budget.WIDTHS:
        model = build(budget.model_config(cfg, w, False, set()), 10)
        for c in budget.crops(size)[-1:]:
            rate = budget.mean_rate(lambda k: 2e11 / train_flops_per_image(model, k), c)
            table.append((w, c, budget.REALISED * train_s * rate / n))
    fits = [t for t in table if t[2] >= budget.min_epochs(n)]
    want = max(fits, key=lambda t: (t[1], t[0])) if fits else min(table, key=lambda t: (t[0], t[1]))
    assert (v["model.width"], v["data.crop"]) == want[:2]
    assert abs(plan.epochs - want[2]) / want[2] < 0.02
    assert v["model.hidden"] == int(2048 * v["model.width"])
    assert v["eval.crop"] == budget.eval_crop(v["data.crop"], size) and v["eval.views"] == 2
    assert v["data.progressive_from"] == budget.start_crop(v["data.crop"])
    assert v["data.scale"] == (budget.min_scale(plan.epochs), 1.0)
    steps = plan.epochs * (n // v["train.batch_size"])
    assert abs(math.log(0.5) / math.log(v["train.ema"]) - max(10, 0.02 * steps)) < 1e-6 * max(10, 0.02 * steps)
    assert v["train.batch_size"] == 128 and v["optim.lr"] == 0.04 and v["optim.lr_batch"] == 128


def test_given_keys_and_an_explicit_preset_keep_their_values(monkeypatch):
    from alexnet import runtime
    fake_speed(monkeypatch, 2e11)
    rt = runtime.setup("cpu", "fp32")
    cfg = config.resolve("paper", sets=["train.minutes=10", "model.width=1", "eval.views=10"])
    given = {"model.width", "eval.views"} | preset_keys("quick")
    assert {"model.hidden", "data.crop", "optim.lr"} <= preset_keys("quick") and preset_keys(None) == set()
    plan = budget.plan(cfg, FakeData(9_469, 500, 160), rt, 10, 600, given, say=lambda *a: None)
    assert not set(plan.values) & given
    assert any("kept as given" in line and "model.width=1" in line for line in plan.why)
    assert "train.ema" in plan.values and "data.progressive_from" in plan.values  # what quick leaves open


def test_a_budget_too_small_for_the_evaluation_is_refused(monkeypatch):
    from alexnet import runtime
    fake_speed(monkeypatch, 2e11)
    rt = runtime.setup("cpu", "fp32")
    cfg = config.resolve("paper", sets=["train.minutes=0.05"])
    with pytest.raises(UserError, match="give more minutes"):
        budget.plan(cfg, FakeData(9_469, 200_000, 160), rt, 10, 3.0, set(), say=lambda *a: None)


def test_minutes_runs_end_to_end_and_a_resume_keeps_its_recipe(tiny, tmp_path, capsys):
    out = tmp_path / "run"
    cfg = config.resolve("quick", sets=[f"data.path={tiny}", f"train.out={out}", "data.workers=0",
                                        "train.minutes=0.35", "model.width=0.25", "model.hidden=64",
                                        "train.batch_size=16", "eval.batch_size=16", "train.log_every=2"])
    given = {"model.width", "model.hidden", "train.batch_size", "eval.batch_size", "data.workers", "train.log_every",
             "data.path", "train.out", "train.minutes"}
    summary = train(cfg, progress=True, given=given)
    text = capsys.readouterr().out
    assert "--minutes 0.35:" in text and "chosen: width 0.25" in text and "kept as given: model.hidden=64" in text
    saved = config.from_dict(__import__("yaml").safe_load((out / "config.yaml").read_text()))
    assert saved.model.width == 0.25 and saved.train.ema > 0 and saved.eval.views == 2
    assert saved.data.crop == 64 and saved.eval.crop == 72  # the built-in 72 px images: 64 px crops, tested at 72
    assert saved.train.budget_minutes is not None and 0 < saved.train.budget_minutes < 0.35
    assert summary["weights"] == "ema" and summary["training_time_s"] >= 60 * saved.train.budget_minutes
    trains = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    lrs = [r["lr"] for r in trains if r["kind"] == "train"]
    assert lrs[-1] < 0.15 * max(lrs)  # the linear decay follows the clock down to (nearly) 0 at the end
    # the same command on the same folder continues with the recipe it started with, whatever it measures now
    again = plan_budget(cfg, None, given, __import__("time").time(), progress=True)
    assert "continues with the recipe it started with" in capsys.readouterr().out
    for key in budget.RECIPE_KEYS | {"train.budget_minutes"}:
        section, name = key.split(".")
        assert getattr(getattr(again, section), name) == getattr(getattr(saved, section), name), key


def test_minutes_fine_tunes_the_weights_own_network(tiny, tmp_path, capsys):
    from alexnet.resume import adopt_model
    first = tmp_path / "first"
    train(tiny_cfg(tiny, first, "train.epochs=1"), progress=False)
    cfg = config.resolve(None, sets=[f"data.path={tiny}", f"train.out={tmp_path / 'ft'}", "data.workers=0",
                                     f"train.init={first / 'best.pt'}", "train.minutes=0.3", "train.batch_size=16",
                                     "eval.batch_size=16"])
    given = {"data.path", "train.out", "data.workers", "train.init", "train.minutes", "train.batch_size",
             "eval.batch_size"}
    cfg = adopt_model(cfg, given, say=lambda *a: None)  # what `alexnet train --init` does first
    summary = train(cfg, progress=True, given=given)
    text = capsys.readouterr().out
    assert "measured training images/s" in text and "width 0.25: " in text and "width 0.5" not in text
    saved = config.from_dict(__import__("yaml").safe_load((tmp_path / "ft" / "config.yaml").read_text()))
    assert saved.model.width == 0.25 and saved.model.hidden == 64  # the checkpoint's network, not a chosen one
    assert saved.optim.head_lr_mult == 10 and saved.optim.lr == 0.002  # the fine-tuning optimizer
    assert 0 <= summary["top1"] <= 1 and summary["weights"] == "ema"


def test_minutes_on_the_command_line(tiny, tmp_path, capsys):
    assert cli.main(["train", "--data", str(tiny), "--minutes", "0.001", "--out", str(tmp_path / "r")]) == 2
    assert "give more minutes" in capsys.readouterr().err
    assert cli.main(["train", "--data", str(tiny), "--minutes", "-1"]) == 2
    assert "train.minutes (--minutes) must be positive" in capsys.readouterr().err


def test_every_preset_states_its_command_hardware_time_and_accuracy():
    import re
    for name, make in config.PRESETS.items():
        doc = make.__doc__ or ""
        assert "alexnet train" in doc, f"preset {name}: no command"
        assert re.search(r"\d+(\.\d+)?% ", doc), f"preset {name}: no accuracy"
        assert re.search(r"CPU|GPU|GTX", doc), f"preset {name}: no hardware"
        assert re.search(r"minutes|days|\d+m\d+s|epochs", doc), f"preset {name}: no time"
        assert "per " in doc and " images" in doc, f"preset {name}: lr without its unit (per lr_batch images)"
