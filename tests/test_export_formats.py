"""Weights where the ecosystem expects them: safetensors (read back by every command, and in
torchvision's layout for its AlexNet), torch.export's .pt2, and torch.hub's entry points.

The same image gives the same probabilities through `alexnet predict`, the ONNX export (onnxruntime),
the pt2 export (torch.export.load) and a safetensors round trip; a safetensors file with a tensor of
the wrong shape or dtype, or a truncated or damaged one, is one line and exit status 2. References
are independent of the code under test: the checkpoint's own tensors (torch.load), torchvision's
AlexNet, onnxruntime, the in-process network.
"""
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from alexnet import cli, inference, weights, weightsfile
from alexnet.data import synthetic
from alexnet.data.decode import resize_crop
from alexnet.errors import UserError
from alexnet.export import paths_and_format
from alexnet.model import build
from test_weights import torchvision_input

ROOT = Path(__file__).resolve().parents[1]
# Largest |probability - predict's| measured over 8 images (2-core CPU, fp32): safetensors 0 (the same
# weights and preprocessing); the confident torchvision-layout network ("owt", top class 0.6-1.0):
# ONNX (onnxruntime) 3.1e-6, pt2 8.2e-6; the tiny one (near-uniform outputs): 1.5e-8 both. Other
# kernels (the exports compute in the default memory layout, predict in channels_last) round
# differently, so the bound has room: 5e-5.
ATOL = 5e-5


@pytest.fixture(scope="module")
def exports(tiny_checkpoint, tmp_path_factory):
    """The tiny checkpoint (alexnet2012, batch norm, a mean image) exported to every format, and a
    photo-like PNG of another size than the network's."""
    out = tmp_path_factory.mktemp("exports")
    for name in ("m.onnx", "m.pt2", "m.safetensors"):
        assert cli.main(["export", str(tiny_checkpoint), str(out / name)]) == 0
    Image.fromarray(synthetic.draw(4, synthetic.image_rng(3, "val", 4), 120)[:90]).save(out / "photo.png")
    return {"ckpt": tiny_checkpoint, "dir": out, "photo": out / "photo.png", **{p.suffix[1:]: p for p in out.iterdir()}}


@pytest.fixture(scope="module")
def owt(tmp_path_factory):
    """torchvision's AlexNet (random, seeded; a head scaled so that its top class has 0.6 to 1.0 of
    the probability) as a state dict .pth, and its exports."""
    root = tmp_path_factory.mktemp("owt")
    torch.manual_seed(0)
    model = torchvision.models.alexnet(weights=None).eval()
    with torch.no_grad():
        model.classifier[6].weight.mul_(3000)
    torch.save(model.state_dict(), root / "tv.pth")
    for name in ("tv.safetensors", "tv.onnx", "tv.pt2"):
        assert cli.main(["export", "--weights", str(root / "tv.pth"), str(root / name)]) == 0
    Image.fromarray(synthetic.draw(2, synthetic.image_rng(1, "val", 2), 300)[:260]).save(root / "photo.png")
    return {"model": model, "pth": root / "tv.pth", "st": root / "tv.safetensors", "onnx": root / "tv.onnx",
            "pt2": root / "tv.pt2", "photo": root / "photo.png", "root": root}


def predicted(argv: list[str], out: Path, n: int) -> torch.Tensor:
    """`alexnet predict ... --json`'s probabilities of every class, in output order (float64)."""
    assert cli.main([*argv, "--topk", str(n), "--json", str(out)]) == 0
    probs = torch.zeros(n, dtype=torch.float64)
    for row in json.loads(out.read_text())["results"][0]["top"]:
        probs[row["index"]] = row["probability"]
    return probs


def raw_crops(net, files) -> torch.Tensor:
    """What an exported program takes: the centre C x C crop of the decoded image resized to S, RGB 0-255."""
    side = (net.size - net.crop) // 2
    crops = [torch.from_numpy(np.array(resize_crop(net.read_image(Path(f).read_bytes()), net.size), np.float32))
             .permute(2, 0, 1)[:, side:side + net.crop, side:side + net.crop] for f in files]
    return torch.stack(crops).contiguous()


