"""One reader for every file named as a checkpoint or as weights: a checkpoint of
torchvision's reference scripts works as every command's CKPT with torchvision's preprocessing,
giving what torchvision's own model gives; a damaged file still says so; and no message carries
the terminal escape bytes of the library text it quotes."""
import argparse
import json
import pathlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image

from alexnet import checkpoint, cli, inference, weights
from alexnet.data import synthetic
from alexnet.data.decode import resize_crop
from alexnet.errors import UserError

WNIDS = ("n01440764", "n01443537")  # tench, goldfish: folders named as ImageNet's classes


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """torchvision's AlexNet (random, seeded; a head scaled so that the classes are far apart) saved
    as references/classification/train.py saves it, and two photos in each of two class folders."""
    root = tmp_path_factory.mktemp("reference")
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    with torch.no_grad():
        model.classifier[6].weight.mul_(300)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=30, gamma=0.1)
    args = argparse.Namespace(model="alexnet", data_path="/datasets01/imagenet_full_size/061417/", device="cuda",
                              batch_size=32, epochs=90, lr=0.01, momentum=0.9, weight_decay=1e-4, lr_step_size=30,
                              lr_gamma=0.1, val_resize_size=256, val_crop_size=224, train_crop_size=224,
                              interpolation="bilinear", weights=None, distributed=True, world_size=8, amp=False)
    path = root / "model_3.pth"
    torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                "lr_scheduler": scheduler.state_dict(), "epoch": 3, "args": args}, path)
    photos = []
    for c, wnid in enumerate(WNIDS):
        (root / "photos" / "val" / wnid).mkdir(parents=True)
        for i in range(2):
            photos.append(root / "photos" / "val" / wnid / f"{i}.png")
            Image.fromarray(synthetic.draw(c + 3 * i, synthetic.image_rng(i, "val", c), 90 + 30 * i)).save(photos[-1])
    return {"model": model, "path": path, "photos": photos, "data": root / "photos", "root": root}


def torchvision_input(files) -> torch.Tensor:
    """torchvision's evaluation preprocessing, written out: shorter side 256, centre 224, ImageNet
    mean/std (on the 0-255 scale), independent of the code under test but for the resize."""
    crops = []
    for f in files:
        a = torch.from_numpy(np.array(resize_crop(Image.open(f).convert("RGB"), 256))).permute(2, 0, 1).float()
        crops.append(a[:, 16:240, 16:240])
    mean, std = torch.tensor([0.485, 0.456, 0.406]) * 255, torch.tensor([0.229, 0.224, 0.225]) * 255
    return (torch.stack(crops) - mean.view(3, 1, 1)) / std.view(3, 1, 1)


def test_predict_with_a_torchvision_reference_checkpoint_gives_torchvisions_probabilities(reference, tmp_path, capsys):
    ref, photo = reference, reference["photos"][0]
    with torch.no_grad():
        want = F.softmax(ref["model"](torchvision_input([photo])), 1)[0]
    for argv in (["predict", str(photo), "--checkpoint", str(ref["path"])],  # both forms of naming it
                 ["predict", str(ref["path"]), str(photo)]):
        assert cli.main([*argv, "--json", str(tmp_path / "p.json"), "--topk", "5"]) == 0, capsys.readouterr().err
        top = json.loads((tmp_path / "p.json").read_text())["results"][0]["top"]
        assert top[0]["index"] == want.argmax().item()
        for row in top:
            assert row["probability"] == pytest.approx(want[row["index"]].item(), abs=1e-5)
    net = inference.load(ref["path"])
    assert (net.size, net.crop, len(net.classes), net.classes[0]["id"]) == (256, 224, 1000, "n01440764")
    assert "torchvision reference checkpoint of alexnet" in weights.read(str(ref["path"]), "checkpoint").kind


def test_evaluate_features_neighbors_with_a_torchvision_reference_checkpoint(reference, tmp_path, capsys):
    ref = reference
    x = torchvision_input(ref["photos"])
    with torch.no_grad():
        m = ref["model"]
        codes = m.classifier[:6](torch.flatten(m.avgpool(m.features(x)), 1))  # fc7 after its ReLU
        logits = m.classifier[6](codes)
    labels = torch.tensor([0, 0, 1, 1])  # tench, goldfish: outputs 0 and 1 of ImageNet's order
    report = tmp_path / "r.json"
    assert cli.main(["evaluate", str(ref["path"]), "--data", str(ref["data"]), "--json", str(report)]) == 0
    r = json.loads(report.read_text())
    assert r["n_images"] == 4 and r["loss"] == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-4)
    assert r["top1"] == pytest.approx((logits.argmax(1) == labels).float().mean().item())
    assert cli.main(["features", "--checkpoint", str(ref["path"]), "--data", str(ref["data"]), "--split", "val",
                     "--out", str(tmp_path / "f.npy")]) == 0
    order = json.loads((tmp_path / "f.json").read_text())["ids"]  # the rows' images
    got = torch.from_numpy(np.load(tmp_path / "f.npy").astype(np.float32))
    for row, key in enumerate(order):
        want = codes[[str(p).endswith(key) for p in ref["photos"]].index(True)]
        torch.testing.assert_close(got[row], want, rtol=1e-4, atol=1e-4)
    capsys.readouterr()
    assert cli.main(["neighbors", str(ref["path"]), "--data", str(ref["data"]), "--split", "val", "--query",
                     str(ref["photos"][1]), "--features", str(tmp_path / "f.npy")]) == 0
    first = capsys.readouterr().out.splitlines()[1].split()
    assert float(first[0]) < 1e-2 and first[-1].endswith(f"{WNIDS[0]}/1.png")  # the query itself is its own nearest


