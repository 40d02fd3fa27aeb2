"""The resident data path (alexnet.data.resident): the same batches as the streaming loader, bit for
bit; its cache; the choice data.resident makes; and a training run that cannot tell the two apart."""
import json
import os
import shutil
import threading
import time

import numpy as np
import pytest
import torch

from alexnet import checkpoint, config
from alexnet.data import resident
from alexnet.data.loader import Loader
from alexnet.data.store import DamagedSample, open_prepared
from alexnet.errors import UserError
from alexnet.data.prepare import prepare
from alexnet.train import train

from test_loader import make_source


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    base = tmp_path_factory.mktemp("resident")
    make_source(base / "src", n_per_class=(13, 11))
    for name, kw in (("jpeg", {}), ("raw", {"raw": True}), ("aspect", {"keep_aspect": True})):
        prepare(base / "src", base / name, size=40, workers=0, progress=False, **kw)
    return base


def copy_set(src, dst):
    """A prepared set copied without the caches other tests left in it."""
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("decoded-*"))


def load(ds, name, **kw):
    return resident.load(ds.split(name), ds.size, "cpu", progress=False, say=None, **kw)


def same_batches(a: Loader, b: Loader, epoch: int, start_step: int = 0) -> int:
    n = 0
    for x, y in zip(a.epoch(epoch, start_step), b.epoch(epoch, start_step), strict=True):
        assert torch.equal(x.indices, y.indices) and torch.equal(x.labels, y.labels)
        assert x.images.dtype == y.images.dtype and x.images.shape == y.images.shape
        assert x.images.is_contiguous(memory_format=torch.channels_last) == \
            y.images.is_contiguous(memory_format=torch.channels_last)
        assert torch.equal(x.images, y.images), f"batch {n} differs"
        n += 1
    return n


CASES = {  # the augmentations of the presets: §4.1 crops, fast's random-resized crops, bf16 channels_last
    "paper crops + PCA": dict(train=True, crop=32, pca_std=0.1),
    "random-resized + channel norm, bf16 NHWC": dict(train=True, crop=32, pca_std=0.1, scale=(0.25, 1.0),
                                                     ratio=(0.75, 1.33), mean="channel", dtype="bfloat16",
                                                     channels_last=True),
    "centre crop": dict(train=False, crop=32, views=1),
    "10 views": dict(train=False, crop=32, views=10),
}