@pytest.mark.parametrize("which", ["tiny", "owt"])
def test_every_format_gives_predicts_probabilities(which, request, tmp_path):
    """The tiny checkpoint (alexnet2012, a mean image, our layout) and torchvision's network
    (ImageNet mean/std, its layout, confident outputs)."""
    import onnxruntime as ort

    if which == "tiny":
        f = request.getfixturevalue("exports")
        source, st, net = ["--checkpoint", str(f["ckpt"])], f["safetensors"], inference.load(f["ckpt"])
    else:
        f = request.getfixturevalue("owt")
        source, st, net = ["--weights", str(f["pth"])], f["st"], inference.load_weights(str(f["pth"]))
    onnx_file, pt2_file, photo = f["onnx"], f["pt2"], f["photo"]
    n = len(net.classes)
    want = predicted(["predict", str(photo), *source], tmp_path / "p.json", n)
    # safetensors, as CKPT and as --weights: the same weights and preprocessing, so the same numbers
    for argv in (["predict", str(st), str(photo)], ["predict", str(photo), "--weights", str(st)]):
        torch.testing.assert_close(predicted(argv, tmp_path / "s.json", n), want, rtol=0, atol=0)
    x = raw_crops(net, [photo]).numpy()
    onnx_logits = ort.InferenceSession(str(onnx_file), providers=["CPUExecutionProvider"]).run(None, {"images": x})[0]
    torch.testing.assert_close(F.softmax(torch.from_numpy(onnx_logits), 1)[0].double(), want, rtol=0, atol=ATOL)
    with torch.no_grad():
        pt2_probs = F.softmax(torch.export.load(str(pt2_file)).module()(torch.from_numpy(x)), 1)[0].double()
    torch.testing.assert_close(pt2_probs, want, rtol=0, atol=ATOL)
    assert which == "tiny" or want.max() > 0.5  # a confident network: the bound is tested where it can bite


def test_pt2_is_an_exported_program_with_the_mean_subtraction_inside_and_any_batch(exports):
    net = inference.load(exports["ckpt"])
    photos = []
    for i in range(3):
        photos.append(exports["dir"] / f"b{i}.png")
        Image.fromarray(synthetic.draw(i, synthetic.image_rng(i, "val", i), 80)).save(photos[-1])
    extra = {"alexnet.json": ""}
    program = torch.export.load(str(exports["pt2"]), extra_files=extra)
    assert isinstance(program, torch.export.ExportedProgram)
    x = raw_crops(net, photos)  # RGB 0-255: no normalisation outside the program
    want = net.probabilities(net.preprocess([Image.open(p).convert("RGB") for p in photos]))
    with torch.no_grad():
        for batch, expected in ((x, want), (x[:1], want[:1]), (torch.cat([x] * 3), torch.cat([want] * 3))):
            torch.testing.assert_close(F.softmax(program.module()(batch), 1), expected, rtol=0, atol=ATOL)  # any batch
    meta = json.loads(extra["alexnet.json"])
    assert (meta["variant"], meta["input_size"], meta["resize_shorter_side"]) == ("alexnet2012", net.crop, net.size)
    assert meta["class_ids"] == [c["id"] for c in net.classes]
    assert meta["source_sha256"] == hashlib.sha256(exports["ckpt"].read_bytes()).hexdigest()


def test_safetensors_holds_the_checkpoints_weights_and_the_onnx_metadata(exports):
    import onnx

    state = torch.load(exports["ckpt"], map_location="cpu", weights_only=True)  # the file itself, not our reader
    tensors = load_file(str(exports["safetensors"]))
    assert tensors.keys() == state["model"].keys()
    assert all(torch.equal(tensors[k], state["model"][k]) for k in tensors)
    with safe_open(str(exports["safetensors"]), "pt") as f:
        meta = f.metadata()
    onnx_meta = {p.key: p.value for p in onnx.load(str(exports["onnx"])).metadata_props}
    assert set(onnx_meta) <= set(meta)
    for key in ("variant", "class_ids", "class_names", "input_size", "resize_shorter_side", "source_sha256",
                "mean_rgb"):
        assert meta[key] == onnx_meta[key], key
    assert meta["variant"] == "alexnet2012" and meta["layout"] == "alexnet" and meta["mean_mode"] == "pixel"
    assert meta["source_sha256"] == hashlib.sha256(exports["ckpt"].read_bytes()).hexdigest()
    assert json.loads(meta["class_names"]) == list(synthetic.CLASSES)
    assert json.loads(meta["model"]) == state["config"]["model"]
    assert "subtract it before the network" in meta["normalization"]
    src = weights.read(str(exports["safetensors"]))
    assert src.ours and torch.equal(src.data["mean_image"], state["data"]["mean_image"])  # the mean image, exactly
    assert (src.data["size"], src.data["crop"]) == (state["data"]["size"], state["data"]["crop"])


