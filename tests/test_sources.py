"""Source listers: every layout built here in tmp_path from small real images, every input accounted
for (samples + skipped == what was written), labels in sorted-WNID order, bytes read back exactly."""
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import scipy.io
from PIL import Image

from alexnet.data import sources
from alexnet.data.classes import ilsvrc2012
from alexnet.errors import UserError
from conftest import IMAGENETTE, needs_shared

STANDARD = [c.id for c in ilsvrc2012()]
TENCH, SPRINGER, TISSUE = "n01440764", "n02102040", "n15075141"  # ILSVRC indices 0, 217, 999

_colours = iter(range(1, 10_000))


def image(fmt: str = "JPEG") -> bytes:
    """A small real image, a different solid colour each call, so equal bytes mean the same sample."""
    i = next(_colours)
    out = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 37 % 256, i * 91 % 256, i * 13 % 256)).save(out, fmt)
    return out.getvalue()


def tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def by_key(listing, split) -> dict:
    return {s.key: s for s in listing.splits[split]}


def check_sorted(listing):
    for samples in listing.splits.values():
        keys = [s.key for s in samples]
        assert keys == sorted(keys) and len(set(keys)) == len(keys)


# ------------------------------------------------------------------------------------ ilsvrc

SYNSET_FIELDS = ["ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children",
                 "wordnet_height", "num_train_images"]


def meta_mat(leaves: dict[int, str]) -> bytes:
    """A real meta.mat: the leaves with the given ILSVRC2012_IDs plus one inner synset (ID > 1000)."""
    rows = [(i, w, f"words {w}", "a gloss", 0, np.zeros(0), 0, 3) for i, w in leaves.items()]
    rows.append((1001, "n00001740", "entity", "the root", len(leaves), np.array(sorted(leaves)), 5, 0))
    synsets = np.empty(len(rows), dtype=[(f, object) for f in SYNSET_FIELDS])
    for i, row in enumerate(rows):
        for name, value in zip(SYNSET_FIELDS, row):
            synsets[i][name] = value
    out = io.BytesIO()
    scipy.io.savemat(out, {"synsets": synsets})
    return out.getvalue()


def devkit(path: Path, leaves: dict[int, str], truth: list[int]) -> None:
    data = {"ILSVRC2012_devkit_t12/COPYING": b"licence",
            "ILSVRC2012_devkit_t12/data/meta.mat": meta_mat(leaves),
            "ILSVRC2012_devkit_t12/data/ILSVRC2012_validation_ground_truth.txt":
                "".join(f"{t}\n" for t in truth).encode()}
    with tarfile.open(path, mode="w:gz") as tar:
        for name, content in data.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def ilsvrc_archives(root: Path, train_classes=(TENCH, SPRINGER, TISSUE)) -> dict:
    """Train tar of per-class tars, val tar of 5 images, devkit whose ID order differs from sorted order."""
    images = {}
    inner = {}
    for n, wnid in enumerate(train_classes):
        names = [f"{wnid}_{10026 + i}.JPEG" for i in range(2 + n % 2)]
        if n == 0:  # a name too long for a plain tar header: its data sits after an extended header
            names.append(f"{wnid}_{'long' * 30}.JPEG")
        members = {name: image() for name in names}
        inner[f"{wnid}.tar"] = tar_bytes(members)
        images.update({f"ILSVRC2012_img_train.tar/{wnid}.tar/{k}": v for k, v in members.items()})
    write(root / "ILSVRC2012_img_train.tar", tar_bytes(inner))
    val = {f"ILSVRC2012_val_{i:08d}.JPEG": image() for i in range(1, 6)}
    write(root / "ILSVRC2012_img_val.tar", tar_bytes(val))
    images.update({f"ILSVRC2012_img_val.tar/{k}": v for k, v in val.items()})
    # ID 1 is the last class in sorted order: a label read without meta.mat would be wrong
    devkit(root / "ILSVRC2012_devkit_t12.tar.gz", {1: TISSUE, 2: TENCH, 3: SPRINGER}, truth=[2, 1, 3, 3])
    return images


