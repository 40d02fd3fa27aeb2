"""The standing check: every ordinary mistake, for every command, is one line on stderr,
exit status 2, no traceback, and nothing written. Grow the table with every new flag.

Each case runs `alexnet` in-process against a small world made once (a prepared set, a checkpoint,
an image, a user's folder); the files under the world's folder are compared before and after.
"""
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet import cli
from alexnet.data import synthetic

NO_GPU = not torch.cuda.is_available()


@pytest.fixture(scope="module")
def world(tiny_checkpoint, tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    data = synthetic.ensure(train_per_class=8, val_per_class=3, size=72, root=root / "cache", progress=False)
    run = Path(shutil.copytree(tiny_checkpoint.parent, root / "run"))  # inside root: a mistake writes nothing there either
    Image.fromarray(synthetic.draw(1, synthetic.image_rng(1, "val", 0), 90)).save(root / "photo.png")
    (root / "empty").mkdir()
    (root / "loose").mkdir()  # photos straight in the folder, no class folders
    for i in range(2):
        Image.fromarray(synthetic.draw(i, synthetic.image_rng(1, "val", i), 90)).save(root / "loose" / f"{i}.jpg")
    for split in ("train", "val"):  # an image folder whose only image does not decode
        (root / "broken" / split / "arrow").mkdir(parents=True)
        (root / "broken" / split / "arrow" / "a.jpg").write_bytes(b"not a jpeg")
    (root / "mine").mkdir()
    (root / "mine" / "config.yaml").write_text("mine: true\n")
    np.save(root / "random.npy", np.zeros((3, 4), np.float32))
    torch.save({"model": {}, "where": Path("/data")}, root / "objects.pth")  # a pickled object: not loaded
    (root / "notes.json").write_text("{}")  # a user's file where features would put its metadata
    (root / "garbage.npy").write_bytes(b"\x93NUMPY garbage")
    (root / "garbage.json").write_bytes(b"\xff\xfe\x00\x01 not text")
    for name, raw in {"latin1.yaml": b"train:\n  epochs: caf\xe9\n", "utf16.yaml": "train:\n".encode("utf-16"),
                      "binary.toml": bytes(range(256)), "section.yaml": b"train: 5\n",
                      "broken.yaml": b"train:\n  epochs: [1,\n"}.items():  # config files
        (root / "cfg").mkdir(exist_ok=True)
        (root / "cfg" / name).write_bytes(raw)
    damaged = Path(shutil.copytree(data, root / "damaged"))  # one byte of one validation image changed
    row = np.load(damaged / "val" / "index.npy")[0]
    shard = damaged / "val" / "val-00000.tar"
    b = bytearray(shard.read_bytes())
    b[int(row["offset"]) + int(row["size"]) // 2] ^= 0x01
    shard.write_bytes(bytes(b))
    lists = root / "lists"  # CSV lists and class files a user hands prepare
    lists.mkdir()
    for name, raw in {"binary.csv": bytes(range(256)), "utf16.csv": "path,label\nphoto.png,0\n".encode("utf-16"),
                      "latin1.csv": b"path,label\n../photo.png,caf\xe9\n", "latin1_path.csv": b"caf\xe9.png,0\n",
                      "empty.csv": b"", "nul.csv": b"../photo.png,0\x00\n", "wide.csv": b"../photo.png,0,train,extra\n",
                      "wider.csv": b"path,label\n../photo.png,0,val\n", "split.csv": b"../photo.png,0,holdout\n",
                      "label.csv": b"path,label\n../photo.png,4000000000\n"}.items():
        (lists / name).write_bytes(raw)
    import io
    import tarfile
    with tarfile.open(lists / "shard-train-000.tar", "w") as tar:  # a WebDataset shard whose .cls is absurd
        for member, raw in (("a.jpg", (root / "photo.png").read_bytes()), ("a.cls", b"4000000000")):
            info = tarfile.TarInfo(member)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    kaggle = root / "kaggle"  # Kaggle's layout, its class file binary
    (kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "train" / "n01440764").mkdir(parents=True)
    shutil.copy(root / "photo.png", kaggle / "ILSVRC" / "Data" / "CLS-LOC" / "train" / "n01440764" / "a.JPEG")
    (kaggle / "LOC_synset_mapping.txt").write_bytes(b"n01440764 tench\n\x00\x01\x02")
    return {"root": root, "data": data, "ckpt": run / "last.pt", "photo": root / "photo.png"}


def snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.stat().st_size for p in root.rglob("*") if p.is_file()}


R = "/proc/alexnet-read-only"  # a place nothing can be written, not even by root
CASES = [  # (argv with {data} {ckpt} {photo} {root} placeholders, a phrase the one line must hold)
    # train: values, devices, folders, data
    (["train", "--data", "{data}", "--set", "train.log_every=0"], "train.log_every must be at least 1"),
    (["train", "--data", "{data}", "--seed", "-1"], "train.seed must be >= 0"),
    (["train", "--data", "{data}", "--preset", "quick", "--out", R + "/run"], "cannot use --out"),
    (["train", "--data", "{data}", "--set", "train.checkpoint_every=-1"], "train.checkpoint_every must be >= 0"),
    (["train", "--data", "{data}", "--preset", "quick", "--set", "model.num_classes=5", "--out", "{root}/o1"],
     "model.num_classes 5 is smaller than the 10 classes"),
    (["train", "--data", "{data}", "--device", "nonsense", "--out", "{root}/o2"], "unknown device 'nonsense'"),
    (["train", "--data", "{data}", "--preset", "quick", "--out", "{root}/mine"], "is not empty and is not a run folder"),
    (["train", "--data", "{root}/nowhere", "--out", "{root}/o3"], "not found"),
    (["train", "--data", "{data}", "--set", "eval.batch_size=0"], "eval.batch_size and eval.every must be at least 1"),
    (["train", "--data", "{data}", "--set", "optim.head_lr_mult=0"], "optim.head_lr_mult must be positive"),
    (["train", "--data", "{data}", "--freeze", "some"], "train.freeze"),
    (["train", "--data", "{data}", "--preset", "quick", "--init", "{root}/nothing.pth", "--out", "{root}/o4"],
     "weights file not found"),
    (["train", "--data", "{data}", "--config", "{root}/cfg/latin1.yaml"], "latin1.yaml line 2 is not UTF-8 text (byte 0xe9"),
    (["train", "--data", "{data}", "--config", "{root}/cfg/utf16.yaml"], "utf16.yaml is UTF-16 or UTF-32 text"),
    (["train", "--data", "{data}", "--config", "{root}/cfg/binary.toml"], "binary.toml line 1 holds a NUL byte"),
    (["train", "--data", "{data}", "--config", "{root}/cfg/section.yaml"], "train is a section: give its keys"),
    (["train", "--data", "{data}", "--config", "{root}/cfg/broken.yaml"], "does not parse: expected the node content"),
    (["train", "--data", "{data}", "--config", "{root}/cfg"], "is not a regular file"),
    (["prepare", "{root}/loose", "{root}/p-loose"], "holds 2 image file(s) but no class folders"),
    # evaluate
    (["evaluate", "{ckpt}", "--data", "{data}", "--batch-size", "0"], "must be at least 1, got 0"),
    (["evaluate", "{ckpt}", "--data", "{data}", "--batch-size", "-1"], "must be at least 1, got -1"),
    (["evaluate", "{ckpt}", "--data", "{data}", "--device", "nonsense"], "unknown device"),
    (["evaluate", "{ckpt}", "--data", "{data}", "--json", R + "/r.json"], "cannot create the folder"),
    (["evaluate", "{ckpt}", "--data", "{root}/broken"], "could be read"),
    (["evaluate", "{root}/none.pt", "--data", "{data}"], "checkpoint not found"),
    (["evaluate", "--data", "{data}"], "give one or more checkpoints"),
    # predict
    (["predict", "{root}/no/such.jpg", "--checkpoint", "{ckpt}"], "no such file or folder"),
    (["predict", "{root}/empty", "--checkpoint", "{ckpt}"], "nothing to predict"),
    (["predict", "{root}/broken", "--checkpoint", "{ckpt}"], "is a readable image"),
    (["predict", "{photo}", "--checkpoint", "{ckpt}", "--topk", "0"], "must be at least 1"),
    (["predict", "{photo}", "--checkpoint", "{ckpt}", "--device", "nonsense"], "unknown device"),
    (["predict", "{photo}", "--checkpoint", "{ckpt}", "--json", R + "/p.json"], "cannot create the folder"),
    (["predict", "{photo}", "--checkpoint", "{ckpt}", "--sheet", R + "/s.png"], "cannot create the folder"),
    (["predict", "{photo}"], "give exactly one of a checkpoint or --weights"),
    # one reader for every CKPT, --init and --weights; no terminal escape bytes in a message
    (["predict", "{photo}", "--checkpoint", "{root}/objects.pth"], "pickles Python objects (pathlib."),
    (["filters", "{root}/objects.pth"], "pickles Python objects (pathlib."),
    (["train", "--data", "{data}", "--preset", "quick", "--init", "{root}/objects.pth", "--out", "{root}/o6"],
     "pickles Python objects (pathlib."),
    (["train", "--data", "{data}", "--config", "{root}/no\x1b[31mne.yaml"], "config file not found: "),
    # features, neighbors
    (["features", "{ckpt}", "--data", "{data}", "--out", R + "/f.npy"], "cannot create the folder"),
    (["features", "{ckpt}", "--data", "{data}", "--out", "{root}/f.npy", "--device", "nonsense"], "unknown device"),
    (["features", "{ckpt}", "--data", "{root}/broken", "--split", "train", "--out", "{root}/f2.npy"], "could be read"),
    (["neighbors", "{ckpt}", "--data", "{data}", "--query", "{photo}", "--features", "{root}/missing.npy"],
     "features file"),
    (["neighbors", "{ckpt}", "--data", "{data}", "--query", "{photo}", "--features", "{root}/random.npy"],
     "features file"),
    (["neighbors", "{ckpt}", "--data", "{data}", "--query", "{photo}", "--features", "{root}/notes.json"],
     "is the metadata of a features file"),  # numpy's advice to load pickles unsafely
    (["neighbors", "{ckpt}", "--data", "{data}", "--query", "{photo}", "--features", "{root}/garbage.npy"],
     "is not the metadata alexnet features writes"),
    (["serve", "--checkpoint", "{ckpt}", "--data", "{data}", "--features", "{root}/notes.json"],
     "is the metadata of a features file"),
    (["neighbors", "{ckpt}", "--data", "{data}", "--query", "{photo}", "--k", "0"], "must be at least 1"),
    (["neighbors", "{ckpt}", "--data", "{data}", "--query", "{photo}", "--sheet", R + "/n.png"], "cannot create the folder"),
    (["neighbors", "{ckpt}", "--data", "{data}", "--query", "{root}/no.jpg"], "query image not found"),
    # filters, export, info, bench
    (["filters", "{ckpt}", "--out", R + "/c.png"], "cannot create the folder"),
    (["filters", "{root}/none.pt"], "checkpoint not found"),
    (["export", "{ckpt}", R + "/m.onnx", "--format", "onnx"], "cannot create the folder"),
    (["export", "{root}/m.onnx", "--format", "onnx"], "give exactly one of a checkpoint or --weights"),
    # the format and the file name agree; usage errors name the subcommand
    (["export", "{ckpt}", "{root}/m.pt", "--format", "onnx"], "has the extension of a TorchScript file"),
    (["export", "{ckpt}", "{root}/m.bin"], "cannot tell the format from"),
    (["export", "{ckpt}", "{root}/a.onnx", "{root}/b.onnx"], "give exactly one of a checkpoint or --weights"),
    (["evaluate", "{ckpt}", "--data", "{data}", "--frobnicate"], "alexnet evaluate: error: unrecognized arguments"),
    (["info", "--json", R + "/i.json"], "cannot create the folder"),
    (["info", "--num-classes", "1"], "must be at least 2"),
    (["bench", "train", "--json", R + "/b.json"], "cannot create the folder"),
    (["bench", "data"], "needs --data"),
    (["bench", "train", "--batch-size", "0"], "must be at least 1"),
    # CSV lists and class files that are not what we expect; absurd labels
    (["prepare", "{root}/lists/binary.csv", "{root}/pl"], "binary.csv line 1 holds a NUL byte"),
    (["prepare", "{root}/lists/utf16.csv", "{root}/pl"], "utf16.csv is UTF-16 or UTF-32 text: save it as UTF-8"),
    (["prepare", "{root}/lists/latin1.csv", "{root}/pl"], "latin1.csv line 2 is not UTF-8 text (byte 0xe9)"),
    (["prepare", "{root}/lists/latin1_path.csv", "{root}/pl"], "latin1_path.csv line 1: the path holds byte 0xe9"),
    (["prepare", "{root}/lists/nul.csv", "{root}/pl"], "nul.csv line 1 holds a NUL byte"),
    (["prepare", "{root}/lists/wide.csv", "{root}/pl"], "wide.csv line 1: 4 columns, but a list without a header"),
    (["prepare", "{root}/lists/wider.csv", "{root}/pl"], "wider.csv line 2: 3 columns, but the header row has 2"),
    (["prepare", "{root}/lists/split.csv", "{root}/pl"], "split.csv line 1: split 'holdout' is none of train"),
    (["prepare", "{root}/lists/label.csv", "{root}/pl"], "label.csv line 2: label 4000000000 is not a class number"),
    (["prepare", "{root}/lists/shard-train-000.tar", "{root}/pl"], "sample a (a.cls): label 4000000000 is not a class"),
    (["prepare", "{root}/kaggle", "{root}/pl"], "LOC_synset_mapping.txt line 2 holds a NUL byte"),
    # prepare, serve
    (["prepare", "{root}/nowhere", "{root}/p1"], "not found"),
    (["prepare", "{root}/empty", "{root}/p2", "--workers", "-1"], "must be at least 0"),
    (["prepare", "{data}", "{root}/p3"], "is already a prepared data set"),
    (["prepare", "{root}/empty"], "give SRC and OUT"),
    (["prepare", "--verify", "{root}/nowhere"], "not found"),
    (["prepare", "--verify", "{root}/damaged"], "1 damaged file(s) (val/val-00000.tar)"),
    (["evaluate", "{ckpt}", "--data", "{root}/damaged"], "val/val-00000.tar is damaged"),
    (["serve", "--checkpoint", "{ckpt}", "--max-batch", "0"], "--max-batch and --queue-size must be at least 1"),
    (["serve", "--checkpoint", "{ckpt}", "--device", "nonsense"], "unknown device"),
    # folders and files that are not ours are never written into, nor advised to be
    (["train", "--data", "{root}/mine"], "prepare them into a new folder with `alexnet prepare"),
    (["prepare", "{root}/broken", "{root}/broken"], "is SRC itself"),
    (["prepare", "{root}/broken", "{root}/broken/train/out"], "is inside SRC"),
    (["prepare", "{root}/broken", "{root}/mine"], "is not empty and holds no alexnet prepare output"),
    (["features", "{ckpt}", "--data", "{data}", "--out", "{root}/random.npy"], "was not written by alexnet features"),
    (["features", "{ckpt}", "--data", "{data}", "--out", "{root}/notes.npy"], "notes.json exists and was not written"),
    # zero images is an error wherever a figure would be reported
    (["neighbors", "{ckpt}", "--data", "{root}/broken", "--query", "{photo}"], "could be read"),
]
if NO_GPU:
    CASES += [(["evaluate", "{ckpt}", "--data", "{data}", "--device", "cuda"], "CUDA is not available"),
              (["predict", "{photo}", "--checkpoint", "{ckpt}", "--device", "cuda"], "CUDA is not available"),
              (["features", "{ckpt}", "--data", "{data}", "--out", "{root}/f3.npy", "--device", "cuda"],
               "CUDA is not available"),
              (["train", "--data", "{data}", "--device", "cuda", "--out", "{root}/o5"], "CUDA is not available")]


@pytest.mark.parametrize("argv,phrase", CASES, ids=[" ".join(a[:2]) + f" {i}" for i, (a, _) in enumerate(CASES)])
def test_a_mistake_is_one_line_status_2_and_writes_nothing(world, capsys, argv, phrase):
    argv = [a.format(**{k: str(v) for k, v in world.items()}) for a in argv]
    before = snapshot(world["root"])
    try:
        status = cli.main(argv)
    except SystemExit as e:  # argparse's usage errors
        status = e.code
    out, err = capsys.readouterr()
    assert status == 2, (argv, out[-500:], err[-500:])
    # one line says what is wrong (a progress bar of work begun before the problem showed may precede it)
    lines = [line for line in err.strip().splitlines() if "error:" in line]
    assert len(lines) == 1 and err.strip().endswith(lines[0]) and "Traceback" not in err, err
    assert phrase in lines[0], lines[0]
    assert len(lines[0]) <= 600, f"{len(lines[0])} characters: say what is wrong and what to do, not everything"
    assert not any(c in lines[0] for c in "\x1b\x07\r"), lines[0]  # terminal escapes and controls stripped
    assert snapshot(world["root"]) == before  # nothing written, nothing half-written
    assert not os.path.exists("/proc/alexnet-read-only")


def test_an_output_folder_that_does_not_exist_yet_is_made(world, tmp_path):
    report = tmp_path / "new" / "deeper" / "report.json"
    assert cli.main(["evaluate", str(world["ckpt"]), "--data", str(world["data"]), "--json", str(report)]) == 0
    assert report.is_file() and report.with_suffix(".confusion.png").is_file()
    sheet = tmp_path / "sheets" / "s.png"
    assert cli.main(["predict", str(world["photo"]), "--checkpoint", str(world["ckpt"]), "--sheet", str(sheet)]) == 0
    assert sheet.is_file()


def test_a_validation_split_with_no_images_is_refused(tmp_path, capsys):
    """Its val files all undecodable, a set was prepared with 0 validation images; training then
    reported "val top-1 0.00%" and exit 0."""
    from alexnet.data.prepare import prepare
    src = tmp_path / "src"
    synthetic.write_folder(src, {"train": 4}, size=72, seed=0, workers=1)
    for c in [p.name for p in (src / "train").iterdir()]:
        (src / "val" / c).mkdir(parents=True)
        (src / "val" / c / "x.jpg").write_bytes(b"not a jpeg")
    prepare(src, tmp_path / "p", size=72, workers=0, progress=False)
    assert cli.main(["train", "--preset", "quick", "--data", str(tmp_path / "p"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert "split 'val'" in err and "holds no images" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_prepare_of_a_train_only_folder_says_training_will_want_validation_images(tmp_path, capsys):
    """it did not, and training then failed on the missing split."""
    from alexnet.data.prepare import prepare
    synthetic.write_folder(tmp_path / "src", {"train": 2}, size=72, seed=0, workers=1)
    prepare(tmp_path / "src", tmp_path / "p", size=72, workers=0, progress=True)
    assert "note: no validation images (no val split)" in capsys.readouterr().out


def test_a_checkpoint_is_named_the_same_way_everywhere(world, tmp_path, capsys):
    """CKPT positional in some commands and --checkpoint in others; a run folder
    nowhere. Now both forms everywhere, and a run folder means its best.pt (said on stderr)."""
    ckpt, data, photo = str(world["ckpt"]), str(world["data"]), str(world["photo"])
    run = str(world["ckpt"].parent)
    for argv in (["evaluate", "--checkpoint", ckpt, "--data", data],
                 ["evaluate", run, "--data", data],
                 ["predict", ckpt, photo],
                 ["predict", run, photo],
                 ["predict", photo, "--checkpoint", run],
                 ["filters", "--checkpoint", ckpt, "--out", str(tmp_path / "c.png")],
                 ["filters", run, "--out", str(tmp_path / "d.png")],
                 ["export", "--checkpoint", ckpt, str(tmp_path / "m.onnx")],
                 ["export", run, str(tmp_path / "n.onnx")],
                 ["features", "--checkpoint", ckpt, "--data", data, "--split", "val", "--out", str(tmp_path / "f.npy")]):
        assert cli.main(argv) == 0, (argv, capsys.readouterr().err[-500:])
        err = capsys.readouterr().err
        assert ("best.pt (its best validation top-1) for the run folder" in err) == (run in argv), (argv, err)
    serve = cli.build_parser().parse_args(["serve", run])  # serve CKPT as well as --checkpoint CKPT
    cli.checkpoint_forms(serve)
    assert serve.checkpoint == ckpt.replace("last.pt", "best.pt")
    assert cli.main(["evaluate", ckpt, "--checkpoint", ckpt, "--data", data]) == 0  # an ensemble of the two forms
    assert "2 network(s)" in capsys.readouterr().out
    assert cli.main(["filters", ckpt, "--checkpoint", ckpt, "--out", str(tmp_path / "e.png")]) == 2
    assert "give the checkpoint once" in capsys.readouterr().err
    (tmp_path / "nothing").mkdir()
    assert cli.main(["evaluate", str(tmp_path / "nothing"), "--data", data]) == 2
    assert "without best.pt or last.pt" in capsys.readouterr().err


def test_serve_with_a_missing_features_file_suggests_no_split_none(world, capsys):
    """the suggestion printed `--split None` when the split was unknown."""
    assert cli.main(["serve", "--checkpoint", str(world["ckpt"]), "--features", str(world["root"] / "none.npy"),
                     "--data", str(world["data"])]) == 2
    err = capsys.readouterr().err
    assert "alexnet features CKPT --data DATA --out" in err and "None" not in err
