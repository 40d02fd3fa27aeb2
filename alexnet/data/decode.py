"""Bytes -> RGB pixels, as the paper's §2 preprocessing needs them, robust to what real data holds.

    img = open_rgb(data, min_side=256)          # PIL RGB image, EXIF-rotated; raises BadImage
    arr = resize_crop(img, 256)                 # (256, 256, 3) uint8: shorter side 256, centre crop
    jpg = encode_jpeg(arr, quality=90)

What real data holds (paper.md §2): greyscale and CMYK JPEGs, a PNG named .JPEG, palette and alpha
PNGs, 16-bit PNGs, EXIF-rotated photos, truncated downloads, empty and non-image files, camera
photos of 100 megapixels and more, panoramas and 6000x20 strips. Pillow picks the decoder from the
bytes, not the file name; every mode is converted to 8-bit RGB (alpha is composited over white,
16-bit values keep their top 8 bits); anything that cannot be decoded raises BadImage with a
reason, so that callers skip and report it.

Size limit: an image is refused only when what would be *decoded* exceeds the limit, by default
Pillow's hard decompression-bomb limit (2 x PIL.Image.MAX_IMAGE_PIXELS, ~179 MP); the environment
variable ALEXNET_MAX_PIXELS sets another. A JPEG is decoded at reduced scale (below), so a 108 MP
camera photo costs a 2 MP decode and passes; other formats are decoded whole and are also bound by
Pillow's own hard limit.

Speed (benchmarks/prepare.py, docs/benchmarks.md): for a JPEG at least 3x the target size,
Pillow's `draft` asks libjpeg-turbo to decode at 1/2, 1/4 or 1/8 scale in the DCT domain (never
below 1.5x the target), which is several times faster than a full decode; the centre crop is then
resampled straight from the source box in one antialiased bicubic resize, so no pixels outside the
crop are resized. On ImageNet's median 500x375 photo neither shortcut applies: decoding takes
~1.8 ms, the resize ~1.5 ms.
"""
from __future__ import annotations

import io
import math
import os
import warnings

import numpy as np
from PIL import Image, ImageOps, JpegImagePlugin, UnidentifiedImageError

from ..errors import UserError

# Antialiased bicubic (Keys, a = -0.5; timm's ImageNet default): 0.7x LANCZOS's time, and on
# ImageNet's photos 42 dB from LANCZOS's pixels, 38 dB once both are stored at quality 90
# (docs/benchmarks.md); the cheaper BILINEAR and HAMMING fall below 35 dB there.
RESAMPLE = Image.Resampling.BICUBIC
# draft() decodes a JPEG at 1/2, 1/4 or 1/8 scale in the DCT domain, which is coarse: measured on
# ImageNet's 800x600 photos, decoding at 1/2 right down to 300x400 and resizing to 256 loses
# 4-6 dB against a full decode. Leaving 1.5x for the antialiased resize keeps it within 1 dB.
DRAFT_MARGIN = 1.5
MAX_PIXELS_ENV = "ALEXNET_MAX_PIXELS"
MAX_ASPECT = 4.0  # --keep-aspect stores at most this longer/shorter side ratio (the central part)
JPEG_START = b"\xff\xd8\xff"


class BadImage(ValueError):
    """The bytes are not a decodable image; the message is the reason recorded in the manifest."""


def max_pixels() -> tuple[int | None, str]:
    """(the most pixels an image may decode to, where that limit comes from)."""
    value = os.environ.get(MAX_PIXELS_ENV)
    if value:
        try:
            limit = int(float(value))
        except ValueError:
            raise UserError(f"{MAX_PIXELS_ENV}={value!r} is not a number of pixels (e.g. 300e6)") from None
        return (limit if limit > 0 else None), MAX_PIXELS_ENV
    if Image.MAX_IMAGE_PIXELS is None:
        return None, "PIL.Image.MAX_IMAGE_PIXELS is None"
    return 2 * Image.MAX_IMAGE_PIXELS, "Pillow's decompression-bomb limit"


def _too_large(width: int, height: int, kind: str, decoded: tuple[int, int] | None, limit: int, source: str) -> BadImage:
    at = f", decoded at {decoded[0]}x{decoded[1]}" if decoded and decoded != (width, height) else ""
    return BadImage(f"too large to decode: {width}x{height} {kind} ({width * height / 1e6:.0f} megapixels{at}) "
                    f"exceeds the limit of {limit / 1e6:.0f} megapixels ({source}); set {MAX_PIXELS_ENV}=<pixels> "
                    f"to change it")


