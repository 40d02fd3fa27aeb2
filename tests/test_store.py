"""The prepared format: WebDataset-compatible shards, random access, clear errors when damaged."""
import io
import json
import os
import tarfile

import numpy as np
import pytest
from PIL import Image

from alexnet import fileio
from alexnet.data import store
from alexnet.data.prepare import prepare
from alexnet.errors import UserError


def make_folder(root, classes=("n01440764", "n02102040"), per_class=5, size=(90, 70)):
    rng = np.random.default_rng(0)
    for c in classes:
        (root / "train" / c).mkdir(parents=True)
        (root / "val" / c).mkdir(parents=True)
        for i in range(per_class):
            for split in ("train", "val"):
                a = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
                Image.fromarray(a).save(root / split / c / f"{c}_{i}.JPEG", quality=95)
    return root


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    base = tmp_path_factory.mktemp("store")
    src = make_folder(base / "src")
    prepare(src, base / "out", size=64, workers=0, shard_size=3, progress=False)
    return base / "out"


def test_shards_are_plain_webdataset_tars(prepared):
    ds = store.open_prepared(prepared)
    split = ds.split("train")
    members = {}
    for shard in ds.manifest["splits"]["train"]["shards"]:
        with tarfile.open(prepared / shard["file"]) as tar:
            for m in tar.getmembers():
                members[m.name] = tar.extractfile(m).read()
    jpgs = sorted(k for k in members if k.endswith(".jpg"))
    assert len(jpgs) == len(split) == 10
    for i, name in enumerate(jpgs):  # the index points at exactly the member's bytes
        key = name[:-4]
        data, label = split[i]
        assert data == members[name] and int(members[key + ".cls"]) == label
        assert Image.open(io.BytesIO(data)).size == (64, 64)
    assert split.labels.tolist() == [0] * 5 + [1] * 5
    assert split.keys()[0].endswith("n01440764_0.JPEG")


def test_share_is_disjoint_and_complete(prepared):
    split = store.open_prepared(prepared).split("val")
    for world in (1, 2, 3):
        shares = [split.share(r, world) for r in range(world)]
        together = np.concatenate(shares)
        assert sorted(together.tolist()) == list(range(len(split)))
        assert max(len(s) for s in shares) - min(len(s) for s in shares) <= 1


def test_split_survives_pickling(prepared):
    import pickle
    split = store.open_prepared(prepared).split("train")
    first = split[0]
    clone = pickle.loads(pickle.dumps(split))
    assert clone[0] == first


def test_raw_storage_round_trips_the_pixels(tmp_path):
    src = make_folder(tmp_path / "src", classes=("a",), per_class=3)
    prepare(src, tmp_path / "raw", size=48, raw=True, workers=0, progress=False)
    ds = store.open_prepared(tmp_path / "raw")
    from alexnet.data.decode import open_rgb, resize_crop
    split = ds.split("train")
    for i, key in enumerate(split.keys()):
        arr, label = split[i]
        want = resize_crop(open_rgb((src / key).read_bytes(), 48), 48)
        np.testing.assert_array_equal(arr, want)
    with tarfile.open(tmp_path / "raw" / ds.manifest["splits"]["train"]["shards"][0]["file"]) as tar:
        name = next(m for m in tar.getmembers() if m.name.endswith(".npy"))
        np.testing.assert_array_equal(np.load(io.BytesIO(tar.extractfile(name).read())), split[0][0])


def copy_tree(src, dst):
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_not_ours_and_other_versions(tmp_path, prepared):
    with pytest.raises(UserError, match="not found"):
        store.open_prepared(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a prepared data set: it has no manifest.json"):
        store.open_prepared(tmp_path / "empty")
    other = copy_tree(prepared, tmp_path / "other")
    m = json.loads((other / "manifest.json").read_text())
    (other / "manifest.json").write_text(json.dumps({**m, "format": "ffcv"}))
    with pytest.raises(UserError, match="not an alexnet prepared data set"):
        store.open_prepared(other)
    (other / "manifest.json").write_text(json.dumps({**m, "format_version": 99}))
    with pytest.raises(UserError, match="format version 99, this alexnet reads versions 1, 2"):
        store.open_prepared(other)
    (other / "manifest.json").write_text("{ not json")
    with pytest.raises(UserError, match="damaged"):
        store.open_prepared(other)


def test_damaged_shards_and_index(tmp_path, prepared):
    bad = copy_tree(prepared, tmp_path / "bad")
    ds = store.open_prepared(bad)
    shard = bad / ds.manifest["splits"]["train"]["shards"][1]["file"]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(UserError, match=r"shard damaged: .*train-00001.tar has \d+ bytes"):
        store.open_prepared(bad).split("train")
    store.open_prepared(bad).split("val")  # the other split is fine
    shard.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])  # same size, one bit flipped
    assert store.open_prepared(bad).verify() == [str(shard.relative_to(bad))]
    shard.unlink()
    with pytest.raises(UserError, match="shard missing"):
        store.open_prepared(bad).split("train")
    (bad / "val" / "index.npy").write_bytes(b"garbage")
    with pytest.raises(UserError, match="index damaged"):
        store.open_prepared(bad).split("val")
    with pytest.raises(UserError, match="has no split 'test'"):
        store.open_prepared(bad).split("test")


