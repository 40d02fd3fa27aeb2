"""`alexnet prepare`: odd files, accounting, statistics, resume after interruption, clear errors."""
import errno
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet import cli
from alexnet.data import prepare as prep
from alexnet.data import shards, store
from alexnet.data.decode import open_rgb, resize_crop
from alexnet.errors import UserError
from conftest import IMAGENETTE, needs_shared



def jpeg(arr, **kw):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "JPEG", quality=92, **kw)
    return buf.getvalue()


def odd_folder(root: Path) -> dict:
    """A train/val ImageFolder with every kind of file real data holds; returns what to expect."""
    rng = np.random.default_rng(0)
    t = root / "train"
    for c in ("n01440764", "n02102040", "n03888257"):
        (t / c).mkdir(parents=True)
        for i in range(4):
            (t / c / f"{i}.JPEG").write_bytes(jpeg(rng.integers(0, 256, (80 + 10 * i, 120, 3), dtype=np.uint8)))
    c = t / "n01440764"
    Image.new("CMYK", (90, 70), (0, 200, 0, 0)).save(c / "cmyk.JPEG", quality=90)
    Image.new("L", (70, 90), 100).save(c / "grey.JPEG")
    pal = Image.new("P", (64, 64), 1)
    pal.putpalette([0, 0, 0, 200, 10, 10] + [0] * 762)
    pal.save(c / "palette.png")
    Image.new("RGBA", (64, 80), (0, 0, 255, 128)).save(c / "alpha.png")
    Image.fromarray(np.full((70, 70), 40000, np.uint16)).save(c / "sixteen.png")
    Image.new("RGB", (66, 66), (5, 6, 7)).save(c / "n02105855_2933.JPEG", "PNG")  # a PNG named .JPEG
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (100, 64), (9, 9, 9)).save(c / "rotated.JPEG", exif=exif.tobytes())
    good = jpeg(rng.integers(0, 256, (80, 80, 3), dtype=np.uint8))
    (c / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    (c / "empty.JPEG").write_bytes(b"")
    (c / "notes.txt").write_text("not an image")
    (c / ".DS_Store").write_bytes(b"\0\1")  # hidden: not a sample at all
    v = root / "val" / "n02102040"
    v.mkdir(parents=True)
    for i in range(3):
        (v / f"v{i}.JPEG").write_bytes(jpeg(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)))
    return {"train_found": 12 + 10, "train_skipped": {"truncated.JPEG", "empty.JPEG", "notes.txt"}, "val": 3}


def test_odd_files_are_converted_or_skipped_and_accounted_for(tmp_path):
    expect = odd_folder(tmp_path / "src")
    manifest = prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0, progress=False)
    tr = manifest["splits"]["train"]
    assert manifest["format_version"] == store.FORMAT_VERSION
    assert tr["found"] == expect["train_found"] == tr["count"] + len(tr["skipped"])
    assert {Path(s["path"]).name for s in tr["skipped"]} == expect["train_skipped"]
    reasons = {Path(s["path"]).name: s["reason"] for s in tr["skipped"]}
    assert "empty" in reasons["empty.JPEG"] and "not an image" in reasons["notes.txt"]
    assert "truncated" in reasons["truncated.JPEG"]
    assert manifest["splits"]["val"]["count"] == expect["val"]
    assert [c["id"] for c in manifest["classes"]] == ["n01440764", "n02102040", "n03888257"]
    assert manifest["classes"][0]["name"] == "tench"
    ds = store.open_prepared(tmp_path / "out")
    split = ds.split("train")
    pixels = {Path(k).name: np.asarray(Image.open(io.BytesIO(split[i][0]))) for i, k in enumerate(split.keys())}
    assert all(p.shape == (64, 64, 3) for p in pixels.values())
    assert pixels["cmyk.JPEG"][..., 1].mean() < 100 and pixels["cmyk.JPEG"][..., 0].mean() > 200  # magenta
    assert abs(pixels["sixteen.png"].mean() - (40000 >> 8)) < 2
    assert abs(pixels["n02105855_2933.JPEG"].astype(float).mean(axis=(0, 1)) - [5, 6, 7]).max() < 2
    assert abs(pixels["alpha.png"][..., 0].mean() - 127) < 3  # half-transparent blue over white
    labels = {Path(k).name: int(split.labels[i]) for i, k in enumerate(split.keys())}
    assert labels["cmyk.JPEG"] == 0 and labels["0.JPEG"] in (0, 1, 2)