def _open(data: bytes) -> Image.Image:
    """A lazily decoded image. JPEGs skip Image.open's size check: it would refuse a 108 MP camera
    photo before draft() had a chance to decode it at 1/8 scale; open_rgb checks what is decoded."""
    fp = io.BytesIO(data)
    if data.startswith(JPEG_START):
        return JpegImagePlugin.JpegImageFile(fp)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # the limit is checked after
        return Image.open(fp)


def open_rgb(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode an image file's bytes to an 8-bit RGB PIL image with its EXIF orientation applied.

    min_side: the caller will shrink the shorter side to this size; JPEGs at least 3x as large
    are decoded at a reduced scale whose shorter side stays >= 1.5 x min_side (DRAFT_MARGIN).
    Raises BadImage: empty, not an image, truncated or damaged, or too large (see max_pixels()).
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    kind = "image"
    limit, source = max_pixels()
    try:
        img = _open(data)
        kind = img.format or kind
        width, height = img.size
        if min_side and img.format == "JPEG" and min(img.size) >= 2 * DRAFT_MARGIN * min_side:
            scale = DRAFT_MARGIN * min_side / min(img.size)
            img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
        if limit is not None and img.width * img.height > limit:
            raise _too_large(width, height, kind, img.size, limit, source)
        img.load()
    except BadImage:
        raise
    except UnidentifiedImageError:
        raise BadImage("not an image (no decoder recognises the bytes)") from None
    except Image.DecompressionBombError as e:  # a non-JPEG beyond Pillow's own hard limit
        raise BadImage(f"too large to decode: {e} (Pillow's hard limit for {kind} files)") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as e:  # truncated or damaged data
        raise BadImage(f"truncated or damaged {kind}: {e}") from None
    try:  # in place: otherwise an upright image is copied whole (~0.1 ms of a 500x375 photo)
        ImageOps.exif_transpose(img, in_place=True)
    except Exception:  # a damaged EXIF block must not lose the image: keep it unrotated
        pass
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB."""
    if img.mode == "RGB":
        return img
    if img.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I"):  # 16-bit greyscale: keep the top byte
        a = np.asarray(img).astype(np.int64)
        if img.mode.startswith("I;16") or a.max(initial=0) > 255:
            a = a >> 8
        return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "F":
        return Image.fromarray(np.clip(np.asarray(img), 0, 255).astype(np.uint8), "L").convert("RGB")
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img.convert("RGB")  # L, 1, P, CMYK (Adobe-inverted CMYK handled by Pillow), YCbCr, LAB, HSV


def target_size(width: int, height: int, size: int) -> tuple[int, int]:
    """Size after resizing the shorter side to `size` (§2), aspect ratio kept."""
    scale = size / min(width, height)
    return max(size, round(width * scale)), max(size, round(height * scale))


def resize_crop_image(img: Image.Image, size: int, keep_aspect: bool = False,
                      resample: Image.Resampling = RESAMPLE) -> Image.Image:
    """§2: shorter side to `size`, then the central size x size crop, as a PIL image.

    keep_aspect: the whole shorter-side-resized image instead (for scale-jitter training), but at
    most MAX_ASPECT times as long as it is wide: a 6000x20 strip would otherwise be stored as
    76800x256 (beyond what a JPEG can hold); longer images keep their central part.
    The crop box is the one a resize-then-crop would take (offsets floor((w - size) / 2)), mapped
    back to source coordinates, so only the kept pixels are resampled.
    """
    w, h = img.size
    tw, th = target_size(w, h, size)
    if keep_aspect:
        cw, ch = min(tw, math.floor(MAX_ASPECT * size)), min(th, math.floor(MAX_ASPECT * size))
    else:
        cw, ch = size, size
    left, top = (tw - cw) // 2, (th - ch) // 2
    sx, sy = w / tw, h / th
    box = (left * sx, top * sy, (left + cw) * sx, (top + ch) * sy)
    # reducing_gap: a large non-JPEG (no draft) is first shrunk by an integer factor with a box
    # filter, then resampled; at a gap of 3 the result is indistinguishable (Pillow's docs)
    return img.resize((cw, ch), resample, box=box, reducing_gap=3.0)


def resize_crop(img: Image.Image, size: int, keep_aspect: bool = False,
                resample: Image.Resampling = RESAMPLE) -> np.ndarray:
    """§2 resize and centre crop -> (size, size, 3) uint8 (or (H, W, 3) with keep_aspect)."""
    return np.asarray(resize_crop_image(img, size, keep_aspect, resample))


def encode_jpeg(image: np.ndarray | Image.Image, quality: int) -> bytes:
    """(H, W, 3) uint8 or an RGB PIL image -> baseline JPEG bytes (4:2:0 chroma, libjpeg-turbo),
    deterministic."""
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image, "RGB")
    buf = io.BytesIO()
    image.save(buf, "JPEG", quality=quality)
    return buf.getvalue()