def test_ilsvrc_archives_read_in_place(tmp_path):
    images = ilsvrc_archives(tmp_path)
    assert sources.detect(tmp_path) == "ilsvrc"
    listing = sources.list_source(tmp_path)
    assert listing.kind == "ilsvrc" and [c.id for c in listing.classes] == STANDARD  # real WNIDs only
    check_sorted(listing)
    assert listing.found("train") == 8 and not listing.skipped["train"]
    assert listing.found("val") == 5
    for split in ("train", "val"):
        for s in listing.splits[split]:
            assert s.offset >= 0 and sources.read_bytes(s) == images[s.key], s.key
    for s in listing.splits["train"]:
        assert STANDARD[s.label] == s.key.split("/")[1][:-len(".tar")]
    # ground truth 2, 1, 3, 3 -> tench, toilet tissue, springer, springer (sorted indices 0, 999, 217)
    val = by_key(listing, "val")
    expected = {1: TENCH, 2: TISSUE, 3: SPRINGER, 4: SPRINGER}
    assert {int(k[-13:-5]): STANDARD[s.label] for k, s in val.items()} == expected
    assert [val[f"ILSVRC2012_img_val.tar/ILSVRC2012_val_{i:08d}.JPEG"].label for i in (1, 2, 3)] \
        == [0, 999, 217]
    [missing] = listing.skipped["val"]  # the fifth image has no ground-truth line
    assert missing["path"].endswith("ILSVRC2012_val_00000005.JPEG") and "ground_truth" in missing["reason"]


def test_ilsvrc_archive_given_directly_finds_the_others(tmp_path):
    ilsvrc_archives(tmp_path)
    val_tar = tmp_path / "ILSVRC2012_img_val.tar"
    assert sources.detect(val_tar) == "ilsvrc"
    listing = sources.list_source(val_tar)
    assert listing.found("val") == 5 and listing.found("train") == 8


def test_ilsvrc_val_without_devkit_is_a_user_error(tmp_path):
    ilsvrc_archives(tmp_path)
    (tmp_path / "ILSVRC2012_devkit_t12.tar.gz").unlink()
    with pytest.raises(UserError, match="ILSVRC2012_devkit_t12.tar.gz"):
        sources.list_source(tmp_path)
    (tmp_path / "ILSVRC2012_img_val.tar").unlink()  # train alone needs no devkit
    listing = sources.list_source(tmp_path)
    assert listing.found("train") == 8 and "val" not in listing.splits


def test_ilsvrc_foreign_wnids_get_the_sorted_union(tmp_path):
    """Archives with a WNID outside ILSVRC-2012 are not the real thing: classes are what they hold."""
    images = ilsvrc_archives(tmp_path, train_classes=(TENCH, "n99999999"))
    listing = sources.list_ilsvrc(tmp_path)
    assert [c.id for c in listing.classes] == [TENCH, SPRINGER, TISSUE, "n99999999"]
    assert {s.label for s in listing.splits["val"]} == {0, 1, 2}
    assert listing.found("train") + listing.found("val") == len(images)


# ------------------------------------------------------------------------------------ kaggle

def kaggle_tree(root: Path) -> dict:
    cls_loc = root / "ILSVRC" / "Data" / "CLS-LOC"
    images = {}
    for wnid, count in ((SPRINGER, 2), (TENCH, 3)):
        for i in range(count):
            images[f"train/{wnid}/{wnid}_{i}.JPEG"] = image()
    for i in range(1, 5):
        images[f"val/ILSVRC2012_val_{i:08d}.JPEG"] = image()
    for key, data in images.items():
        write(cls_loc / key, data)
    write(cls_loc / "test" / "ILSVRC2012_test_00000001.JPEG", image())  # no labels: not listed
    write(root / "LOC_synset_mapping.txt", (f"{TISSUE} toilet tissue, toilet paper\n"
                                            f"{TENCH} tench, Tinca tinca\n"
                                            f"{SPRINGER} English springer\n").encode())
    write(root / "LOC_val_solution.csv", (
        "ImageId,PredictionString\n"
        f"ILSVRC2012_val_00000001,{TISSUE} 1 2 30 40 {TISSUE} 5 6 70 80 \n"
        f"ILSVRC2012_val_00000002,{TENCH} 10 10 499 331\n"
        f"ILSVRC2012_val_00000003,{SPRINGER} 0 0 7 7\n").encode())  # no row for image 4
    return images