def test_statistics_match_a_float64_reference(tmp_path):
    odd_folder(tmp_path / "src")
    prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0, progress=False)
    ds = store.open_prepared(tmp_path / "out")
    arrays = []
    for key in ds.split("train").keys():  # recompute the stored images' pixels independently
        arrays.append(resize_crop(open_rgb((tmp_path / "src" / key).read_bytes(), 64), 64).astype(np.float64))
    x = np.stack(arrays)  # (N, 64, 64, 3)
    pix = x.reshape(-1, 3)
    st = ds.stats
    np.testing.assert_allclose(st["mean_image"], x.mean(0).transpose(2, 0, 1), rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(st["mean"], pix.mean(0), rtol=1e-9)
    np.testing.assert_allclose(st["cov"], np.cov(pix.T, bias=True), rtol=1e-5)
    np.testing.assert_allclose(st["std"], pix.std(0), rtol=1e-5)
    np.testing.assert_allclose(st["cov"] @ st["eigvec"], st["eigvec"] * st["eigval"], rtol=1e-6, atol=1e-6)
    assert np.all(np.diff(st["eigval"]) >= 0)
    assert ds.manifest["stats"]["split"] == "train" and ds.manifest["stats"]["scale"] == "0-255"


def fingerprint_of(out: Path) -> dict:
    m = json.loads((out / "manifest.json").read_text())
    return {"shards": {s: [x["sha256"] for x in v["shards"]] for s, v in m["splits"].items()},
            "index": {s: (out / s / "index.npy").read_bytes() for s in m["splits"]},
            "keys": {s: (out / s / "keys.txt").read_text() for s in m["splits"]},
            "stats": {k: v for k, v in m["stats"].items()}, "skipped": {s: v["skipped"] for s, v in m["splits"].items()}}


def test_interrupted_run_resumes_to_identical_output(tmp_path, monkeypatch):
    odd_folder(tmp_path / "src")
    prep.prepare(tmp_path / "src", tmp_path / "clean", size=64, workers=0, shard_size=4, progress=False)
    real = shards.run_task
    calls = {"n": 0}

    def flaky(task):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # Ctrl-C in the middle of the third shard
        return real(task)

    monkeypatch.setattr(shards, "run_task", flaky)
    with pytest.raises(KeyboardInterrupt):
        prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0, shard_size=4, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(UserError, match="interrupted `alexnet prepare`"):
        store.open_prepared(tmp_path / "out")
    monkeypatch.setattr(shards, "run_task", real)
    prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0, shard_size=4, progress=False)
    assert fingerprint_of(tmp_path / "out") == fingerprint_of(tmp_path / "clean")


def slow_source(tmp_path: Path, seed: int):
    """120 noise photos of 800x600 (slow enough to stop mid-run) and the prepare command for them:
    (out name) -> argv, one worker, shards of 8."""
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        (tmp_path / "src" / "train" / c).mkdir(parents=True)
        for i in range(60):
            (tmp_path / "src" / "train" / c / f"{i}.jpg").write_bytes(
                jpeg(rng.integers(0, 256, (600, 800, 3), dtype=np.uint8)))

    def cmd(out):
        return [sys.executable, "-m", "alexnet", "prepare", str(tmp_path / "src"), str(tmp_path / out),
                "--size", "64", "--workers", "1", "--shard-size", "8"]
    return cmd


