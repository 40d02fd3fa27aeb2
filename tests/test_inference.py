"""Using a trained network: metrics, 10 views, ensembles, predict, features, neighbours, filters, export."""
import io
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
import torchvision.transforms as T
from PIL import Image

from alexnet import cli, config, inference
from alexnet.data import synthetic
from alexnet.data.decode import resize_crop
from alexnet.errors import UserError
from alexnet.evaluate import Tally, evaluate_networks, topk_correct
from alexnet.features import knn, write_features
from alexnet.predict import Predictor
from alexnet.train import train
from conftest import free_port


@pytest.fixture(scope="module")
def run(tiny_checkpoint, tmp_path_factory):
    """A tiny built-in data set and two briefly trained checkpoints (an ensemble): the suite's, and
    one trained on this set with another seed."""
    base = tmp_path_factory.mktemp("inference")
    data = synthetic.ensure(train_per_class=6, val_per_class=3, size=72, root=base, progress=False)
    train(config.resolve("tiny", sets=[f"data.path={data}", f"train.out={base / 'b'}", "train.seed=1",
                                       "train.batch_size=20", "schedule.warmup_epochs=0"]), progress=False)
    return {"data": data, "a": tiny_checkpoint, "b": base / "b" / "last.pt", "base": base}


def test_top_k_against_brute_force_with_ties():
    rng = np.random.default_rng(0)
    probs = torch.tensor(rng.integers(0, 4, (300, 7)).astype(np.float64))  # many ties
    labels = torch.tensor(rng.integers(0, 7, 300))
    for k in (1, 3, 5):
        got = topk_correct(probs, labels, k)
        for i in range(300):
            others_at_least = sum(1 for c in range(7) if c != labels[i] and probs[i, c] >= probs[i, labels[i]])
            assert bool(got[i]) == (others_at_least < k)
    flat = torch.full((4, 10), 0.1)
    assert not topk_correct(flat, torch.tensor([0, 3, 5, 9]), 5).any()  # all-equal scores never count


def test_tally_counts_and_per_class():
    t = Tally(3, "cpu", confusion=True)
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.2, 0.3, 0.5]])
    t.add(probs, torch.tensor([0, 1, 1, 2]))
    r = t.result()
    assert r["n_images"] == 4 and r["top1"] == 0.75 and r["top5"] == 1.0
    assert r["per_class"] == [1.0, 0.5, 1.0]
    assert r["confusion"].tolist() == [[1, 0, 0], [1, 1, 0], [0, 0, 1]]
    want = -(np.log(0.7) + np.log(0.8) + np.log(0.4) + np.log(0.5)) / 4
    assert abs(r["loss"] - want) < 1e-6  # float32 probabilities


def test_ten_views_are_tencrop_averaged(run):
    net = inference.load(run["a"])
    img = Image.fromarray(synthetic.draw(3, synthetic.image_rng(9, "val", 0), 90))
    x = net.preprocess([img], views=10)
    assert x.shape == (1, 10, 3, net.crop, net.crop)
    # by hand: §2 resize + crop, subtract the mean image, torchvision's TenCrop, average the softmax
    s = torch.from_numpy(np.array(resize_crop(img, net.size))).permute(2, 0, 1).float() - net.norm.mean_image
    crops = torch.stack(T.TenCrop(net.crop)(s))
    torch.testing.assert_close(x[0], crops)
    with torch.no_grad():
        want = F.softmax(net.model(crops), 1).mean(0)
    torch.testing.assert_close(net.probabilities(x)[0], want)


def test_evaluate_an_ensemble_equals_averaging_by_hand(run):
    nets = [inference.load(run["a"]), inference.load(run["b"])]
    r = evaluate_networks(nets, str(run["data"]), "val", views=1, workers=0, progress=False)
    from alexnet.data.store import open_prepared
    ds = open_prepared(run["data"])
    val = ds.split("val")
    right, n = 0, 0
    for i in range(len(val)):
        img = Image.open(io.BytesIO(val[i][0])).convert("RGB")
        p = sum(net.probabilities(net.preprocess([img])) for net in nets) / 2
        right += int(p.argmax(1).item() == val[i][1])
        n += 1
    assert r["n_images"] == n == 30 and abs(r["top1"] - right / n) < 1e-9
    assert len(r["checkpoints"]) == 2 and r["data_checksum"] == ds.manifest["splits"]["val"]["sha256"]