def test_a_safetensors_file_is_read_wherever_a_checkpoint_is(exports, tiny, tmp_path, capsys, monkeypatch):
    ckpt, st = str(exports["ckpt"]), str(exports["safetensors"])
    for name, path in (("c", ckpt), ("s", st)):
        assert cli.main(["evaluate", path, "--data", str(tiny), "--json", str(tmp_path / f"{name}.json")]) == 0
        assert cli.main(["features", path, "--data", str(tiny), "--split", "val",
                         "--out", str(tmp_path / f"f{name}.npy")]) == 0
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in "cs")
    assert (a["top1"], a["top5"], a["loss"], a["n_images"]) == (b["top1"], b["top5"], b["loss"], b["n_images"])
    np.testing.assert_array_equal(np.load(tmp_path / "fc.npy"), np.load(tmp_path / "fs.npy"))
    assert cli.main(["export", "--weights", st, str(tmp_path / "again.safetensors")]) == 0  # export reads it too
    again, first = load_file(str(tmp_path / "again.safetensors")), load_file(st)
    assert again.keys() == first.keys() and all(torch.equal(again[k], first[k]) for k in first)
    assert cli.main(["filters", st, "--out", str(tmp_path / "conv1.png")]) == 0

    import uvicorn

    from alexnet.serve import server
    served = {}
    real_app = server.create_app
    monkeypatch.setattr(server, "create_app", lambda net, *a: served.setdefault("net", net) and real_app(net, *a))
    monkeypatch.setattr(uvicorn.Server, "run", lambda self, sockets=None: None)  # started, not left listening
    assert cli.main(["serve", "--weights", st, "--port", "0"]) == 0
    assert served["net"].source == st and served["net"].sha256 == hashlib.sha256(Path(st).read_bytes()).hexdigest()

    # --init: its model settings are adopted, as from the checkpoint, and every tensor loads
    capsys.readouterr()
    small = [a for s in ("data.crop=64", "train.batch_size=16", "eval.batch_size=32", "data.workers=0",
                         "train.precision=fp32") for a in ("--set", s)]
    assert cli.main(["train", "--init", st, "--data", str(tiny), "--out", str(tmp_path / "ft"), "--epochs", "1",
                     *small]) == 0
    printed = capsys.readouterr().out
    assert f"model settings from {st}: " in printed and "model.width=0.25 (not 1.0)" in printed
    assert f"initial weights: alexnet weights (safetensors) {st}" in printed and "0 tensor(s) re-initialised" in printed
    # --resume wants the whole training state, which a weights file does not hold
    assert cli.main(["train", "--resume", st, "--data", str(tiny), "--out", str(tmp_path / "r"), *small]) == 2
    err = capsys.readouterr().err
    assert "is not an alexnet checkpoint but alexnet weights in safetensors" in err and f"--init {st}" in err


def test_alexnet_owt_is_written_in_torchvisions_layout(owt, tmp_path):
    tensors = load_file(str(owt["st"]))
    model = torchvision.models.alexnet()
    model.load_state_dict(tensors)  # strict: every key and shape is torchvision's
    for key, value in owt["model"].state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    with safe_open(str(owt["st"]), "pt") as f:
        meta = f.metadata()
    assert (meta["layout"], meta["variant"], meta["mean_mode"]) == ("torchvision", "alexnet_owt", "channel")
    assert json.loads(meta["mean_rgb"]) == pytest.approx([0.485 * 255, 0.456 * 255, 0.406 * 255], rel=1e-6)
    # and it predicts what torchvision's model does with torchvision's preprocessing, written out
    photo = owt["photo"]
    with torch.no_grad():
        want = F.softmax(owt["model"](torchvision_input([photo])), 1)[0].double()
    got = predicted(["predict", str(photo), "--weights", str(owt["st"])], tmp_path / "p.json", 1000)
    torch.testing.assert_close(got, want, rtol=0, atol=ATOL)
    # someone else's safetensors of torchvision's model (no metadata) reads as its .pth does
    save_file(owt["model"].state_dict(), str(tmp_path / "plain.safetensors"))
    src = weights.read(str(tmp_path / "plain.safetensors"))
    assert src.kind == "state dict (safetensors)" and src.model == {"name": "alexnet_owt"} and not src.ours
    torch.testing.assert_close(predicted(["predict", str(photo), "--weights", str(tmp_path / "plain.safetensors")],
                                         tmp_path / "q.json", 1000), want, rtol=0, atol=ATOL)
    # only torchvision's network itself gets its names: another alexnet_owt keeps ours
    assert weightsfile.torchvision_layout({"name": "alexnet_owt"})
    for other in ({"name": "alexnet_owt", "width": 0.25}, {"name": "alexnet_owt", "norm": "batchnorm"},
                  {"name": "alexnet_owt", "norm": "lrn"}, {"name": "alexnet2012"}):
        assert not weightsfile.torchvision_layout(other), other


