"""The data people really have: each input is built here in tmp_path, and the right result
is checked for `prepare`, `evaluate`/`features` (their shared Images reader) and `predict`.

1 flat files beside class folders, splits that do not exist; 2 symbolic links; 3 junk folders and
classes without images; 4 CSV headers; 5 integer class names; 6 file names that are not UTF-8;
7 very elongated images; 8 big camera photos; and Hugging Face's Parquet shards.
"""
import io
import json
import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from alexnet.data import augment as A
from alexnet.data import sources, store
from alexnet.data import prepare as prep
from alexnet.data.classes import ilsvrc2012
from alexnet.data.decode import BadImage, open_rgb
from alexnet.data.listing import class_order
from alexnet.errors import UserError
from alexnet.evaluate import evaluate_networks, label_map
from alexnet.images import Images
from alexnet.inference import Network
from alexnet.predict import Predictor, image_files, predict_files

_colours = iter(range(1, 100_000))


def jpeg(size=(40, 30), colour=None) -> bytes:
    """A small real JPEG, a different colour each call unless one is given."""
    i = next(_colours)
    out = io.BytesIO()
    Image.new("RGB", size, colour or (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(out, "JPEG", quality=95)
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def accounted(manifest: dict) -> None:
    for name, s in manifest["splits"].items():
        assert s["found"] == s["count"] + len(s["skipped"]), name


class Encoder(torch.nn.Module):
    """A stand-in network whose prediction is read off the image's colour: class k = 32 * (r // 8) + g // 8,
    so a photo drawn in colour_of(k) is predicted as output k (independent of any label mapping)."""

    def forward(self, x):  # (B, 3, C, C), 0-255 (mean 0, std 1)
        r, g = x[:, 0].mean((1, 2)), x[:, 1].mean((1, 2))
        k = (r // 8) * 32 + g // 8
        return torch.nn.functional.one_hot(k.long().clamp(0, 999), 1000).float() * 20


def colour_of(k: int) -> tuple[int, int, int]:
    return (k // 32) * 8 + 4, (k % 32) * 8 + 4, 128


def fake_network(size=64) -> Network:
    norm = A.Normalize(mean=torch.zeros(3), std=torch.ones(3))
    return Network(Encoder().eval(), [c.to_json() for c in ilsvrc2012()], size, size - 8, norm, "encoder", "")


def fake_predictor() -> Predictor:
    p = Predictor.__new__(Predictor)
    p.network, p.batch_size = fake_network(), 4
    return p


# ---------------------------------------------------------------- 1 flat files, missing splits

def flat_val(root: Path) -> None:
    for c in ("n01440764", "n02102040"):
        for i in range(3):
            write(root / "train" / c / f"{c}_{i}.JPEG", jpeg())
    for i in range(1, 5):  # the official val tar unpacked as it is: no class folders
        write(root / "val" / f"ILSVRC2012_val_{i:08d}.JPEG", jpeg())


def test_flat_val_files_are_listed_skipped_and_explained(tmp_path):
    flat_val(tmp_path / "src")
    listing = sources.list_source(tmp_path / "src")
    assert set(listing.splits) == {"train", "val"} and listing.splits["val"] == []
    assert listing.found("val") == 4 and listing.found("train") == 6
    assert {s["reason"] for s in listing.skipped["val"]} == {"not inside a class folder"}
    assert any("val: 4 file(s) are not inside a class folder" in w and "ground_truth" in w for w in listing.warnings)

    manifest = prep.prepare(tmp_path / "src", tmp_path / "out", size=32, workers=0, progress=False)
    accounted(manifest)
    assert manifest["splits"]["val"]["count"] == 0 and manifest["splits"]["val"]["found"] == 4
    assert manifest["splits"]["train"]["count"] == 6 and manifest["stats"]["split"] == "train"


def test_a_split_that_does_not_exist_is_an_error_naming_those_that_do(tmp_path):
    flat_val(tmp_path / "src")
    for i in range(2):
        write(tmp_path / "src" / "val" / "n01440764" / f"v{i}.JPEG", jpeg())  # now val has a class folder
    for data in (tmp_path / "src", None):
        if data is None:
            prep.prepare(tmp_path / "src", tmp_path / "out", size=32, workers=0, progress=False)
            data = tmp_path / "out"
        with pytest.raises(UserError, match=r"has no split 'test'.*train, val"):
            Images(str(data), "test", 32)
        assert len(Images(str(data), "val", 32)) == 2  # the 4 loose files are not scored as val
    with pytest.raises(UserError, match="has no split 'test'"):  # features reads through Images too
        from alexnet.features import write_features
        write_features(SimpleNamespace(size=32), str(tmp_path / "out"), "test", tmp_path / "f.npy")
    # a folder of class folders is one split: named after the folder when it is a split name
    with pytest.raises(UserError, match=r"has no split 'val'; it has train \(a folder of class folders is one split"):
        Images(str(tmp_path / "src" / "train"), "val", 32)


def test_evaluate_refuses_a_split_of_loose_files(tmp_path):
    flat_val(tmp_path / "src")
    with pytest.raises(UserError, match="split 'val' of .* holds no images: 4 file.*not inside a class folder"):
        evaluate_networks([fake_network()], str(tmp_path / "src"), "val", workers=0, progress=False)


# ------------------------------------------------------------------------------- 2 symlinks

def linked_tree(tmp_path: Path) -> Path:
    root = tmp_path / "src" / "train"
    for i in range(5):
        write(root / "a" / f"{i}.jpg", jpeg())
    for i in range(12):
        write(tmp_path / "elsewhere" / f"e{i}.jpg", jpeg())
    os.symlink(tmp_path / "elsewhere", root / "a" / "more")  # a folder of 12 images, through a link
    for i in range(3):
        write(root / "b" / f"{i}.jpg", jpeg())
    os.symlink(root, root / "b" / "loop")  # leads back to a folder above it
    os.symlink(tmp_path / "nowhere.jpg", root / "b" / "gone.jpg")  # broken
    os.symlink(tmp_path / "elsewhere" / "e0.jpg", root / "b" / "file-link.jpg")  # a link to a file
    os.symlink(tmp_path / "src", root / "c")  # a "class folder" that is the data set's root
    return tmp_path / "src"


def test_prepare_follows_links_guards_loops_and_accounts_for_everything(tmp_path):
    src = linked_tree(tmp_path)
    listing = sources.list_source(src)
    keys = [s.key for s in listing.splits["train"]]
    assert len(keys) == 5 + 12 + 3 + 1 and sum(k.startswith("train/a/more/") for k in keys) == 12
    assert listing.skipped["train"] == [{"path": "train/b/gone.jpg",
                                         "reason": "broken symbolic link (its target does not exist)"}]
    assert sorted(i["path"] for i in listing.ignored if "loop" in i["reason"]) == ["train/b/loop", "train/c"]
    manifest = prep.prepare(src, tmp_path / "out", size=32, workers=0, progress=False)
    accounted(manifest)
    assert manifest["splits"]["train"]["found"] == 22 and manifest["splits"]["train"]["count"] == 21


def test_predict_follows_links_too(tmp_path):
    src = linked_tree(tmp_path)
    ignored = []
    files, failures = image_files([str(src)], ignored)
    assert len(files) == 21 and [f["error"] for f in failures] == ["broken symbolic link (its target does not exist)"]
    assert any("loop" in i["reason"] for i in ignored)
    results, bad = predict_files(fake_predictor(), files, topk=1, views=1)
    assert len(results) == 21 and not bad  # found = predicted + failures: 22 = 21 + 1


# --------------------------------------------------------------------------- 3 junk folders

def test_system_folders_are_ignored_and_empty_classes_warned(tmp_path, capsys):
    root = tmp_path / "pictures"  # a single split folder (a zip made on a Mac, copied through a NAS)
    for c in ("cat", "dog"):
        for i in range(2):
            write(root / c / f"{i}.JPEG", jpeg())
    write(root / "__MACOSX" / "cat" / "._0.JPEG", b"\0\5\x16\7 AppleDouble")
    write(root / "cat" / "._0.JPEG", b"\0\5\x16\7 AppleDouble")
    write(root / "@eaDir" / "cat" / "SYNOPHOTO_THUMB_M.jpg", jpeg())
    write(root / "dog" / "Thumbs.db", b"thumbs")
    (root / "lost+found").mkdir()
    (root / "owl").mkdir()  # a class with no images
    write(root / "hawk" / "Thumbs.db", b"thumbs")  # and one with nothing but junk
    listing = sources.list_source(root)
    assert [c.id for c in listing.classes] == ["cat", "dog", "hawk", "owl"]
    assert listing.found("train") == 4 and not listing.skipped["train"]
    assert sorted(i["path"] for i in listing.ignored) == ["@eaDir", "__MACOSX", "cat/._0.JPEG", "dog/Thumbs.db",
                                                           "hawk/Thumbs.db", "lost+found"]
    [warning] = listing.warnings
    assert "2 of 4 classes have no training images: hawk, owl" in warning
    manifest = prep.prepare(root, tmp_path / "out", size=32, workers=0, progress=True)
    out = capsys.readouterr().out
    assert "ignored 5 system files and folders" in out and "ignored 1 hidden entries" in out
    assert "warning: 2 of 4 classes have no training images" in out
    assert {e["reason"]: e["count"] for e in manifest["ignored"]} == {
        "system files and folders (__MACOSX, @eaDir, lost+found, Thumbs.db, ...)": 5,
        "hidden entries (.*, incl. AppleDouble ._* files)": 1}
    assert manifest["warnings"] == listing.warnings


# -------------------------------------------------------------------------------- 4 CSV lists

def test_csv_header_is_detected_and_integer_labels_keep_their_numbers(tmp_path):
    files = {f"img/{k}.jpg": write(tmp_path / "img" / f"{k}.jpg", jpeg()) for k in range(11)}
    write(tmp_path / "list.csv", ("image_path,label\n" + "".join(f"img/{k}.jpg,{k}\n" for k in range(11))).encode())
    listing = sources.list_source(tmp_path / "list.csv")
    assert [c.id for c in listing.classes] == [str(k) for k in range(11)]
    assert listing.found("train") == 11 and not listing.skipped["train"]
    assert {s.key: s.label for s in listing.splits["train"]} == {f"img/{k}.jpg": k for k in range(11)}
    assert all(sources.read_bytes(s) == files[s.key].read_bytes() for s in listing.splits["train"])
    # no header at all: the first row is data, even when its file is missing
    write(tmp_path / "plain.csv", b"img/missing.jpg,3\nimg/4.jpg,4\nimg/10.jpg,10\n")
    plain = sources.list_source(tmp_path / "plain.csv")
    assert plain.found("train") == 3 and plain.skipped["train"] == [{"path": "img/missing.jpg", "reason": "file not found"}]
    assert [c.id for c in plain.classes] == [str(k) for k in range(11)]
    # an unusual header among integer labels: recognised as the one row whose label is not a number
    write(tmp_path / "odd.csv", b"picture,truth\nimg/1.jpg,1\nimg/2.jpg,2\n")
    assert sources.list_source(tmp_path / "odd.csv").found("train") == 2
    # unusual names over text labels: a header, not a class "breed" (but a missing file's row is data)
    write(tmp_path / "pets.csv", b"fname,breed\nimg/1.jpg,beagle\nimg/2.jpg,pug\n")
    pets = sources.list_source(tmp_path / "pets.csv")
    assert [c.id for c in pets.classes] == ["beagle", "pug"] and pets.found("train") == 2
    write(tmp_path / "pets2.csv", b"img/gone.jpg,beagle\nimg/1.jpg,beagle\nimg/2.jpg,pug\n")
    pets2 = sources.list_source(tmp_path / "pets2.csv")
    assert pets2.found("train") == 3 and pets2.skipped["train"] == [{"path": "img/gone.jpg", "reason": "file not found"}]


def test_csv_columns_by_name(tmp_path):
    for k in range(3):
        write(tmp_path / f"{k}.jpg", jpeg())
    write(tmp_path / "meta.csv", b"id,y_true,fname,subset\n7,2,0.jpg,train\n8,0,1.jpg,val\n9,1,2.jpg,train\n")
    listing = sources.list_source(tmp_path / "meta.csv", csv_columns="fname,y_true,subset")
    assert {sp: [(s.key, s.label) for s in v] for sp, v in listing.splits.items()} == {
        "train": [("0.jpg", 2), ("2.jpg", 1)], "val": [("1.jpg", 0)]}
    with pytest.raises(UserError, match="has no column 'label'; its header row is 'id,y_true,fname,subset'"):
        sources.list_source(tmp_path / "meta.csv", csv_columns="fname,label")
    manifest = prep.prepare(tmp_path / "meta.csv", tmp_path / "out", size=32, workers=0, progress=False,
                            csv_columns="fname,y_true,subset")
    assert manifest["splits"]["train"]["count"] == 2 and manifest["splits"]["val"]["count"] == 1


# ----------------------------------------------------------------------- 5 integer class names

def test_integer_class_folders_are_ordered_as_numbers(tmp_path):
    for name in ("0", "1", "10", "100", "2", "7"):
        write(tmp_path / "v2" / name / "a.jpg", jpeg())
    listing = sources.list_source(tmp_path / "v2")
    assert [c.id for c in listing.classes] == ["0", "1", "2", "7", "10", "100"]
    assert {s.key: s.label for s in listing.splits["train"]}["10/a.jpg"] == 4
    assert class_order(["b", "10", "a"]) == ["10", "a", "b"]  # not all numbers: text order


def test_folders_named_by_output_index_map_to_that_index(tmp_path):
    """ImageNetV2's layout (folders 0..999) against a network whose classes are WNIDs."""
    for k in (0, 3, 10, 999):
        for i in range(2):
            write(tmp_path / "v2" / "val" / str(k) / f"{i}.png", b"")
            Image.new("RGB", (64, 64), colour_of(k)).save(tmp_path / "v2" / "val" / str(k) / f"{i}.png")
    r = evaluate_networks([fake_network()], str(tmp_path / "v2" / "val"), "val", workers=0, progress=False)
    assert r["n_images"] == 8 and r["top1"] == 1.0  # by position (0, 1, 2, 3) it would be 0.25
    assert label_map(["0", "3", "10"], ["n0", "n1", "n2", "n3", "n4", "n5", "n6", "n7", "n8", "n9", "n10"],
                     "x").tolist() == [0, 3, 10]
    assert label_map(["b", "a"], ["a", "b"], "x").tolist() == [1, 0]  # by id when the ids are known
    with pytest.raises(UserError, match="numbered up to 12"):
        label_map(["0", "12"], ["a"] * 10, "x")
    with pytest.raises(UserError, match="classes the network does not know: c"):
        label_map(["a", "c"], ["a", "b"], "x")


# -------------------------------------------------------------------- 6 names that are not UTF-8

def test_file_names_that_are_not_utf8(tmp_path, capsys):
    folder = os.fsencode(tmp_path / "src" / "train") + b"/caf\xe9s"  # Latin-1 bytes, even the class folder
    os.makedirs(folder)
    names = [b"caf\xe9.jpg", b"line\nbreak.jpg", b"ok.jpg", b"bad\xff.jpg"]
    for name in names[:3]:
        with open(os.path.join(folder, name), "wb") as f:
            f.write(jpeg())
    with open(os.path.join(folder, names[3]), "wb") as f:
        f.write(b"not an image")
    listing = sources.list_source(tmp_path / "src")
    [cls] = listing.classes
    keys = [s.key for s in listing.splits["train"]]
    assert cls.id == "caf\\xe9s" and all(k.isprintable() and k.isascii() for k in keys)
    manifest = prep.prepare(tmp_path / "src", tmp_path / "out", size=32, workers=0, progress=True)
    capsys.readouterr()
    accounted(manifest)
    assert manifest["splits"]["train"]["count"] == 3
    assert manifest["splits"]["train"]["skipped"][0]["path"] == "train/caf\\xe9s/bad\\xff.jpg"
    split = store.open_prepared(tmp_path / "out").split("train")
    assert sorted(split.keys()) == sorted(["train/caf\\xe9s/caf\\xe9.jpg", "train/caf\\xe9s/line\\nbreak.jpg",
                                           "train/caf\\xe9s/ok.jpg"])
    json.loads((tmp_path / "out" / "manifest.json").read_text(encoding="utf-8"))
    images = Images(str(tmp_path / "src"), "train", 32)  # evaluate DIR reads them too
    assert len(images) == 4 and sum(images[i][0] is not None for i in range(4)) == 3  # one is not an image
    results, failures = predict_files(fake_predictor(), image_files([os.fsdecode(folder)])[0], 1, 1)
    assert len(results) == 3 and len(failures) == 1 and failures[0]["path"].endswith("bad\\xff.jpg")
    json.dumps(failures, ensure_ascii=False).encode("utf-8")  # printable: valid UTF-8 everywhere


# -------------------------------------------------------------------- 7 very elongated images

def test_elongated_images_are_bounded_and_never_abort_the_run(tmp_path):
    for i in range(3):
        write(tmp_path / "src" / "train" / "a" / f"{i}.jpg", jpeg((80, 60)))
    write(tmp_path / "src" / "train" / "a" / "strip.jpg", jpeg((6000, 20)))
    write(tmp_path / "src" / "train" / "a" / "tower.jpg", jpeg((20, 6000)))
    for raw in (False, True):
        out = tmp_path / f"out{raw}"
        manifest = prep.prepare(tmp_path / "src", out, size=64, keep_aspect=True, raw=raw, workers=0, progress=False)
        assert manifest["splits"]["train"]["count"] == 5 and not manifest["splits"]["train"]["skipped"]
        split = store.open_prepared(out).split("train")
        shapes = {Path(k).name: (int(r["height"]), int(r["width"])) for k, r in zip(split.keys(), split.index)}
        assert shapes["strip.jpg"] == (64, 256) and shapes["tower.jpg"] == (256, 64)  # at most 4:1, the centre
        assert shapes["0.jpg"] == (64, 85)
        for i in range(len(split)):
            data, _ = split[i]
            h, w = int(split.index[i]["height"]), int(split.index[i]["width"])
            assert (data.shape if raw else Image.open(io.BytesIO(data)).size[::-1])[:2] == (h, w)
    from alexnet.data.loader import Loader  # the training loop's reader takes them all
    ds = store.open_prepared(tmp_path / "outTrue")
    batches = list(Loader(ds.split("train"), ds, batch_size=5, train=True, crop=56, workers=0).epoch(0))
    assert batches[0].images.shape == (5, 3, 56, 56) and torch.isfinite(batches[0].images).all()


def test_an_index_that_would_wrap_is_refused(tmp_path):
    writer = store.ShardWriter(tmp_path / "s.tar")
    with pytest.raises(ValueError, match="does not fit the index"):
        writer.add("x", 0, np.zeros((2, 70000, 3), np.uint8), 2, 70000)
    writer.abort()
    for i in range(2):
        write(tmp_path / "src" / "train" / "a" / f"{i}.jpg", jpeg())
    prep.prepare(tmp_path / "src", tmp_path / "raw", size=32, raw=True, workers=0, progress=False)
    index = np.load(tmp_path / "raw" / "train" / "index.npy")
    index["width"][1] = 11264  # as an older prepare stored a 6000x20 strip's width modulo 65536
    np.save(tmp_path / "raw" / "train" / "index.npy", index)
    m = json.loads((tmp_path / "raw" / "manifest.json").read_text())  # which it recorded in its manifest
    info = m["splits"]["train"]
    info["sha256"] = store.split_checksum((tmp_path / "raw" / "train" / "index.npy").read_bytes(),
                                          [s["sha256"] for s in info["shards"]])
    (tmp_path / "raw" / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="1 image.*does not match their height x width.*re-run alexnet prepare"):
        store.open_prepared(tmp_path / "raw").split("train")


# ----------------------------------------------------------------------------- 8 big photos

@pytest.fixture(scope="module")
def camera_photo(tmp_path_factory) -> Path:
    """A 12000x9000 (108 MP) JPEG, made cheaply: greyscale, flat, with a dark square in the middle."""
    img = Image.new("L", (12000, 9000), 200)
    img.paste(20, (5000, 3500, 7000, 5500))
    path = tmp_path_factory.mktemp("camera") / "IMG_0001.JPG"
    img.save(path, quality=85)
    return path


def test_big_camera_jpegs_are_decoded_at_reduced_scale(camera_photo, tmp_path):
    img = open_rgb(camera_photo.read_bytes(), min_side=256)
    assert 384 <= min(img.size) < 9000 // 4  # decoded in the DCT domain, not at 108 MP
    write(tmp_path / "src" / "train" / "a" / camera_photo.name, camera_photo.read_bytes())
    prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0, progress=False)
    data, _ = store.open_prepared(tmp_path / "out").split("train")[0]
    pixels = np.asarray(Image.open(io.BytesIO(data)).convert("L"), float)  # the square spans 2000/9000 of 64
    assert abs(pixels[28:36, 28:36].mean() - 20) < 6 and abs(pixels[:5].mean() - 200) < 6
    results, failures = predict_files(fake_predictor(), [camera_photo], 1, 1)
    assert len(results) == 1 and not failures


def test_what_is_too_big_says_which_limit_and_how_to_change_it(camera_photo, tmp_path, monkeypatch):
    monkeypatch.setenv("ALEXNET_MAX_PIXELS", "1e6")
    with pytest.raises(BadImage, match=r"12000x9000 JPEG \(108 megapixels, decoded at 1500x1125\) exceeds the "
                                       r"limit of 1 megapixels \(ALEXNET_MAX_PIXELS\); set ALEXNET_MAX_PIXELS"):
        open_rgb(camera_photo.read_bytes(), min_side=256)
    monkeypatch.setenv("ALEXNET_MAX_PIXELS", "lots")
    with pytest.raises(UserError, match="ALEXNET_MAX_PIXELS='lots' is not a number"):
        open_rgb(camera_photo.read_bytes())
    monkeypatch.delenv("ALEXNET_MAX_PIXELS")
    buf = io.BytesIO()
    Image.new("1", (16000, 12000)).save(buf, "PNG")  # 192 MP: past Pillow's hard limit, and no draft for PNG
    with pytest.raises(BadImage, match="too large to decode.*Pillow"):
        open_rgb(buf.getvalue(), min_side=256)


# ---------------------------------------------------------------------------------- parquet

def parquet_shards(root: Path, names=None) -> dict:
    """HF's layout: data/train-*.parquet with an image struct {bytes, path} and an int label; a
    validation shard with a plain binary image column. Returns key -> image bytes of good rows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    expected = {}
    (root / "data").mkdir(parents=True)
    images = [jpeg() for _ in range(9)]
    images[4] = b"\xff\xd8\xff\xe0 truncated"
    struct = pa.array([{"bytes": b, "path": f"{i}.jpg"} for i, b in enumerate(images)] + [{"bytes": None, "path": "x.jpg"}],
                      pa.struct([("bytes", pa.binary()), ("path", pa.string())]))
    labels = pa.array([0, 1, 2, None, 1, 0, -1, 2, 1, 0], pa.int64())
    meta = {b"huggingface": json.dumps({"info": {"features": {"label": {"names": names, "_type": "ClassLabel"}}}})} \
        if names else None
    table = pa.table({"image": struct, "label": labels}).replace_schema_metadata(meta)
    pq.write_table(table, root / "data" / "train-00000-of-00001.parquet", row_group_size=3)
    for i, b in enumerate(images):
        expected[f"data/train-00000-of-00001.parquet/{i:09d}"] = b
    val = [jpeg() for _ in range(4)]
    pq.write_table(pa.table({"label": pa.array([2, 0, 1, 1], pa.int32()), "image": pa.array(val, pa.binary())}),
                   root / "data" / "validation-00000-of-00001.parquet", row_group_size=2)
    expected.update({f"data/validation-00000-of-00001.parquet/{i:09d}": b for i, b in enumerate(val)})
    (root / ".cache").mkdir()
    return expected


def test_parquet_shards_are_listed_and_read_in_any_order(tmp_path, monkeypatch):
    from alexnet.data import parquet

    expected = parquet_shards(tmp_path / "hf", names=["cat", "dog", "owl"])
    assert sources.detect(tmp_path / "hf") == "parquet"
    listing = sources.list_source(tmp_path / "hf")
    assert [c.id for c in listing.classes] == ["cat", "dog", "owl"]  # the data set's own order
    assert listing.found("train") == 10 and len(listing.splits["train"]) == 8
    assert {s["path"].rsplit("/", 1)[1]: s["reason"] for s in listing.skipped["train"]} == {
        "000000003": "label is null", "000000006": "label is -1 (no label, as in ImageNet's test split)"}
    assert [s.label for s in listing.splits["val"]] == [2, 0, 1, 1]
    monkeypatch.setattr(parquet, "BATCH", 2)  # batches smaller than the row groups: streaming and seeking
    every = listing.splits["train"] + listing.splits["val"]
    for s in every[::-1] + every[::2] + every:
        if not s.key.endswith("09"):  # row 9 has no bytes
            assert sources.read_bytes(s) == expected[s.key], s.key
    with pytest.raises(OSError, match="no image bytes"):
        sources.read_bytes(listing.splits["train"][-1])
    # threads (the server's thumbnails) each read with their own reader: never another row's bytes
    from concurrent.futures import ThreadPoolExecutor
    good = [s for s in every if not s.key.endswith("09")] * 20
    with ThreadPoolExecutor(4) as pool:
        assert list(pool.map(sources.read_bytes, good)) == [expected[s.key] for s in good]


def test_prepare_parquet_accounts_for_every_row(tmp_path):
    from alexnet import cli

    parquet_shards(tmp_path / "imagenet-1k")  # no ClassLabel names, ImageNet-named: ILSVRC classes
    assert cli.main(["prepare", str(tmp_path / "imagenet-1k"), str(tmp_path / "out"), "--source", "parquet",
                     "--size", "32", "--workers", "1"]) == 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    accounted(manifest)
    train = manifest["splits"]["train"]
    assert train["found"] == 10 and train["count"] == 6  # null label, -1, no bytes, truncated bytes skipped
    reasons = {s["path"].rsplit("/", 1)[1]: s["reason"] for s in train["skipped"]}
    assert "truncated" in reasons["000000004"] and "no image bytes" in reasons["000000009"]
    assert [c["id"] for c in manifest["classes"]] == [c.id for c in ilsvrc2012()]
    assert manifest["splits"]["val"]["count"] == 4
    labels = store.open_prepared(tmp_path / "out").split("val").labels.tolist()
    assert labels == [2, 0, 1, 1]
    # Imagenette's labels 0..9 are not ILSVRC's indices: numbered, never given ImageNet's names
    parquet_shards(tmp_path / "imagenette")
    assert [c.id for c in sources.list_source(tmp_path / "imagenette", "parquet").classes] == ["0", "1", "2"]