def test_kaggle_layout(tmp_path):
    images = kaggle_tree(tmp_path)
    assert sources.detect(tmp_path) == "kaggle"
    listing = sources.list_source(tmp_path)
    assert [c.id for c in listing.classes] == [TENCH, SPRINGER, TISSUE]
    assert set(listing.splits) == {"train", "val"}  # test/ ignored
    check_sorted(listing)
    assert listing.found("train") == 5 and len(listing.splits["train"]) == 5
    assert listing.found("val") == 4 and len(listing.splits["val"]) == 3
    [missing] = listing.skipped["val"]
    assert missing["path"] == "val/ILSVRC2012_val_00000004.JPEG"
    assert "LOC_val_solution.csv" in missing["reason"]
    ids = [c.id for c in listing.classes]
    for s in listing.splits["train"]:
        assert ids[s.label] == s.key.split("/")[1] and sources.read_bytes(s) == images[s.key]
    val = {s.key[-13:-5]: ids[s.label] for s in listing.splits["val"]}
    assert val == {"00000001": TISSUE, "00000002": TENCH, "00000003": SPRINGER}
    # the ILSVRC/ folder itself works too: the CSVs are found beside it
    assert sources.detect(tmp_path / "ILSVRC") == "kaggle"
    again = sources.list_source(tmp_path / "ILSVRC")
    assert again.splits == listing.splits and again.classes == listing.classes


def test_kaggle_without_mapping_uses_train_folders_and_without_solution_fails(tmp_path):
    kaggle_tree(tmp_path)
    (tmp_path / "LOC_synset_mapping.txt").unlink()
    listing = sources.list_kaggle(tmp_path)
    assert [c.id for c in listing.classes] == [TENCH, SPRINGER, TISSUE]  # TISSUE from the solution
    (tmp_path / "LOC_val_solution.csv").unlink()
    with pytest.raises(UserError, match="LOC_val_solution.csv"):
        sources.list_source(tmp_path)


# -------------------------------------------------------------------------------- webdataset

def shard(path: Path, samples: dict[str, dict[str, bytes]]) -> dict:
    """Write a shard of key -> {extension: data}; returns shardname/key -> image bytes."""
    members = {f"{key}.{ext}": data for key, parts in samples.items() for ext, data in parts.items()}
    write(path, tar_bytes(members))
    return {f"{path.name}/{key}": next(d for e, d in parts.items() if e in ("jpg", "png"))
            for key, parts in samples.items() if "jpg" in parts or "png" in parts}


def test_webdataset_shards(tmp_path):
    images = {}
    images |= shard(tmp_path / "imagenet1k-train-0000.tar", {
        "000001": {"jpg": image(), "cls": b"0", "json": b"{}"},
        "000002": {"png": image("PNG"), "cls": b"999\n"},
        "n01440764/000003": {"jpg": image(), "cls": b"217"},
        "000004": {"jpg": image()},  # no label: skipped
        "000005": {"cls": b"3"},  # no image: skipped
    })
    images |= shard(tmp_path / "imagenet1k-train-0001.tar", {
        "000006": {"jpg": image(), "cls": b"abc"},  # not a number: skipped
        "000007": {"jpg": image(), "cls": b"5"},
    })
    images |= shard(tmp_path / "imagenet1k-validation-00.tar", {
        "000008": {"jpg": image(), "cls": b"7"},
        "000009": {"jpg": image(), "cls": b"0"},
    })
    (tmp_path / ".cache").mkdir()  # what a Hugging Face download leaves beside the shards
    assert sources.detect(tmp_path) == "webdataset"
    listing = sources.list_source(tmp_path)
    assert [c.id for c in listing.classes] == STANDARD  # ImageNet shard names, labels < 1000
    check_sorted(listing)
    assert set(listing.splits) == {"train", "val"}
    assert listing.found("train") == 7 and len(listing.splits["train"]) == 4
    assert listing.found("val") == 2 and len(listing.splits["val"]) == 2
    reasons = {s["path"]: s["reason"] for s in listing.skipped["train"]}
    assert reasons.keys() == {"imagenet1k-train-0000.tar/000004", "imagenet1k-train-0000.tar/000005",
                              "imagenet1k-train-0001.tar/000006"}
    assert "no image member" in reasons["imagenet1k-train-0000.tar/000005"]
    assert ".cls" in reasons["imagenet1k-train-0000.tar/000004"]
    labels = {s.key: s.label for split in ("train", "val") for s in listing.splits[split]}
    assert labels == {"imagenet1k-train-0000.tar/000001": 0, "imagenet1k-train-0000.tar/000002": 999,
                      "imagenet1k-train-0000.tar/n01440764/000003": 217,
                      "imagenet1k-train-0001.tar/000007": 5,
                      "imagenet1k-validation-00.tar/000008": 7, "imagenet1k-validation-00.tar/000009": 0}
    for split in ("train", "val"):
        for s in listing.splits[split]:
            assert sources.read_bytes(s) == images[s.key]