def test_atomic_write_leaves_old_or_new(tmp_path):
    path = tmp_path / "f.json"
    fileio.atomic_write(path, b"old")
    fileio.atomic_write(path, b"new")
    assert path.read_bytes() == b"new" and not list(tmp_path.glob("*.tmp"))


def test_atomic_write_by_two_writers_at_once_and_after_a_killed_one(tmp_path, monkeypatch):
    """Two processes writing one path (ranks of an ablation, runs caching the ceiling) each get a
    whole file, never each other's half or a FileNotFoundError; what a killed writer left is removed
    by the next write; a failure after the previous file was set aside puts it back."""
    import os
    import subprocess
    import sys
    path = tmp_path / "shared.json"
    writer = ("import sys; from alexnet.fileio import atomic_write\n"
              "for i in range(300): atomic_write(sys.argv[1], sys.argv[2].encode() * 1000, durable=False)")
    procs = [subprocess.Popen([sys.executable, "-c", writer, str(path), tag]) for tag in "ab"]
    assert [p.wait() for p in procs] == [0, 0]
    assert path.read_bytes() in (b"a" * 1000, b"b" * 1000) and not list(tmp_path.glob("*.tmp"))

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    from alexnet.fileio import _HOST
    leftover = tmp_path / f"shared.json.{_HOST}.{dead.pid}-0123abcd.tmp"
    leftover.write_bytes(b"half")
    other = tmp_path / "shared.json.prev.123-0123abcd.tmp"  # another target's: not touched
    other.write_bytes(b"x")
    remote = tmp_path / f"shared.json.{_HOST}x.{dead.pid}-0123abcd.tmp"  # another machine's (shared disk)
    remote.write_bytes(b"y")
    fileio.atomic_write(path, b"new")
    assert not leftover.exists() and other.exists() and path.read_bytes() == b"new"
    assert remote.exists()

    prev = tmp_path / "shared.prev.json"
    real, calls = os.replace, []

    def second_rename_fails(a, b):
        calls.append((a, b))
        if len(calls) == 2:  # shared.json kept as shared.prev.json; the new file's rename fails
            raise OSError(28, "No space left on device")
        return real(a, b)
    monkeypatch.setattr(os, "replace", second_rename_fails)
    with pytest.raises(OSError, match="No space left"):
        fileio.atomic_write(path, b"newer", keep_previous=prev)
    monkeypatch.undo()
    # the target never went missing and still holds the last complete write (so does its .prev)
    assert path.read_bytes() == b"new" and prev.read_bytes() == b"new"
    assert [p for p in tmp_path.glob("shared.json.*.tmp") if p not in (other, remote)] == []


def test_reading_every_sample_maps_no_shard_into_the_process(prepared):
    """a reader (a persistent loader worker) must not end an epoch with the whole
    split in its resident set. Samples are read with pread: no shard file is ever mapped, so the
    pages read stay the kernel's page cache, outside the process's RSS."""
    split = store.open_prepared(prepared).split("train")
    for i in range(len(split)):
        split[i]
    assert len(split._files) == len(split.shard_files) > 1  # every shard was read
    maps = open("/proc/self/maps").read() if os.path.exists("/proc/self/maps") else ""
    assert not [f for f in split.shard_files if str(f) in maps]


def test_a_batch_reads_its_own_labels_not_the_whole_column(prepared, monkeypatch):
    """the loader took each batch's labels from the whole label column converted
    to int64 (4.3 ms a batch at 1.28 M rows, quadratic in the epoch); labels_at reads the rows."""
    from alexnet.data.loader import Loader
    ds = store.open_prepared(prepared)
    split = ds.split("train")
    want = np.asarray(split.index["label"], dtype=np.int64)
    idx = np.array([7, 0, 3, 3])
    assert split.labels_at(idx).dtype == np.int64 and split.labels_at(idx).tolist() == want[idx].tolist()
    monkeypatch.setattr(store.PreparedSplit, "labels", property(lambda self: pytest.fail("the whole column read")))
    loader = Loader(split, ds, batch_size=4, train=True, crop=56, workers=0)
    batches = list(loader.epoch(0))
    assert batches and all(b.labels.tolist() == want[b.indices.numpy()].tolist() for b in batches)