@pytest.mark.parametrize("encoding", ["jpeg", "raw"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("workers", [0, 2])
def test_resident_batches_equal_the_streaming_ones_bit_for_bit(data, encoding, case, workers):
    """Same keys, same generator seeds, same augmentation code: identical batches, on every rank,
    including the last partial batch and an epoch other than the first."""
    ds = open_prepared(data / encoding)
    kw = CASES[case]
    name = "train" if kw["train"] else "val"
    res = load(ds, name)
    for rank in (0, 1):
        common = dict(seed=3, rank=rank, world_size=2, drop_last=False, **kw)
        streamed = Loader(ds.split(name), ds, batch_size=4, workers=workers, **common)
        held = Loader(ds.split(name), ds, batch_size=4, workers=0, resident=res, **common)
        assert held.resident is not None and streamed.resident is None
        assert same_batches(streamed, held, epoch=1) == streamed.steps(1) > 1
        streamed.close()


def test_a_mid_epoch_resume_yields_the_rest_of_the_epoch_exactly(data):
    ds = open_prepared(data / "jpeg")
    res = load(ds, "train")
    held = Loader(ds.split("train"), ds, batch_size=4, train=True, crop=32, pca_std=0.1, resident=res, scale=(0.3, 1))
    full = [b.images.clone() for b in held.epoch(2)]
    rest = [b.images.clone() for b in held.epoch(2, start_step=2)]
    assert len(rest) == len(full) - 2 and all(torch.equal(a, b) for a, b in zip(full[2:], rest))


def test_an_abandoned_epoch_stops_its_thread_and_errors_reach_the_consumer(data, monkeypatch):
    ds = open_prepared(data / "jpeg")
    held = Loader(ds.split("train"), ds, batch_size=2, train=True, crop=32, resident=load(ds, "train"))
    for _ in zip(range(2), held.epoch(0)):
        pass
    it = held.epoch(0)
    next(it)
    it.close()  # a break: the generator is closed
    assert not [t for t in threading.enumerate() if t.name.startswith("alexnet-resident")]
    assert len(list(held.epoch(1))) == held.steps(1)  # the next epoch is whole

    def broken(*a, **k):
        raise RuntimeError("made to fail")
    monkeypatch.setattr(held, "_resident_batch", broken)
    with pytest.raises(RuntimeError, match="made to fail"):
        list(held.epoch(2))


def test_the_decoded_split_equals_the_decoder_and_the_raw_pixels(data):
    jpeg, raw = open_prepared(data / "jpeg"), open_prepared(data / "raw")
    a = load(jpeg, "train", cache="false")
    b = load(raw, "train")
    split = jpeg.split("train")
    assert a.images.shape == (len(split), 40, 40, 3) and a.images.dtype == torch.uint8
    for i in (0, 7, len(split) - 1):
        assert torch.equal(a.images[i], split.images([i])[0].permute(1, 2, 0))
        assert torch.equal(b.images[i], torch.from_numpy(raw.split("train")[i][0]))
    assert torch.equal(a.labels, torch.from_numpy(np.asarray(split.index["label"], dtype=np.int64)))
    assert "copied (raw pixels)" in b.source


def test_the_cache_is_mapped_next_time_and_rebuilt_when_damaged_or_stale(data, tmp_path):
    ds_path = tmp_path / "jpeg"
    copy_set(data / "jpeg", ds_path)
    ds = open_prepared(ds_path)
    said = []
    first = resident.load(ds.split("train"), ds.size, "cpu", progress=False, say=said.append)
    npy, meta = resident.cache_paths(ds.split("train"), "libjpeg-turbo")
    assert "cached in" in first.source and npy.stat().st_size >= first.nbytes
    assert not list(npy.parent.glob("*.tmp"))
    second = resident.load(ds.split("train"), ds.size, "cpu", progress=False, say=said.append)
    assert second.source.startswith("mapped from") and torch.equal(first.images, second.images)
    decoded = first.images.clone()  # first.images maps the file that is damaged next

    with open(npy, "r+b") as f:  # one pixel changed on disk
        f.seek(-5, os.SEEK_END)
        byte = f.read(1)
        f.seek(-5, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0xFF]))
    third = resident.load(ds.split("train"), ds.size, "cpu", progress=False, say=said.append)
    assert "damaged" in said[-1] and "cached in" in third.source and torch.equal(third.images, decoded)

    m = json.loads(meta.read_text())
    meta.write_text(json.dumps({**m, "split_sha256": "0" * 64}))  # the split was prepared again since
    resident.load(ds.split("train"), ds.size, "cpu", progress=False, say=said.append)
    assert "another version of the split" in said[-1]
    shard = ds.split("train").shard_files[0]
    os.utime(shard, ns=(shard.stat().st_atime_ns, shard.stat().st_mtime_ns + 10 ** 9))  # rewritten since
    resident.load(ds.split("train"), ds.size, "cpu", progress=False, say=said.append)
    assert "its shards changed since it was made" in said[-1]
    assert resident.load(ds.split("train"), ds.size, "cpu", cache="false", progress=False, say=None).source \
        .startswith("decoded by")


def test_a_read_only_data_set_is_decoded_without_a_cache(data, tmp_path, monkeypatch):
    ds_path = tmp_path / "ro"
    copy_set(data / "jpeg", ds_path)
    monkeypatch.setattr(resident.os, "access", lambda path, mode: False)  # as root, chmod would not stop us
    said = []
    r = resident.load(open_prepared(ds_path).split("train"), 40, "cpu", progress=False, say=said.append)
    assert "not writable" in said[0] and "cached" not in r.source
    assert not list((ds_path / "train").glob("decoded-*"))


def test_no_room_for_the_cache_is_said_and_decoding_goes_on(data, tmp_path, monkeypatch):
    ds_path = tmp_path / "full"
    copy_set(data / "jpeg", ds_path)
    monkeypatch.setattr(resident.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(100, 100, 10))
    said = []
    r = resident.load(open_prepared(ds_path).split("train"), 40, "cpu", progress=False, say=said.append)
    assert "needs" in said[0] and "cached" not in r.source
    assert not list((ds_path / "train").glob("decoded-*"))


