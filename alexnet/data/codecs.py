"""The decoder and the resampler `alexnet prepare` stores images with: Pillow's, or the fast pair.

    pix = Pixels(size=256, decoder="simplejpeg", resampler="torch")
    arr = pix.load(data)            # (256, 256, 3) uint8, §2's shorter side + centre crop; raises BadImage
    jpg = pix.encode(arr, quality=90)

Two pairs, recorded in the manifest and the fingerprint of every prepared data set (prepare.Options):
- "pillow" / "pillow": alexnet.data.decode's open_rgb and resize_crop_image (antialiased bicubic of
  the crop box), encoded by Pillow. Nothing to import: the right choice for small jobs.
- "simplejpeg" / "torch": JPEGs decoded and encoded by libjpeg-turbo through simplejpeg (no copy
  into Pillow's 4-byte pixel layout), resized by torch's uint8 antialiased bicubic kernel
  (F.interpolate(antialias=True), Keys a = -0.5 like Pillow's, vectorised). Measured on the 300
  ImageNet photos at their own sizes (median 500x375; benchmarks/prepare.py --profile, one core):
  decode 1.16 ms (Pillow 1.74), resize 0.68 ms (Pillow 1.77), encode 0.21 ms (Pillow 0.27), and
  44.5 dB from a full LANCZOS resize, as Pillow's bicubic is. The cost is torch's import, about
  1.7 s per command, so prepare picks this pair only for jobs large enough to repay it (AUTO_MIN):
  per photo 2.71 ms against Pillow's pair's 3.82 (benchmarks/prepare.py --profile).

The fast decoder takes only what it decodes exactly as Pillow would: a JPEG whose header Pillow
parses, in YCbCr, RGB or greyscale (not CMYK or YCCK), without an EXIF rotation, that simplejpeg
decodes without a warning (strict). Anything else (other formats, CMYK, rotated, damaged, a
recoverable libjpeg warning such as extraneous bytes) goes through open_rgb, so what is skipped and
why is the same with both decoders. Large JPEGs are decoded at the reduced DCT scale open_rgb's
draft() picks (1/2, 1/4 or 1/8, never below DRAFT_MARGIN x the size). Measured on the 300 ImageNet
photos, the two decoders give identical pixels (tests/test_codecs.py), and the two resamplers agree
to 53 dB or more: the pairs differ far less than either differs from the source.
"""
from __future__ import annotations

import importlib.util
import io
import math
import warnings

import numpy as np
from PIL import JpegImagePlugin

from .decode import (DRAFT_MARGIN, JPEG_START, crop_box, encode_jpeg, max_pixels, open_rgb, too_large,
                     resize_crop_image)

DECODERS = ("pillow", "simplejpeg")
RESAMPLERS = ("pillow", "torch")
# images per worker process from which "auto" picks simplejpeg + torch. Measured whole commands on
# the ImageNet photos, 2 workers (docs/benchmarks.md): 1,500 per worker, the two pairs are even
# (6.2 and 6.5 s for 3,000 photos: torch's 1.7 s import against ~1.1 ms saved per photo); 6,000
# per worker, the fast pair takes 19 s where Pillow's takes 24. 2,000 leaves a margin.
AUTO_MIN = 2000
_ORIENTATION = 0x0112  # the EXIF tag


def simplejpeg_available() -> bool:
    return importlib.util.find_spec("simplejpeg") is not None


def auto_choice(images: int, workers: int) -> tuple[str, str]:
    """(decoder, resampler) for a job of `images` over `workers` processes (0: this one): the fast
    pair from AUTO_MIN images per process, where simplejpeg is installed; Pillow's otherwise."""
    if images >= AUTO_MIN * max(1, workers) and simplejpeg_available():
        return "simplejpeg", "torch"
    return "pillow", "pillow"


