"""Decoding what real data holds (paper.md §2), and the §2 resize + centre crop."""
import io

import numpy as np
import pytest
from PIL import Image

from alexnet.data.decode import BadImage, encode_jpeg, open_rgb, resize_crop, target_size


def save(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **kw)
    return buf.getvalue()


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255 ** 2 / mse) if mse else np.inf


def test_cmyk_jpeg_becomes_rgb():
    data = save(Image.new("CMYK", (40, 30), (255, 0, 0, 0)), "JPEG", quality=95)  # pure cyan
    img = open_rgb(data)
    assert img.mode == "RGB" and img.size == (40, 30)
    r, g, b = np.asarray(img).reshape(-1, 3).mean(0)
    assert r < 30 and g > 225 and b > 225


def test_greyscale_and_palette():
    grey = open_rgb(save(Image.new("L", (8, 8), 77), "JPEG", quality=100))
    assert np.abs(np.asarray(grey, int) - 77).max() <= 1 and grey.mode == "RGB"
    pal = Image.new("P", (8, 8), 1)
    pal.putpalette([0, 0, 0, 10, 200, 30] + [0] * 762)
    assert tuple(np.asarray(open_rgb(save(pal, "PNG")))[0, 0]) == (10, 200, 30)
    pal.info["transparency"] = 1  # the palette colour that is transparent -> composited on white
    assert tuple(np.asarray(open_rgb(save(pal, "PNG", transparency=1)))[0, 0]) == (255, 255, 255)


def test_alpha_is_composited_over_white():
    rgba = Image.new("RGBA", (4, 4), (200, 0, 0, 0))
    rgba.putpixel((0, 0), (200, 0, 0, 255))
    rgba.putpixel((1, 0), (0, 0, 200, 128))
    a = np.asarray(open_rgb(save(rgba, "PNG")), int)
    assert tuple(a[0, 0]) == (200, 0, 0) and tuple(a[1, 1]) == (255, 255, 255)
    assert abs(a[0, 1, 2] - (200 * 128 + 255 * 127) / 255) <= 1 and abs(a[0, 1, 0] - 127) <= 1


def test_16_bit_png_keeps_its_top_byte():
    values = np.array([[0, 0x8000], [0xFFFF, 0x1234]], np.uint16)
    img = Image.fromarray(values)  # mode I;16
    assert img.mode.startswith("I;16")
    got = np.asarray(open_rgb(save(img, "PNG")))[..., 0]
    np.testing.assert_array_equal(got, values >> 8)


def test_png_named_jpeg_is_read_as_png():
    data = save(Image.new("RGB", (5, 5), (1, 2, 3)), "PNG")  # the bytes decide, not the name
    assert tuple(np.asarray(open_rgb(data))[2, 2]) == (1, 2, 3)


def test_exif_orientation_is_applied():
    img = Image.new("RGB", (60, 40), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 20))  # red top-left quadrant, as stored
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    out = np.asarray(open_rgb(save(img, "JPEG", quality=95, exif=exif.tobytes())))
    assert out.shape == (60, 40, 3)  # width and height swapped
    assert out[5, 35, 0] > 200 and out[5, 5, 2] > 200  # the red quadrant is now top-right


@pytest.mark.parametrize("data,reason", [
    (b"", "empty file"),
    (b"hello, this is a text file\n" * 10, "not an image"),
    (save(Image.new("RGB", (64, 64), (9, 9, 9)), "JPEG")[:300], "truncated or damaged"),
])
def test_undecodable_inputs_raise_with_a_reason(data, reason):
    with pytest.raises(BadImage, match=reason):
        open_rgb(data)