def test_evaluate_command_writes_report_and_confusion(run, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert cli.main(["evaluate", str(run["a"]), "--data", str(run["data"]), "--views", "10", "--json", str(out)]) == 0
    r = json.loads(out.read_text())
    for key in ("top1_error", "top5_error", "top1", "top5", "loss", "n_images", "views", "per_class", "checkpoints",
                "data_checksum", "most_confused"):
        assert key in r, key
    assert r["views"] == 10 and r["n_images"] == 30 and len(r["per_class"]) == 10
    assert Path(r["confusion_png"]).is_file() and Path(r["confusion_png"]).parent == tmp_path
    assert "top-1 error" in capsys.readouterr().out
    # per-class accuracy ranked with names and image counts; confused pairs with an example
    names = [c["name"] for c in json.loads((Path(run["data"]) / "manifest.json").read_text())["classes"]]
    acc = {c["name"]: c["accuracy"] for c in r["per_class"]}
    assert [c["name"] for c in r["worst_classes"]] == sorted(names, key=lambda n: (acc[n], n))
    assert [c["name"] for c in r["best_classes"]] == sorted(names, key=lambda n: (-acc[n], n))
    assert sum(c["images"] for c in r["per_class"]) == 30
    keys = (Path(run["data"]) / "val" / "keys.txt").read_text().splitlines()
    labels = np.load(Path(run["data"]) / "val" / "index.npy")["label"]
    for pair in r["most_confused"]:
        i = names.index(pair["true"])
        assert keys[pair["example"]] == pair["example_path"] and labels[pair["example"]] == i
    assert Path(r["per_class_png"]).is_file() and (not r["most_confused"] or Path(r["confused_png"]).is_file())


def test_a_thousand_class_report_shows_what_a_person_can_read(tmp_path):
    """at 1,000 classes the confusion matrix is drawn for the 40 most confused
    classes with their names (not 1.2 px cells), pairs carry names and an example, ranks are exact."""
    from alexnet import class_report
    from alexnet.data.classes import ilsvrc2012
    classes = [c.to_json() for c in ilsvrc2012()]
    rng = np.random.default_rng(0)
    confusion = torch.zeros(1000, 1000, dtype=torch.long)
    confusion[torch.arange(1000), torch.arange(1000)] = torch.from_numpy(rng.integers(10, 50, 1000))
    dogs = torch.arange(151, 200)  # ImageNet's dog breeds: confused among themselves
    confusion[dogs[:, None], dogs[None]] += torch.from_numpy(rng.integers(0, 6, (49, 49)))
    confusion[7, 8] = 99  # the most confused pair
    keep = class_report.most_confused_classes(confusion, 40)
    off = confusion.double().fill_diagonal_(0)
    involvement = (off.sum(0) + off.sum(1)).tolist()
    assert len(keep) == 40 and sorted(keep) == keep
    assert min(involvement[i] for i in keep) >= max(involvement[i] for i in range(1000) if i not in keep)
    examples = torch.full((10**6,), -1, dtype=torch.long)
    examples[7 * 1000 + 8] = 1234
    pairs = class_report.confused_pairs(confusion, classes, 5, examples)
    assert pairs[0] == {"true": classes[7]["name"], "predicted": classes[8]["name"], "count": 99,
                        "true_id": classes[7]["id"], "predicted_id": classes[8]["id"], "example": 1234}
    per_class = (confusion.diagonal() / confusion.sum(1)).tolist()
    rank = class_report.ranked(per_class, confusion.sum(1).tolist(), classes, n=20)
    assert len(rank["best"]) == len(rank["worst"]) == 20
    assert [r["accuracy"] for r in rank["worst"]] == sorted(per_class)[:20]
    assert [r["accuracy"] for r in rank["best"]] == sorted(per_class, reverse=True)[:20]
    png = class_report.confusion_png(confusion, classes, tmp_path / "c.png")
    assert Image.open(png).size[0] < 2000  # a page, with 40 named rows, not 1,000 unnamed ones
    assert class_report.per_class_png(rank, tmp_path / "p.png").is_file()


def image_folder(root: Path) -> Path:
    """An ImageFolder of the built-in classes, drawn afresh, with odd files in it."""
    for label, name in enumerate(synthetic.CLASSES[:3]):
        (root / name).mkdir(parents=True)
        for i in range(2):
            Image.fromarray(synthetic.draw(label, synthetic.image_rng(5, "val", 10 * label + i), 80)).save(
                root / name / f"{i}.jpg")
    (root / "arrow" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def test_evaluate_an_image_folder_directly(run, tmp_path):
    folder = image_folder(tmp_path / "folder")
    r = evaluate_networks([inference.load(run["a"])], str(folder), "train", workers=0, progress=False)
    assert r["n_images"] == 6 and len(r["skipped"]) == 1 and "broken.jpg" in r["skipped"][0]["path"]


def odd_images(folder: Path) -> dict:
    folder.mkdir(parents=True)
    base = synthetic.draw(1, synthetic.image_rng(3, "val", 1), 100)
    Image.fromarray(base).convert("L").save(folder / "grey.jpg")
    Image.fromarray(base).convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(base).save(folder / "shape.png")
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(base[:, :60]).save(folder / "rotated.jpg", exif=exif.tobytes())
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (120, 160, 3), dtype=np.uint8)).save(buf, "JPEG")
    (folder / "truncated.jpg").write_bytes(buf.getvalue()[:400])
    (folder / "notes.txt").write_text("not an image")
    return {"good": 4, "bad": 2}