def test_export_filters_serve_with_a_torchvision_reference_checkpoint(reference, tmp_path, capsys, monkeypatch):
    ref, photo = reference, reference["photos"][2]
    assert cli.main(["export", str(ref["path"]), str(tmp_path / "m.pt")]) == 0
    exported = torch.jit.load(str(tmp_path / "m.pt"))
    crop = torch.from_numpy(np.array(resize_crop(Image.open(photo).convert("RGB"), 256))).permute(2, 0, 1).float()
    with torch.no_grad():
        got = F.softmax(exported(crop[None, :, 16:240, 16:240]), 1)  # RGB 0-255: the normalisation is inside
        want = F.softmax(ref["model"](torchvision_input([photo])), 1)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6)

    assert cli.main(["filters", str(ref["path"]), "--out", str(tmp_path / "conv1.png")]) == 0
    assert Image.open(tmp_path / "conv1.png").size[0] > 0

    import uvicorn

    from alexnet.serve import server
    served = {}
    real_app = server.create_app
    monkeypatch.setattr(server, "create_app", lambda net, *a: served.setdefault("net", net) and real_app(net, *a))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # started, not left listening
    assert cli.main(["serve", "--checkpoint", str(ref["path"]), "--port", "0"]) == 0
    assert f"alexnet serve: {ref['path']} (1000 classes" in capsys.readouterr().out
    net = served["net"]
    torch.testing.assert_close(net.probabilities(net.preprocess([Image.open(photo).convert("RGB")])), want,
                               rtol=1e-4, atol=1e-6)


def test_the_reference_scripts_evaluation_sizes_are_used(reference, tmp_path):
    args = argparse.Namespace(model="alexnet", val_resize_size=160, val_crop_size=128, train_crop_size=128)
    torch.save({"model": reference["model"].state_dict(), "epoch": 0, "args": args}, tmp_path / "small.pth")
    net = inference.load(tmp_path / "small.pth")
    assert (net.size, net.crop) == (160, 128)


def test_a_damaged_file_still_says_damaged_and_a_pickle_of_objects_says_what_it_holds(reference, tmp_path, capsys):
    cut = tmp_path / "cut.pth"
    cut.write_bytes(reference["path"].read_bytes()[:1_000_000])
    torch.save({"model": {}, "where": pathlib.PurePosixPath("/data")}, tmp_path / "objects.pth")
    photo = str(reference["photos"][0])
    for argv, phrase in [(["predict", photo, "--checkpoint", str(cut)], "is damaged or truncated (RuntimeError: "),
                         (["predict", photo, "--weights", str(cut)], "is damaged or truncated (RuntimeError: "),
                         (["export", str(cut), str(tmp_path / "m.onnx")], "1,000,000 bytes)"),
                         (["predict", photo, "--checkpoint", str(tmp_path / "objects.pth")],
                          "pickles Python objects (pathlib."),
                         (["predict", photo, "--weights", str(tmp_path / "objects.pth")],
                          "pickles Python objects (pathlib.")]:
        assert cli.main(argv) == 2
        err = capsys.readouterr().err
        assert phrase in err and "\x1b" not in err and len(err.strip().splitlines()) == 1, err
    with pytest.raises(checkpoint.CheckpointError, match="pickles Python objects"):
        checkpoint.load(tmp_path / "objects.pth")


def test_resuming_from_a_reference_checkpoint_says_what_it_is(reference, tiny, tmp_path, capsys):
    assert cli.main(["train", "--preset", "quick", "--data", str(tiny), "--resume", str(reference["path"]),
                     "--out", str(tmp_path / "run"), "--set", "data.workers=0", "--set", "train.batch_size=16"]) == 2
    err = capsys.readouterr().err
    assert "not an alexnet checkpoint but a checkpoint of torchvision's reference scripts (model alexnet)" in err
    assert f"--init {reference['path']}" in err


def test_messages_carry_no_escape_sequences_or_control_characters():
    from alexnet.errors import printable
    quoted = "Weights only load failed. \x1b[1mdo those steps only if you trust\x1b[0m.\r\x07 \x1b]0;title\x07x\x9b31my"
    assert printable(quoted) == "Weights only load failed. do those steps only if you trust.  xy"
    assert str(UserError(f"cannot read it: {quoted}")) == f"cannot read it: {printable(quoted)}"
    assert printable("tab\tand\nnewline kept") == "tab\tand\nnewline kept"
