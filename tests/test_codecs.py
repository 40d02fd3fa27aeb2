"""The fast decoder and resampler of `alexnet prepare` (alexnet.data.codecs), checked against
Pillow's (an independent library: the reference `prepare` used before), on the shared ImageNet
photographs where they are present and on generated files of every kind a real folder holds."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alexnet.data import codecs, sources
from alexnet.data import prepare as prep
from alexnet.data.decode import BadImage, open_rgb, resize_crop
from alexnet.data.shards import Options
from alexnet.errors import UserError

pytest.importorskip("simplejpeg")
PHOTOS = Path(__file__).resolve().parents[2] / "shared" / "data" / "imagenet-photos"
FAST = dict(decoder="simplejpeg", resampler="torch")


def psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def photo(w, h, seed=0, mode="RGB", **save) -> bytes:
    """A smooth random photo-like JPEG (a low-frequency field plus a little noise)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (max(2, h // 32), max(2, w // 32), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC)
    arr = np.clip(np.asarray(img, np.int16) + rng.integers(-8, 9, (h, w, 3)), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).convert(mode).save(buf, "JPEG", quality=92, **save)
    return buf.getvalue()


def real_photos(n=None):
    files = sorted(PHOTOS.glob("train/*/*.JPEG"))
    if not files:
        pytest.skip(f"needs the ImageNet photographs at {PHOTOS}")
    return files[:n] if n else files


def test_simplejpeg_decodes_exactly_pillows_pixels_on_imagenet_photos():
    """Every photo it takes, at full size and at the draft scales (a 64 px target decodes the
    larger photos at 1/2 or 1/4), pixel for pixel what open_rgb gives; the rest it hands back."""
    taken = 0
    for f in real_photos():
        data = f.read_bytes()
        for side in (256, 64):
            arr = codecs.decode_simplejpeg(data, side)
            if arr is None:
                continue
            ref = np.asarray(open_rgb(data, side))
            assert arr.shape == ref.shape and np.array_equal(arr, ref), (f.name, side)
            taken += 1
    assert taken >= 0.95 * 2 * len(real_photos())  # all but the EXIF-rotated few


def test_the_torch_resampler_agrees_with_pillows_crop_box_resize():
    """torch's uint8 antialiased bicubic against Pillow's (Keys a = -0.5 both): 50 dB or more on
    real photos, fewer than 1 in 100 values more than 1 level apart
    (the two round their fixed-point sums differently); and the same shapes as resize_crop for odd sizes,
    keep_aspect included (brute force over sizes)."""
    for f in real_photos(60):
        arr = np.asarray(open_rgb(f.read_bytes(), 256))
        ours, ref = codecs.resize_crop_torch(arr, 256), resize_crop(Image.fromarray(arr), 256)
        assert ours.shape == ref.shape == (256, 256, 3)
        diff = np.abs(ours.astype(int) - ref)
        assert psnr(ours, ref) >= 50 and np.mean(diff > 1) < 1e-2, f.name
    rng = np.random.default_rng(0)
    for w, h in [(257, 256), (300, 41), (41, 300), (1000, 999), (64, 64), (2000, 100), (333, 500)]:
        arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        for keep in (False, True):
            assert codecs.resize_crop_torch(arr, 64, keep).shape == resize_crop(Image.fromarray(arr), 64, keep).shape


def test_what_the_fast_decoder_does_not_take_goes_through_pillow():
    """CMYK, EXIF-rotated, PNG-in-a-.jpg, greyscale, progressive and large JPEGs give Pillow's path's
    pixels or its own within the resampler's difference; damaged ones give open_rgb's reason."""
    fast, slow = codecs.Pixels(64, **FAST), codecs.Pixels(64)
    rotated = io.BytesIO()
    exif = Image.Exif()
    exif[0x0112] = 6  # turned 90 degrees: the stored 200x120 is shown as 120x200
    Image.open(io.BytesIO(photo(200, 120))).save(rotated, "JPEG", exif=exif.tobytes())
    png = io.BytesIO()
    Image.open(io.BytesIO(photo(150, 100))).save(png, "PNG")
    cases = {"cmyk": photo(160, 120, mode="CMYK"), "rotated": rotated.getvalue(), "png": png.getvalue(),
             "grey": photo(160, 120, mode="L"), "progressive": photo(160, 120, progressive=True),
             "large": photo(1600, 1200, seed=1)}
    assert codecs.decode_simplejpeg(cases["cmyk"], 64) is None
    assert codecs.decode_simplejpeg(cases["rotated"], 64) is None
    assert codecs.decode_simplejpeg(cases["grey"], 64) is not None
    for name, data in cases.items():
        a, b = fast.load(data), slow.load(data)
        assert a.shape == b.shape == (64, 64, 3), name
        assert psnr(a, b) >= 45, name
    whole = photo(300, 200, seed=2)
    for bad in (whole[: len(whole) // 2], whole[:3] + b"\x00" * 200, b"\xff\xd8\xff"):
        with pytest.raises(BadImage) as fast_error:
            fast.load(bad)
        with pytest.raises(BadImage) as slow_error:
            slow.load(bad)
        assert str(fast_error.value) == str(slow_error.value)


def test_the_pixel_limit_holds_for_the_fast_decoder(monkeypatch):
    monkeypatch.setenv("ALEXNET_MAX_PIXELS", "10000")
    with pytest.raises(BadImage, match="too large to decode: 400x300 JPEG"):
        codecs.Pixels(64, **FAST).load(photo(400, 300))


def test_auto_picks_the_fast_pair_where_the_job_repays_torchs_import(monkeypatch):
    assert codecs.auto_choice(codecs.AUTO_MIN * 4, 4) == ("simplejpeg", "torch")
    assert codecs.auto_choice(codecs.AUTO_MIN * 4 - 1, 4) == ("pillow", "pillow")
    assert codecs.auto_choice(codecs.AUTO_MIN, 0) == ("simplejpeg", "torch")  # in this process: one worker
    monkeypatch.setattr(codecs, "simplejpeg_available", lambda: False)
    assert codecs.auto_choice(10 ** 7, 1) == ("pillow", "pillow")


def make_folder(root: Path, n=24) -> Path:
    for i in range(n):
        for split in ("train", "val"):
            d = root / split / f"c{i % 3}"
            d.mkdir(parents=True, exist_ok=True)
            (d / f"{i}.jpg").write_bytes(photo(180 + 7 * i, 140 + 3 * i, seed=i))
    (root / "train" / "c0" / "broken.jpg").write_bytes(photo(100, 100)[:300])
    return root


def test_prepare_records_the_pair_and_resumes_and_rechecks_with_it(tmp_path, monkeypatch):
    src = make_folder(tmp_path / "src")
    out = tmp_path / "out"
    m = prep.prepare(src, out, size=64, workers=2, shard_size=8, progress=False, **FAST)
    assert m["options"]["decoder"] == "simplejpeg" and m["options"]["resampler"] == "torch"
    assert [s["path"] for s in m["splits"]["train"]["skipped"]] == ["train/c0/broken.jpg"]  # with open_rgb's reason
    # again with auto and another --workers: the recorded pair, so a re-check, not a refusal
    assert prep.prepare(src, out, size=64, workers=0, shard_size=8, progress=False) == m
    # byte-identical shards in this process and in a pool of two
    again = prep.prepare(src, tmp_path / "again", size=64, workers=0, shard_size=8, progress=False, **FAST)
    assert [s["sha256"] for s in again["splits"]["train"]["shards"]] == [s["sha256"] for s in m["splits"]["train"]["shards"]]
    # an explicit other pair is other options
    with pytest.raises(UserError, match="other data or options"):
        prep.prepare(src, out, size=64, workers=0, shard_size=8, progress=False, decoder="pillow", resampler="pillow")
    # Pillow's pair: the fingerprint of data sets prepared before the fields existed
    listing = sources.list_source(src, "auto", None)
    shards = prep.plan(listing, 8)
    old = Options(64)
    legacy = {k: v for k, v in old.__dict__.items() if k not in ("decoder", "resampler")}
    assert prep.fingerprint(listing, old, shards) == _fingerprint_before(listing, legacy, shards)
    monkeypatch.setattr(codecs, "simplejpeg_available", lambda: False)
    with pytest.raises(UserError, match="pip install simplejpeg"):
        prep.prepare(src, tmp_path / "x", size=64, workers=0, progress=False, decoder="simplejpeg")


def _fingerprint_before(listing, options: dict, shards) -> str:
    """prepare.fingerprint as it was written before the decoder and resampler fields."""
    import hashlib

    h = hashlib.sha256(json.dumps([options, shards, [c.to_json() for c in listing.classes]], sort_keys=True).encode())
    for split in sorted(listing.splits):
        for s in listing.splits[split]:
            h.update(f"{split}\t{s.key}\t{s.label}\t{s.offset}\t{s.size}\n".encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def test_the_cli_takes_the_flags_and_refuses_unknown_names(tmp_path, capsys):
    from alexnet.cli import main

    src = make_folder(tmp_path / "src", n=6)
    assert main(["prepare", str(src), str(tmp_path / "out"), "--workers", "0", "--size", "64",
                 "--decoder", "simplejpeg", "--resampler", "torch"]) == 0
    options = json.loads((tmp_path / "out" / "manifest.json").read_text())["options"]
    assert (options["decoder"], options["resampler"]) == ("simplejpeg", "torch")
    with pytest.raises(SystemExit) as e:
        main(["prepare", str(src), str(tmp_path / "o2"), "--resampler", "cv2"])
    assert e.value.code == 2
