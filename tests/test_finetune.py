"""Fine-tuning: weights from torchvision and other tools' files, a new head, frozen layers,
the head's learning rate, an exact resume, and the weights' normalisation carried everywhere."""
import argparse
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from alexnet import checkpoint, cli, config, inference, weights
from alexnet.data import synthetic
from alexnet.errors import UserError
from alexnet.model import build
from alexnet.resume import match_classes
from alexnet.train import train


@pytest.fixture(scope="module")
def tv(tmp_path_factory):
    """torchvision's AlexNet (random weights, seeded) saved as a bare state dict."""
    torch.manual_seed(0)
    model = torchvision.models.alexnet().eval()
    path = tmp_path_factory.mktemp("tv") / "alexnet.pth"
    torch.save(model.state_dict(), path)
    return model, path


def sets(data, out, *more):
    base = [f"data.path={data}", f"train.out={out}", "train.epochs=1", "train.batch_size=16", "data.crop=64",
            "data.workers=0", "train.log_every=2", "eval.batch_size=32", "train.precision=fp32"]
    return base + list(more)


OWN = ["model.norm=batchnorm", "model.name=alexnet_owt"]  # on the tiny preset


@pytest.fixture(scope="module")
def own(tiny, tmp_path_factory):
    """A small alexnet_owt with batch norm of ours, trained one epoch: a source for fast fine-tuning tests."""
    out = tmp_path_factory.mktemp("own") / "run"
    train(config.resolve("tiny", sets=sets(tiny, out, *OWN)), progress=False)
    return out / "last.pt"


def foreign_files(model, folder):
    """The same weights as other tools save them."""
    sd = model.state_dict()
    files = {
        "bare": sd,
        "torchvision reference": {"model": sd, "optimizer": {}, "epoch": 89, "args": argparse.Namespace(lr=0.01)},
        "pytorch/examples": {"epoch": 90, "arch": "alexnet", "best_acc1": torch.tensor(56.5),
                             "state_dict": {k.replace("features.", "features.module."): v for k, v in sd.items()}},
        "DataParallel": {"module." + k: v for k, v in sd.items()},
        "torch.compile": torch.compile(model).state_dict(),
    }
    paths = {}
    for name, obj in files.items():
        paths[name] = folder / f"{name.replace(' ', '_').replace('/', '_')}.pth"
        torch.save(obj, paths[name])
    return paths


def test_every_foreign_format_loads_with_a_new_head(tv, tmp_path):
    model, _ = tv
    for name, path in foreign_files(model, tmp_path).items():
        src = weights.read(str(path))
        assert src.model == {"name": "alexnet_owt"} and src.num_classes == 1000, name
        ours = build("alexnet_owt", 10, seed=1)
        rows = weights.load_into(ours, src)
        actions = {r["key"]: r["action"] for r in rows}
        assert actions["fc8.weight"] == actions["fc8.bias"] == "re-initialised", name
        assert sum(a == "loaded" for a in actions.values()) == 14, name
        torch.testing.assert_close(ours.conv1.weight, model.features[0].weight, rtol=0, atol=0)
        torch.testing.assert_close(ours.fc7.bias, model.classifier[4].bias, rtol=0, atol=0)
        assert not torch.equal(ours.fc8.weight[:10], model.classifier[6].weight[:10])
        net = inference.load_weights(str(path))  # --weights: the same reader, every tensor must fit
        x = torch.rand(2, 3, 224, 224)
        with torch.no_grad():
            torch.testing.assert_close(net.model(x), model(x), rtol=1e-5, atol=1e-5)


def test_weights_that_do_not_fit_are_named(tv, tmp_path):
    model, _ = tv
    sd = model.state_dict()
    sd["classifier.4.weight"] = sd["classifier.4.weight"][:100]
    torch.save(sd, tmp_path / "cut.pth")
    with pytest.raises(UserError, match=r"fc7\.weight \(shape \(100, 4096\) in the source"):
        inference.load_weights(str(tmp_path / "cut.pth"))
    torch.save({"optimizer": {}, "epoch": 3}, tmp_path / "nothing.pth")
    with pytest.raises(UserError, match="holds no state dict"):
        weights.read(str(tmp_path / "nothing.pth"))
    with pytest.raises(UserError, match="weights file not found"):
        weights.read(str(tmp_path / "absent.pth"))