def test_kill_9_mid_run_then_resume(tmp_path):
    cmd = slow_source(tmp_path, 1)

    proc = subprocess.Popen(cmd("killed"), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 60
    while len(list((tmp_path / "killed").glob("train/*.piece.npz"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)  # the parent and its worker, mid-shard
    proc.wait()
    assert not (tmp_path / "killed" / "manifest.json").exists()
    subprocess.run(cmd("killed"), check=True, capture_output=True)
    subprocess.run(cmd("clean"), check=True, capture_output=True)
    assert fingerprint_of(tmp_path / "killed") == fingerprint_of(tmp_path / "clean")
    assert not list((tmp_path / "killed").rglob("*.tmp")) and not list((tmp_path / "killed").rglob("*.piece.npz"))


def test_sigterm_mid_run_says_how_to_resume_and_the_rerun_counts_only_its_own_images(tmp_path):
    """SIGTERM (a scheduler's stop) to `prepare --workers 1`, which works in its own process: it
    killed the run silently mid-shard; now it ends as Ctrl-C does, with the resume hint, no
    temporary file left, and the rerun's speed line counts only what the rerun read."""
    cmd = slow_source(tmp_path, 2)
    proc = subprocess.Popen(cmd("stopped"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while len(list((tmp_path / "stopped").glob("train/*.piece.npz"))) < 2 and time.time() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "run the same command again to resume" in err, err[-2000:]
    assert not (tmp_path / "stopped" / "manifest.json").exists()
    assert not list((tmp_path / "stopped").rglob("*.tmp"))
    again = subprocess.run(cmd("stopped"), check=True, capture_output=True, text=True)
    assert "resuming:" in again.stdout + again.stderr
    assert "read in" in again.stdout and "the rest done by an earlier run" in again.stdout
    subprocess.run(cmd("clean"), check=True, capture_output=True)
    assert fingerprint_of(tmp_path / "stopped") == fingerprint_of(tmp_path / "clean")


def test_a_pool_of_workers_ends_without_a_word_on_stderr(tmp_path):
    """The pool's terminate() sends SIGTERM to its workers; with the parent's SIGTERM handler
    inherited through fork, each worker printed a KeyboardInterrupt traceback at every run's end."""
    odd_folder(tmp_path / "src")
    for run in range(3):  # it depends on where the worker is when the signal comes: 2 runs of 3 showed it
        proc = subprocess.run([sys.executable, "-m", "alexnet", "prepare", str(tmp_path / "src"),
                               str(tmp_path / f"out{run}"), "--size", "64", "--workers", "2", "--shard-size", "4"],
                              capture_output=True, text=True)
        assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr


def test_one_worker_moves_the_progress_display_at_every_image(tmp_path, monkeypatch):
    """In-process (workers 0 or 1) the display was updated only when a shard ended: with shards of
    thousands of images, minutes apart."""
    odd = odd_folder(tmp_path / "src")
    updates = []

    class Recorder:
        n = 0

        def update(self, k):
            updates.append(k)
            self.n += k

        def close(self):
            pass

    monkeypatch.setattr(shards, "_progress_bar", lambda total, progress: Recorder())
    prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=1, shard_size=1000, progress=False)
    assert updates and set(updates) == {1} and len(updates) == odd["train_found"] + odd["val"]


def test_disk_full_is_a_clear_error_and_resumable(tmp_path, monkeypatch):
    odd_folder(tmp_path / "src")
    real_add = store.ShardWriter.add
    count = {"n": 0}

    def full(self, *args, **kwargs):
        count["n"] += 1
        if count["n"] > 9:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_add(self, *args, **kwargs)

    monkeypatch.setattr(store.ShardWriter, "add", full)
    with pytest.raises(UserError, match="disk full while writing .*run the same command again"):
        prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0, shard_size=4, progress=False)
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not list((tmp_path / "out").rglob("*.tar.tmp"))  # the half shard was removed, never renamed
    monkeypatch.setattr(store.ShardWriter, "add", real_add)
    prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0, shard_size=4, progress=False)
    store.open_prepared(tmp_path / "out").split("train")


def test_bad_sources_and_outputs(tmp_path):
    with pytest.raises(UserError, match="source not found"):
        prep.prepare(tmp_path / "missing", tmp_path / "out", progress=False)
    (tmp_path / "empty" / "train" / "c").mkdir(parents=True)
    with pytest.raises(UserError, match="no images found"):
        prep.prepare(tmp_path / "empty", tmp_path / "out", progress=False)
    odd_folder(tmp_path / "src")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(UserError, match="cannot write to"):
        prep.prepare(tmp_path / "src", tmp_path / "a_file" / "out", progress=False)
    with pytest.raises(UserError, match="--quality"):
        prep.prepare(tmp_path / "src", tmp_path / "out", quality=101, progress=False)


def test_rerun_is_a_no_op_and_other_options_are_refused(tmp_path, capsys):
    odd_folder(tmp_path / "src")
    first = prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0)
    again = prep.prepare(tmp_path / "src", tmp_path / "out", size=64, workers=0)
    assert again == first and "nothing to do" in capsys.readouterr().err
    with pytest.raises(UserError, match="already holds a data set prepared from other data or options"):
        prep.prepare(tmp_path / "src", tmp_path / "out", size=72, workers=0, progress=False)


def test_keep_aspect_stores_whole_images(tmp_path):
    odd_folder(tmp_path / "src")
    prep.prepare(tmp_path / "src", tmp_path / "out", size=64, keep_aspect=True, workers=0, progress=False)
    split = store.open_prepared(tmp_path / "out").split("train")
    shapes = {(int(r["height"]), int(r["width"])) for r in split.index}
    assert min(min(s) for s in shapes) == 64 and any(max(s) > 64 for s in shapes)
    assert store.open_prepared(tmp_path / "out").stats["mean_image"].shape == (3, 64, 64)


def test_cli_prepare_with_worker_processes(tmp_path, capsys):
    odd_folder(tmp_path / "src")
    status = cli.main(["prepare", str(tmp_path / "src"), str(tmp_path / "out"), "--size", "64",
                       "--workers", "2", "--shard-size", "5"])
    out = capsys.readouterr().out
    assert status == 0 and "train" in out and "skipped" in out
    assert store.open_prepared(tmp_path / "out").split("train").__len__() == 19
    status = cli.main(["prepare", str(tmp_path / "nowhere"), str(tmp_path / "o2")])
    assert status == 2 and "source not found" in capsys.readouterr().err


@needs_shared(IMAGENETTE)
def test_imagenette_is_fully_accounted_for(tmp_path):
    manifest = prep.prepare(IMAGENETTE, tmp_path / "nette", progress=False)
    splits = manifest["splits"]
    assert splits["train"]["count"] + splits["val"]["count"] == 13_394
    assert splits["train"]["count"] == 9_469 and splits["val"]["count"] == 3_925
    assert not splits["train"]["skipped"] and not splits["val"]["skipped"]
    wnids = [c["id"] for c in manifest["classes"]]
    assert wnids == sorted(wnids) and len(wnids) == 10
    ds = store.open_prepared(tmp_path / "nette")
    for name in ("train", "val"):
        split = ds.split(name)
        folders = [Path(k).parent.name for k in split.keys()]
        assert [wnids[label] for label in split.labels] == folders
    assert 100 < manifest["stats"]["mean"][0] < 140


def test_a_request_object_and_its_shorthand_fields_are_the_same_job(tmp_path):
    """prepare(src, out, Request(...)) and prepare(src, out, size=..., ...) prepare alike; an unknown
    field is a TypeError, a bad value the flag's own UserError."""
    odd_folder(tmp_path / "src")
    a = prep.prepare(tmp_path / "src", tmp_path / "a", prep.Request(size=64, workers=0, shard_size=4), progress=False)
    b = prep.prepare(tmp_path / "src", tmp_path / "b", size=64, workers=0, shard_size=4, progress=False)
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [s["sha256"] for s in b["splits"]["train"]["shards"]]
    assert a["options"] == b["options"]
    with pytest.raises(TypeError):
        prep.prepare(tmp_path / "src", tmp_path / "c", sise=64)
    with pytest.raises(UserError, match="--quality must be in 1..100"):
        prep.prepare(tmp_path / "src", tmp_path / "c", prep.Request(quality=0))