def test_a_damaged_sample_is_the_same_one_line_error_as_when_streaming(data, tmp_path):
    ds_path = tmp_path / "bad"
    copy_set(data / "jpeg", ds_path)
    ds = open_prepared(ds_path)
    row = ds.split("train").index[5]
    shard = ds.split("train").shard_files[int(row["shard"])]
    with open(shard, "r+b") as f:  # same size, other bytes: the shard passes its size check
        f.seek(int(row["offset"]) + 20)
        f.write(b"\x00\x01\x02")
    with pytest.raises(DamagedSample) as e:
        resident.load(open_prepared(ds_path).split("train"), 40, "cpu", cache="false", progress=False, say=None)
    assert "sample 5 of train" in str(e.value) and "\n" not in str(e.value)


def test_auto_holds_what_fits_and_streams_the_rest_with_its_reason(data):
    ds = open_prepared(data / "jpeg")
    splits = [ds.split("train"), ds.split("val")]
    need = sum(resident.split_bytes(s, 40) for s in splits)
    cpu = torch.device("cpu")
    fits, why = resident.decide(ds, splits, "auto", cpu, free=4 * need)
    assert fits and "within 50%" in why
    fits, why = resident.decide(ds, splits, "auto", cpu, ranks_on_node=4, free=4 * need)  # 4 copies on one host
    assert not fits and "shared by 4 ranks" in why and "streamed" in why
    assert resident.decide(ds, splits, "true", cpu, free=4 * need)[0]
    with pytest.raises(UserError, match="do not fit"):
        resident.decide(ds, splits, "true", cpu, free=need)
    assert resident.decide(ds, splits, "false", cpu, free=100 * need) == (False, "data.resident=false")
    aspect = open_prepared(data / "aspect")
    fits, why = resident.decide(aspect, [aspect.split("train")], "auto", cpu, free=100 * need)
    assert not fits and "keep-aspect" in why
    with pytest.raises(UserError, match="keep-aspect"):
        resident.decide(aspect, [aspect.split("train")], "true", cpu)
    with pytest.raises(ValueError, match="not this split's"):  # a resident split of another size
        Loader(ds.split("train"), ds, batch_size=4, train=True, crop=32, resident=load(ds, "val"))


def run_cfg(data, out, *sets):
    base = [f"data.path={data}", f"train.out={out}", "train.epochs=2", "data.crop=72", "data.progressive_from=64",
            "train.precision=fp32"]
    return config.resolve("tiny", sets=base + list(sets))