def test_fine_tuning_prints_the_table_freezes_and_carries_the_normalisation(tv, tiny, tmp_path, capsys):
    model, path = tv
    out = tmp_path / "ft"
    assert cli.main(["train", "--preset", "finetune", "--init", str(path), "--freeze", "features",
                     *[a for s in sets(tiny, out, "optim.head_lr_mult=10") for a in ("--set", s)]]) == 0
    printed = capsys.readouterr().out
    assert f"initial weights: state dict {path}" in printed
    assert "fc8    re-initialised" in printed and "conv1  loaded" in printed
    assert "14 tensor(s) loaded, 2 tensor(s) re-initialised, 0 tensor(s) ignored" in printed
    state = checkpoint.load(out / "last.pt")
    sd = state["model"]
    for ours, theirs in (("conv1", 0), ("conv3", 6), ("conv5", 10)):  # frozen: bit-equal after the steps
        assert torch.equal(sd[f"{ours}.weight"], model.features[theirs].weight), ours
    assert not torch.equal(sd["fc6.weight"], model.classifier[1].weight)  # trained
    groups = {g["name"]: g for g in state["optimizer"]["param_groups"]}
    assert groups["head"]["lr"] == pytest.approx(10 * groups["body"]["lr"]) and groups["head"]["lr_mult"] == 10
    assert len(groups["body"]["params"]) == 4  # fc6 and fc7 only: frozen parameters are not in the optimizer
    d = state["data"]  # torchvision's normalisation, not the shapes' statistics
    assert d["normalisation"] == "weights" and d["mean_mode"] == "channel"
    torch.testing.assert_close(d["mean"], weights.TORCHVISION_MEAN)
    torch.testing.assert_close(d["std"], weights.TORCHVISION_STD)


def test_the_same_image_gives_the_same_probabilities_in_predict_export_and_python(tv, tiny, tmp_path, capsys):
    import onnxruntime as ort

    from alexnet.predict import Predictor
    _, path = tv
    out = tmp_path / "ft"
    train(config.resolve("finetune", sets=sets(tiny, out, f"train.init={path}")), progress=False)
    img = Image.fromarray(synthetic.draw(3, synthetic.image_rng(5, "val", 0), 120))
    img.save(tmp_path / "x.png")
    net = inference.load(out / "last.pt")
    python = net.probabilities(net.preprocess([img]))[0]
    assert cli.main(["predict", str(tmp_path / "x.png"), "--checkpoint", str(out / "last.pt"), "--json",
                     str(tmp_path / "p.json"), "--topk", "10"]) == 0
    predicted = json.loads((tmp_path / "p.json").read_text())["results"][0]["top"]
    for row in predicted:
        assert row["probability"] == pytest.approx(python[row["index"]].item(), abs=1e-6)
    api = Predictor(checkpoint=str(out / "last.pt")).predict_images([img], topk=10)[0]
    assert [r["index"] for r in api] == [r["index"] for r in predicted]
    assert cli.main(["export", str(out / "last.pt"), str(tmp_path / "m.onnx"), "--format", "onnx"]) == 0
    from alexnet.data.decode import resize_crop
    crop = np.array(resize_crop(img, net.size))[None].transpose(0, 3, 1, 2).astype(np.float32)
    side = (net.size - net.crop) // 2
    crop = crop[:, :, side:side + net.crop, side:side + net.crop]  # the centre crop, RGB 0-255
    logits = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"images": crop})[0]
    exported = F.softmax(torch.from_numpy(logits), 1)[0]
    torch.testing.assert_close(exported, python, rtol=1e-4, atol=1e-5)  # ImageNet mean/std inside the graph


def test_resumed_fine_tuning_continues_exactly(own, tiny, tmp_path, monkeypatch):
    from conftest import straight_and_resumed
    cfg = lambda out: config.resolve("tiny", sets=sets(tiny, out, *OWN, f"train.init={own}", "train.epochs=2",  # noqa: E731
                                                       "train.deterministic=true", "train.freeze=features"))
    a, b = straight_and_resumed(cfg, tmp_path, monkeypatch)
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    source = checkpoint.load(own)["model"]
    for key in ("norm1.running_mean", "norm2.running_var", "conv2.weight"):  # frozen batch norm stays in eval mode
        assert torch.equal(b["model"][key], source[key]), key