def test_truncated_noisy_jpeg_is_bad():
    noise = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    data = save(Image.fromarray(noise), "JPEG", quality=90)
    with pytest.raises(BadImage, match="truncated"):
        open_rgb(data[: len(data) // 2])


def test_target_size_and_centre_crop_geometry():
    assert target_size(500, 375, 256) == (341, 256)
    assert target_size(375, 500, 256) == (256, 341)
    # a bar in the middle column survives the centre crop; the borders do not
    a = np.zeros((100, 300, 3), np.uint8)
    a[:, 140:160] = 255
    a[:, :50] = 128
    out = resize_crop(Image.fromarray(a), 64)
    assert out.shape == (64, 64, 3)
    assert out[:, 32].min() > 200 and out[:, 0].max() == 0


def test_box_resize_matches_resize_then_crop():
    rng = np.random.default_rng(1)
    small = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    img = small.resize((800, 600), Image.Resampling.BICUBIC)  # smooth but detailed
    ours = resize_crop(img, 256)
    full = img.resize(target_size(800, 600, 256), Image.Resampling.BICUBIC)
    left = (full.width - 256) // 2
    reference = np.asarray(full.crop((left, 0, left + 256, 256)))
    assert psnr(ours, reference) > 45


def test_draft_decoding_of_large_jpegs_stays_faithful():
    rng = np.random.default_rng(2)
    base = Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).resize(
        (2048, 1536), Image.Resampling.BICUBIC)
    data = save(base, "JPEG", quality=95)
    fast = open_rgb(data, min_side=256)
    assert 256 <= min(fast.size) < 1536 / 2 + 1  # decoded at a reduced DCT scale
    full = open_rgb(data)
    assert full.size == (2048, 1536)
    reference = Image.open(io.BytesIO(data)).convert("RGB")
    w, h = target_size(2048, 1536, 256)
    ref = reference.resize((w, h), Image.Resampling.LANCZOS)
    left = (w - 256) // 2
    assert psnr(resize_crop(fast, 256), np.asarray(ref.crop((left, 0, left + 256, 256)))) > 35


def test_keep_aspect_and_encode():
    img = Image.new("RGB", (300, 200), (10, 20, 30))
    assert resize_crop(img, 128, keep_aspect=True).shape == (128, 192, 3)
    arr = resize_crop(img, 128)
    back = np.asarray(Image.open(io.BytesIO(encode_jpeg(arr, 90))))
    assert back.shape == arr.shape and psnr(arr, back) > 35
    assert encode_jpeg(arr, 90) == encode_jpeg(arr, 90)  # deterministic


def test_formats_pillow_opens_but_we_do_not_read_are_not_images():
    """Only the formats of decode.FORMATS are read: TGA has no signature junk could be told from,
    and the others are no photo formats (look at the first bytes first)."""
    img = Image.new("RGB", (8, 8), (1, 2, 3))
    for fmt in ("TGA", "ICO", "PCX", "SGI"):
        with pytest.raises(BadImage, match="not an image: starts with"):
            open_rgb(save(img, fmt))


@pytest.mark.parametrize("error", [RuntimeError("Failed to decode image: Missing or empty image item"),
                                   TypeError("'str' object cannot be interpreted as an integer"),
                                   KeyError("strip offsets"), IndexError("list index out of range")])
def test_any_decoder_error_is_a_bad_image_naming_its_class(monkeypatch, error):
    """libavif's RuntimeError and a TypeError inside Pillow's TIFF reader escaped
    open_rgb (and stopped prepare, predict, evaluate; serve answered 500)."""
    def broken(self):
        raise error
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken)
    with pytest.raises(BadImage, match=f"truncated or damaged PNG \\({type(error).__name__} in the decoder: "):
        open_rgb(save(Image.new("RGB", (8, 8)), "PNG"))


def test_memory_errors_are_not_taken_for_damaged_files(monkeypatch):
    """Out of memory is the machine's state, not the file's: it must stop the job, not skip files."""
    def broken(self):
        raise MemoryError()
    monkeypatch.setattr("PIL.ImageFile.ImageFile.load", broken)
    with pytest.raises(MemoryError):
        open_rgb(save(Image.new("RGB", (8, 8)), "PNG"))