def test_webdataset_single_shard_without_imagenet_name(tmp_path):
    images = shard(tmp_path / "flowers-000.tar", {"a": {"jpg": image(), "cls": b"2"},
                                                  "b": {"jpg": image(), "cls": b"0"}})
    listing = sources.list_source(tmp_path / "flowers-000.tar")
    assert listing.kind == "webdataset" and [c.id for c in listing.classes] == ["0", "1", "2"]
    assert [s.label for s in listing.splits["train"]] == [2, 0] and listing.found("train") == 2
    assert all(sources.read_bytes(s) == images[s.key] for s in listing.splits["train"])


def test_truncated_archives_keep_what_is_there_and_say_so(tmp_path):
    """A download cut short: the members before the cut are listed; the cut one and the archive are
    reported."""
    images = shard(tmp_path / "imagenet-train-0.tar",
                   {f"{i:03d}": {"jpg": image(), "cls": b"1"} for i in range(5)})
    path = tmp_path / "imagenet-train-0.tar"
    with tarfile.open(path) as tar:
        cut = tar.getmember("002.jpg")
    path.write_bytes(path.read_bytes()[:cut.offset_data + 100])
    listing = sources.list_source(path)
    assert [s.key for s in listing.splits["train"]] == ["imagenet-train-0.tar/000",
                                                        "imagenet-train-0.tar/001"]
    assert all(sources.read_bytes(s) == images[s.key] for s in listing.splits["train"])
    reasons = {e["path"]: e["reason"] for e in listing.skipped["train"]}
    assert "truncated" in reasons["imagenet-train-0.tar/002"]
    assert "ends early" in reasons["imagenet-train-0.tar"]


# --------------------------------------------------------------------------------------- csv

def test_csv_list_with_header_and_string_labels(tmp_path):
    images = {f"img/{name}.jpg": write(tmp_path / "img" / f"{name}.jpg", image()) for name in "abc"}
    absolute = write(tmp_path / "elsewhere" / "d.png", image("PNG"))
    write(tmp_path / "val.csv", (
        "Path,Label\n"
        f"img/a.jpg,{TISSUE}\n"
        f"img/b.jpg,{TENCH}\n"
        "\n"
        f"img/missing.jpg,{SPRINGER}\n"
        f"{absolute},{TENCH}\n"
        f"img/c.jpg,{SPRINGER}\n").encode())
    assert sources.detect(tmp_path / "val.csv") == "csv"
    listing = sources.list_source(tmp_path / "val.csv")
    assert [c.id for c in listing.classes] == [TENCH, SPRINGER, TISSUE]  # the missing file's class too
    assert set(listing.splits) == {"val"}  # named by the file
    check_sorted(listing)
    assert listing.found("val") == 5 and listing.skipped["val"] == [
        {"path": "img/missing.jpg", "reason": "file not found"}]
    got = {s.key: s.label for s in listing.splits["val"]}
    assert got == {"img/a.jpg": 2, "img/b.jpg": 0, "img/c.jpg": 1, str(absolute): 0}
    for s in listing.splits["val"]:
        assert sources.read_bytes(s) == Path(images.get(s.key, absolute)).read_bytes()