def test_training_resident_or_streamed_gives_the_same_weights(tiny, tmp_path, capsys):
    """The whole run cannot tell the two paths apart: the same batches in the same order give
    the same weights and the same validation numbers (progressive resizing included)."""
    held = train(run_cfg(tiny, tmp_path / "held", "train.epochs=4", "data.resident=true", "data.resident_cache=false"),
                 progress=True)
    said = capsys.readouterr().out
    assert "data: resident in cpu memory" in said and "train: 80 images of 72x72" in said
    assert "training crops: 72 px" in said  # progressive resizing: a new loader on the same resident split
    streamed = train(run_cfg(tiny, tmp_path / "streamed", "train.epochs=4", "data.resident=false", "data.workers=2"),
                     progress=True)
    assert "data: streamed by worker processes (data.resident=false)" in capsys.readouterr().out
    assert held["top1"] == streamed["top1"] and held["val_loss"] == streamed["val_loss"]
    a, b = checkpoint.load(tmp_path / "held" / "last.pt"), checkpoint.load(tmp_path / "streamed" / "last.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])


def test_a_bad_resident_setting_is_one_line(tiny, tmp_path):
    from alexnet import cli
    assert cli.main(["train", "--data", str(tiny), "--out", str(tmp_path / "x"), "--set", "data.resident=maybe"]) == 2
    with pytest.raises(UserError, match="keep-aspect"):
        aspect_root = tmp_path / "aspect"
        make_source(tmp_path / "src")
        prepare(tmp_path / "src", aspect_root, size=72, keep_aspect=True, workers=0, progress=False)
        train(run_cfg(aspect_root, tmp_path / "y", "data.resident=true", "data.progressive_from=none"),
              progress=False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_resident_batches_equal_the_streaming_gpu_path(data):
    """On a GPU both paths decode with nvJPEG (the resident one once, in batches) and augment with
    the same gather code on the device: the same batches, bit for bit."""
    ds = open_prepared(data / "jpeg")
    for kw in CASES.values():
        name = "train" if kw["train"] else "val"
        res = resident.load(ds.split(name), ds.size, "cuda", progress=False, say=None)
        assert res.images.is_cuda and res.labels.is_cuda
        streamed = Loader(ds.split(name), ds, batch_size=4, workers=2, device="cuda", **kw)
        held = Loader(ds.split(name), ds, batch_size=4, workers=0, device="cuda", resident=res, **kw)
        assert streamed.spec.gpu_decode and not held.spec.gpu_decode
        assert same_batches(streamed, held, epoch=1) == streamed.steps(1)
        streamed.close()


def test_bench_feed_without_data_is_one_line(capsys):
    from alexnet import cli
    assert cli.main(["bench", "feed"]) == 2
    assert "bench feed needs --data" in capsys.readouterr().err


def test_a_cache_json_that_is_not_ours_or_missing_is_said_and_rebuilt(data, tmp_path):
    ds_path = tmp_path / "j"
    copy_set(data / "jpeg", ds_path)
    split = open_prepared(ds_path).split("train")
    first = resident.load(split, 40, "cpu", progress=False, say=None).images.clone()
    npy, meta = resident.cache_paths(split, "libjpeg-turbo")
    for content, phrase in ((b"[1, 2]", "is not what alexnet writes"), (b"null", "is not what alexnet writes"),
                            (b"{not json", "is not what alexnet writes"), (b"\xff\xfe bytes", "is not what alexnet writes"),
                            (None, "has no decoded-libjpeg-turbo.json beside it")):
        if content is None:
            meta.unlink()
        else:
            meta.write_bytes(content)
        said = []
        r = resident.load(open_prepared(ds_path).split("train"), 40, "cpu", progress=False, say=said.append)
        assert phrase in said[0] and "cached in" in r.source and torch.equal(r.images, first), (content, said)
        assert (str(meta) in said[0]) == (content is not None)  # the file at fault is the one named


def test_a_decode_stopped_midway_leaves_no_temporary_and_a_killed_ones_leftover_goes(data, tmp_path, monkeypatch):
    """SIGTERM (a scheduler's stop) while the cache was written left a full-size temporary file
    for ever (63 GB at ImageNet's size): it is now an interrupt, and what a kill -9 left is removed
    by the next writer on this machine."""
    import signal as sig
    from alexnet.fileio import temporary_path
    from alexnet.process import sigterm_as_interrupt
    ds_path = tmp_path / "t"
    copy_set(data / "jpeg", ds_path)
    split = open_prepared(ds_path).split("train")
    npy, _ = resident.cache_paths(split, "libjpeg-turbo")
    real = resident._decode_into

    def stopped(out, *a):
        os.kill(os.getpid(), sig.SIGTERM)  # arrives while the cache file is being filled
        return real(out, *a)
    monkeypatch.setattr(resident, "_decode_into", stopped)
    with pytest.raises(KeyboardInterrupt):
        resident.load(split, 40, "cpu", progress=False, say=None)
    assert not list(npy.parent.glob("decoded-*"))
    monkeypatch.setattr(resident, "_decode_into", real)
    dead = temporary_path(npy).name.split(".")  # <name>.<host>.<pid>-<hex>.tmp of a process that is gone
    leftover = npy.parent / ".".join(dead[:-2] + [f"999999999-{dead[-2].split('-')[1]}", "tmp"])
    leftover.write_bytes(b"x" * 100)
    resident.load(split, 40, "cpu", progress=False, say=None)
    assert not leftover.exists() and npy.is_file()
    with pytest.raises(KeyboardInterrupt), sigterm_as_interrupt():
        os.kill(os.getpid(), sig.SIGTERM)
        time.sleep(1)