def resize_crop_torch(arr: np.ndarray, size: int, keep_aspect: bool = False) -> np.ndarray:
    """(H, W, 3) uint8 -> §2's resize and centre crop, (size, size, 3) uint8 (or (h, w, 3) with
    keep_aspect), by torch's uint8 antialiased bicubic (F.interpolate, as torchvision's Resize with
    antialias=True). The whole image is resized and then cropped, which is what the crop-box resize
    of resize_crop_image computes (the same sample positions)."""
    import torch
    import torch.nn.functional as F

    h, w, _ = arr.shape
    tw, th, left, top, cw, ch = crop_box(w, h, size, keep_aspect)
    with warnings.catch_warnings():  # Pillow's arrays are read-only; torch warns, but nothing here writes
        warnings.simplefilter("ignore", UserWarning)
        x = torch.from_numpy(arr).permute(2, 0, 1).unsqueeze(0)  # a channels-last view: no copy
    if (tw, th) != (w, h):
        x = F.interpolate(x, size=(th, tw), mode="bicubic", antialias=True)
    return x[0, :, top:top + ch, left:left + cw].permute(1, 2, 0).contiguous().numpy()


def decode_simplejpeg(data: bytes, min_side: int | None) -> np.ndarray | None:
    """A JPEG's RGB pixels (H, W, 3) uint8 by simplejpeg, or None when this file is one for
    open_rgb (see the module docstring). Raises BadImage only when the image is too large."""
    import simplejpeg

    try:
        img = JpegImagePlugin.JpegImageFile(io.BytesIO(data))  # the header only: ~20 us
        # orientations 2..8 turn or mirror the image (exif_transpose); 0 and other values leave it be
        if img.mode not in ("RGB", "L") or img.getexif().get(_ORIENTATION, 1) in range(2, 9):
            return None
        width, height = img.size
    except Exception:  # a header Pillow cannot parse: open_rgb says why
        return None
    want = (0, 0)
    if min_side and min(width, height) >= 2 * DRAFT_MARGIN * min_side:  # as open_rgb's draft() asks
        scale = DRAFT_MARGIN * min_side / min(width, height)
        # and as Pillow's JpegImageFile.draft answers: the largest 1/s, s in 8, 4, 2, 1, with s at
        # most the whole-number ratio of sizes; libjpeg-turbo then decodes exactly Pillow's pixels
        ratio = min(width // math.ceil(width * scale), height // math.ceil(height * scale))
        s = next(s for s in (8, 4, 2, 1) if ratio >= s)
        want = (-(-height // s), -(-width // s)) if s > 1 else (0, 0)
    limit, source = max_pixels()
    try:
        dh, dw, _, _ = simplejpeg.decode_jpeg_header(data, min_height=want[0], min_width=want[1])
        if limit is not None and dw * dh > limit:
            raise too_large(width, height, "JPEG", (dw, dh), limit, source)
        return simplejpeg.decode_jpeg(data, "RGB", min_height=want[0], min_width=want[1], strict=True)
    except ValueError:  # damaged, or a recoverable warning: Pillow decides what it is
        return None


class Pixels:
    """One worker's decoder and resampler (prepare.Options' `decoder` and `resampler`).

    load(data) -> (size, size, 3) uint8 (or (h, w, 3) with keep_aspect); raises BadImage.
    encode(arr, quality) -> baseline JPEG bytes, 4:2:0 chroma (the decoder's library).
    Raises ValueError for an unknown decoder or resampler."""

    def __init__(self, size: int, keep_aspect: bool = False, decoder: str = "pillow", resampler: str = "pillow"):
        if decoder not in DECODERS or resampler not in RESAMPLERS:
            raise ValueError(f"unknown decoder {decoder!r} or resampler {resampler!r}: "
                             f"decoders {DECODERS}, resamplers {RESAMPLERS}")
        self.size, self.keep_aspect, self.decoder, self.resampler = size, keep_aspect, decoder, resampler

    def load(self, data: bytes) -> np.ndarray:
        arr = None
        if self.decoder == "simplejpeg" and data[:3] == JPEG_START:
            arr = decode_simplejpeg(data, self.size)
        if arr is None:
            img = open_rgb(data, min_side=self.size)
            if self.resampler == "pillow":
                return np.asarray(resize_crop_image(img, self.size, self.keep_aspect))
            arr = np.asarray(img)
        if self.resampler == "torch":
            return resize_crop_torch(arr, self.size, self.keep_aspect)
        from PIL import Image

        return np.asarray(resize_crop_image(Image.fromarray(arr), self.size, self.keep_aspect))

    def encode(self, arr: np.ndarray, quality: int) -> bytes:
        if self.decoder == "simplejpeg":
            import simplejpeg

            return simplejpeg.encode_jpeg(np.ascontiguousarray(arr), quality, "RGB", "420")
        return encode_jpeg(arr, quality)