def test_tsv_with_split_column_and_integer_labels(tmp_path):
    for name in "abcd":
        write(tmp_path / f"{name}.png", image("PNG"))
    write(tmp_path / "list.tsv", b"a.png\t3\ttrain\nb.png\t0\tvalidation\nc.png\t1\nd.png\t03\ttest\n")
    listing = sources.list_source(tmp_path / "list.tsv")
    assert [c.id for c in listing.classes] == ["0", "1", "2", "3"]
    assert {split: [(s.key, s.label) for s in samples] for split, samples in listing.splits.items()} == {
        "train": [("a.png", 3), ("c.png", 1)], "val": [("b.png", 0)], "test": [("d.png", 3)]}
    assert sum(listing.found(split) for split in listing.splits) == 4


def test_csv_malformed_row_names_its_line(tmp_path):
    write(tmp_path / "a.jpg", image())
    write(tmp_path / "list.csv", b"path,label\na.jpg,0\na.jpg\n")
    with pytest.raises(UserError, match="line 3"):
        sources.list_source(tmp_path / "list.csv")


# ------------------------------------------------------------------------------------ folder

def test_folder_with_split_folders(tmp_path):
    for split, counts in (("train", {"dog": 2, "cat": 3}), ("validation", {"dog": 1, "cat": 1})):
        for cls, count in counts.items():
            for i in range(count):
                write(tmp_path / split / cls / f"{i}.jpg", image())
    write(tmp_path / "train" / "dog" / ".DS_Store", b"x")  # hidden: not an input
    (tmp_path / "train" / ".cache").mkdir()
    write(tmp_path / "train" / "notes.txt", b"loose")
    assert sources.detect(tmp_path) == "folder"
    listing = sources.list_source(tmp_path)
    assert [c.id for c in listing.classes] == ["cat", "dog"]
    check_sorted(listing)
    assert listing.found("train") == 6 and len(listing.splits["train"]) == 5
    assert listing.skipped["train"] == [{"path": "train/notes.txt", "reason": "not inside a class folder"}]
    assert listing.found("val") == 2 and not listing.skipped["val"]
    assert all(s.label == (s.key.split("/")[1] == "dog") for s in listing.splits["train"])


def test_folder_single_split(tmp_path):
    for cls in ("b", "a"):
        write(tmp_path / "val" / cls / "x.jpg", image())
    listing = sources.list_source(tmp_path / "val")  # a split folder named val is the val split
    assert set(listing.splits) == {"val"} and listing.found("val") == 2
    assert [(s.key, s.label) for s in listing.splits["val"]] == [("a/x.jpg", 0), ("b/x.jpg", 1)]
    (tmp_path / "val").rename(tmp_path / "pictures")
    assert set(sources.list_source(tmp_path / "pictures").splits) == {"train"}


def test_unrecognised_and_missing_sources(tmp_path):
    write(tmp_path / "readme.txt", b"nothing here")
    with pytest.raises(UserError, match="cannot tell"):
        sources.list_source(tmp_path)
    with pytest.raises(UserError, match="not found"):
        sources.list_source(tmp_path / "nope")


# ---------------------------------------------------------------------------- real imagenette

@needs_shared(IMAGENETTE)
def test_imagenette_as_shared():
    listing = sources.list_source(IMAGENETTE)
    wnids = sorted("n01440764 n02102040 n02979186 n03000684 n03028079 n03394916 n03417042 "
                   "n03425413 n03445777 n03888257".split())
    assert listing.kind == "folder" and [c.id for c in listing.classes] == wnids
    assert len(listing.splits["train"]) == 9469 and len(listing.splits["val"]) == 3925
    assert not listing.skipped["train"] and not listing.skipped["val"]
    for samples in listing.splits.values():
        assert all(s.label == wnids.index(Path(s.path).parent.name) for s in samples)