def test_predict_on_odd_files(run, tmp_path, capsys):
    expect = odd_images(tmp_path / "odd")
    out = tmp_path / "p.json"
    sheet = tmp_path / "sheet.png"
    status = cli.main(["predict", str(tmp_path / "odd"), "--checkpoint", str(run["a"]), "--json", str(out),
                       "--sheet", str(sheet), "--topk", "3"])
    assert status == 0
    r = json.loads(out.read_text())
    assert len(r["results"]) == expect["good"] and len(r["failures"]) == expect["bad"]
    for item in r["results"]:
        probs = [c["probability"] for c in item["top"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1 + 1e-6
        assert all(c["name"] in synthetic.CLASSES for c in item["top"])
    assert sheet.is_file()
    err = capsys.readouterr().err
    assert "4 image(s) predicted, 2 failure(s)" in err and "notes.txt" in err
    # nothing readable is an error (2), one line; some readable, the rest skipped: 0
    assert cli.main(["predict", str(tmp_path / "odd" / "notes.txt"), "--checkpoint", str(run["a"])]) == 2


def test_predictor_is_a_library_call(run):
    p = Predictor(checkpoint=str(run["a"]))
    img = Image.fromarray(synthetic.draw(2, synthetic.image_rng(4, "val", 2), 72))
    top = p.predict_images([img], topk=2, views=10)[0]
    assert len(top) == 2 and {"id", "name", "probability", "index"} <= set(top[0])
    buf = io.BytesIO()
    img.save(buf, "PNG")
    assert p.predict_bytes(buf.getvalue(), topk=2, views=10)[0]["id"] == top[0]["id"]


def test_predict_errors_are_one_line(run, tmp_path, capsys):
    assert cli.main(["predict", "x.jpg"]) == 2
    assert "exactly one of" in capsys.readouterr().err
    assert cli.main(["predict", "x.jpg", "--checkpoint", str(tmp_path / "none.pt")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err
    bad = tmp_path / "bad.pt"
    bad.write_bytes(run["a"].read_bytes()[:1000])
    assert cli.main(["predict", "x.jpg", "--checkpoint", str(bad)]) == 2
    assert "damaged or truncated" in capsys.readouterr().err


def test_torchvision_weights_from_a_file_and_offline(tmp_path, monkeypatch):
    torch.manual_seed(0)
    tv = torchvision.models.alexnet().eval()
    path = tmp_path / "alexnet.pth"
    torch.save(tv.state_dict(), path)
    net = inference.load_weights(str(path))
    assert len(net.classes) == 1000 and net.classes[0]["name"] == "tench" and net.crop == 224
    img = Image.fromarray(synthetic.draw(0, synthetic.image_rng(0, "val", 0), 300))
    ref = T.Compose([T.Resize(256), T.CenterCrop(224), T.ToTensor(),
                     T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])(img)
    with torch.no_grad():
        want = F.softmax(tv(ref[None]), 1)
    got = net.probabilities(net.preprocess([img]))
    assert torch.equal(got.argmax(1), want.argmax(1)) and (got - want).abs().max() < 0.02  # resampling filters differ

    from torchvision.models import AlexNet_Weights

    def offline(*a, **k):
        raise OSError("Name or service not known")

    monkeypatch.setattr(type(AlexNet_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(UserError, match="could not fetch torchvision's AlexNet weights.*--weights PATH"):
        inference.load_weights("torchvision")


def test_knn_matches_brute_force():
    rng = np.random.default_rng(1)
    base = rng.normal(size=(203, 16))
    base[50] = base[7]  # an exact tie: the smaller index wins
    queries = np.concatenate([rng.normal(size=(4, 16)), base[7:8]])
    chunks = ((torch.tensor(base[i:i + 37]), torch.arange(i, min(i + 37, 203))) for i in range(0, 203, 37))
    dist, index = knn(torch.tensor(queries), chunks, k=6)
    for q in range(5):
        d = np.sqrt(((base - queries[q]) ** 2).sum(1))
        want = np.lexsort((np.arange(203), d))[:6]
        assert index[q].tolist() == want.tolist()
        np.testing.assert_allclose(dist[q].numpy(), d[want], rtol=1e-9, atol=1e-9)
    assert index[4, 0] == 7 and index[4, 1] == 50


def test_features_writes_its_metadata_once_not_per_batch(run, tmp_path, monkeypatch):
    """the bytes features writes beside the array do not grow with the number of
    batches (the whole metadata JSON was rewritten after every batch: 550 GB at ImageNet's size)."""
    import alexnet.features as feat
    import alexnet.fileio as fileio
    net = inference.load(run["a"])
    written = []
    real = fileio.atomic_write
    monkeypatch.setattr(fileio, "atomic_write", lambda path, data, **k: written.append((Path(path).name, len(data)))
                        or real(path, data, **k))
    metas = {}
    for batch in (60, 2):  # 1 batch, then 30
        written.clear()
        out = tmp_path / f"b{batch}.npy"
        write_features(net, str(run["data"]), "train", out, batch_size=batch, workers=0, progress=False)
        metas[batch] = (sum(n for name, n in written if name == out.with_suffix(".json").name),
                        [n for name, n in written if name == feat.progress_path(out).name])
    meta_bytes = len(out.with_suffix(".json").read_bytes())
    for batch, (json_bytes, progress) in metas.items():
        assert json_bytes <= 2 * meta_bytes + 64  # the metadata twice: the start and the end
        assert len(progress) == 1 and progress[0] < 64  # one short line at the start; the batches append
    assert not any(path.name.endswith(".tmp") for path in tmp_path.iterdir())


def test_features_are_fc7_and_resume(run, tmp_path, monkeypatch):
    net = inference.load(run["a"])
    out = tmp_path / "f.npy"
    import alexnet.features as feat
    real = feat.codes
    calls = {"n": 0}

    def flaky(*a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(feat, "codes", flaky)
    with pytest.raises(KeyboardInterrupt):
        write_features(net, str(run["data"]), "train", out, batch_size=16, workers=0, progress=False)
    assert json.loads(out.with_suffix(".json").read_text())["done"] == 0  # written once, at the start
    assert 0 < feat.read_progress(feat.progress_path(out))[0] < 60  # the progress, on its own
    monkeypatch.setattr(feat, "codes", real)
    meta = write_features(net, str(run["data"]), "train", out, batch_size=16, workers=0, progress=False)
    whole = tmp_path / "whole.npy"
    write_features(net, str(run["data"]), "train", whole, batch_size=16, workers=0, progress=False)
    a, b = np.load(out), np.load(whole)
    assert a.shape == (60, 64) and meta["done"] == 60 and np.array_equal(a, b)
    assert json.loads(out.with_suffix(".json").read_text())["done"] == 60 and not feat.progress_path(out).exists()
    from alexnet.data.store import open_prepared
    split = open_prepared(run["data"]).split("train")
    img = torch.from_numpy(np.asarray(Image.open(io.BytesIO(split[5][0])).convert("RGB")).copy()).permute(2, 0, 1)
    with torch.no_grad():
        want = net.model.embed(net.preprocess([Image.open(io.BytesIO(split[5][0])).convert("RGB")]))
    np.testing.assert_allclose(a[5], want[0].numpy(), rtol=1e-4, atol=1e-4)
    assert (a >= 0).all()  # after the ReLU
    del img


def unreadable_folder(root: Path, good: int, bad: int) -> Path:
    """An ImageFolder of the built-in classes, each with `good` images and `bad` files that are not."""
    for label, name in enumerate(synthetic.CLASSES[:3]):
        (root / name).mkdir(parents=True)
        for i in range(good):
            Image.fromarray(synthetic.draw(label, synthetic.image_rng(5, "val", 10 * label + i), 80)).save(
                root / name / f"g{i}.jpg")
        for i in range(bad):
            (root / name / f"b{i:03d}.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really")
    return root


def test_features_progress_appends_a_bounded_line_per_batch(run, tmp_path, monkeypatch):
    """The progress file held every failure so far and was rewritten whole after each batch: with
    thousands of unreadable images its bytes written grew quadratically. Now a batch only appends
    its own line: what is on disk is never rewritten, and each batch adds bytes bounded by its own
    failures, however many came before."""
    import alexnet.features as feat
    net = inference.load(run["a"])
    folder = unreadable_folder(tmp_path / "folder", good=2, bad=40)  # 126 images, 120 unreadable
    out, batch = tmp_path / "f.npy", 6
    marker, real, seen = feat.progress_path(out), feat._loader, []

    def watched(*a, **k):  # the progress file as each batch (and the end) finds it
        for item in real(*a, **k):
            seen.append(marker.read_bytes() if marker.exists() else b"")
            yield item
        seen.append(marker.read_bytes())

    monkeypatch.setattr(feat, "_loader", watched)
    meta = write_features(net, str(folder), "train", out, batch_size=batch, workers=0, progress=False)
    assert len(meta["failed"]) == 120 and len(seen) == 126 // batch + 1 and not marker.exists()
    longest = max(len(json.dumps(f)) for f in meta["failed"])
    for before, after in zip(seen, seen[1:]):
        assert after.startswith(before), "the progress file was rewritten, not appended to"
        assert len(after) - len(before) <= batch * (longest + 2) + 64  # this batch's failures, not all so far
    assert seen[-1].count(b"\n") == 126 // batch + 1  # the first line, then one per batch


def test_features_resume_ignores_a_torn_last_progress_line(run, tmp_path, monkeypatch):
    """A run killed in the middle of an append leaves a last line that is not JSON: the resume
    continues from the line before it (redoing that batch), and the result, failures included,
    equals an uninterrupted run's. The interrupted resume after it appends whole lines again."""
    import alexnet.features as feat
    net = inference.load(run["a"])
    folder = unreadable_folder(tmp_path / "folder", good=4, bad=6)  # 30 images, 18 unreadable
    out, whole = tmp_path / "f.npy", tmp_path / "whole.npy"
    marker, real = feat.progress_path(out), feat.codes

    def stops_at(n):
        calls = {"n": 0}

        def flaky(*a, **k):
            calls["n"] += 1
            if calls["n"] == n:
                raise KeyboardInterrupt
            return real(*a, **k)
        return flaky

    monkeypatch.setattr(feat, "codes", stops_at(3))
    with pytest.raises(KeyboardInterrupt):
        write_features(net, str(folder), "train", out, batch_size=4, workers=0, progress=False)
    lines = marker.read_bytes().splitlines(keepends=True)
    done_before = json.loads(lines[-2])["done"]
    assert len(lines) > 2 and json.loads(lines[-1])["done"] > done_before
    marker.write_bytes(b"".join(lines[:-1]) + lines[-1][:len(lines[-1]) // 2])  # killed mid-append
    assert feat.read_progress(marker)[0] == done_before  # the torn line is not taken

    monkeypatch.setattr(feat, "codes", stops_at(2))  # the resume, interrupted again
    with pytest.raises(KeyboardInterrupt):
        write_features(net, str(folder), "train", out, batch_size=4, workers=0, progress=False)
    assert all(line.endswith(b"\n") and json.loads(line) for line in marker.read_bytes().splitlines(keepends=True))
    assert feat.read_progress(marker)[0] > done_before

    monkeypatch.setattr(feat, "codes", real)
    meta = write_features(net, str(folder), "train", out, batch_size=4, workers=0, progress=False)
    want = write_features(net, str(folder), "train", whole, batch_size=4, workers=0, progress=False)
    assert meta["done"] == want["done"] == 30 and len(want["failed"]) == 18
    assert meta["failed"] == want["failed"] == json.loads(out.with_suffix(".json").read_text())["failed"]
    assert np.array_equal(np.load(out), np.load(whole), equal_nan=True) and not marker.exists()


def test_neighbors_and_filters_commands(run, tmp_path, capsys):
    query = tmp_path / "q.png"
    Image.fromarray(synthetic.draw(4, synthetic.image_rng(7, "val", 3), 72)).save(query)
    sheet = tmp_path / "nn.png"
    assert cli.main(["neighbors", str(run["a"]), "--data", str(run["data"]), "--query", str(query), "--k", "4",
                     "--sheet", str(sheet)]) == 0
    out = capsys.readouterr().out
    assert out.count("train/") == 4 and sheet.is_file()
    png = tmp_path / "conv1.png"
    assert cli.main(["filters", str(run["a"]), "--out", str(png)]) == 0
    assert Image.open(png).size[0] > 200


def test_onnx_and_torchscript_exports_match_pytorch(run, tmp_path):
    import onnx
    import onnxruntime as ort

    net = inference.load(run["a"])
    img = Image.fromarray(synthetic.draw(5, synthetic.image_rng(8, "val", 5), 72))
    with torch.no_grad():
        want = net.model(net.preprocess([img]))
    raw = torch.from_numpy(np.array(resize_crop(img, net.size))).permute(2, 0, 1).float()
    off = (net.size - net.crop) // 2
    raw = raw[:, off:off + net.crop, off:off + net.crop][None]  # what the exported file takes: RGB 0-255
    assert cli.main(["export", str(run["a"]), str(tmp_path / "m.onnx"), "--format", "onnx"]) == 0
    session = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"images": raw.numpy()})[0]
    np.testing.assert_allclose(got, want.numpy(), rtol=1e-4, atol=1e-4)
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(meta["class_names"]) == list(synthetic.CLASSES) and meta["input_size"] == str(net.crop)
    # options between the positionals and the format from the extension
    assert cli.main(["export", str(run["a"]), "--format", "onnx", str(tmp_path / "m2.onnx")]) == 0
    assert cli.main(["export", str(run["a"]), str(tmp_path / "m3.onnx")]) == 0
    assert (tmp_path / "m2.onnx").read_bytes() == (tmp_path / "m3.onnx").read_bytes() == (tmp_path / "m.onnx").read_bytes()
    with warnings.catch_warnings(record=True) as caught:  # torch's TorchScript FutureWarnings are not ours to show
        warnings.simplefilter("always")
        assert cli.main(["export", str(run["a"]), str(tmp_path / "m.pt"), "--format", "torchscript"]) == 0
    assert not [w for w in caught if issubclass(w.category, FutureWarning)], [str(w.message)[:80] for w in caught]
    extra = {"alexnet.json": ""}
    scripted = torch.jit.load(str(tmp_path / "m.pt"), _extra_files=extra)
    torch.testing.assert_close(scripted(raw), want, rtol=1e-4, atol=1e-4)
    assert json.loads(extra["alexnet.json"])["resize_shorter_side"] == net.size


def test_distributed_evaluation_counts_each_image_once(run, tmp_path):
    """2 gloo processes on a split of 30 (even) and a folder of 7 readable images (odd) plus one unreadable."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    folder = image_folder(tmp_path / "folder")
    Image.fromarray(synthetic.draw(0, synthetic.image_rng(6, "val", 0), 80)).save(folder / "arrow" / "extra.jpg")
    for data, n in ((run["data"], 30), (folder, 7)):
        out = tmp_path / f"r{n}.json"
        cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
               "-m", "alexnet", "evaluate", str(run["a"]), "--data", str(data), "--json", str(out),
               "--split", "val" if n == 30 else "train"]  # a folder of class folders is one split: train
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
        assert proc.returncode == 0, proc.stderr[-2000:]
        two = json.loads(out.read_text())
        one = evaluate_networks([inference.load(run["a"])], str(data), "val" if n == 30 else "train", workers=0,
                                progress=False)
        assert two["n_images"] == one["n_images"] == n
        assert len(two["skipped"]) == len(one["skipped"]) == (0 if n == 30 else 1)
        assert abs(two["top1"] - one["top1"]) < 1e-9 and abs(two["loss"] - one["loss"]) < 1e-6


@pytest.mark.parametrize("size_in,size_out", [((13, 13), (6, 6)), ((1, 1), (6, 6)), ((7, 5), (6, 6)), ((20, 9), (3, 4))])
def test_exported_pooling_equals_adaptive_pooling(size_in, size_out):
    from alexnet.export import FixedAdaptivePool

    x = torch.randn(2, 4, *size_in, dtype=torch.float64)
    want = F.adaptive_avg_pool2d(x, size_out)
    got = FixedAdaptivePool(size_in, size_out).double()(x)
    assert torch.allclose(got, want, atol=1e-12)


def test_an_unreadable_query_image_is_named(run, tmp_path):
    from alexnet.features import neighbours

    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really")
    with pytest.raises(UserError, match="query image .*bad.jpg"):
        neighbours(inference.load(run["a"]), str(run["data"]), "train", [bad], k=2, workers=0, progress=False)


_ROWS_SCRIPT = """
import resource, sys
import numpy as np
from pathlib import Path
from alexnet.features import RowFile
n, path = int(sys.argv[1]), Path(sys.argv[2])
np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, 256))
before = resource.getrusage(resource.RUSAGE_SELF).ru_oublock
with RowFile(path) as rows:
    for i in range(0, n, 128):
        rows.write(list(range(i, min(n, i + 128))), np.full((min(n, i + 128) - i, 256), i, np.float32))
        rows.sync()
print(resource.getrusage(resource.RUSAGE_SELF).ru_oublock - before)
"""


def test_features_rows_are_written_once_not_with_the_whole_file_at_every_batch(tmp_path):
    """The bytes features writes grow with the rows, not with rows x batches (a memory map
    flushed per batch wrote 242 MB for a 49 MB array at 48,000 rows, 2.7 GB for 197 MB at 192,000).
    Measured as block writes (ru_oublock) of a subprocess; skipped where the file system counts none."""
    import subprocess
    import sys

    written = {}
    for n in (12_000, 48_000):
        path = tmp_path / f"rows{n}.npy"
        r = subprocess.run([sys.executable, "-c", _ROWS_SCRIPT, str(n), str(path)], capture_output=True, text=True,
                           check=True)
        written[n] = int(r.stdout) * 512
        stored = np.load(path, mmap_mode="r")
        assert stored.shape == (n, 256) and stored[n - 1, 0] == (n - 1) // 128 * 128 and stored[0, 5] == 0
    if written[12_000] == 0:
        pytest.skip("this file system accounts no block writes (ru_oublock) to the process")
    array_bytes = 48_000 * 256 * 4
    assert written[48_000] < 1.5 * array_bytes, written  # each row about once (fdatasync's journal aside)