def damaged(exports, tmp_path: Path, case: str) -> Path:
    """A copy of the tiny export with one thing wrong, by case."""
    src = exports["safetensors"]
    path = tmp_path / f"{case}.safetensors"
    with safe_open(str(src), "pt") as f:
        meta = f.metadata()
    tensors = load_file(str(src))
    if case == "shape":  # conv1 with 3 more kernels than conv2 takes
        tensors["conv1.weight"] = torch.cat([tensors["conv1.weight"], tensors["conv1.weight"][:3]])
    elif case == "int64":
        tensors["fc8.weight"] = tensors["fc8.weight"].round().to(torch.int64)
    elif case == "bool":
        tensors["conv2.weight"] = tensors["conv2.weight"] > 0
    elif case == "metadata":
        meta["mean_image"] = "not base64!"
    if case in ("shape", "int64", "bool", "metadata"):
        save_file(tensors, str(path), metadata=meta)
        return path
    data = src.read_bytes()
    if case == "truncated":
        path.write_bytes(data[:len(data) // 2])
    elif case == "header":  # the header's JSON broken
        path.write_bytes(data[:8] + b"[" + data[9:])
    elif case == "empty":
        path.write_bytes(b"")
    return path


BAD = {"shape": "does not fit the network: 1 tensor(s) do not load: conv1.weight (shape (27, 3, 11, 11) in the source",
       "int64": "fc8.weight is int64, where the network's weights are floating point",
       "bool": "conv2.weight is bool, where the network's weights are floating point",
       "metadata": "its alexnet metadata is damaged (",
       "truncated": "is a damaged or truncated safetensors file (SafetensorError: incomplete metadata",
       "header": "is a damaged or truncated safetensors file (SafetensorError: ",
       "empty": "is a damaged or truncated safetensors file (SafetensorError: header too small, 0 bytes)"}


@pytest.mark.parametrize("case", list(BAD))
def test_a_bad_safetensors_file_is_one_line_and_status_2(exports, tiny, tmp_path, capsys, case):
    bad = str(damaged(exports, tmp_path, case))
    photo = str(exports["photo"])
    for argv in (["predict", photo, "--weights", bad], ["predict", photo, "--checkpoint", bad],
                 ["evaluate", bad, "--data", str(tiny)], ["export", bad, str(tmp_path / "m.onnx")]):
        assert cli.main(argv) == 2, argv
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and BAD[case] in err and bad in err, (argv, err)
    assert not (tmp_path / "m.onnx").exists()
    with pytest.raises(UserError):  # the Python API reads through the same reader
        inference.load_weights(bad)


def test_the_command_itself_says_it_in_one_line_with_status_2(exports, tmp_path):
    """The same, through the installed entry point in a fresh process (what a user sees)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    for case in ("truncated", "int64"):
        bad = damaged(exports, tmp_path, case)
        proc = subprocess.run([sys.executable, "-m", "alexnet", "export", str(bad), str(tmp_path / "m.pt2")],
                              capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2 and proc.stdout == "", (proc.stdout, proc.stderr)
        assert proc.stderr.count("\n") == 1 and BAD[case] in proc.stderr, proc.stderr
        assert proc.stderr.startswith("alexnet export: error: ") and not (tmp_path / "m.pt2").exists()


def test_floating_point_weights_of_another_width_load_converted(exports, tmp_path, capsys):
    """fp16 and bf16, as hubs publish weights, convert to the network's float32 (the table says so);
    the probabilities differ by the rounding."""
    tensors = load_file(str(exports["safetensors"]))
    with safe_open(str(exports["safetensors"]), "pt") as f:
        meta = f.metadata()
    half = {k: v.half() if v.is_floating_point() else v for k, v in tensors.items()}
    save_file(half, str(tmp_path / "half.safetensors"), metadata=meta)
    src = weights.read(str(tmp_path / "half.safetensors"))
    rows = weights.load_into(build(src.model, 10), src)
    conv1 = [r["why"] for r in rows if r["key"] == "conv1.weight"]
    assert conv1 == ["same name and shape (float16 in the source, converted)"]
    n, photo = 10, str(exports["photo"])
    want = predicted(["predict", photo, "--checkpoint", str(exports["ckpt"])], tmp_path / "p.json", n)
    got = predicted(["predict", photo, "--weights", str(tmp_path / "half.safetensors")], tmp_path / "h.json", n)
    assert 0 < (got - want).abs().max() < 1e-2


def test_the_format_follows_the_extension():
    assert paths_and_format(["c.pt", "m.safetensors"], None, None) == ("c.pt", "m.safetensors", "safetensors")
    assert paths_and_format(["c.pt", "m.pt2"], None, None) == ("c.pt", "m.pt2", "pt2")
    assert paths_and_format(["m.bin"], "w.safetensors", "pt2") == (None, "m.bin", "pt2")
    with pytest.raises(UserError, match=r"m.safetensors has the extension of a safetensors file but --format is onnx: "
                                        r"name it m.onnx"):
        paths_and_format(["c.pt", "m.safetensors"], None, "onnx")
    with pytest.raises(UserError, match=r"has the extension of a torch.export file but --format is safetensors: "
                                        r"name it m.safetensors"):
        paths_and_format(["c.pt", "m.pt2"], None, "safetensors")


def test_an_exported_program_given_as_weights_says_what_it_is(exports, capsys):
    for fmt, what in (("onnx", "an ONNX program"), ("pt2", "a torch.export (.pt2) program")):
        assert cli.main(["predict", str(exports["photo"]), "--weights", str(exports[fmt])]) == 2
        err = capsys.readouterr().err
        assert f"{exports[fmt]} is {what}, not weights: give the checkpoint it was exported from" in err


def test_torch_hub_loads_both_entry_points(exports, owt, tmp_path, monkeypatch):
    import importlib.util
    spec = importlib.util.spec_from_file_location("hubconf", ROOT / "hubconf.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)  # what torch.hub.list shows: the public callables (it takes no local folder)
    entries = [f for f in dir(module) if callable(getattr(module, f)) and not f.startswith("_")]
    assert entries == ["alexnet2012", "alexnet_owt"]
    hub = lambda *a, **k: torch.hub.load(str(ROOT), *a, source="local", **k)  # noqa: E731
    # fresh networks: the paper's count, and torchvision's own model's
    assert sum(p.numel() for p in hub("alexnet2012").parameters()) == 60_965_224
    assert sum(p.numel() for p in hub("alexnet_owt").parameters()) == \
        sum(p.numel() for p in torchvision.models.alexnet().parameters())
    # ours, from the checkpoint and from its safetensors export: the in-process network's outputs
    net = inference.load(exports["ckpt"])
    x = torch.randn(2, 3, net.crop, net.crop) * 50
    with torch.no_grad():
        want = net.model(x)
        for path in (exports["ckpt"], exports["safetensors"]):
            model = hub("alexnet2012", pretrained=str(path))
            assert not model.training
            torch.testing.assert_close(model(x), want, rtol=1e-5, atol=1e-5)
    # torchvision's published weights (here: a stand-in in torch's cache, as no download is possible)
    cache = tmp_path / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    os.link(owt["pth"], cache / "alexnet-owt-7be5be79.pth")
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    x = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        want = owt["model"](x)
        for pretrained in (True, "torchvision", str(owt["st"]), str(owt["pth"])):
            torch.testing.assert_close(hub("alexnet_owt", pretrained=pretrained)(x), want, rtol=1e-5, atol=1e-5)
    for kwargs, phrase in (({"pretrained": True}, "alexnet2012 has no published weights"),
                           ({"pretrained": str(owt["st"])}, "holds alexnet_owt's weights, not alexnet2012's")):
        with pytest.raises(weights.WeightsError, match=phrase):
            hub("alexnet2012", **kwargs)
    with pytest.raises(weights.WeightsError, match="has 10 classes, not num_classes=1000"):
        hub("alexnet2012", pretrained=str(exports["safetensors"]), num_classes=1000)
