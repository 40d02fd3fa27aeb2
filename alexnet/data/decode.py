"""Bytes -> RGB pixels, as the paper's §2 preprocessing needs them, robust to what real data holds.

    img = open_rgb(data, min_side=256)          # PIL RGB image, EXIF-rotated; raises BadImage
    arr = resize_crop(img, 256)                 # (256, 256, 3) uint8: shorter side 256, centre crop
    jpg = encode_jpeg(arr, quality=90)

What real data holds (paper.md §2): greyscale and CMYK JPEGs, a PNG named .JPEG, palette and alpha
PNGs, 16-bit PNGs, EXIF-rotated photos, truncated downloads, empty and non-image files. Pillow picks
the decoder from the bytes, not the file name; every mode is converted to 8-bit RGB (alpha is
composited over white, 16-bit values keep their top 8 bits); anything that cannot be decoded raises
BadImage with a reason, so that callers skip and report it.

Speed: for a JPEG at least twice the target size, Pillow's `draft` asks libjpeg-turbo to decode at
1/2, 1/4 or 1/8 scale in the DCT domain (never below the target), which is several times faster than
a full decode; the centre crop is then resampled straight from the source box in one antialiased
resize, so no pixels outside the crop are resized. benchmarks/prepare.py measures both against the
straightforward Pillow loop.
"""
from __future__ import annotations

import io
import math
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

RESAMPLE = Image.Resampling.LANCZOS  # antialiased; after draft() it costs little (benchmarks/prepare.py)


class BadImage(ValueError):
    """The bytes are not a decodable image; the message is the reason recorded in the manifest."""


def open_rgb(data: bytes, min_side: int | None = None) -> Image.Image:
    """Decode an image file's bytes to an 8-bit RGB PIL image with its EXIF orientation applied.

    min_side: the caller will shrink the shorter side to this size; JPEGs at least twice as large
    are decoded at a reduced scale whose shorter side stays >= min_side.
    """
    if not data:
        raise BadImage("empty file (0 bytes)")
    kind = "image"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            kind = img.format or kind
            if min_side and img.format == "JPEG" and min(img.size) >= 2 * min_side:
                scale = min_side / min(img.size)
                img.draft("RGB", (math.ceil(img.width * scale), math.ceil(img.height * scale)))
            img.load()
    except UnidentifiedImageError:
        raise BadImage("not an image (no decoder recognises the bytes)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImage(f"too large to decode safely: {e}") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # truncated or damaged data
        raise BadImage(f"truncated or damaged {kind}: {e}") from None
    try:
        img = ImageOps.exif_transpose(img)
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


def resize_crop(img: Image.Image, size: int, keep_aspect: bool = False,
                resample: Image.Resampling = RESAMPLE) -> np.ndarray:
    """§2: shorter side to `size`, then the central size x size crop -> (size, size, 3) uint8.

    keep_aspect: return the whole shorter-side-resized image instead (for scale-jitter training).
    The crop box is the one a resize-then-crop would take (offsets floor((w - size) / 2)), mapped
    back to source coordinates, so only the kept pixels are resampled.
    """
    w, h = img.size
    tw, th = target_size(w, h, size)
    if keep_aspect:
        return np.asarray(img.resize((tw, th), resample))
    left, top = (tw - size) // 2, (th - size) // 2
    sx, sy = w / tw, h / th
    box = (left * sx, top * sy, (left + size) * sx, (top + size) * sy)
    return np.asarray(img.resize((size, size), resample, box=box))


def encode_jpeg(arr: np.ndarray, quality: int) -> bytes:
    """(H, W, 3) uint8 -> baseline JPEG bytes (4:2:0 chroma, libjpeg-turbo), deterministic."""
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, "JPEG", quality=quality)
    return buf.getvalue()