def test_the_head_is_kept_only_for_the_same_classes():
    classes = [{"id": f"n{i}", "name": f"c{i}"} for i in range(4)]
    w = torch.arange(4.0)[:, None].repeat(1, 3)
    src = weights.Source({"fc8.weight": w.clone(), "fc8.bias": torch.arange(4.0)}, "state dict", "x", "0",
                         classes=list(reversed(classes)))
    assert match_classes(src, classes) == {}  # the same classes, reordered: rows follow this data set's order
    assert src.state["fc8.bias"].tolist() == [3.0, 2.0, 1.0, 0.0] and "reordered" in src.notes[0]
    other = weights.Source({"fc8.weight": w, "fc8.bias": torch.zeros(4)}, "state dict", "x", "0",
                           classes=[{"id": f"m{i}", "name": ""} for i in range(4)])
    assert set(match_classes(other, classes)) == {"fc8.weight", "fc8.bias"}


def test_architecture_mismatch_and_offline_are_one_line_errors(tv, tiny, tmp_path, capsys, monkeypatch):
    _, path = tv
    args = ["train", "--preset", "paper", "--init", str(path), *[a for s in sets(tiny, tmp_path / "x") for a in ("--set", s)]]
    assert cli.main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "weights of alexnet_owt" in err and "use --model alexnet_owt" in err and len(err.splitlines()) == 1

    from torchvision.models import AlexNet_Weights

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(AlexNet_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    assert cli.main(["train", "--preset", "finetune", *[a for s in sets(tiny, tmp_path / "y") for a in ("--set", s)]]) == 2
    err = capsys.readouterr().err
    assert "could not fetch torchvision's AlexNet weights" in err and "--init PATH" in err
    assert not (tmp_path / "y" / "last.pt").exists()


def test_the_paper_network_starts_from_its_own_checkpoint(tiny, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "b"
    train(config.resolve("tiny", sets=sets(tiny, out, f"train.init={tiny_checkpoint}", "train.freeze=all-but-head")),
          progress=True)
    assert "0 tensor(s) re-initialised" in capsys.readouterr().out  # the same 10 classes: the head is kept too
    a, b = checkpoint.load(tiny_checkpoint)["model"], checkpoint.load(out / "last.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a if not k.startswith("fc8."))  # batch-norm statistics included
    assert not torch.equal(a["fc8.weight"], b["fc8.weight"])


def test_init_from_our_checkpoint_adopts_its_model_settings(tiny, tiny_checkpoint, tmp_path, capsys):
    """The README's `alexnet train --init runs/x/best.pt --freeze features --data prepared/mine`
    for a run of another preset: the checkpoint's model settings, not the
    paper preset's, unless the command line writes them; a conflict names both sides."""
    best = tiny_checkpoint.parent / "best.pt"  # a quarter-width run of the tiny preset
    more = lambda out: [a for s in sets(tiny, tmp_path / out)[1:] for a in ("--set", s)]  # noqa: E731 (no model.*)
    assert cli.main(["train", "--init", str(best), "--freeze", "features", "--data", str(tiny), *more("ft")]) == 0
    printed = capsys.readouterr().out
    assert f"model settings from {best}: " in printed
    assert "model.width=0.25 (not 1.0)" in printed and "model.hidden=64 (not 4096)" in printed
    assert "model.norm=batchnorm" in printed and "0 tensor(s) re-initialised" in printed
    source, state = checkpoint.load(best), checkpoint.load(tmp_path / "ft" / "last.pt")
    assert state["config"]["model"] == source["config"]["model"] and state["config"]["preset"] == "paper"
    assert all(torch.equal(state["model"][k], source["model"][k]) for k in source["model"] if k.startswith("conv"))
    # the same command continues the run: its checkpoint's settings are the adopted ones
    assert cli.main(["train", "--init", str(best), "--freeze", "features", "--data", str(tiny), *more("ft"),
                     "--set", "train.epochs=2"]) == 0
    assert "resuming" in capsys.readouterr().out

    assert cli.main(["train", "--init", str(best), "--data", str(tiny), *more("wide"),
                     "--set", "model.width=0.5"]) == 2  # written: kept, and it does not fit
    out, err = capsys.readouterr()
    assert f"{best} holds alexnet2012, width 0.25, hidden 64, norm batchnorm, 10 classes" in err
    assert "this run builds alexnet2012, width 0.5, hidden 64, norm batchnorm, 10 classes" in err
    assert "model.width=" not in out and len(err.strip().splitlines()) == 1
    assert cli.main(["train", "--init", str(best), "--data", str(tiny), *more("owt"), "--model", "alexnet_owt"]) == 2
    assert f"{best} holds alexnet2012, width 0.25" in capsys.readouterr().err


def test_the_keys_a_user_wrote_are_told_from_a_presets(tmp_path):
    (tmp_path / "c.yaml").write_text("preset: fast\nmodel:\n  hidden: 512\ntrain.epochs: 3\n")
    keys = config.given([tmp_path / "c.yaml"], ["model.width = 0.5"],
                        {"--model": ("model.name", "alexnet_owt"), "--epochs": ("train.epochs", None)})
    assert keys == {"model.hidden", "train.epochs", "model.width", "model.name"}


def test_features_and_export_take_weights_too(tv, tmp_path):
    model, path = tv
    folder = tmp_path / "photos" / "val" / "n01440764"
    folder.mkdir(parents=True)
    for i in range(3):
        Image.fromarray(synthetic.draw(i, synthetic.image_rng(i, "val", 0), 90)).save(folder / f"{i}.png")
    assert cli.main(["features", "--weights", str(path), "--data", str(tmp_path / "photos"), "--split", "val",
                     "--out", str(tmp_path / "f.npy")]) == 0
    codes = np.load(tmp_path / "f.npy")
    net = inference.load_weights(str(path))
    images = [Image.open(folder / f"{i}.png").convert("RGB") for i in range(3)]
    want = net.forward(net.preprocess(images), embed=True)
    torch.testing.assert_close(torch.from_numpy(codes), want, rtol=1e-4, atol=1e-4)
    assert cli.main(["export", "--weights", str(path), str(tmp_path / "m.onnx"), "--format", "onnx"]) == 0
    assert cli.main(["export", str(tmp_path / "m.onnx"), "--format", "onnx"]) == 2  # neither a checkpoint nor --weights


def test_torchvision_weights_download_through_its_api_from_a_local_server(tv, tmp_path, monkeypatch):
    """`--init torchvision` / `--weights torchvision` fetch through torchvision's weights API with its
    hash check: served here from 127.0.0.1 (no internet in CI), into TORCH_HOME; a file whose SHA-256
    does not match its name is refused with the one-line error, not loaded."""
    import functools
    import hashlib
    import http.server
    import shutil
    import threading

    from torchvision.models import AlexNet_Weights

    from alexnet import weights

    model, path = tv
    served = tmp_path / "served"
    served.mkdir()
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    shutil.copy(path, served / f"alexnet-owt-{digest[:8]}.pth")
    shutil.copy(path, served / "alexnet-owt-00000000.pth")  # its name promises another hash
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(served))
    handler.log_message = lambda *a: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch-home"))
        url = f"http://127.0.0.1:{server.server_address[1]}/"
        monkeypatch.setattr(AlexNet_Weights.IMAGENET1K_V1.value, "url", url + f"alexnet-owt-{digest[:8]}.pth")
        source = weights.read("torchvision")
        assert (tmp_path / "torch-home" / "hub" / "checkpoints" / f"alexnet-owt-{digest[:8]}.pth").is_file()
        for key, tensor in model.state_dict().items():
            assert torch.equal(source.state[key], tensor), key
        monkeypatch.setattr(AlexNet_Weights.IMAGENET1K_V1.value, "url", url + "alexnet-owt-00000000.pth")
        with pytest.raises(weights.WeightsError, match="could not fetch torchvision's AlexNet weights"):
            weights.read("torchvision")
    finally:
        server.shutdown()
        server.server_close()
